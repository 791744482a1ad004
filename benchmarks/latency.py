"""Single-image latency of the default MGNet (after 1..T glimpses) and its baseline, and what each lever gives.

    python benchmarks/latency.py [--repeats 30] [--threads 2] [--lever-threads 1 2]

Batch 1, 128 px, fp32. Every model and variant is timed in the same run, interleaved (one call of each
per round, in a fixed order, `--repeats` rounds after a warm-up), so ratios compare like with like even
on a busy machine. Reported: the median per call.

Variants (the levers of issue 13), each cumulative over the one before:
  before          the model as loaded before this change (contiguous weights), under torch.no_grad
  channels_last   weights in channels_last (what load_checkpoint now returns)
  bn_folded       BatchNorm folded into the convolutions, on a copy
  inference_mode  the same copy under torch.inference_mode
  onednn_packed   its convolutions also pre-packed for oneDNN (mgnet.model.PackedConv2d; CPU only)
  backbone_fused  the backbone also run as a flat list of oneDNN calls, each convolution with its ReLU
                  and residual sum (mgnet.model.FusedResNet; CPU only)
  fusion_folded   the fusion's four attention projections also folded into two (mgnet.model.FoldedFusion):
                  what mgnet.analysis runs (mgnet.model.prepare_for_inference + torch.inference_mode)
The headline table is the last variant at `--threads`; the lever table repeats the variants at each
of `--lever-threads`. Writes benchmarks/results/latency.md and latency.json.
"""

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import busy_processes  # noqa: E402
from mgnet import load_checkpoint  # noqa: E402
from mgnet.model import fold_batchnorm, fuse_backbone, pack_convolutions, prepare_for_inference  # noqa: E402
from mgnet.utils import hardware  # noqa: E402

# Issue 13's measurements before this work (2 cores, median of 30) and the authors' implementation.
ISSUE_MS = {"baseline": 12.4, "mgnet 1": 7.0, "mgnet 2": 14.2, "mgnet 4": 27.1}
AUTHORS_RATIO = {"mgnet 4": 3.1}
VARIANTS = (
    "before",
    "channels_last",
    "bn_folded",
    "inference_mode",
    "onednn_packed",
    "backbone_fused",
    "fusion_folded",
)
GPU_PLAN = """## GPU

Measured on an NVIDIA H200 with `benchmarks/gpu_checks.sh` (2026-12-04; `gpu.md`, `latency_gpu.md`):
MGNet's analysis as the app runs it takes 11 ms (target < 20 ms) and every Captum method at most 0.15 s
(target < 0.3 s). At batch 1 the GPU is launch-bound, so MGNet after 4 glimpses takes 4.2 times the
baseline there (9.0 against 2.1 ms). Not built yet:

- **CUDA graphs for the glimpse loop.** A 4-glimpse ResNet-18 MGNet launches ~300 small kernels per
  image. The forward has static shapes (glimpse size fixed by the model, T fixed per call), no host sync
  (glimpse params stay on the device) and no data-dependent control flow. So it can be captured once per
  (model, T, batch) with `torch.cuda.CUDAGraph` on the inference copy, into static input and output
  buffers, and replayed as one launch. `torch.compile(mode="reduce-overhead")` does the same capture and is
  worth trying first. Gradient paths (attacks, Captum) stay eager: their hooks and autograd are not
  graph-safe.
- **Levers that carried over** (measured in `latency_gpu.md`): BatchNorm folding (11.3 to 9.5 ms after 4
  glimpses) and `inference_mode` (9.0 ms). channels_last gains little in fp32. Thread settings do not carry
  over. A bf16 autocast inference copy is the GPU-only lever left, to be checked against the same parity
  (`benchmarks/gpu_parity.py`).
"""


