"""The command line: ``python -m mgnet.figures [figures|metrics] ...`` (see ``--help`` and docs/figures.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .. import explain
from ..utils import pick_device
from .inputs import collect_images, decode_images, load_models, resolve_target
from .metrics import run_metrics
from .runs import run_figures
from .settings import ATTACK_METHODS, ATTACK_SOURCES, COMMANDS, DEFAULT_CHECKPOINTS, UsageError, build_settings, note
from .staging import Staging


def _common(p: argparse.ArgumentParser):
    g = p.add_argument_group("models")
    g.add_argument("--mgnet", metavar="PATH", help=f"MGNet checkpoint (default {DEFAULT_CHECKPOINTS['mgnet']})")
    g.add_argument(
        "--baseline", metavar="PATH", help=f"baseline checkpoint, or 'none' (default {DEFAULT_CHECKPOINTS['baseline']})"
    )
    g.add_argument(
        "--ignore-hash",
        action="store_true",
        help="use a checkpoint even if its sha256 differs from the one in --settings",
    )
    g.add_argument("--n-glimpses", type=int, metavar="T", help="glimpses MGNet takes (default: the checkpoint's)")
    g = p.add_argument_group("saliency")
    g.add_argument(
        "--models", nargs="+", metavar="ROLE", help="whose saliency maps: mgnet and/or baseline (default both)"
    )
    g.add_argument(
        "--methods",
        nargs="+",
        metavar="METHOD",
        help=f"Captum methods, or 'none' (default saliency integrated_gradients gradcam; all: "
        f"{' '.join(explain.METHODS)})",
    )
    g.add_argument(
        "--target",
        help="class explained: default each model's own final prediction; 'mgnet' "
        "(MGNet's prediction for every model), a class index or a class name",
    )
    g.add_argument(
        "--true-grad",
        action="store_true",
        help="explain MGNet with true gradients (s_grad 1.0) instead of its 0.02 re-scaling",
    )
    g.add_argument("--topk", type=float, help="fraction of pixels for the top-k IoU (default 0.2)")
    g = p.add_argument_group("run")
    g.add_argument(
        "--settings",
        metavar="JSON",
        help="settings file exported by the app (or a sidecar JSON "
        "written by this tool); command-line options override it (schema: docs/figures.md)",
    )
    g.add_argument("--out", metavar="DIR", help="output folder (created; files of the same name are replaced)")
    g.add_argument("--limit", type=int, metavar="N", help="use N images spread evenly over the sorted list (0 = all)")
    g.add_argument("--seed", type=int, help="seed of every random choice (default 0)")
    g.add_argument("--batch-size", type=int, metavar="B", help="images per forward pass (default 8)")
    g.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda (default auto)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument(
        "--format",
        nargs="+",
        metavar="FMT",
        help="png svg pdf html (default png svg); without a Chrome for kaleido, html is written instead with a warning",
    )
    g.add_argument("--dpi", type=int, help="PNG resolution in dots per inch (default 300)")


def figures_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mgnet.figures",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Publication figures of MGNet's glimpses, focus vs saliency maps, and robustness.\n\n"
        "For each image: a glimpse strip (photo with numbered boxes, the crops, top-1 class and "
        "confidence after each glimpse) and a robustness grid (rows: clean, corrupted, attacked; MGNet's "
        "glimpses and predictions and the baseline's). For the images together: a comparison grid "
        "(rows: images; columns: MGNet's focus map and each model x Captum method). Every figure is "
        "written as PNG + SVG (or PDF) with a sidecar JSON of settings, seed and checkpoint hashes.",
        epilog="examples:\n"
        "  python -m mgnet.figures --images ../shared/data/imagenette2-224/val --limit 4 --out figures\n"
        "  python -m mgnet.figures --images a.jpg b.jpg --figures strip grid --methods gradcam --format png pdf\n"
        "  python -m mgnet.figures --settings exported-from-app.json --out figures\n"
        "  python -m mgnet.figures metrics --data ../shared/data/imagenette2-224/val --limit 50 --out metrics\n\n"
        "The 'metrics' sub-command (python -m mgnet.figures metrics --help) computes deletion/insertion\n"
        "AUCs and glimpse agreement over a dataset folder. Exit status: 0 ok, 2 bad arguments or inputs,\n"
        "1 unexpected failure; a failed run leaves no files behind. See docs/figures.md.",
    )
    g = p.add_argument_group("input and figures")
    g.add_argument("--images", nargs="+", metavar="PATH", help="image files and/or folders (searched recursively)")
    g.add_argument("--figures", nargs="+", metavar="KIND", help="strip grid robustness (default all three)")
    g.add_argument(
        "--corruption",
        nargs="+",
        metavar="NAME:SEV",
        help="robustness rows, e.g. gaussian_noise:3 fog:5, or 'none' (default gaussian_noise:3)",
    )
    g.add_argument(
        "--attack", nargs="+", metavar="EPS", help="robustness rows: attack budgets in 1/255, or 'none' (default 2)"
    )
    g.add_argument(
        "--attack-method",
        default="pgd",
        choices=ATTACK_METHODS,
        help="default pgd (pixel space, L-inf); see mgnet.attacks",
    )
    g.add_argument("--attack-steps", type=int, default=10, help="PGD/APGD iterations (default 10)")
    g.add_argument("--attack-queries", type=int, default=None, help="Square's query budget (default 5000)")
    g.add_argument("--attack-norm", default="linf", choices=("linf", "l2"))
    g.add_argument(
        "--attack-source",
        default="mgnet",
        choices=ATTACK_SOURCES,
        help="craft on mgnet (baseline sees a transfer attack), on baseline, or each white-box",
    )
    g.add_argument("--attack-true-grad", action="store_true", help="craft on MGNet with true gradients (s_grad 1)")
    g = p.add_argument_group("layout")
    g.add_argument(
        "--width",
        help="figure width: column (3.5 in), page (7 in) or inches (default: column for strips, page for grids)",
    )
    g.add_argument("--font-size", type=float, metavar="PT", help="font size in points (default 8)")
    g.add_argument("--grid-rows", type=int, metavar="N", help="images per comparison grid (default 6)")
    g.add_argument("--titles", action="store_true", help="put the image path above strips and robustness grids")
    _common(p)
    return p


def metrics_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mgnet.figures metrics",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Focus vs saliency over a dataset folder: deletion and insertion AUC (Petsiuk et al. 2018) of "
        "MGNet's focus map, each saliency map and a random map, scored on the model each map explains "
        "and on the other model; the share of each map's mass inside MGNet's glimpse boxes and its "
        "top-k IoU with the focus map; Captum's infidelity. Writes metrics.md, metrics.csv, "
        "metrics.json, curves.json and plots.",
        epilog="example:\n"
        "  python -m mgnet.figures metrics --data ../shared/data/imagenette2-224/val --limit 50 --out metrics",
    )
    p.add_argument("--data", metavar="DIR", help="image folder (ImageFolder layout gives true labels)")
    p.add_argument("--steps", type=int, help="deletion/insertion steps (default 20)")
    p.add_argument("--fill", choices=("blur", "black"), help="what deleted pixels become (default blur)")
    p.add_argument(
        "--infidelity",
        dest="infidelity",
        action="store_true",
        default=None,
        help="Captum infidelity of each map on its model (default on)",
    )
    p.add_argument("--no-infidelity", dest="infidelity", action="store_false")
    p.add_argument(
        "--sensitivity",
        dest="sensitivity",
        action="store_true",
        default=None,
        help="Captum max-sensitivity (10 extra explanations per map; default off)",
    )
    _common(p)
    p.set_defaults(images=None)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "figures"
    if argv and argv[0] in COMMANDS:
        command = argv.pop(0)
    parser = metrics_parser() if command == "metrics" else figures_parser()
    args = parser.parse_args(argv)
    staging = None
    try:
        settings = build_settings(args, command)
        out = Path(args.out or ("metrics" if command == "metrics" else "figures"))
        try:
            device = pick_device(args.device)
        except (SystemExit, RuntimeError) as exc:
            raise UsageError(str(exc).removeprefix("error: ")) from None
        items = collect_images(settings.images, settings.image_files, settings.limit)
        models = load_models(settings, device, args.ignore_hash)
        for model in models.values():
            resolve_target(settings.target, model, 0)  # refuse a bad --target before any work
        photos = decode_images(items) if command == "figures" else None
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        staging = Staging(out)
        if command == "metrics":
            run_metrics(settings, models, items, staging, device, progress=not args.no_progress)
        else:
            run_figures(settings, models, items, photos, staging, device, progress=not args.no_progress)
        written = staging.commit()
        staging = None
        note(f"wrote {len(written)} files to {out}/")
        return 0
    except UsageError as exc:
        print(f"mgnet.figures: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mgnet.figures: interrupted; nothing was written.", file=sys.stderr)
        return 130
    finally:
        if staging is not None:
            staging.abort()
