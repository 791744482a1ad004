"""Memory soak: 200 uploads and analyses in one long session of the app, sampling resident memory.

    python benchmarks/memory_soak.py                   # the trained checkpoints in checkpoints/
    python benchmarks/memory_soak.py --tiny            # tiny random checkpoints (no trained ones needed)

Runs the real app (app/main.py) with Streamlit's AppTest in this process, so every upload goes through the
same code as on the server: decoding (mgnet.data.load_image), the result caches (st.cache_data with
max_entries and ttl), MGNet's analysis and the glimpse view's figures. Every upload is a different photo
(``--side`` pixels wide, so the decoded-photo cache holds large arrays), and every ``--bad-every``-th upload
is a broken file, so the error path runs too. After each upload the process's resident set size (VmRSS) is
read from /proc/self/status.

Memory is bounded when RSS reaches a plateau: as caches fill and evict, RSS moves in a sawtooth inside a
band, and the band of the second half of the run must sit where the first half's did (median and peak within
5 % or 50 MB). Writes benchmarks/results/memory_soak.md, memory_soak.json and memory_soak.png (``--name``
changes the file names, e.g. for a longer run).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import busy_processes, checkpoint_folder, describe, tiny_checkpoints  # noqa: E402  (benchmarks/common.py)

RESULTS = ROOT / "benchmarks" / "results"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def photo_bytes(i: int, side: int, examples: list[Path]) -> bytes:
    """A distinct JPEG for upload ``i``: an example photo, cropped, resized and tinted differently."""
    rng = np.random.default_rng(i)
    img = Image.open(examples[i % len(examples)]).convert("RGB")
    w, h = img.size
    img = img.crop((int(rng.integers(0, w // 6)), int(rng.integers(0, h // 6)), w, h)).resize((side, side * 3 // 4))
    arr = np.clip(np.asarray(img).astype(np.int16) + rng.integers(-16, 17, 3), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def bad_bytes(i: int) -> tuple[str, bytes]:
    kinds = [
        ("notes.jpg", b"plain text, not a photo\n" * 50),
        ("cut.jpg", None),
        ("random.png", os.urandom(5000)),
        ("drawing.png", b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
    ]
    name, data = kinds[i % len(kinds)]
    if data is None:
        buf = io.BytesIO()
        Image.new("RGB", (300, 200), (i % 255, 40, 90)).save(buf, "JPEG")
        data = buf.getvalue()[:400]
    return f"bad-{i:03d}-{name}", data


def plateau(rss: list[float]) -> dict:
    """Does resident memory level off? The caches fill and are evicted, so RSS moves in a sawtooth inside a
    band; what matters is whether the band keeps rising. Compared: the peak and the median of the first half
    of the run with those of the second half, and the least-squares slope over the second half."""
    v = np.asarray(rss, dtype=float)
    n = len(v)
    half = max(1, n // 2)
    a, b = v[:half], v[half:] if n > half else v[-1:]
    slope = float(np.polyfit(np.arange(half, n), b, 1)[0]) * 100 if len(b) >= 2 else float("nan")
    return {
        "first_half_median_mb": round(float(np.median(a)), 1),
        "second_half_median_mb": round(float(np.median(b)), 1),
        "first_half_peak_mb": round(float(a.max()), 1),
        "second_half_peak_mb": round(float(b.max()), 1),
        "median_growth_mb": round(float(np.median(b) - np.median(a)), 1),
        "peak_growth_mb": round(float(b.max() - a.max()), 1),
        "slope_second_half_mb_per_100": round(slope, 1),
        "peak_mb": round(float(v.max()), 1),
        "band_second_half_mb": [round(float(b.min()), 1), round(float(b.max()), 1)],
    }


def plot(result: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["samples"]
    x = [p["upload"] for p in s]
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=150)
    ax.plot(x, [p["rss_mb"] for p in s], lw=1.5, label="resident memory (RSS)")
    bad = [p for p in s if p["bad"]]
    ax.scatter(
        [p["upload"] for p in bad],
        [p["rss_mb"] for p in bad],
        s=10,
        c="tab:red",
        zorder=3,
        label="broken upload (error path)",
    )
    ax.axhline(result["rss_before_mb"], color="grey", lw=0.8, ls=":", label="after opening the page")
    ax.set_xlabel("upload number (each: decode + MGNet analysis + glimpse view)")
    ax.set_ylabel("RSS (MB)")
    ax.set_title(f"Memory over {len(s)} uploads in one session\n{result['checkpoints_short']}", fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--uploads", type=int, default=200, help="number of uploads (default 200)")
    ap.add_argument("--side", type=int, default=1600, help="width of the uploaded photos in pixels (default 1600)")
    ap.add_argument("--bad-every", type=int, default=10, help="every N-th upload is a broken file (0: none)")
    ap.add_argument("--tiny", action="store_true", help="tiny random checkpoints in a temporary folder")
    ap.add_argument("--checkpoints", help="checkpoint folder (default checkpoints/)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--name", default="memory_soak", help="file name stem of the results (default memory_soak)")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="mgnet-soak-"))
    if args.tiny:
        ckpts = tiny_checkpoints(work)
        short = "tiny random checkpoints, 64 px"
    else:
        ckpts = checkpoint_folder(args.checkpoints)
        if ckpts is None:
            return 2
        short = "trained checkpoints"
    os.environ["MGNET_CHECKPOINTS"] = str(ckpts)
    os.environ.setdefault("MGNET_DEVICE", "cpu")
    warnings.filterwarnings("ignore")
    from streamlit.testing.v1 import AppTest

    examples = sorted((ROOT / "app" / "examples").glob("*.jpg"))
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=900)
    start = time.time()
    at.run()
    if at.exception:
        print(f"error: the app failed to open: {at.exception}", file=sys.stderr)
        return 1
    at.radio(key="source").set_value("Upload").run()
    rss_before = rss_mb()
    samples, problems = [], []
    for i in range(1, args.uploads + 1):
        bad = bool(args.bad_every) and i % args.bad_every == 0
        if bad:
            name, data = bad_bytes(i)
        else:
            name, data = f"photo-{i:03d}.jpg", photo_bytes(i, args.side, examples)
        t = time.perf_counter()
        try:
            at.file_uploader(key="upload").set_value((name, data, "image/jpeg")).run()
        except Exception as exc:  # the page lost its uploader (the app failed to run): record and stop
            problems.append(f"upload {i}: {type(exc).__name__}: {exc}")
            break
        seconds = time.perf_counter() - t
        page = "\n".join(m.value for m in at.markdown)
        errs = [e.value for e in at.error]
        if at.exception:
            problems.append(f"upload {i}: exception {at.exception}")
        elif bad and not any(name in e for e in errs):
            problems.append(f"upload {i}: no message for the broken file {name}")
        elif not bad and (f"**{name}**" not in page or errs):
            problems.append(f"upload {i}: {name} was not analysed ({errs[:1]})")
        samples.append({"upload": i, "rss_mb": round(rss_mb(), 1), "seconds": round(seconds, 3), "bad": bad})
        if i % 20 == 0:
            print(f"{i:4d} uploads  RSS {samples[-1]['rss_mb']:.0f} MB  ({seconds:.2f} s for the last)", flush=True)
    rss = [s["rss_mb"] for s in samples]
    stats = plateau(rss)
    # Bounded: the second half's band sits where the first half's did (median and peak within 5 % or 50 MB).
    tol = max(50.0, 0.05 * stats["first_half_median_mb"])
    bounded = stats["median_growth_mb"] < tol and stats["peak_growth_mb"] < tol
    from app import services
    from mgnet.data import MAX_PIXELS

    if not args.tiny:
        sizes = sorted({f"{m.model.backbone_name} {m.kind} {m.model.image_size} px" for m in services.catalog().models})
        short = "trained: " + ", ".join(sizes)
    from mgnet.utils import git_commit

    busy = busy_processes(("memory_soak",))
    cmd = (
        "python benchmarks/memory_soak.py"
        + (" --tiny" if args.tiny else "")
        + (f" --uploads {args.uploads}" if args.uploads != 200 else "")
        + (f" --side {args.side}" if args.side != 1600 else "")
        + (f" --name {args.name}" if args.name != "memory_soak" else "")
    )
    result = {
        "command": cmd,
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "commit": os.environ.get("MGNET_COMMIT") or git_commit(),
        "machine": describe(),
        "checkpoints": sorted(p.name for p in ckpts.iterdir() if p.suffix in (".pt", ".ckpt", ".pth")),
        "checkpoints_short": short,
        "uploads": args.uploads,
        "photo": f"{args.side}x{args.side * 3 // 4} JPEG",
        "bad_every": args.bad_every,
        "caches": {
            "decoded photos (max_entries)": services.IMAGE_ENTRIES,
            "results (max_entries)": services.RESULT_ENTRIES,
            "ttl_s": services.RESULT_TTL,
            "max_pixels": MAX_PIXELS,
        },
        "rss_before_mb": round(rss_before, 1),
        "plateau": stats,
        "bounded": bool(bounded),
        "seconds_total": round(time.time() - start, 1),
        "seconds_per_upload_median": round(float(np.median([s["seconds"] for s in samples])), 3),
        "problems": problems,
        "busy_during": busy,
        "samples": samples,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / f"{args.name}.png")
    at_marks = {k: rss[k - 1] for k in (1, 25, 50, 100, 150, 200) if k <= len(rss)}
    lines = [
        "# Memory soak: one long session, many uploads",
        "",
        f"Reproduce: `{cmd}`",
        "",
        f"- Date (UTC): {result['date']}; commit `{result['commit'][:12]}`; {result['machine']}",
        f"- Checkpoints: {', '.join(result['checkpoints'])} ({short})",
        f"- {args.uploads} uploads through the real app (AppTest, in one process): each a different "
        f"{result['photo']} photo, decoded, analysed by MGNet and drawn in the glimpse view; every "
        f"{args.bad_every}th upload is a broken file (error message path).",
        f"- Cache bounds: decoded photos max_entries={services.IMAGE_ENTRIES}, results "
        f"max_entries={services.RESULT_ENTRIES}, ttl={services.RESULT_TTL} s.",
        f"- Other busy processes: {', '.join(busy) or 'none'}",
        "",
        "| after upload | " + " | ".join(str(k) for k in at_marks) + " |",
        "|---|" + "---:|" * len(at_marks),
        "| RSS (MB) | " + " | ".join(f"{v:.0f}" for v in at_marks.values()) + " |",
        "",
        f"- RSS after opening the page: {rss_before:.0f} MB; peak {stats['peak_mb']:.0f} MB.",
        f"- Uploads 1-{len(rss) // 2}: median {stats['first_half_median_mb']:.0f} MB, peak "
        f"{stats['first_half_peak_mb']:.0f} MB. Uploads {len(rss) // 2 + 1}-{len(rss)}: median "
        f"{stats['second_half_median_mb']:.0f} MB ({stats['median_growth_mb']:+.0f}), peak "
        f"{stats['second_half_peak_mb']:.0f} MB ({stats['peak_growth_mb']:+.0f}); least-squares slope over the second "
        f"half {stats['slope_second_half_mb_per_100']:+.1f} MB per 100 uploads. RSS moves in a sawtooth as the "
        "caches fill and evict and the allocator returns memory; the criterion is that the band stops rising "
        "(median and peak of the second half within 5 % or 50 MB of the first half's).",
        f"- **{'Plateau: memory is bounded' if bounded else 'NO plateau: memory kept growing'}.** "
        f"Problems: {len(problems)}.",
        f"- Median time per upload {result['seconds_per_upload_median']} s; total {result['seconds_total']} s.",
        "",
        f"![RSS over uploads]({args.name}.png)",
    ]
    for p in problems[:10]:
        lines.append(f"- {p}")
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / (args.name + '.md')}: {'bounded' if bounded else 'NOT bounded'}, problems: {len(problems)}")
    return 0 if bounded and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