def variant_models(mg, base):
    """{variant: (mgnet, baseline, context)}: each lever on top of the one before."""
    before = {n: copy.deepcopy(m).to(memory_format=torch.contiguous_format) for n, m in (("mg", mg), ("base", base))}
    cl = {n: copy.deepcopy(m).to(memory_format=torch.channels_last) for n, m in before.items()}
    folded = {}
    for n, m in cl.items():
        f = copy.deepcopy(m)
        fold_batchnorm(f.backbone)
        folded[n] = f.to(memory_format=torch.channels_last)
    packed, fused = {}, {}
    for n, m in folded.items():
        side = m.image_size if m.is_baseline else m.glimpse_size()
        packed[n] = copy.deepcopy(m).requires_grad_(False)
        pack_convolutions(packed[n].backbone, (1, 3, side, side))
        fused[n] = copy.deepcopy(packed[n])
        fuse_backbone(fused[n].backbone, (1, 3, side, side))
    fast = {"mg": prepare_for_inference(mg), "base": prepare_for_inference(base)}
    return {
        "before": (before, torch.no_grad),
        "channels_last": (cl, torch.no_grad),
        "bn_folded": (folded, torch.no_grad),
        "inference_mode": (folded, torch.inference_mode),
        "onednn_packed": (packed, torch.inference_mode),
        "backbone_fused": (fused, torch.inference_mode),
        "fusion_folded": (fast, torch.inference_mode),
    }


def fusion_ms(model, device, repeats):
    """Median ms of the fusion (attention over t tokens + LayerNorm) at each step t, no gradients."""
    out = {}
    dim = model.feat_dim + 3
    with torch.inference_mode():
        for t in range(1, model.n_glimpses + 1):
            tokens = torch.randn(t, 1, dim, device=device)
            times = []
            for _ in range(repeats + 3):
                start = time.perf_counter()
                model.feat_fusion(tokens)
                times.append((time.perf_counter() - start) * 1000)
            out[t] = round(statistics.median(times[3:]), 3)
    return out


def measure(device, repeats, threads_list):
    mg = load_checkpoint(ROOT / "checkpoints/mgnet-resnet18-imagenette.pt", device)
    base = load_checkpoint(ROOT / "checkpoints/baseline-resnet18-imagenette.pt", device)
    x = torch.rand(1, 3, mg.image_size, mg.image_size, device=device)
    variants = variant_models(mg, base)
    calls = []  # (threads, variant, row, fn, context)
    for threads in threads_list:
        for name, (models, ctx) in variants.items():
            calls.append((threads, name, "baseline", lambda m=models["base"]: m(x), ctx))
            for t in range(1, mg.n_glimpses + 1):
                calls.append((threads, name, f"mgnet {t}", lambda m=models["mg"], t=t: m(x, n_glimpses=t), ctx))
    times = {c[:3]: [] for c in calls}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for rnd in range(repeats + 3):  # 3 warm-up rounds
        for threads, name, row, fn, ctx in calls:
            if device.type == "cpu":
                torch.set_num_threads(threads)
            with ctx():
                sync()
                start = time.perf_counter()
                fn()
                sync()
            if rnd >= 3:
                times[(threads, name, row)].append((time.perf_counter() - start) * 1000)
    table = {}
    for threads in threads_list:
        for name in VARIANTS:
            rows = {
                row: statistics.median(times[(threads, name, row)])
                for (th, n, row) in times
                if th == threads and n == name
            }
            table[f"{threads}|{name}"] = {
                row: {"median_ms": round(ms, 2), "vs_baseline": round(ms / rows["baseline"], 3)}
                for row, ms in rows.items()
            }
    return {
        "table": table,
        "fusion_ms": fusion_ms(variants["onednn_packed"][0]["mg"], device, repeats),
        "folded_fusion_ms": fusion_ms(variants[VARIANTS[-1]][0]["mg"], device, repeats),
    }


