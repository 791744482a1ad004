"""Single-image latency of the default MGNet (per glimpse and in total) and its baseline.

    python benchmarks/latency.py [--repeats 30] [--threads 2]

Measures on the CPU, and on the GPU when one is present, in one run so the ratios are comparable.
Writes benchmarks/results/latency.md and latency.json.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mgnet import load_checkpoint  # noqa: E402
from mgnet.utils import hardware  # noqa: E402


def time_call(fn, repeats, device):
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": round(statistics.median(times), 2), "p90_ms": round(sorted(times)[int(0.9 * len(times))], 2)}


def measure(device, repeats):
    mg = load_checkpoint(ROOT / "checkpoints/mgnet-resnet18-imagenette.pt", device)
    base = load_checkpoint(ROOT / "checkpoints/baseline-resnet18-imagenette.pt", device)
    x = torch.rand(1, 3, mg.image_size, mg.image_size, device=device)
    out = {}
    with torch.no_grad():
        out["baseline"] = time_call(lambda: base(x), repeats, device)
        for t in range(1, mg.n_glimpses + 1):
            out[f"mgnet_{t}_glimpses"] = time_call(lambda t=t: mg(x, n_glimpses=t), repeats, device)
    full = out["baseline"]["median_ms"]
    for v in out.values():
        v["vs_baseline"] = round(v["median_ms"] / full, 3)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results = {"hardware": hardware(), "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
               "command": "python benchmarks/latency.py " + " ".join(sys.argv[1:]),
               "devices": {d.type: measure(d, args.repeats) for d in devices}}
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.json").write_text(json.dumps(results, indent=2))
    lines = ["# Single-image latency (batch 1, 128 px, fp32, no gradients)", "",
             f"`{results['command']}` on {results['date']}: {results['hardware']}, {results['threads']} threads.",
             "Median over the repeats; `vs baseline` is the ratio to one baseline pass measured in the same run.", ""]
    for dev, rows in results["devices"].items():
        lines += [f"## {dev.upper()}", "", "| model | median ms | p90 ms | vs baseline |", "|---|---|---|---|"]
        for name, r in rows.items():
            lines.append(f"| {name.replace('_', ' ')} | {r['median_ms']} | {r['p90_ms']} | {r['vs_baseline']} |")
        lines.append("")
    (out / "latency.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
