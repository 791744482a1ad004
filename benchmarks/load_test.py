"""Load test: N concurrent browser sessions against one `streamlit run app/main.py` server on localhost.

    python benchmarks/load_test.py --sessions 8 16
    python benchmarks/load_test.py --sessions 8 16 --tiny      # tiny random checkpoints (no trained ones needed)

For each N a fresh server is started on a free localhost port (the app's own .streamlit/config.toml applies),
and one headless Chromium (Playwright, /usr/bin/chromium or $MGNET_CHROMIUM) opens N browser contexts, one per
simulated student. All sessions start together and each one, like a student in a class:

1. opens the page and waits for the example photo's analysis ("open");
2. uploads its own photo (every session and round a different photo, so nothing is shared through the result
   cache: the worst case) and waits for MGNet's analysis of it ("upload");
3. opens the Compare tab and computes the default saliency maps ("compare");
4. opens Robustness > Attack and runs the default PGD-10 attack ("attack").

Steps 2-4 repeat ``--rounds`` times. Latency is wall time from the click to the text that says the result is
on the page. An error is any exception element or error message in the page, or a step that times out.
Resident memory (RSS) of the server and everything it started (same process group) is sampled every 0.25 s.

Writes benchmarks/results/load_test.md and load_test.json (latency percentiles per step, errors, peak RSS,
the command, the machine, and whether other heavy processes were running).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import busy_processes, checkpoint_folder, describe, tiny_checkpoints  # noqa: E402  (benchmarks/common.py)

RESULTS = ROOT / "benchmarks" / "results"
IGNORE = ("load_test.py", "chromium", "streamlit")  # our own processes, not other load
CHROMIUM = os.environ.get("MGNET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
STEPS = ("open", "upload", "compare", "attack")
ERROR_WORDS = ("failed", "could not be used", "ran out of memory", "No usable checkpoint")


# -- server ------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of a process group."""
    ticks = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                ticks += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def group_rss_mb(pgid: int) -> tuple[float, float]:
    """(RSS of the process group's leader, RSS of the whole group), MB, from /proc."""
    leader = total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            with open(f"/proc/{d}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        kb = int(line.split()[1])
                        total += kb
                        if int(d) == pgid:
                            leader = kb
                        break
        except (OSError, ValueError, IndexError):
            continue
    return leader / 1024, total / 1024


class Server:
    def __init__(self, checkpoints: Path, log: Path, device: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, MGNET_CHECKPOINTS=str(checkpoints), MGNET_DEVICE=device)
        self.cmd = [
            str(Path(sys.executable).with_name("streamlit")),
            "run",
            "app/main.py",
            "--server.port",
            str(self.port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
        ]
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            self.cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.samples: list[tuple[float, float, float]] = []  # (t, leader MB, group MB)
        self._stop = threading.Event()
        self._t0 = time.time()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self):
        while not self._stop.is_set():
            leader, total = group_rss_mb(self.proc.pid)
            if total:
                self.samples.append((round(time.time() - self._t0, 2), round(leader, 1), round(total, 1)))
            self._stop.wait(0.25)

    def wait_ready(self, timeout=180):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited:\n{Path(self.log.name).read_text()[-3000:]}")
            try:
                if urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2).read() == b"ok":
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError("streamlit did not become healthy in time")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self):
        self._stop.set()
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.log.close()