def render(results, threads):
    lines = [
        "# Single-image latency (batch 1, 128 px, fp32, no gradients)",
        "",
        f"`{results['command']}` on {results['date']}: {results['hardware']}.",
        "Every row and variant was timed in the same run, interleaved; median per call. "
        "`x baseline` is the ratio to the baseline's time for the same variant and thread count.",
        "",
    ]
    if results.get("busy"):
        lines += [
            "Other processes were busy during this run (timings are noisy; ratios measured in one run "
            "still compare): " + "; ".join(results["busy"]),
            "",
        ]
    for dev, res in results["devices"].items():
        head = res["table"][f"{threads}|{VARIANTS[-1]}"]
        before = res["table"][f"{threads}|before"]
        lines += [
            f"## {dev.upper()}: what the app's analysis runs now ({threads} threads)",
            "",
            "| model | ms | x baseline | before (this run) ms | before x baseline | issue 13 ms | "
            "issue 13 x baseline | authors' x baseline |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row, r in head.items():
            issue = ISSUE_MS.get(row)
            issue_ratio = f"{issue / ISSUE_MS['baseline']:.2f}" if issue else ""
            lines.append(
                f"| {row.replace('mgnet', 'MGNet,') + (' glimpses' if row != 'baseline' else '')} | "
                f"{r['median_ms']} | {r['vs_baseline']:.2f} | {before[row]['median_ms']} | "
                f"{before[row]['vs_baseline']:.2f} | {issue if issue else ''} | "
                f"{issue_ratio} | "
                f"{AUTHORS_RATIO.get(row, '')} |"
            )
        lines += [
            "",
            f"## {dev.upper()}: levers (cumulative; ms, and x baseline in brackets)",
            "",
            "| threads | variant | baseline | MGNet 1 | MGNet 2 | MGNet 3 | MGNet 4 |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, rows in res["table"].items():
            th, name = key.split("|")
            cells = [f"{rows[r]['median_ms']} ({rows[r]['vs_baseline']:.2f})" for r in rows]
            lines.append(f"| {th} | {name} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Fusion (attention over the t tokens so far + LayerNorm), ms per step, weights warm in cache: "
            + ", ".join(f"t={t}: {ms}" for t, ms in res["fusion_ms"].items())
            + "; folded (`FoldedFusion`): "
            + ", ".join(f"t={t}: {ms}" for t, ms in res.get("folded_fusion_ms", {}).items()),
            "",
        ]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=2, help="CPU threads of the headline table (the app's: 2)")
    p.add_argument(
        "--lever-threads",
        type=int,
        nargs="+",
        default=None,
        help="thread counts of the lever table (default: --threads only)",
    )
    p.add_argument("--notes", default="", help="a paragraph appended to latency.md (e.g. lever decisions)")
    p.add_argument(
        "--devices", nargs="+", choices=["cpu", "cuda"], help="devices to time (default: the CPU, and CUDA if present)"
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for latency.md and .json")
    args = p.parse_args()
    threads_list = sorted(set([args.threads] + (args.lever_threads or [])))
    names = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in names and not torch.cuda.is_available():
        p.error("--devices cuda: no CUDA device is visible to torch on this machine")
    devices = [torch.device(n) for n in names]
    busy = busy_processes(ignore=("benchmarks/latency.py",))
    results = {
        "hardware": hardware(),
        "threads": args.threads,
        "lever_threads": threads_list,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/latency.py " + " ".join(sys.argv[1:]),
        "busy": busy,
        "issue_13_ms": ISSUE_MS,
        "authors_ratio": AUTHORS_RATIO,
        "devices": {
            d.type: measure(d, args.repeats, threads_list if d.type == "cpu" else [args.threads]) for d in devices
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.json").write_text(json.dumps(results, indent=2))
    text = render(results, args.threads)
    if args.notes:
        text += "\n" + Path(args.notes).read_text() if Path(args.notes).is_file() else "\n" + args.notes + "\n"
    if not torch.cuda.is_available():
        text += "\n" + GPU_PLAN
    (out / "latency.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
