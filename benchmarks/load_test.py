"""Load test: what one app server costs per student, and how many students per minute it carries.

    python benchmarks/load_test.py --cycles 4                        # cost: students one at a time
    python benchmarks/load_test.py --rates 4 8 12 --duration 120     # capacity: students arriving at R per minute
    python benchmarks/load_test.py --replicas 2 --rates 8 16         # 2 replicas behind nginx (deploy/local.py)

A student's cycle, driven by a light client that speaks Streamlit's WebSocket protocol (benchmarks/st_client.py,
no browser, so nearly all the CPU goes to the server): open the page (the example analysed), choose Upload and
upload a 12-megapixel JPEG of its own (4000x3000, different for every student, so no cache is shared), open
Compare and compute the default maps, open Robustness > Attack and run the default attack. Steps:
``open``, ``upload``, ``compare``, ``attack``; a step's latency runs from the click to the end of the script
run, with the page's images fetched.

* ``--cycles K``: K students one after another (after warm-up students that load the models): the server's
  CPU-seconds per step and per cycle, from /proc (user + system of every process of each replica), which,
  unlike wall time, hardly depends on what else runs on the machine.
* ``--rates R...``: students arrive evenly at R per minute for ``--duration`` seconds, each runs one cycle.
  Sustained means p95 of every step's latency <= ``--p95`` (10 s) with no error; the report gives the highest
  sustained rate.

Servers are started here: one `streamlit run` (``--replicas 1``, no proxy) or N behind nginx, each with
OMP_NUM_THREADS=``--threads`` (default 1). Everything is on 127.0.0.1 and stops by itself (``--timeout`` per
step, a bounded number of students). Results are merged into benchmarks/results/load_test.json and .md under a
label (``--label``, default from the options), with the machine's load average before and after each run.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "deploy")]
from common import busy_processes, checkpoint_folder, describe, tiny_checkpoints  # noqa: E402
from local import LocalCluster, wait_healthy  # noqa: E402
from st_client import StepError, StudentSession  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
STEPS = ("open", "upload", "compare", "attack")
PHOTO_SIZE = (4000, 3000)  # 12 MP, a phone photo


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def photos(n: int, seed: int = 0) -> list[bytes]:
    """``n`` distinct 12 MP JPEGs: example photos, resized, flipped and tinted differently."""
    examples = sorted((ROOT / "app" / "examples").glob("*.jpg"))
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = Image.open(examples[i % len(examples)]).convert("RGB").resize(PHOTO_SIZE, Image.BILINEAR)
        if (i // len(examples)) % 2:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, 3)
        buf = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


async def cycle(url: str, photo: bytes, name: str, timeout_s: float, on_step=None) -> dict:
    """One student's cycle; returns {"latency": {step: s}, "error": message or None, "replica": upstream}."""
    s = StudentSession(url, timeout_s=timeout_s)
    out: dict = {"latency": {}, "error": None, "replica": None}

    async def step(label, *actions):
        t = time.perf_counter()
        if on_step:
            on_step(label, "start")
        for action, *args in actions:
            await action(*args)
        out["latency"][label] = round(time.perf_counter() - t, 3)
        if on_step:
            on_step(label, "end")

    try:
        await step("open", (s.open,))
        await step("upload", (s.set, "source", "Upload"), (s.upload, "upload", name, photo))
        if f"**{name}**" not in s.page.text():
            raise StepError(f"the page does not show the uploaded {name}")
        await step("compare", (s.set, "view", "Compare"), (s.click, "Compute maps"))
        if "maps ready" not in s.page.text():
            raise StepError("the Compare tab did not finish its maps")
        await step("attack", (s.set, "view", "Robustness"), (s.set, "rob_view", "Attack"), (s.click, "Run attack"))
        if "attack done" not in s.page.text():
            raise StepError("the attack did not finish")
    except Exception as exc:  # a refused connection, a timeout or an error on the page
        out["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        out["replica"] = s.upstream
        try:
            await s.close()
        except Exception:
            pass
    return out


def client_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def server_cpu(cluster: LocalCluster) -> float:
    return sum(cluster.cpu_s().values())


async def cost_run(cluster: LocalCluster, cycles: int, timeout_s: float) -> dict:
    """Students one at a time: server CPU-seconds per step (first student = warm-up, not counted)."""
    pics = photos(cycles + 1, seed=1)
    per_step: dict[str, list[float]] = {s: [] for s in STEPS}
    totals, walls, errors = [], [], []
    marks: dict = {}

    def on_step(label, when):
        marks[(label, when)] = server_cpu(cluster)

    client0 = client_cpu_s()
    for i in range(cycles + 1):
        cpu0, t0 = server_cpu(cluster), time.perf_counter()
        r = await cycle(cluster.url, pics[i], f"student{i:03d}.jpg", timeout_s, on_step)
        if r["error"]:
            errors.append(r["error"])
        if i == 0:
            client0 = client_cpu_s()
            continue
        totals.append(server_cpu(cluster) - cpu0)
        walls.append(time.perf_counter() - t0)
        for s in STEPS:
            if (s, "end") in marks:
                per_step[s].append(marks[(s, "end")] - marks[(s, "start")])
        marks.clear()
    return {
        "cycles": cycles,
        "server_cpu_s_per_cycle": round(float(np.median(totals)), 2) if totals else None,
        "server_cpu_s_per_cycle_all": [round(x, 2) for x in totals],
        "server_cpu_s_per_step": {s: round(float(np.median(v)), 2) for s, v in per_step.items() if v},
        "client_cpu_s_per_cycle": round((client_cpu_s() - client0) / max(1, len(totals)), 2),
        "wall_s_per_cycle": round(float(np.median(walls)), 2) if walls else None,
        "errors": errors,
    }


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    v = np.asarray(values)
    return {
        "n": int(v.size),
        **{f"p{q}": round(float(np.percentile(v, q)), 2) for q in (50, 95)},
        "max": round(float(v.max()), 2),
    }


async def rate_run(cluster: LocalCluster, rate: float, duration: float, timeout_s: float, seed: int) -> dict:
    """Students arriving evenly at ``rate`` per minute for ``duration`` seconds, one cycle each."""
    n = max(1, int(round(rate * duration / 60)))
    pics = photos(n, seed=seed)
    cpu0, client0, t0 = server_cpu(cluster), client_cpu_s(), time.perf_counter()
    peak_rss = 0.0

    async def student(i):
        await asyncio.sleep(i * 60 / rate)
        return await cycle(cluster.url, pics[i], f"r{int(rate)}-student{i:03d}.jpg", timeout_s)

    async def sample_rss():
        nonlocal peak_rss
        while True:
            peak_rss = max(peak_rss, cluster.rss_mb())
            await asyncio.sleep(1)

    sampler = asyncio.create_task(sample_rss())
    results = await asyncio.gather(*(student(i) for i in range(n)))
    sampler.cancel()
    wall = time.perf_counter() - t0
    cpu = server_cpu(cluster) - cpu0
    latencies = {s: [r["latency"][s] for r in results if s in r["latency"]] for s in STEPS}
    every = [x for v in latencies.values() for x in v]
    errors = [r["error"] for r in results if r["error"]]
    done = sum(1 for r in results if not r["error"])
    p95 = float(np.percentile(every, 95)) if every else float("inf")
    replicas: dict[str, int] = {}
    for r in results:
        replicas[str(r["replica"])] = replicas.get(str(r["replica"]), 0) + 1
    return {
        "rate_per_min": rate,
        "students": n,
        "completed": done,
        "wall_s": round(wall, 1),
        "latency": {s: percentiles(v) for s, v in latencies.items()},
        "p95_all_steps_s": round(p95, 2),
        "server_cpu_s": round(cpu, 1),
        "server_cpu_s_per_cycle": round(cpu / max(1, done), 2),
        "server_cores_busy": round(cpu / wall, 2),
        "client_cpu_s_per_cycle": round((client_cpu_s() - client0) / max(1, n), 2),
        "peak_rss_mb": round(peak_rss),
        "students_per_replica": replicas,
        "errors": errors,
    }


async def failover_run(cluster: LocalCluster, students: int, rounds: int, timeout_s: float, side: int = 1600) -> dict:
    """Kill one replica while students work, and see what each of them gets.

    Every student opens the page, uploads a photo of its own, opens Robustness > Attack (the view is now in the
    URL) and runs the attack; then ``rounds`` times it runs the attack again. Once every student has finished its
    first attack, the replica serving the first student is killed (SIGKILL: no goodbye). A student whose
    connection breaks does what a reloaded browser tab does: it opens the same URL again with the same cookies
    (nginx moves it to a healthy replica) and carries on. Returned per student: its replica, whether it was on
    the killed one, its errors, and after a reconnect what the page restored from the URL and what was lost."""
    pics = photos(3 * students, seed=7)
    sessions: list[StudentSession] = []
    first_done = asyncio.Event()
    killed_done = asyncio.Event()  # every round runs after the kill, so a fast attack cannot finish before it
    ready = 0
    killed: dict = {}

    async def setup(i):
        s = StudentSession(cluster.url, timeout_s=timeout_s)
        await s.open()
        await s.set("source", "Upload")
        await s.upload("upload", f"student{i:02d}.jpg", pics[i])
        await s.set("view", "Robustness")
        await s.set("rob_view", "Attack")
        await s.click("Run attack")
        return s

    async def student(i):
        nonlocal ready
        rec = {"student": i, "errors": [], "reconnected": False}
        s = sessions[i]
        rec["replica"] = s.upstream
        ready += 1
        if ready == students:
            first_done.set()
        await first_done.wait()
        await killed_done.wait()
        for _ in range(rounds):
            try:
                await s.click("Run attack")
            except Exception as exc:
                rec["errors"].append(f"{type(exc).__name__}: {str(exc)[:200]}")
                if rec["reconnected"]:
                    break
                # A reloaded tab: the same address (query string) and cookies, a new session.
                again = StudentSession(cluster.url, query_string=s.query_string, timeout_s=timeout_s)
                again.cookies = dict(s.cookies)
                try:
                    page = await again.open()
                except Exception as exc2:
                    rec["errors"].append(f"reconnect failed: {type(exc2).__name__}: {str(exc2)[:200]}")
                    break
                rec["reconnected"] = True
                rec["replica_after"] = again.upstream
                rec["url_after"] = again.query_string
                rec["restored_view"] = "button:Run attack" in page.widgets  # Robustness > Attack is open
                rec["restored_source"] = "No file yet" in page.text()  # Upload chosen, the file itself gone
                rec["kept_upload"] = f"student{i:02d}.jpg" in page.text()
                s = again
        try:
            await s.close()
        except Exception:
            pass
        return rec

    async def killer():
        await first_done.wait()
        await asyncio.sleep(0.5)
        victim = cluster.by_upstream(sessions[0].upstream)
        killed["replica"] = victim.address
        await asyncio.to_thread(victim.kill)  # returns once the process is gone
        killed["victim"] = victim
        killed_done.set()

    # Open sessions until each replica has at least one student (the route cookie is random; bounded).
    while len(sessions) < students or (
        len({s.upstream for s in sessions}) < len(cluster.replicas) and len(sessions) < 3 * students
    ):
        sessions.append(await setup(len(sessions)))
    students = len(sessions)
    t0 = time.perf_counter()
    records, _ = await asyncio.gather(asyncio.gather(*(student(i) for i in range(students))), killer())
    for r in records:
        r["on_killed_replica"] = r["replica"] == killed["replica"]
    others = [r for r in records if not r["on_killed_replica"]]
    moved = [r for r in records if r["on_killed_replica"]]
    return {
        "students": students,
        "rounds": rounds,
        "wall_s": round(time.perf_counter() - t0, 1),
        "killed": killed["replica"],
        "students_per_replica": {
            k: sum(1 for r in records if r["replica"] == k) for k in {r["replica"] for r in records}
        },
        "errors_on_other_replicas": sum(len(r["errors"]) for r in others),
        "killed_replica_students": len(moved),
        # a reopened page means a healthy replica served it: another one, or (compose) the killed one restarted
        "reconnected_to_healthy": sum(1 for r in moved if r.get("replica_after") is not None),
        "moved_to_other_replica": sum(1 for r in moved if r.get("replica_after") not in (None, killed["replica"])),
        "view_restored_from_url": sum(1 for r in moved if r.get("restored_view")),
        "upload_kept": sum(1 for r in moved if r.get("kept_upload")),
        # compose restarts a crashed container (restart: unless-stopped); local processes stay down
        "killed_replica_restarted": await _restarted(killed["victim"]),
        "records": records,
    }


async def _restarted(replica, wait_s: float = 120) -> bool | None:
    """Whether a killed replica came back healthy within ``wait_s`` (None where nothing restarts it)."""
    if not hasattr(replica, "restarts"):
        return None
    deadline = time.perf_counter() + wait_s
    while time.perf_counter() < deadline:
        if replica.restarts() > 0 and replica.alive():
            try:
                await asyncio.to_thread(wait_healthy, replica.url, 5, None, None)
                return True
            except RuntimeError:
                pass
        await asyncio.sleep(1)
    return False


def write_report(runs: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "load_test.json").write_text(json.dumps(runs, indent=2) + "\n")
    lines = [
        "# Load test: server cost per student and students per minute",
        "",
        "A student's cycle: open the page, upload a 12 MP JPEG of its own, compute the Compare tab's default maps, "
        "run the default attack. Driven by `benchmarks/st_client.py`, a light client speaking Streamlit's "
        "WebSocket protocol (no browser). Server CPU is user + system time of every process of the replicas "
        "(and nginx), from /proc. **The machine was shared** (a training run and other engineers' work): the "
        "load average before and after each run is given; CPU-seconds are far less sensitive to that than wall "
        "time, latencies are not.",
        "",
    ]
    for run in runs:
        lines += [f"## {run['label']}", "", f"`{run['command']}`", ""]
        lines.append(
            f"- {run['date']} UTC, commit `{run['commit'][:12]}`; {run['machine']}; {run['checkpoints']}; "
            f"{run['replicas']} replica(s){' behind nginx' if run['proxy'] else ''}, OMP_NUM_THREADS={run['threads']}"
            + (
                "; **Docker**: compose.yaml's app containers and nginx container (CPU from their cgroups)"
                if run.get("compose")
                else ""
            )
        )
        lines.append(f"- load average before / after: {run['load_before']} / {run['load_after']}")
        lines.append(f"- other busy processes: {'; '.join(run['busy']) or 'none seen'}")
        cost = run.get("cost")
        if cost:
            steps = ", ".join(f"{k} {v}" for k, v in cost["server_cpu_s_per_step"].items())
            lines += [
                "",
                f"**Cost** ({cost['cycles']} students one at a time, median): **{cost['server_cpu_s_per_cycle']} "
                f"server CPU-s per cycle** ({steps}); all cycles: {cost['server_cpu_s_per_cycle_all']}; the client "
                f"used {cost['client_cpu_s_per_cycle']} CPU-s per cycle; wall {cost['wall_s_per_cycle']} s per "
                f"cycle; errors: {len(cost['errors'])}.",
            ]
        if run.get("rates"):
            lines += [
                "",
                "| students/min | students | done | p95 all steps s | p95 open / upload / compare / attack s | "
                "server CPU-s per cycle | server cores busy | client CPU-s per cycle | peak RSS MB | errors |",
                "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
            ]
            for r in run["rates"]:
                p = " / ".join(str(r["latency"][s].get("p95", "–")) for s in STEPS)
                lines.append(
                    f"| {r['rate_per_min']:g} | {r['students']} | {r['completed']} | {r['p95_all_steps_s']} | {p} | "
                    f"{r['server_cpu_s_per_cycle']} | {r['server_cores_busy']} | {r['client_cpu_s_per_cycle']} | "
                    f"{r['peak_rss_mb']} | {len(r['errors'])} |"
                )
            best = run.get("sustained_per_min")
            best = f"**{best:g} students/min**" if best is not None else "**none of the rates tried**"
            lines += ["", f"Highest rate sustained at p95 <= {run['p95_limit']} s without errors: {best}."]
            errs = [e for r in run["rates"] for e in r["errors"]][:5]
            lines += [f"- error: {e}" for e in errs]
        f = run.get("failover")
        if f:
            lines += [
                "",
                f"**Failover**: {f['students']} students on {len(f['students_per_replica'])} replicas "
                f"({f['students_per_replica']}), each with an uploaded photo and Robustness > Attack open, running the "
                f"attack {f['rounds']} times; replica {f['killed']} was killed (SIGKILL) after their first attack.",
                f"- students on the other replicas: {f['errors_on_other_replicas']} errors",
                f"- students on the killed replica: {f['killed_replica_students']}; reopened the same URL with the same "
                f"cookies and reached a healthy replica: {f['reconnected_to_healthy']} (another replica: "
                f"{f.get('moved_to_other_replica', f['reconnected_to_healthy'])}); view (tab, sub-tab, photo source) "
                f"restored from the URL: {f['view_restored_from_url']}; uploaded photo kept: {f['upload_kept']} "
                "(lost: the photo, shown again only after a new upload, and every result computed for it, which the "
                "new replica computes again; widget values that are not in the URL)",
            ]
            if f.get("killed_replica_restarted") is not None:
                back = "yes" if f["killed_replica_restarted"] else "no (not within 2 minutes)"
                lines.append(f"- the killed container restarted by its restart policy and healthy again: {back}")
        lines.append("")
    (out / "load_test.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cycles", type=int, default=0, help="students one at a time, for the cost (default 0)")
    ap.add_argument("--rates", type=float, nargs="*", default=[], help="arrival rates, students per minute")
    ap.add_argument("--duration", type=float, default=120, help="seconds of arrivals per rate (default 120)")
    ap.add_argument("--replicas", type=int, default=1, help="app processes; more than 1 puts nginx in front")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per replica (default 1; 0: torch's own)")
    ap.add_argument("--p95", type=float, default=10.0, help="latency limit for 'sustained' (default 10 s)")
    ap.add_argument("--timeout", type=float, default=120, help="seconds one step may take (default 120)")
    ap.add_argument("--checkpoints", help="checkpoint folder (default: checkpoints/)")
    ap.add_argument("--tiny", action="store_true", help="tiny random checkpoints (no trained ones needed)")
    ap.add_argument(
        "--failover",
        type=int,
        metavar="STUDENTS",
        default=0,
        help="kill a replica while STUDENTS work (needs --replicas 2 or more)",
    )
    ap.add_argument(
        "--compose",
        action="store_true",
        help="run compose.yaml's containers (app replicas behind the nginx container) instead of local processes; "
        "needs Docker and the image built first (docker build -t mgnet-explorer:cpu .)",
    )
    ap.add_argument("--compose-port", type=int, default=8090, help="nginx's host port for --compose (default 8090)")
    ap.add_argument(
        "--compose-tag",
        default="cpu",
        help="image tag for --compose, i.e. MGNET_TORCH_INDEX (default cpu: mgnet-explorer:cpu)",
    )
    ap.add_argument("--label", help="name of this run in the results (default from the options)")
    ap.add_argument("--out", default=str(RESULTS), help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)
    if not args.cycles and not args.rates and not args.failover:
        ap.error("give --cycles, --rates and/or --failover")
    if args.failover and args.replicas < 2:
        ap.error("--failover needs --replicas 2 or more")
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="mgnet-load-"))
    if args.compose:
        if args.tiny or args.checkpoints or args.threads != 1:
            ap.error("--compose runs the image as compose.yaml sets it up: no --tiny, --checkpoints or --threads")
        ckpts, ckpt_text = None, f"the image's checkpoints (mgnet-explorer:{args.compose_tag})"
    elif args.tiny:
        ckpts, ckpt_text = tiny_checkpoints(work), "tiny random-weight checkpoints"
    else:
        ckpts = checkpoint_folder(args.checkpoints)
        if ckpts is None:
            return 2
        ckpt_text = "checkpoints " + ", ".join(sorted(p.name for p in ckpts.iterdir() if p.suffix == ".pt"))
    kind = "container(s) of compose.yaml" if args.compose else "replica(s)"
    label = args.label or f"{args.replicas} {kind}, {args.threads or 'default'} thread(s) each"
    run = {
        "label": label,
        "command": "python benchmarks/load_test.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": describe(),
        "checkpoints": ckpt_text,
        "replicas": args.replicas,
        "proxy": args.replicas > 1 or args.compose,
        "compose": args.compose,
        "threads": args.threads or "default",
        "p95_limit": args.p95,
        "load_before": load_average(),
        "busy": busy_processes(("load_test.py", "streamlit", "nginx")),
    }
    from mgnet.utils import git_commit

    run["commit"] = os.environ.get("MGNET_COMMIT") or git_commit()
    if args.compose:
        from compose_cluster import ComposeCluster

        cluster_cm = ComposeCluster(args.replicas, port=args.compose_port, image_tag=args.compose_tag)
    else:
        cluster_cm = LocalCluster(args.replicas, proxy=args.replicas > 1, checkpoints=ckpts, threads=args.threads)
    with cluster_cm as cluster:
        cluster.wait_ready()
        for replica in cluster.replicas:  # every replica loads its models before the clock starts
            asyncio.run(cycle(replica.url, photos(1, seed=99)[0], "warmup.jpg", args.timeout))
        if args.cycles:
            run["cost"] = asyncio.run(cost_run(cluster, args.cycles, args.timeout))
            print(json.dumps(run["cost"]), flush=True)
        run["rates"] = []
        for i, rate in enumerate(args.rates):
            r = rate_run(cluster, rate, args.duration, args.timeout, seed=100 + i)
            r = asyncio.run(r)
            print(json.dumps({k: v for k, v in r.items() if k != "errors"}), f"errors: {len(r['errors'])}", flush=True)
            run["rates"].append(r)
        run["alive_after"] = all(rep.alive() for rep in cluster.replicas)
        if args.failover:
            run["failover"] = asyncio.run(failover_run(cluster, args.failover, 3, args.timeout))
            f = run["failover"]
            print(json.dumps({k: v for k, v in f.items() if k != "records"}), flush=True)
    ok = [r["rate_per_min"] for r in run["rates"] if r["p95_all_steps_s"] <= args.p95 and not r["errors"]]
    run["sustained_per_min"] = max(ok) if ok else None
    run["load_after"] = load_average()
    run["busy"] = sorted(set(run["busy"]) | set(busy_processes(("load_test.py", "streamlit", "nginx"))))
    out = Path(args.out)
    previous = json.loads((out / "load_test.json").read_text()) if (out / "load_test.json").is_file() else []
    runs = [r for r in previous if isinstance(r, dict) and r.get("label") not in (label, None)] + [run]
    write_report(runs, out)
    errors = len(run.get("cost", {}).get("errors", [])) + sum(len(r["errors"]) for r in run["rates"])
    if "failover" in run:
        f = run["failover"]
        moved = f["killed_replica_students"]
        errors += (
            f["errors_on_other_replicas"]
            + (moved - f["reconnected_to_healthy"])
            + (moved - f["view_restored_from_url"])
        )
    print(f"wrote {out / 'load_test.md'} ({label}); errors: {errors}")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
