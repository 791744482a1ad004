"""How much of a glimpse's time is reading the backbone's weights from memory (issue 13).

    python benchmarks/cold_weights.py [--repeats 40] [--threads 1 2]

Times the inference copy's ResNet-18 backbone (`mgnet.analysis.inference_model`: BatchNorm folded, packed
oneDNN convolutions, fused calls) at batch 1 on a 48 px glimpse and on the baseline's 128 px image, three ways:
- compute only: each fused convolution call timed on its own, repeated, so its weights (at most 9 MiB) stay
  in the last-level cache; the sum over the calls;
- repeated: the whole backbone called again and again, as a benchmark loop would;
- cold: a buffer of 256 MB, or twice the last-level cache if that is larger, read before each timed call. It
  evicts the weights. A glimpse inside MGNet finds them so when they do not fit that cache: each glimpse
  streams all 42.6 MiB, more than the 32 MiB last-level cache of the CPU first measured. Where they fit (a
  300 MiB cache on another CPU), a glimpse finds them as "repeated" does.
Cold minus compute-only is the time spent waiting for weights, which no change to the computation removes.
Writes benchmarks/results/cold_weights.md and .json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import DEFAULT_CKPTS, busy_processes, describe  # noqa: E402
from mgnet import load_checkpoint  # noqa: E402
from mgnet.analysis import inference_model  # noqa: E402

SIZES = {"glimpse (48 px)": 48, "baseline image (128 px)": 128}


def _median_ms(call, repeats: int, evict: torch.Tensor | None = None) -> float:
    """Median ms of ``call()`` over ``repeats`` timed calls after 3 untimed ones; ``evict`` is read before each."""
    times = []
    with torch.inference_mode():
        for i in range(repeats + 3):
            if evict is not None:
                evict.sum()
            start = time.perf_counter()
            call()
            if i >= 3:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def fused_calls(backbone, x: torch.Tensor) -> list:
    """The fused backbone's calls (``FusedResNet.forward``) as closures over their actual inputs."""
    calls = []
    with torch.inference_mode():
        calls.append(lambda: backbone.maxpool(backbone.conv1._run(x, "relu")))
        h = calls[-1]()
        for conv1, conv2, down in backbone.plan:
            mid = conv1._run(h, "relu")
            skip = h if down is None else down._run(h)
            calls.append(lambda conv1=conv1, h=h: conv1._run(h, "relu"))
            if down is not None:
                calls.append(lambda down=down, h=h: down._run(h))
            calls.append(lambda conv2=conv2, mid=mid, skip=skip: conv2.run_add_relu(mid, skip))
            h = conv2.run_add_relu(mid, skip)
    return calls


def eviction_floats() -> int:
    """Float32s in the eviction buffer: 256 MB, or twice the last-level cache where that is larger."""
    return max(64 * 2**20, 2 * last_level_cache_bytes() // 4)


def last_level_cache_bytes() -> int:
    """The largest CPU cache Linux reports (sysfs), in bytes; 0 where it reports none."""
    sizes = [0]
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip().upper()
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * unit)
    return max(sizes)


def measure(repeats: int, threads_list) -> dict:
    mgnet = inference_model(load_checkpoint(ROOT / "checkpoints" / DEFAULT_CKPTS[0]))
    backbone = mgnet.backbone
    if not hasattr(backbone, "plan"):
        raise SystemExit("the inference copy's backbone is not fused here (no oneDNN?): nothing to measure")
    weights_mb = sum(p.numel() * p.element_size() for p in backbone.parameters()) / 2**20
    evict = torch.ones(eviction_floats())
    rows, bandwidth = [], {}
    for threads in threads_list:
        torch.set_num_threads(threads)
        bandwidth[threads] = round(evict.numel() * 4 / 1e9 / (_median_ms(evict.sum, 9) / 1000), 1)
        for label, size in SIZES.items():
            x = torch.rand(1, 3, size, size).contiguous(memory_format=torch.channels_last)
            calls = fused_calls(backbone, x)
            whole = partial(backbone, x)
            # interleaved rounds, so that drift hits all three alike
            floor, repeated, cold = [], [], []
            for _ in range(4):
                floor.append(sum(_median_ms(call, repeats // 4) for call in calls))
                repeated.append(_median_ms(whole, repeats // 4))
                cold.append(_median_ms(whole, repeats // 4, evict))
            rows.append(
                {
                    "threads": threads,
                    "input": label,
                    "compute_ms": round(statistics.median(floor), 3),
                    "repeated_ms": round(statistics.median(repeated), 3),
                    "cold_ms": round(statistics.median(cold), 3),
                }
            )
    return {
        "weights_mib": round(weights_mb, 1),
        "evict_mb": round(evict.numel() * 4 / 1e6),
        "read_gb_per_s": bandwidth,
        "rows": rows,
    }


def render(result: dict, args, busy) -> str:
    lines = [
        "# Reading the backbone's weights: how much of a glimpse is memory (batch 1, fp32, inference copy)",
        "",
        f"`python benchmarks/cold_weights.py --repeats {args.repeats} --threads {' '.join(map(str, args.threads))}` "
        f"on {result['date']}: {result['machine']}.",
        "",
        f"The backbone holds {result['weights_mib']} MiB of weights. Compute only: each fused call timed alone and "
        "repeated (its weights stay in cache), summed. Repeated: the whole backbone called in a loop. Cold: a "
        f"{result.get('evict_mb', 268)} MB buffer (at least twice the last-level cache) read before each call, as "
        "each glimpse finds the weights inside MGNet where they do not fit that cache. Median ms.",
        "",
        "Reading that buffer from memory: "
        + ", ".join(f"{gbs} GB/s at {t} thread(s)" for t, gbs in result["read_gb_per_s"].items())
        + f" (so {result['weights_mib']} MiB take at least "
        + ", ".join(f"{result['weights_mib'] * 2**20 / 1e6 / gbs:.1f} ms" for gbs in result["read_gb_per_s"].values())
        + "). On a shared host this varies with the neighbours' traffic, and MGNet, which reads the weights once "
        "per glimpse, feels it more than the baseline.",
        "",
    ]
    if busy:
        lines += ["Other busy processes during the run (timings are upper bounds): " + "; ".join(busy), ""]
    lines += [
        "| threads | input | compute only | repeated | cold | waiting for weights (cold - compute) | share |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        wait = r["cold_ms"] - r["compute_ms"]
        lines.append(
            f"| {r['threads']} | {r['input']} | {r['compute_ms']} | {r['repeated_ms']} | {r['cold_ms']} "
            f"| {wait:.2f} | {wait / r['cold_ms']:.0%} |"
        )
    by = {(r["threads"], r["input"]): r for r in result["rows"]}
    glimpse, image = SIZES
    lines += ["", "A glimpse's backbone against the baseline's (the ratio issue 13 is about):", ""]
    for threads in args.threads:
        g, b = by.get((threads, glimpse)), by.get((threads, image))
        if g and b:
            lines.append(
                f"- {threads} thread(s): compute only {g['compute_ms'] / b['compute_ms']:.2f}x, "
                f"cold {g['cold_ms'] / b['cold_ms']:.2f}x (its FLOPs: 0.17x)."
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    busy = busy_processes(ignore=("cold_weights.py",))
    result = measure(args.repeats, args.threads)
    result["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    result["machine"] = describe()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cold_weights.json").write_text(json.dumps(result, indent=1) + "\n")
    text = render(result, args, busy)
    (out / "cold_weights.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
