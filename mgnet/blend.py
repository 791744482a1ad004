"""Weight averages of two MGNets fine-tuned from the same weights ("model soups", Wortsman et al., ICML 2022).

    python -m mgnet.blend --first A.pt --second B.pt --weight 0.3 --keep-first loc_network feat_fusion --out C.pt

Every weight and BatchNorm statistic of C is ``(1 - weight) * A + weight * B``, except the modules named in
``--keep-first``, which C takes from A unchanged (for example A's glimpse policy: the location network and the
fusion whose state it reads). The architecture and forward pass are untouched, so C is an ordinary checkpoint.
Its provenance names both parents (path, sha256, the command that made each) and the weight.
"""

from __future__ import annotations

import argparse
import sys

import torch

from .checkpoints import CheckpointError, file_sha256, load_checkpoint, parent_record, save_checkpoint


def blend_state(first: dict, second: dict, weight: float, keep_first=()) -> dict:
    """The averaged state dict; tensors under a prefix in ``keep_first`` (module names) come from ``first``."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    if first.keys() != second.keys():
        raise ValueError("the two checkpoints have different weights: they are not the same architecture")
    kept = {k for k in first if any(k.startswith(p + ".") for p in keep_first)}
    missing = [p for p in keep_first if not any(k.startswith(p + ".") for k in first)]
    if missing:
        raise ValueError(f"no weights under {', '.join(missing)}")
    out = {}
    for k, a in first.items():
        b = second[k]
        if a.shape != b.shape:
            raise ValueError(
                f"{k} has shape {tuple(a.shape)} in the first checkpoint and {tuple(b.shape)} in the second"
            )
        if k in kept or not a.is_floating_point():
            out[k] = a.clone()
        else:
            out[k] = ((1 - weight) * a.float() + weight * b.float()).to(a.dtype)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mgnet.blend", description=__doc__.split("\n\n")[0])
    p.add_argument("--first", required=True, help="checkpoint A")
    p.add_argument("--second", required=True, help="checkpoint B (same architecture and classes)")
    p.add_argument("--weight", type=float, required=True, help="share of B, in [0, 1]")
    p.add_argument("--keep-first", nargs="*", default=[], help="modules taken from A unchanged")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        a, b = load_checkpoint(args.first, "cpu"), load_checkpoint(args.second, "cpu")
        if a.config() != b.config() or list(a.classes) != list(b.classes):
            raise ValueError("the two checkpoints differ in configuration or classes")
        state = blend_state(a.state_dict(), b.state_dict(), args.weight, args.keep_first)
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    a.load_state_dict(state)
    provenance = {
        "command": "python -m mgnet.blend " + " ".join(sys.argv[1:] if argv is None else argv),
        "blend": {
            "first": parent_record(args.first, a),
            "second": parent_record(args.second, b),
            "weight": args.weight,
            "kept_from_first": list(args.keep_first),
        },
    }
    with torch.no_grad():
        save_checkpoint(
            a, args.out, classes=list(a.classes), class_ids=list(a.checkpoint_info["class_ids"]), provenance=provenance
        )
    print(f"wrote {args.out} (sha256 {file_sha256(args.out)[:12]}…)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