# -- photos ------------------------------------------------------------------------------------------------
def make_photos(folder: Path, sessions: int, rounds: int, side: int) -> dict[tuple[int, int], Path]:
    """A distinct JPEG for every (session, round): an example photo, cropped, flipped and tinted differently."""
    examples = sorted((ROOT / "app" / "examples").glob("*.jpg"))
    rng = np.random.default_rng(0)
    out = {}
    for s in range(sessions):
        for r in range(rounds):
            img = Image.open(examples[(s * rounds + r) % len(examples)]).convert("RGB")
            w, h = img.size
            dx, dy = int(rng.integers(0, max(1, w // 8))), int(rng.integers(0, max(1, h // 8)))
            img = img.crop((dx, dy, w - int(rng.integers(0, max(1, w // 8))), h))
            img = img.resize((side, side * 3 // 4))
            if (s + r) % 2:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, 3)
            path = folder / f"s{s:02d}-r{r}.jpg"
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
            out[(s, r)] = path
    return out


# -- one student ---------------------------------------------------------------------------------------------
async def page_errors(page) -> list[str]:
    found = []
    exc = page.locator("[data-testid='stException']")
    for i in range(await exc.count()):
        found.append("exception: " + (await exc.nth(i).inner_text())[:300])
    alerts = page.locator("[data-testid='stAlertContainer']")
    for i in range(await alerts.count()):
        text = await alerts.nth(i).inner_text()
        if any(w in text for w in ERROR_WORDS):
            found.append("error message: " + text[:300])
    return found


async def session(
    browser, url: str, idx: int, photos: dict, rounds: int, timeout_s: float, start: asyncio.Event, record
):
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1800})
    page = await ctx.new_page()
    page.set_default_timeout(timeout_s * 1000)

    async def step(name: str, action, done_text: str, exact: bool = False):
        t = time.perf_counter()
        try:
            await action()
            await page.get_by_text(done_text, exact=exact).first.wait_for()
            errs = await page_errors(page)
            record(idx, name, time.perf_counter() - t, errs)
        except Exception as exc:  # a timeout or a vanished page is an error of this step
            record(idx, name, time.perf_counter() - t, [f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"])
            raise

    await start.wait()
    try:
        await step("open", lambda: page.goto(url), "Compute so far")
        await page.get_by_text("Upload", exact=True).click()
        for r in range(rounds):
            photo = photos[(idx, r)]
            w, h = Image.open(photo).size

            async def upload(photo=photo):
                await page.get_by_role("tab", name="Glimpses", exact=True).click()
                await page.locator("input[type='file']").set_input_files(str(photo))

            await step("upload", upload, f"{photo.name} · {w}×{h} px")

            async def compare():
                await page.get_by_role("tab", name="Compare", exact=True).click()
                await page.get_by_role("button", name="Compute maps").click()

            await step("compare", compare, "maps ready")

            async def attack():
                await page.get_by_role("tab", name="Robustness", exact=True).click()
                await page.get_by_role("tab", name="Attack", exact=True).click()
                await page.get_by_role("button", name="Run attack").click()

            await step("attack", attack, "attack done")
    except Exception:
        pass  # recorded by step()
    finally:
        await ctx.close()


async def drive(url: str, sessions: int, rounds: int, photos: dict, timeout_s: float) -> tuple[dict, list, float]:
    from playwright.async_api import async_playwright

    latencies: dict[str, list[float]] = {s: [] for s in STEPS}
    errors: list[dict] = []

    def record(idx, name, seconds, errs):
        latencies[name].append(round(seconds, 3))
        for e in errs:
            errors.append({"session": idx, "step": name, "error": e})

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        start = asyncio.Event()
        tasks = [
            asyncio.create_task(session(browser, url, i, photos, rounds, timeout_s, start, record))
            for i in range(sessions)
        ]
        await asyncio.sleep(0.5)
        t0 = time.perf_counter()
        start.set()
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
        await browser.close()
    return latencies, errors, wall


# -- reporting ----------------------------------------------------------------------------------------------
def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    v = np.asarray(values)
    return {
        "n": int(v.size),
        "p50": round(float(np.percentile(v, 50)), 2),
        "p90": round(float(np.percentile(v, 90)), 2),
        "p95": round(float(np.percentile(v, 95)), 2),
        "p99": round(float(np.percentile(v, 99)), 2),
        "max": round(float(v.max()), 2),
        "mean": round(statistics.fmean(v), 2),
    }


def write_report(result: dict, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    (out / "load_test.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Load test: concurrent browser sessions against one Streamlit server",
        "",
        f"Reproduce: `{result['command']}`",
        "",
        f"- Date (UTC): {result['date']}; commit `{result['commit'][:12]}`",
        f"- Machine: {result['machine']}",
        f"- Checkpoints: {result['checkpoints']} (device {result['device']})",
        f"- Each session: open the page, then {result['rounds']} round(s) of: upload its own photo "
        f"({result['photo_side']} px wide, different for every session and round), compute the Compare tab's "
        "default maps, run the default PGD-10 attack.",
        f"- Other busy processes during the run: {', '.join(result['busy_during']) or 'none'}",
        "",
        "| sessions | step | n | p50 s | p90 s | p95 s | p99 s | max s | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in result["levels"]:
        for step in STEPS:
            p = level["latency"][step]
            errs = sum(1 for e in level["errors"] if e["step"] == step)
            if p.get("n"):
                lines.append(
                    f"| {level['sessions']} | {step} | {p['n']} | {p['p50']} | {p['p90']} | {p['p95']} | "
                    f"{p['p99']} | {p['max']} | {errs} |"
                )
            else:
                lines.append(f"| {level['sessions']} | {step} | 0 | | | | | | {errs} |")
    lines += [
        "",
        "| sessions | wall time s | errors | server alive after | server CPU s (share of all cores) | "
        "idle RSS MB | peak RSS MB (server) | peak RSS MB (server + children) |",
        "|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for level in result["levels"]:
        lines.append(
            f"| {level['sessions']} | {level['wall_s']} | {len(level['errors'])} | "
            f"{'yes' if level['server_alive'] else 'NO'} | {level['server_cpu_s']} "
            f"({level['server_cpu_share']:.0%}) | {level['idle_rss_mb']} | {level['peak_rss_mb']} | "
            f"{level['peak_group_rss_mb']} |"
        )
    errors = [e for level in result["levels"] for e in level["errors"]]
    lines += ["", f"**Errors: {len(errors)}.**" + ("" if not errors else " First ones:")]
    for e in errors[:10]:
        lines.append(f"- sessions={e.get('level')}, session {e['session']}, {e['step']}: {e['error']}")
    lines += [
        "",
        "Latency is wall time from the click (or page load) until the text that shows the result is on the "
        "page. All sessions share one process and its cached models; each model's operations run one at a "
        "time under the model's lock, so on a CPU-only machine latency grows with the number of sessions that "
        "ask for computation at the same moment, while the server stays up and every request completes. "
        "RSS is sampled every 0.25 s from /proc. The browser (one Chromium, one context per session) runs on the "
        "same machine as the server, so on a small machine it takes a large part of the CPU: the server's own "
        "CPU time and share are given; the rest of the cores went to the browser and other processes.",
    ]
    (out / "load_test.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sessions", type=int, nargs="+", default=[8, 16], help="concurrent sessions (default 8 16)")
    ap.add_argument("--rounds", type=int, default=1, help="upload/compare/attack rounds per session (default 1)")
    ap.add_argument("--checkpoints", help="checkpoint folder (default: checkpoints/ with the trained models)")
    ap.add_argument("--tiny", action="store_true", help="use tiny random checkpoints in a temporary folder")
    ap.add_argument("--photo-side", type=int, default=1600, help="width of the uploaded photos (default 1600)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds one step may take before it counts as an error")
    ap.add_argument("--device", default="cpu", help="MGNET_DEVICE for the server (default cpu)")
    ap.add_argument("--out", default=str(RESULTS), help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)
    if not os.path.exists(CHROMIUM):
        print(f"error: no Chromium at {CHROMIUM}; set MGNET_CHROMIUM", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="mgnet-load-"))
    try:
        if args.tiny:
            ckpts = tiny_checkpoints(work)
            ckpt_text = "tiny random-weight MGNet and baseline (64 px)"
        else:
            ckpts = checkpoint_folder(args.checkpoints)
            if ckpts is None:
                return 2
            ckpt_text = ", ".join(sorted(p.name for p in ckpts.iterdir() if p.suffix in (".pt", ".ckpt")))
        photos = make_photos(work, max(args.sessions), args.rounds, args.photo_side)
        levels = []
        busy = set()
        for n in args.sessions:
            server = Server(ckpts, work / f"server-{n}.log", args.device)
            try:
                server.wait_ready()
                time.sleep(1.0)
                idle = server.samples[-1][1] if server.samples else None
                print(f"{n} sessions against {server.url} ...", flush=True)
                busy.update(busy_processes(IGNORE))
                cpu0 = group_cpu_s(server.proc.pid)
                latencies, errors, wall = asyncio.run(drive(server.url, n, args.rounds, photos, args.timeout))
                server_cpu = group_cpu_s(server.proc.pid) - cpu0
                busy.update(busy_processes(IGNORE))
                alive = server.alive()
                if not alive:
                    errors.append({"session": -1, "step": "server", "error": "the server process died"})
                samples = list(server.samples)
            finally:
                server.stop()
            for e in errors:
                e["level"] = n
            level = {
                "sessions": n,
                "wall_s": round(wall, 1),
                "latency": {s: percentiles(latencies[s]) for s in STEPS},
                "raw_latency_s": latencies,
                "errors": errors,
                "server_alive": alive,
                "idle_rss_mb": idle,
                "peak_rss_mb": max(s[1] for s in samples),
                "peak_group_rss_mb": max(s[2] for s in samples),
                "server_cpu_s": round(server_cpu, 1),
                "server_cpu_share": round(server_cpu / wall / (os.cpu_count() or 1), 2),
                "rss_samples": samples[::4],
            }
            levels.append(level)
            print(
                json.dumps(
                    {k: level[k] for k in ("sessions", "wall_s", "latency", "peak_rss_mb", "peak_group_rss_mb")}
                ),
                flush=True,
            )
            print(f"errors: {len(errors)}", flush=True)
        from mgnet.utils import git_commit

        cmd = "python benchmarks/load_test.py " + " ".join(
            (["--sessions"] + [str(s) for s in args.sessions])
            + (["--rounds", str(args.rounds)] if args.rounds != 1 else [])
            + (["--tiny"] if args.tiny else [])
            + (["--checkpoints", args.checkpoints] if args.checkpoints else [])
            + (["--photo-side", str(args.photo_side)] if args.photo_side != 1600 else [])
        )
        result = {
            "command": cmd,
            "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "commit": os.environ.get("MGNET_COMMIT") or git_commit(),
            "machine": describe(),
            "checkpoints": ckpt_text,
            "device": args.device,
            "rounds": args.rounds,
            "photo_side": args.photo_side,
            "busy_during": sorted(busy),
            "levels": levels,
        }
        write_report(result, Path(args.out))
        total = sum(len(level["errors"]) for level in levels)
        print(f"wrote {Path(args.out) / 'load_test.md'}; errors: {total}")
        return 0 if total == 0 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
