"""Does the GPU give the CPU's answers? The default checkpoints on val photos, CPU against CUDA.

    python benchmarks/gpu_parity.py --data ../shared/data/imagenette2-224/val [--limit 500] [--out DIR]

For each default model, the exact model on the CPU (fp32) is the reference. On CUDA both the exact model
and the app's forward-only copy (``mgnet.analysis.inference_model``: BatchNorm folded) are compared with
it, per glimpse: top-1 agreement, top-5 set agreement, the largest probability difference and, for MGNet,
the largest difference in glimpse parameters (scale, x, y). Writes gpu_parity.md and .json to --out.
Needs a CUDA device.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import DEFAULT_CKPTS, describe  # noqa: E402
from mgnet import load_checkpoint  # noqa: E402
from mgnet.analysis import inference_model  # noqa: E402
from mgnet.evaluate import load_eval_images  # noqa: E402


def outputs(model, images_u8, batch_size=100):
    """(probabilities [T, N, C], glimpse params [T, N, 3]) on the model's device, returned on the CPU."""
    dev = next(model.parameters()).device
    probs, params = [], []
    with torch.inference_mode():
        for i in range(0, len(images_u8), batch_size):
            out = model(images_u8[i : i + batch_size].to(dev).float().div_(255.0))
            probs.append(out.logits.float().softmax(-1).cpu())
            params.append(out.glimpses.float().cpu())
    return torch.cat(probs, 1), torch.cat(params, 1)


def compare(ref, other) -> list[dict]:
    """Per glimpse: how often ``other`` agrees with ``ref``."""
    (p_ref, g_ref), (p, g) = ref, other
    rows = []
    for t in range(p_ref.shape[0]):
        top5_ref = p_ref[t].topk(5, -1).indices.sort(-1).values
        top5 = p[t].topk(5, -1).indices.sort(-1).values
        rows.append(
            {
                "glimpse": t + 1,
                "top1_agree": round(float((p_ref[t].argmax(-1) == p[t].argmax(-1)).float().mean()), 4),
                "top5_agree": round(float((top5_ref == top5).all(-1).float().mean()), 4),
                "max_prob_diff": float((p_ref[t] - p[t]).abs().max()),
                "max_glimpse_diff": float((g_ref[t] - g[t]).abs().max()),
            }
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="validation ImageFolder")
    p.add_argument("--limit", type=int, default=500, help="photos, spread over the folder")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA device: this machine has none")
    res = {
        "command": "python benchmarks/gpu_parity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": describe(),
        "models": {},
    }
    for name in DEFAULT_CKPTS:
        cpu = load_checkpoint(ROOT / "checkpoints" / name, "cpu")
        cuda = load_checkpoint(ROOT / "checkpoints" / name, "cuda")
        _, images, _ = load_eval_images(args.data, cpu.image_size, args.limit, progress=False)
        ref = outputs(cpu, images)
        res["models"][name] = {
            "photos": len(images),
            "cuda exact model": compare(ref, outputs(cuda, images)),
            "cuda inference copy (the app's)": compare(ref, outputs(inference_model(cuda), images)),
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_parity.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [
        "# GPU parity: CUDA against the CPU's exact model (fp32)\n",
        f"`{res['command']}` on {res['date']}: {res['machine']}.\n",
        "| model | CUDA path | glimpse | top-1 agree | top-5 agree | max prob diff | max glimpse diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in res["models"].items():
        for path in ("cuda exact model", "cuda inference copy (the app's)"):
            for row in r[path]:
                lines.append(
                    f"| {name} ({r['photos']} photos) | {path} | {row['glimpse']} | {row['top1_agree']:.2%} | "
                    f"{row['top5_agree']:.2%} | {row['max_prob_diff']:.1e} | {row['max_glimpse_diff']:.1e} |"
                )
    (out / "gpu_parity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
