"""Publication figures and focus-vs-saliency metrics from the command line.

Figures, from a folder of images (or image files, or a settings JSON exported by the app)::

    python -m mgnet.figures --images ../shared/data/imagenette2-224/val --limit 4 --out figures
    python -m mgnet.figures --settings exported.json --out figures --format png pdf --dpi 600

writes, for every image, a glimpse strip (the photo with MGNet's numbered glimpse boxes, the crops the
network saw, the top-1 class and confidence after each glimpse) and a robustness grid (clean, corrupted
and attacked rows, each with MGNet's glimpses and predictions and the baseline's prediction), and for
the images together a comparison grid (rows: images; columns: MGNet's focus map, then every chosen
model x Captum method on one colour scale). Each figure is written as PNG (at ``--dpi``) plus SVG or
PDF, next to a sidecar JSON with the settings, seed, checkpoint hashes and the numbers drawn.

Metrics over a dataset folder (ImageFolder layout)::

    python -m mgnet.figures metrics --data ../shared/data/imagenette2-224/val --limit 50 --out metrics

writes deletion/insertion AUCs (Petsiuk et al. 2018) of MGNet's focus map and of every saliency map,
scored on the model each map explains and on the other model, the agreement of each map with MGNet's
glimpses (saliency mass inside the glimpse boxes, top-k IoU with the focus map), Captum's infidelity,
as markdown + CSV + JSON tables and plots.

Same inputs, same files: no timestamps or timings are written, randomness is seeded, and the SVG/PDF
bytes that Chrome randomises (clip-path ids, creation dates) are normalised. Outputs are first written
to a hidden folder inside ``--out`` and moved into place only when everything succeeded, so a failed
run leaves no partial files. Bad arguments or missing inputs exit with status 2 and a message.

Every figure is drawn by the builders of :mod:`mgnet.plots`, the same code the app uses. The settings
JSON schema and every option are described in docs/figures.md.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import platform
import re
import shutil
import struct
import sys
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
from PIL import Image

from . import corruptions as mc
from . import explain as mx
from . import geometry, plots
from .analysis import analyze_batch, focus_map
from .checkpoints import CheckpointError, file_sha256, load_checkpoint
from .data import IMAGE_EXTENSIONS, image_hash, load_image, to_model_input
from .utils import model_lock, pick_device

REPO = Path(__file__).resolve().parent.parent
SCHEMA = "mgnet-figures/1"
DEFAULT_CHECKPOINTS = {"mgnet": "checkpoints/mgnet-resnet18-imagenette.pt",
                       "baseline": "checkpoints/baseline-resnet18-imagenette.pt"}
ROLES = ("mgnet", "baseline")
ROLE_LABELS = {"mgnet": "MGNet", "baseline": "Baseline"}
FIGURE_KINDS = ("strip", "grid", "robustness")
FORMATS = ("png", "svg", "pdf", "html")
WIDTHS = {"column": 3.5, "page": 7.0}  # inches: one column / full width of a two-column paper
DEFAULT_WIDTH = {"strip": "column", "grid": "page", "robustness": "page"}
ATTACK_METHODS = ("pgd", "fgsm", "paper_pgd")
ATTACK_SOURCES = ("mgnet", "baseline", "each")
WORK_SIDE = 224  # corruptions are applied at ImageNet scale (shorter side 224 px), as in the app
SHORT_METHOD = {"saliency": "Saliency", "integrated_gradients": "Int. Grad.", "smoothgrad": "SmoothGrad",
                "gradcam": "Grad-CAM", "occlusion": "Occlusion", "guided_backprop": "Guided BP",
                "gradient_shap": "Grad. SHAP", "focus": "focus map", "random": "random"}
FIGURE_DEFAULTS = dict(
    figures=list(FIGURE_KINDS), models=list(ROLES), methods=["saliency", "integrated_gradients", "gradcam"],
    method_options={}, target=None, n_glimpses=None, s_grad=None,
    corruptions=[{"name": "gaussian_noise", "severity": 3}],
    attacks=[{"method": "pgd", "eps": 2.0, "steps": 10, "norm": "linf", "source": "mgnet", "true_grad": False}],
    seed=0, topk=0.2, limit=None, batch_size=8,
    output={"formats": ["png", "svg"], "dpi": 300, "width": None, "font_size": 8.0, "grid_rows": 6,
            "titles": False})
METRIC_DEFAULTS = dict(steps=20, fill="blur", infidelity=True, sensitivity=False, limit=50)


SIDECAR_ONLY = ("figure", "files", "image_records", "environment", "export_problem", "summary", "records")


class UsageError(Exception):
    """Bad arguments, settings or inputs: reported as ``error: ...`` with exit status 2."""


def _note(msg: str):
    print(f"mgnet.figures: {msg}", file=sys.stderr)


# -- settings ------------------------------------------------------------------------------------------
def _resolve(path: str, base: Path | None = None) -> Path:
    """A path from the command line or a settings file: as given, else relative to the settings file's
    folder, the current folder, then the repository (for the default checkpoints)."""
    p = Path(str(path)).expanduser()
    if p.is_absolute():
        return p
    for root in ([base] if base else []) + [Path.cwd(), REPO]:
        if (root / p).exists():
            return root / p
    return p


def read_settings(path) -> dict:
    """Read a settings JSON (schema in docs/figures.md); relative paths in it are resolved against its folder."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"settings file {p} does not exist.")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"settings file {p} is not valid JSON ({exc}).") from None
    if not isinstance(doc, dict):
        raise UsageError(f"settings file {p} must hold a JSON object.")
    schema = doc.get("schema")
    if schema is not None and not str(schema).startswith("mgnet-figures/1"):
        raise UsageError(f"settings file {p} has schema {schema!r}; this tool reads {SCHEMA!r}.")
    doc = dict(doc)
    doc["_base"] = p.resolve().parent
    return doc


def _as_list(value, name: str) -> list:
    if value is None:
        return []
    if isinstance(value, (str, dict, int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise UsageError(f"{name} must be a list, got {type(value).__name__}.")


def _parse_corruption(spec) -> dict:
    if isinstance(spec, str):
        name, _, sev = spec.partition(":")
        spec = {"name": name, "severity": sev or 3}
    if not isinstance(spec, dict) or "name" not in spec:
        raise UsageError(f"a corruption is NAME:SEVERITY or {{'name': ..., 'severity': ...}}, got {spec!r}.")
    name = str(spec["name"])
    if name not in mc.ALL_CORRUPTIONS:
        raise UsageError(f"unknown corruption {name!r}; choose from {', '.join(mc.ALL_CORRUPTIONS)}.")
    try:
        severity = int(spec.get("severity", 3))
    except (TypeError, ValueError):
        raise UsageError(f"corruption severity must be an integer 1-5, got {spec.get('severity')!r}.") from None
    if not 1 <= severity <= 5:
        raise UsageError(f"corruption severity must be 1-5, got {severity}.")
    return {"name": name, "severity": severity}


def _parse_attack(spec) -> dict:
    if not isinstance(spec, dict):
        raise UsageError(f"an attack must be an object like {{'method': 'pgd', 'eps': 2}}, got {spec!r}.")
    known = {"method", "eps", "steps", "norm", "source", "true_grad", "step_size"}
    unknown = set(spec) - known
    if unknown:
        raise UsageError(f"attack has unknown keys {sorted(unknown)}; known: {sorted(known)}.")
    a = dict(FIGURE_DEFAULTS["attacks"][0], step_size=None)
    a.update(spec)
    a["method"] = str(a["method"]).lower().replace("-", "_")
    if a["method"] not in ATTACK_METHODS:
        raise UsageError(f"unknown attack {a['method']!r}; choose from {', '.join(ATTACK_METHODS)}.")
    try:
        a["eps"] = float(a["eps"])
        a["steps"] = int(a["steps"])
        a["step_size"] = None if a["step_size"] is None else float(a["step_size"])
    except (TypeError, ValueError):
        raise UsageError(f"attack eps, steps and step_size must be numbers, got {spec!r}.") from None
    if not (0 <= a["eps"] <= 255) or a["steps"] < 1:
        raise UsageError(f"attack eps must be in [0, 255] (units of 1/255) and steps >= 1, got {spec!r}.")
    a["norm"] = str(a["norm"]).lower()
    if a["norm"] not in ("linf", "l2"):
        raise UsageError(f"attack norm must be 'linf' or 'l2', got {a['norm']!r}.")
    if a["source"] not in ATTACK_SOURCES:
        raise UsageError(f"attack source must be one of {ATTACK_SOURCES}, got {a['source']!r}.")
    a["true_grad"] = bool(a["true_grad"])
    return a


def _width_inches(width) -> float | None:
    if width is None:
        return None
    if isinstance(width, str) and width in WIDTHS:
        return WIDTHS[width]
    try:
        w = float(width)
    except (TypeError, ValueError):
        raise UsageError(f"--width must be 'column', 'page' or a number of inches, got {width!r}.") from None
    if not 1.0 <= w <= 20.0:
        raise UsageError(f"--width must be between 1 and 20 inches, got {w}.")
    return w


def _pick(cli_value, doc: dict, key: str, default):
    if cli_value is not None:
        return cli_value
    if key in doc and doc[key] is not None:
        return doc[key]
    return default


def build_settings(args: argparse.Namespace, command: str) -> dict:
    """Defaults < settings file < command line; validated. Returns the settings in the schema's shape."""
    doc = read_settings(args.settings) if getattr(args, "settings", None) else {}
    base = doc.get("_base")
    ignored = sorted(k for k in doc if k not in FIGURE_DEFAULTS and k not in METRIC_DEFAULTS and k not in (
        "_base", "schema", "checkpoints", "images", "image", "corruption", "attack", "output", "data", "command",
        *SIDECAR_ONLY))
    if ignored:
        _note(f"settings file: ignoring keys {', '.join(ignored)}")
    s: dict = {"schema": SCHEMA, "command": command}

    # checkpoints
    ck_doc = doc.get("checkpoints") or {}
    if not isinstance(ck_doc, dict):
        raise UsageError("settings 'checkpoints' must be an object {mgnet: {path, sha256}, baseline: {...}}.")
    s["checkpoints"] = {}
    for role in ROLES:
        cli = getattr(args, role, None)
        entry = ck_doc.get(role, "default") if role in ck_doc else "default"
        if cli is not None:
            entry = None if cli.lower() in ("none", "") else {"path": cli, "sha256": None}
        elif entry == "default":
            entry = {"path": DEFAULT_CHECKPOINTS[role], "sha256": None}
        elif entry is not None:
            if isinstance(entry, str):
                entry = {"path": entry, "sha256": None}
            if not isinstance(entry, dict) or not entry.get("path"):
                raise UsageError(f"settings checkpoints.{role} must be {{'path': ..., 'sha256': ...}} or null.")
            entry = {"path": str(entry["path"]), "sha256": entry.get("sha256")}
        if entry is not None:
            entry["_file"] = _resolve(entry["path"], base if cli is None else None)
        s["checkpoints"][role] = entry
    if s["checkpoints"]["mgnet"] is None:
        raise UsageError("an MGNet checkpoint is needed (--mgnet PATH).")

    # images
    if command == "metrics":
        data = args.data if args.data is not None else (doc["data"] if isinstance(doc.get("data"), str) else None)
        images = [data] if data else _as_list(doc.get("images", doc.get("image")), "images")
    else:
        images = args.images if args.images else _as_list(doc.get("images", doc.get("image")), "images")
    if not images:
        raise UsageError("no images given: pass " + ("--data FOLDER" if command == "metrics" else
                                                       "--images FOLDER_OR_FILES") + " or a settings file with 'images'.")
    s["images"] = [str(p) for p in images]
    from_cli = bool(args.data if command == "metrics" else args.images)
    s["_image_files"] = [_resolve(p, None if from_cli else base) for p in s["images"]]
    default_limit = METRIC_DEFAULTS["limit"] if command == "metrics" else None
    s["limit"] = _pick(args.limit, doc, "limit", default_limit)
    if s["limit"] is not None:
        s["limit"] = int(s["limit"])
        if s["limit"] < 0:
            raise UsageError("--limit must be >= 0 (0 = all images).")

    # what to compute
    if command == "figures":
        s["figures"] = [str(f) for f in _pick(args.figures, doc, "figures", FIGURE_DEFAULTS["figures"])]
        bad = [f for f in s["figures"] if f not in FIGURE_KINDS]
        if bad or not s["figures"]:
            raise UsageError(f"unknown figure kind(s) {bad}; choose from {', '.join(FIGURE_KINDS)}.")
    s["models"] = [str(m) for m in _pick(args.models, doc, "models", FIGURE_DEFAULTS["models"])]
    bad = [m for m in s["models"] if m not in ROLES]
    if bad:
        raise UsageError(f"unknown model role(s) {bad}; choose from {', '.join(ROLES)}.")
    if s["checkpoints"]["baseline"] is None:
        s["models"] = [m for m in s["models"] if m != "baseline"]
    s["methods"] = [str(m) for m in _pick(args.methods, doc, "methods", FIGURE_DEFAULTS["methods"])]
    if s["methods"] == ["none"]:
        s["methods"] = []
    bad = [m for m in s["methods"] if m not in mx.METHODS]
    if bad:
        raise UsageError(f"unknown method(s) {bad}; choose from {', '.join(mx.METHODS)} (or 'none').")
    opts = doc.get("method_options") or {}
    if not isinstance(opts, dict) or not all(isinstance(v, dict) for v in opts.values()):
        raise UsageError("settings 'method_options' must map a method name to an object of options.")
    for m, o in opts.items():
        try:
            mx._options(m, 224, o)
        except ValueError as exc:
            raise UsageError(f"method_options: {exc}") from None
    s["method_options"] = {m: dict(o) for m, o in opts.items()}
    target = _pick(args.target, doc, "target", None)
    if isinstance(target, str) and target.lstrip("-").isdigit():
        target = int(target)
    s["target"] = target
    n = _pick(args.n_glimpses, doc, "n_glimpses", None)
    if n is not None:
        n = int(n)
        if not 1 <= n <= 16:
            raise UsageError("--n-glimpses must be between 1 and 16.")
    s["n_glimpses"] = n
    s_grad = 1.0 if args.true_grad else doc.get("s_grad")
    s["s_grad"] = None if s_grad is None else float(s_grad)
    s["seed"] = int(_pick(args.seed, doc, "seed", 0))
    s["topk"] = float(_pick(args.topk, doc, "topk", FIGURE_DEFAULTS["topk"]))
    if not 0 < s["topk"] <= 1:
        raise UsageError("--topk must be in (0, 1].")
    s["batch_size"] = int(_pick(args.batch_size, doc, "batch_size", FIGURE_DEFAULTS["batch_size"]))
    if s["batch_size"] < 1:
        raise UsageError("--batch-size must be >= 1.")

    if command == "figures":
        if args.corruption is not None:
            cors = [] if args.corruption == ["none"] else args.corruption
        elif "corruptions" in doc or "corruption" in doc:
            cors = _as_list(doc.get("corruptions", doc.get("corruption")), "corruptions")
        else:
            cors = FIGURE_DEFAULTS["corruptions"]
        s["corruptions"] = [_parse_corruption(c) for c in cors]
        if args.attack is not None:
            eps_list = [] if args.attack == ["none"] else args.attack
            try:
                eps_list = [float(e) for e in eps_list]
            except ValueError:
                raise UsageError(f"--attack takes eps values (in 1/255) or 'none', got {args.attack}.") from None
            s["attacks"] = [_parse_attack({"method": args.attack_method, "eps": e, "steps": args.attack_steps,
                                           "norm": args.attack_norm, "source": args.attack_source,
                                           "true_grad": args.attack_true_grad}) for e in eps_list]
        elif "attacks" in doc or "attack" in doc:
            s["attacks"] = [_parse_attack(a) for a in _as_list(doc.get("attacks", doc.get("attack")), "attacks")]
        else:
            s["attacks"] = [_parse_attack(a) for a in FIGURE_DEFAULTS["attacks"]]
    else:
        s["steps"] = int(_pick(args.steps, doc, "steps", METRIC_DEFAULTS["steps"]))
        if not 1 <= s["steps"] <= 1000:
            raise UsageError("--steps must be between 1 and 1000.")
        s["fill"] = str(_pick(args.fill, doc, "fill", METRIC_DEFAULTS["fill"]))
        if s["fill"] not in ("blur", "black"):
            raise UsageError("--fill must be 'blur' or 'black'.")
        s["infidelity"] = bool(_pick(args.infidelity, doc, "infidelity", METRIC_DEFAULTS["infidelity"]))
        s["sensitivity"] = bool(_pick(args.sensitivity, doc, "sensitivity", METRIC_DEFAULTS["sensitivity"]))

    out_doc = doc.get("output") or {}
    if not isinstance(out_doc, dict):
        raise UsageError("settings 'output' must be an object.")
    o = dict(FIGURE_DEFAULTS["output"])
    o.update({k: v for k, v in out_doc.items() if k in o and v is not None})
    for key, cli in (("formats", args.format), ("dpi", args.dpi), ("width", getattr(args, "width", None)),
                     ("font_size", getattr(args, "font_size", None)), ("grid_rows", getattr(args, "grid_rows", None))):
        if cli is not None:
            o[key] = cli
    if getattr(args, "titles", False):
        o["titles"] = True
    o["formats"] = list(dict.fromkeys(str(f).lower() for f in _as_list(o["formats"], "formats")))
    bad = [f for f in o["formats"] if f not in FORMATS]
    if bad or not o["formats"]:
        raise UsageError(f"unknown format(s) {bad}; choose from {', '.join(FORMATS)}.")
    try:
        o["dpi"] = int(o["dpi"])
        o["font_size"] = float(o["font_size"])
        o["grid_rows"] = int(o["grid_rows"])
    except (TypeError, ValueError):
        raise UsageError("dpi, font_size and grid_rows must be numbers.") from None
    if not 50 <= o["dpi"] <= 1200:
        raise UsageError("--dpi must be between 50 and 1200.")
    if not 4 <= o["font_size"] <= 24:
        raise UsageError("--font-size must be between 4 and 24 points.")
    if o["grid_rows"] < 1:
        raise UsageError("--grid-rows must be >= 1.")
    _width_inches(o["width"])
    if isinstance(o["width"], str) and o["width"] not in WIDTHS:
        o["width"] = float(o["width"])
    s["output"] = o
    return s


def public_settings(s: dict) -> dict:
    """The settings as written to sidecars (private keys dropped): a valid ``--settings`` input."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if not str(k).startswith("_")}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v
    return clean(s)


# -- inputs --------------------------------------------------------------------------------------------
def spread_indices(n: int, limit: int | None) -> np.ndarray:
    """``limit`` indices spread evenly over range(n) (all when limit is None, 0 or >= n)."""
    if not limit or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def collect_images(given: list[str], files: list[Path], limit: int | None) -> list[tuple[str, Path]]:
    """(display path, file) of every image: files as given, folders searched recursively (sorted)."""
    found: list[tuple[str, Path]] = []
    for shown, path in zip(given, files):
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not inside:
                raise UsageError(f"{shown} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
            found += [(str(Path(shown) / p.relative_to(path)), p) for p in inside]
        elif path.is_file():
            found.append((shown, path))
        else:
            raise UsageError(f"image path {shown} does not exist.")
    seen, unique = set(), []
    for shown, path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((shown, path))
    keep = spread_indices(len(unique), limit)
    return [unique[i] for i in keep]


def _safe_name(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:limit] or "image"


def load_models(s: dict, device, ignore_hash: bool = False) -> dict:
    """Load the checkpoints named in the settings; check sha256 values given there. Returns {role: model}."""
    models = {}
    for role in ROLES:
        spec = s["checkpoints"].get(role)
        if spec is None:
            continue
        path = spec["_file"]
        if not path.is_file():
            hint = (" Train one with python -m mgnet.train, or pass --" + role + " PATH"
                    + (" (or --baseline none)" if role == "baseline" else "") + ".")
            raise UsageError(f"{ROLE_LABELS[role]} checkpoint {spec['path']} not found.{hint}")
        try:
            model = load_checkpoint(path, device)
        except CheckpointError as exc:
            raise UsageError(f"{ROLE_LABELS[role]} checkpoint: {exc}") from None
        sha = model.checkpoint_info["sha256"]
        want = spec.get("sha256")
        if want and str(want).lower() != sha:
            msg = (f"{ROLE_LABELS[role]} checkpoint {spec['path']} has sha256 {sha[:12]}..., but the settings "
                   f"ask for {str(want)[:12]}...: it is not the model the settings were made with")
            if not ignore_hash:
                raise UsageError(msg + " (pass --ignore-hash to use it anyway).")
            _note("warning: " + msg + "; using it anyway (--ignore-hash).")
        spec["sha256"] = sha
        models[role] = model
    if models["mgnet"].is_baseline:
        raise UsageError(f"--mgnet {s['checkpoints']['mgnet']['path']} is a one-glimpse baseline; it needs a "
                         f"multi-glimpse MGNet.")
    if "baseline" in models and list(models["baseline"].classes) != list(models["mgnet"].classes):
        raise UsageError("the MGNet and baseline checkpoints have different classes; they cannot be compared.")
    return models


def _true_labels(model, files: list[Path]) -> list[str | None]:
    """Class name of each image when its parent folder is a class id the model knows (ImageFolder layout)."""
    ids = list(model.checkpoint_info.get("class_ids") or model.classes)
    lookup = {c: i for i, c in enumerate(ids)}
    return [model.classes[lookup[f.parent.name]] if f.parent.name in lookup else None for f in files]


def resolve_target(target, model, mgnet_pred: int | None = None) -> int | None:
    """None (the model's own prediction), 'mgnet' (MGNet's prediction), a class index or a class name."""
    if target is None:
        return None
    if target == "mgnet":
        return mgnet_pred
    if isinstance(target, int):
        if not 0 <= target < len(model.classes):
            raise UsageError(f"--target {target} is not a class index (0..{len(model.classes) - 1}).")
        return target
    if str(target) in model.classes:
        return model.classes.index(str(target))
    raise UsageError(f"--target {target!r} is neither 'mgnet', a class index nor a class name of the model "
                     f"(e.g. {', '.join(model.classes[:3])}).")


# -- computation ---------------------------------------------------------------------------------------


def working_image(image: np.ndarray) -> np.ndarray:
    """The photo at ImageNet-C scale (shorter side 224 px, aspect kept; smaller photos unchanged), as the app."""
    h, w = image.shape[:2]
    f = WORK_SIDE / min(h, w)
    if f < 1:
        return plots.downscale(image, max(1, round(max(h, w) * f)))
    return image


def _map_on(m: np.ndarray, size: int) -> np.ndarray:
    return m if m.shape == (size, size) else mx.to_photo(m, size, size)


def _pred_text(classes, probs_t) -> str:
    i = int(np.argmax(probs_t))
    return f"{classes[i]} {float(probs_t[i]):.0%}"


def _r(v, nd: int = 6):
    if v is None:
        return None
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_r(x, nd) for x in v]
    v = float(v)
    return round(v, nd) if np.isfinite(v) else None


def _explain(models, role, x, method, target, s, n_glimpses):
    model = models[role]
    return mx.explain(model, x, method, target, n_glimpses=None if model.is_baseline else n_glimpses,
                      s_grad=None if model.is_baseline else s["s_grad"], seed=s["seed"],
                      **s["method_options"].get(method, {}))


def to_uint8(x: torch.Tensor) -> list[np.ndarray]:
    """[B, 3, S, S] pixels -> 8-bit RGB images (what one can save and what the app analyses)."""
    return [np.ascontiguousarray(a) for a in
            (x.detach().float().clamp(0, 1) * 255 + 0.5).byte().permute(0, 2, 3, 1).cpu().numpy()]


def adversarial_images(source, clean_u8: list[np.ndarray], labels: list[int], spec: dict, n_glimpses, seed: int,
                       batch_size: int) -> list[np.ndarray]:
    """8-bit adversarial versions (source's input size) of the clean photos, crafted on ``source``."""
    from .attacks import attack, paper_pgd

    dev = next(source.parameters()).device
    s_grad = 1.0 if (spec["true_grad"] and not source.is_baseline) else None
    n = None if source.is_baseline else n_glimpses
    out = []
    for lo in range(0, len(clean_u8), batch_size):
        x = torch.cat([to_model_input(im, source.image_size) for im in clean_u8[lo:lo + batch_size]]).to(dev)
        y = torch.tensor(labels[lo:lo + batch_size], device=dev)
        with model_lock(source):
            if spec["method"] == "paper_pgd":
                adv = paper_pgd(source, x, y, eps=spec["eps"], step=spec["step_size"] or 1.0, steps=spec["steps"],
                                n_glimpses=n, s_grad=s_grad)
            else:
                adv = attack(source, x, y, method=spec["method"], eps=spec["eps"], steps=spec["steps"],
                             step_size=spec["step_size"], norm=spec["norm"], s_grad=s_grad, n_glimpses=n,
                             seed=seed)
        out += to_uint8(adv)
    return out


# -- output ---------------------------------------------------------------------------------------------
class Staging:
    """Files are written into a hidden folder inside ``out`` and moved into place by :meth:`commit`;
    :meth:`abort` removes them, so a failed run never leaves partial output."""

    def __init__(self, out: Path):
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"--out {self.out} exists and is not a folder.")
        self.created = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=".mgnet-figures-", dir=self.out))
        self.names: list[str] = []

    def write(self, name: str, data: bytes | str):
        if name in self.names:
            raise RuntimeError(f"{name} written twice")
        with open(self.tmp / name, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        self.names.append(name)

    def write_json(self, name: str, obj):
        self.write(name, json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n")

    def commit(self) -> list[Path]:
        done = []
        for name in self.names:
            os.replace(self.tmp / name, self.out / name)
            done.append(self.out / name)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return done

    def abort(self):
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.created:
            try:
                self.out.rmdir()
            except OSError:
                pass


def png_with_dpi(data: bytes, dpi: float) -> bytes:
    """The PNG with a pHYs chunk saying ``dpi`` (so page-layout tools place it at its physical size)."""
    sig = b"\x89PNG\r\n\x1a\n"
    if not data.startswith(sig):
        return data
    ppm = int(round(dpi / 0.0254))
    body = struct.pack(">IIB", ppm, ppm, 1)
    chunk = struct.pack(">I", len(body)) + b"pHYs" + body + struct.pack(">I", zlib.crc32(b"pHYs" + body) & 0xFFFFFFFF)
    parts, pos = [sig], 8
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        kind = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if kind != b"pHYs":
            parts.append(data[pos:end])
        if kind == b"IHDR":
            parts.append(chunk)
        pos = end
    return b"".join(parts)


def normalise_svg(data: bytes, token: str) -> bytes:
    """Replace the random id plotly.js gives each rendered figure (clip paths, gradients) by ``token``."""
    text = data.decode("utf-8")
    m = re.search(r'id="defs-([0-9a-z]+)"', text)
    if m:
        uid = m.group(1)
        # everywhere (clip paths, gradients, legend clips) except inside embedded images' base64 data
        parts = re.split(r'((?:href|src)="data:[^"]*")', text)
        text = "".join(p if i % 2 else p.replace(uid, token) for i, p in enumerate(parts))
    return text.encode("utf-8")


_PDF_DATE = re.compile(rb"/(CreationDate|ModDate) \(D:[0-9]{14}[^)]*\)")


def normalise_pdf(data: bytes) -> bytes:
    """Fix the creation and modification dates Chrome writes (same length, so offsets stay valid)."""
    def fixed(m):
        old = m.group(0)
        head = b"/" + m.group(1) + b" (D:20000101000000"
        new = head + old[len(head):]
        return new if len(new) == len(old) else old
    return _PDF_DATE.sub(fixed, data)


class Exporter:
    """Writes a figure in the chosen formats; falls back to interactive HTML, with one clear message,
    when static export (kaleido + a Chrome) is impossible here."""

    def __init__(self, staging: Staging, formats: list[str], dpi: int):
        self.staging, self.formats, self.dpi = staging, formats, dpi
        self.problem = None
        static = [f for f in formats if f != "html"]
        if static:
            problem = plots.export_problem()
            if problem:
                self._fail(problem)

    def _fail(self, problem: str):
        self.problem = problem
        _note(f"warning: PNG/SVG/PDF export is not possible here: {problem} Writing interactive HTML figures "
              f"instead (open them in a browser; the camera icon saves a PNG). To get static files install "
              f"Chromium (apt-get install chromium) or set BROWSER_PATH to a Chrome binary.")

    def write(self, fig, stem: str) -> list[str]:
        names = []
        fig = go.Figure(fig)  # a copy, with fixed trace ids (plotly.js would draw random ones into SVG ids)
        for i, trace in enumerate(fig.data):
            trace.uid = f"t{i:03d}"
        formats = list(self.formats)
        for fmt in formats:
            if fmt != "html" and self.problem is None:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        data = plots.figure_bytes(fig, fmt, width=fig.layout.width, height=fig.layout.height,
                                                  scale=self.dpi / plots.PX_PER_INCH)
                except plots.ExportError as exc:
                    self._fail(str(exc))
                else:
                    if fmt == "png":
                        data = png_with_dpi(data, self.dpi)
                    elif fmt == "svg":
                        data = normalise_svg(data, hashlib.sha256(stem.encode()).hexdigest()[:6])
                    elif fmt == "pdf":
                        data = normalise_pdf(data)
                    self.staging.write(f"{stem}.{fmt}", data)
                    names.append(f"{stem}.{fmt}")
                    continue
            if f"{stem}.html" not in names:
                html = fig.to_html(include_plotlyjs="cdn", full_html=True, div_id=f"fig-{stem}")
                self.staging.write(f"{stem}.html", html)
                names.append(f"{stem}.html")
        return names


def environment(device) -> dict:
    import importlib.metadata as md

    env = {"python": platform.python_version(), "device": torch.device(device).type}
    for pkg in ("torch", "torchvision", "captum", "numpy", "plotly", "kaleido"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            env[pkg] = None
    return env


def _width_px(s: dict, kind: str) -> float:
    w = s["output"]["width"] or DEFAULT_WIDTH[kind]
    return _width_inches(w) * plots.PX_PER_INCH


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


# -- figures --------------------------------------------------------------------------------------------
def decode_images(items: list[tuple[str, Path]]) -> list[np.ndarray]:
    photos = []
    for shown, path in items:
        try:
            photos.append(load_image(path))
        except ValueError as exc:
            raise UsageError(f"{shown}: {exc}") from None
    return photos


def run_figures(s: dict, models: dict, items: list[tuple[str, Path]], photos: list[np.ndarray], staging: Staging,
                device, progress: bool = True) -> dict:
    """Compute and write every figure; returns the manifest (also written as figures.json)."""
    mg, base = models["mgnet"], models.get("baseline")
    n = s["n_glimpses"]
    font = s["output"]["font_size"]
    titles = s["output"]["titles"]
    exporter = Exporter(staging, s["output"]["formats"], s["output"]["dpi"])
    labels = _true_labels(mg, [p for _, p in items])
    names = [f"{i + 1:03d}-{_safe_name(Path(shown).stem)}" for i, (shown, _) in enumerate(items)]
    image_records = [{"path": shown, "file_sha256": file_sha256(path), "image_hash": image_hash(photo),
                      "width": int(photo.shape[1]), "height": int(photo.shape[0]), "label": label}
                     for (shown, path), photo, label in zip(items, photos, labels)]
    settings = public_settings(s)
    env = environment(device)
    outputs: list[str] = []

    def sidecar(stem: str, kind: str, idx: list[int], data, files: list[str]):
        doc = dict(settings, images=[items[i][0] for i in idx], figures=[kind], figure=kind, files=files,
                   image_records=[image_records[i] for i in idx], data=data, environment=env)
        staging.write_json(f"{stem}.json", doc)
        outputs.extend(files + [f"{stem}.json"])

    bar = _progress_bar(len(photos), "glimpses", progress)
    analyses = analyze_batch(mg, photos, n, s["batch_size"], bar.update)
    bar.close()
    preds = {"mgnet": [a.predicted() for a in analyses]}
    if base is not None:
        base_an = analyze_batch(base, photos, None, s["batch_size"])
        preds["baseline"] = [a.predicted() for a in base_an]

    if "strip" in s["figures"]:
        for i in range(len(photos)):
            a = analyses[i]
            caps = [_pred_text(a.classes, a.probs[t]) for t in range(a.n_glimpses)]
            fig = plots.glimpse_strip_figure(
                photos[i], a.boxes, list(a.seen), caps, title=items[i][0] if titles else None,
                photo_caption=f"true: {labels[i]}" if labels[i] else "", width=_width_px(s, "strip"),
                font_size=font)
            stem = f"strip-{names[i]}"
            files = exporter.write(fig, stem)
            sidecar(stem, "strip", [i], {
                "boxes": _r(a.boxes.tolist(), 3), "glimpse_params": _r(a.params.tolist()),
                "glimpse_size": a.glimpse_size, "image_size": a.image_size,
                "after_glimpse": [{"class": a.classes[int(np.argmax(p))], "index": int(np.argmax(p)),
                                   "prob": _r(np.max(p))} for p in a.probs]}, files)

    if "grid" in s["figures"]:
        rows_per = s["output"]["grid_rows"]
        S = mg.image_size
        columns = ["focus"] + [f"{r}:{m}" for r in s["models"] for m in s["methods"]]
        col_titles = ["MGNet<br>focus map"] + [f"{ROLE_LABELS[r]}<br>{SHORT_METHOD[m]}"
                                               for r in s["models"] for m in s["methods"]]
        bar = _progress_bar(len(photos), "saliency maps", progress)
        for g, lo in enumerate(range(0, len(photos), rows_per), 1):
            rows, data = [], []
            for i in range(lo, min(lo + rows_per, len(photos))):
                a, photo = analyses[i], photos[i]
                h, w = photo.shape[:2]
                focus_model = focus_map(a.boxes_model, S, S)
                maps = {"focus": focus_map(a.boxes, w, h)}
                caps = {"focus": _pred_text(a.classes, a.probs[-1])}
                record = {"image": items[i][0], "mgnet_prediction": a.classes[a.predicted()],
                          "maps": {}}
                for role in s["models"]:
                    model = models[role]
                    x = to_model_input(photo, model.image_size)
                    target = resolve_target(s["target"], model, preds["mgnet"][i])
                    for method in s["methods"]:
                        att = _explain(models, role, x, method, target, s, n)
                        on = _map_on(att.map, S)
                        inside = mx.mass_inside(on, a.boxes_model[1:], S, S)
                        iou = mx.topk_iou(on, focus_model, s["topk"])
                        key = f"{role}:{method}"
                        maps[key] = None if att.empty else att.map
                        caps[key] = f"in boxes {inside:.0%}\nIoU {iou:.2f}"
                        record["maps"][key] = {"target": att.target, "target_class": model.classes[att.target],
                                               "empty": att.empty, "mass_inside": _r(inside), "topk_iou": _r(iou)}
                rows.append(dict(image=photo, label=labels[i] or Path(items[i][0]).stem[:24], maps=maps,
                                 boxes=a.boxes, captions=caps, photo_caption=""))
                data.append(record)
                bar.update(1)
            fig = plots.comparison_grid_figure(rows, columns, column_titles=col_titles, width=_width_px(s, "grid"),
                                               font_size=font, title="Focus vs saliency" if titles else None)
            stem = f"grid-{g:02d}"
            files = exporter.write(fig, stem)
            sidecar(stem, "grid", list(range(lo, min(lo + rows_per, len(photos)))), {
                "columns": columns, "caption_meaning": (
                    "in boxes: share of the map's mass inside MGNet's glimpse boxes 2..T; IoU: IoU of the top "
                    f"{s['topk']:.0%} pixels of the map and of MGNet's focus map; under the focus map: MGNet's "
                    "final prediction"), "rows": data}, files)
        bar.close()

    if "robustness" in s["figures"]:
        _robustness(s, models, photos, items, names, exporter, sidecar, progress)

    manifest = dict(settings, images=[shown for shown, _ in items], image_records=image_records,
                    files=sorted(outputs), export_problem=exporter.problem, environment=env)
    staging.write_json("figures.json", manifest)
    return manifest


def _robustness(s, models, photos, items, names, exporter, sidecar, progress):
    mg, base = models["mgnet"], models.get("baseline")
    n = s["n_glimpses"]
    bs = s["batch_size"]
    work = [working_image(p) for p in photos]
    # conditions: (label, {role: images}); the MGNet row and the baseline cell may see different images
    conditions = [("clean", {"mgnet": work, "baseline": work}, {"kind": "clean"})]
    bar = _progress_bar(len(photos) * (len(s["corruptions"]) + len(s["attacks"])), "perturbing", progress)
    for c in s["corruptions"]:
        bad = []
        for im in work:
            bad.append(mc.corrupt(im, c["name"], c["severity"], seed=s["seed"]))
            bar.update(1)
        conditions.append((f"{mc.label(c['name'])}<br>severity {c['severity']}", {"mgnet": bad, "baseline": bad},
                           dict(kind="corruption", **c, seed=s["seed"])))
    clean_pred = {"mgnet": [a.predicted() for a in analyze_batch(mg, work, n, bs)]}
    if base is not None:
        clean_pred["baseline"] = [a.predicted() for a in analyze_batch(base, work, None, bs)]
    for spec in s["attacks"]:
        sources = ["mgnet", "baseline"] if spec["source"] == "each" else [spec["source"]]
        if "baseline" in sources and base is None:
            if spec["source"] == "baseline":
                raise UsageError("an attack crafted on the baseline needs a baseline checkpoint.")
            sources = ["mgnet"]
        adv = {r: adversarial_images(models[r], work, clean_pred[r], spec, n, s["seed"], bs) for r in sources}
        bar.update(len(photos))
        seen = {"mgnet": adv[sources[0]], "baseline": adv[sources[-1]]}
        name = {"pgd": "PGD", "fgsm": "FGSM", "paper_pgd": "paper PGD"}[spec["method"]]
        where = {"mgnet": "on MGNet", "baseline": "on baseline", "each": "white-box"}[spec["source"]]
        norm = "" if spec["norm"] == "linf" else " L2"
        grad = ", true grad" if spec["true_grad"] else ""
        conditions.append((f"{name}{norm} ε={spec['eps']:g}/255<br>{where}{grad}", seen,
                           dict(kind="attack", **spec, seed=s["seed"])))
    bar.close()
    results = []
    for label, imgs, info in conditions:
        a_mg = analyze_batch(mg, imgs["mgnet"], n, bs)
        a_base = analyze_batch(base, imgs["baseline"], None, bs) if base is not None else None
        results.append((label, imgs, info, a_mg, a_base))
    for i in range(len(photos)):
        h, w = work[i].shape[:2]
        rows, data = [], []
        for label, imgs, info, a_mg, a_base in results:
            a = a_mg[i]
            shown = imgs["mgnet"][i]
            if shown.shape[:2] != (h, w):  # an adversarial input (model size): show it at the photo's aspect
                shown = np.asarray(Image.fromarray(shown).resize((w, h), Image.BILINEAR))
            row = dict(label=label, image=shown, boxes=geometry.to_original(a.boxes_model, a.image_size, w, h),
                       crops=list(a.seen), captions=[_pred_text(a.classes, a.probs[t]) for t in range(a.n_glimpses)])
            entry = {"condition": info, "mgnet": [{"class": a.classes[int(np.argmax(p))], "prob": _r(np.max(p))}
                                                  for p in a.probs]}
            if a_base is not None:
                b = a_base[i]
                bimg = imgs["baseline"][i]
                if bimg.shape[:2] != (h, w):
                    bimg = np.asarray(Image.fromarray(bimg).resize((w, h), Image.BILINEAR))
                row.update(baseline_image=bimg, baseline_caption=_pred_text(b.classes, b.probs[-1]))
                entry["baseline"] = {"class": b.classes[b.predicted()], "prob": _r(b.probs[-1].max())}
            rows.append(row)
            data.append(entry)
        fig = plots.robustness_grid_figure(rows, width=_width_px(s, "robustness"), font_size=s["output"]["font_size"],
                                           title=items[i][0] if s["output"]["titles"] else None)
        stem = f"robustness-{names[i]}"
        files = exporter.write(fig, stem)
        sidecar(stem, "robustness", [i], {"rows": data, "note": (
            "Corruptions are applied to the photo at shorter side 224 px; attacks change the model-size input "
            "(8-bit, as saved), shown stretched back to the photo's aspect. Untargeted attacks push away from "
            "the crafting model's clean prediction.")}, files)


# -- metrics --------------------------------------------------------------------------------------------
def map_curves(models: dict, inputs: dict, targets: dict, saliency_map: np.ndarray, steps: int = 20,
               fill: str = "blur", n_glimpses: dict | None = None) -> dict:
    """Deletion and insertion curves of one map, scored on every model: {role: {mode: Curve}}."""
    out = {}
    for role, model in models.items():
        out[role] = {mode: mx.deletion_insertion(model, inputs[role], saliency_map, targets[role], steps=steps,
                                                 mode=mode, baseline=fill,
                                                 n_glimpses=(n_glimpses or {}).get(role),
                                                 batch_size=min(steps + 1, 32))
                     for mode in ("deletion", "insertion")}
    return out


def _stats(values) -> tuple[float | None, float | None, float | None, int]:
    xs = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if len(xs) == 0:
        return None, None, None, 0
    sd = float(xs.std(ddof=1)) if len(xs) > 1 else None
    return float(xs.mean()), sd, (sd / np.sqrt(len(xs)) if sd is not None else None), len(xs)


def summarise(records: list[dict], keys: tuple[str, ...], values: tuple[str, ...]) -> list[dict]:
    """Mean, standard deviation and standard error of ``values`` over records grouped by ``keys``
    (groups in first-seen order; missing and non-finite values skipped)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    rows = []
    for key, rs in groups.items():
        row = dict(zip(keys, key))
        for v in values:
            mean, sd, sem, count = _stats([r.get(v) for r in rs])
            row.update({v: _r(mean), f"{v}_sd": _r(sd), f"{v}_sem": _r(sem), f"{v}_n": count})
        rows.append(row)
    return rows


def _map_label(map_model: str, method: str) -> str:
    if method == "focus":
        return "MGNet focus map"
    if method == "random":
        return "random map"
    return f"{map_model} · {mx.METHODS[method].label}"


def run_metrics(s: dict, models: dict, items: list[tuple[str, Path]], staging: Staging, device,
                progress: bool = True) -> dict:
    mg = models["mgnet"]
    S = mg.image_size
    n = s["n_glimpses"]
    roles = [r for r in ROLES if r in models]
    labels = _true_labels(mg, [p for _, p in items])
    records, curves_out, images_out = [], [], []
    mean_curves: dict = {}
    correct = {r: [] for r in roles}
    area = []
    bar = _progress_bar(len(items), "metrics", progress)
    for lo in range(0, len(items), s["batch_size"]):
        chunk = items[lo:lo + s["batch_size"]]
        photos = []
        for shown, path in chunk:
            try:
                photos.append(load_image(path))
            except ValueError as exc:
                raise UsageError(f"{shown}: {exc}") from None
        an = {r: analyze_batch(models[r], photos, n if r == "mgnet" else None, s["batch_size"]) for r in roles}
        for j, photo in enumerate(photos):
            i = lo + j
            shown = chunk[j][0]
            a = an["mgnet"][j]
            inputs = {r: to_model_input(photo, models[r].image_size) for r in roles}
            own = {r: an[r][j].predicted() for r in roles}
            targets = {r: (resolve_target(s["target"], models[r], own["mgnet"]) if s["target"] is not None
                           else own[r]) for r in roles}
            label = labels[i]
            for r in roles:
                if label is not None:
                    correct[r].append(models[r].classes[own[r]] == label)
            boxes = a.boxes_model[1:]
            focus = focus_map(a.boxes_model, S, S)
            union = np.zeros((S, S))
            for b in boxes:
                union = np.maximum(union, geometry.box_mask(b, S, S))
            area.append(float(union.mean()))
            maps = [("MGNet", "focus", focus, None)]
            for r in s["models"]:
                for method in s["methods"]:
                    att = _explain(models, r, inputs[r], method, targets[r], s, n)
                    maps.append((ROLE_LABELS[r], method, att.map, (r, att)))
            rng = np.random.default_rng([s["seed"], i])
            maps.append(("reference", "random", rng.random((S, S)).astype(np.float32), None))
            image_curves = []
            for map_model, method, m, origin in maps:
                on = _map_on(m, S)
                inside = mx.mass_inside(on, boxes, S, S)
                iou = mx.topk_iou(on, focus, s["topk"])
                captum = {}
                if origin is not None:
                    r, att = origin
                    if s["infidelity"] and method != "gradcam":
                        captum["infidelity"] = mx.infidelity(
                            models[r], inputs[r], method, attribution=att, seed=s["seed"],
                            n_glimpses=None if models[r].is_baseline else n,
                            s_grad=None if models[r].is_baseline else s["s_grad"])
                    if s["sensitivity"]:
                        captum["sensitivity"] = mx.sensitivity(
                            models[r], inputs[r], method, att.target, seed=s["seed"],
                            n_glimpses=None if models[r].is_baseline else n,
                            s_grad=None if models[r].is_baseline else s["s_grad"],
                            **s["method_options"].get(method, {}))
                curves = map_curves(models, inputs, targets, m, s["steps"], s["fill"],
                                    {r: (None if models[r].is_baseline else n) for r in roles})
                for e in roles:
                    relation = ("reference" if map_model == "reference" else
                                "own" if map_model == ROLE_LABELS[e] else "cross")
                    del_c, ins_c = curves[e]["deletion"], curves[e]["insertion"]
                    rec = {"image": shown, "label": label, "map_model": map_model, "method": method,
                           "map": _map_label(map_model, method), "scored_on": ROLE_LABELS[e], "relation": relation,
                           "target": int(targets[e]), "target_class": models[e].classes[targets[e]],
                           "deletion_auc": _r(del_c.auc), "insertion_auc": _r(ins_c.auc),
                           "mass_inside": _r(inside), "topk_iou": _r(iou),
                           "infidelity": _r(captum.get("infidelity")) if relation == "own" else None,
                           "sensitivity": _r(captum.get("sensitivity")) if relation == "own" else None}
                    records.append(rec)
                    image_curves.append({"map": rec["map"], "scored_on": rec["scored_on"],
                                         "deletion": _r(del_c.probs, 5), "insertion": _r(ins_c.probs, 5)})
                    for mode, c in (("deletion", del_c), ("insertion", ins_c)):
                        mean_curves.setdefault((mode, ROLE_LABELS[e], rec["map"]), []).append(c.probs)
                    fractions = del_c.fractions
            curves_out.append({"image": shown, "curves": image_curves})
            images_out.append({"path": shown, "label": label, "image_hash": image_hash(photo),
                               "predictions": {ROLE_LABELS[r]: models[r].classes[own[r]] for r in roles}})
            bar.update(1)
    bar.close()

    curve_summary = summarise(records, ("map", "map_model", "method", "scored_on", "relation"),
                              ("deletion_auc", "insertion_auc"))
    seen_maps = []
    agreement = [row for row in summarise([r for r in records if r["scored_on"] == "MGNet"],
                                          ("map", "map_model", "method"), ("mass_inside", "topk_iou"))]
    captum_rows = [row for row in summarise([r for r in records if r["relation"] == "own" and r["method"] not in
                                             ("focus", "random")], ("map", "scored_on"),
                                            ("infidelity", "sensitivity"))]
    for row in curve_summary:
        if row["map"] not in seen_maps:
            seen_maps.append(row["map"])
    accuracy = {ROLE_LABELS[r]: (_r(np.mean(correct[r])) if correct[r] else None) for r in roles}
    fractions_list = _r(fractions, 6)
    mean_curve_rows = [{"mode": mode, "scored_on": e, "map": m, "probs": _r(np.mean(np.stack(v), axis=0), 5)}
                       for (mode, e, m), v in mean_curves.items()]
    settings = public_settings(s)
    env = environment(device)
    summary = {"deletion_insertion": curve_summary, "agreement": agreement, "captum": captum_rows,
               "accuracy": accuracy, "chance_mass_inside": _r(np.mean(area)), "fractions": fractions_list,
               "mean_curves": mean_curve_rows}
    exporter = Exporter(staging, [f for f in s["output"]["formats"]], s["output"]["dpi"])
    plot_files = []
    for mode in ("deletion", "insertion"):
        for e in roles:
            series = {row["map"]: row["probs"] for row in mean_curve_rows
                      if row["mode"] == mode and row["scored_on"] == ROLE_LABELS[e]}
            fig = plots.sweep_figure(fractions_list, series, f"fraction of pixels {'deleted' if mode == 'deletion' else 'inserted'}",
                                     ylabel="probability of the predicted class",
                                     title=f"{mode.capitalize()} curves scored on {ROLE_LABELS[e]} (mean of {len(items)} images)",
                                     height=460)
            fig.update_layout(width=760, legend=dict(orientation="h", x=0, y=-0.2, yanchor="top", xanchor="left"),
                              margin=dict(l=60, r=20, t=45, b=150))
            plot_files += exporter.write(fig, f"{mode}-{e}")
        bars = {row_e: {row["map"]: (row[f"{mode}_auc"] or 0.0, row[f"{mode}_auc_sem"] or 0.0)
                        for row in curve_summary if row["scored_on"] == row_e}
                for row_e in [ROLE_LABELS[e] for e in roles]}
        better = "lower" if mode == "deletion" else "higher"
        fig = plots.metric_bars_figure(bars, f"{mode} AUC ({better} is better)",
                                       title=f"{mode.capitalize()} AUC by map and scoring model (mean ± s.e.m.)",
                                       height=440)
        fig.update_layout(width=760)
        plot_files += exporter.write(fig, f"auc-{mode}")
    agree_bars = {"mass inside glimpse boxes": {row["map"]: (row["mass_inside"] or 0.0, row["mass_inside_sem"] or 0.0)
                                                for row in agreement},
                  f"top-{s['topk']:.0%} IoU with focus map": {row["map"]: (row["topk_iou"] or 0.0,
                                                                          row["topk_iou_sem"] or 0.0)
                                                             for row in agreement}}
    fig = plots.metric_bars_figure(agree_bars, "agreement with MGNet's glimpses", yrange=[0, 1],
                                   title="Agreement of each map with where MGNet looked (mean ± s.e.m.)", height=440)
    fig.update_layout(width=760)
    plot_files += exporter.write(fig, "agreement")

    columns = ["image", "label", "map", "map_model", "method", "scored_on", "relation", "target", "target_class",
               "deletion_auc", "insertion_auc", "mass_inside", "topk_iou", "infidelity", "sensitivity"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    staging.write("metrics.csv", buf.getvalue())
    staging.write("metrics.md", metrics_markdown(s, models, items, summary))
    doc = dict(settings, images=images_out, summary=summary, records=records, files=sorted(
        ["metrics.csv", "metrics.md", "metrics.json", "curves.json"] + plot_files),
        export_problem=exporter.problem, environment=env)
    staging.write_json("metrics.json", doc)
    staging.write_json("curves.json", {"schema": SCHEMA, "fractions": fractions_list, "images": curves_out})
    return doc


def _fmt(mean, sem, nd=3) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{nd}f}" + (f" ± {sem:.{nd}f}" if sem is not None else "")


def metrics_markdown(s: dict, models: dict, items, summary: dict) -> str:
    lines = ["# Focus vs saliency: deletion, insertion and agreement", ""]
    lines.append(f"{len(items)} images from `{', '.join(s['images'])}`"
                 + (f" (--limit {s['limit']}, spread evenly over the sorted file list)" if s["limit"] else "")
                 + f"; seed {s['seed']}.")
    for role, model in models.items():
        info = model.checkpoint_info
        lines.append(f"- {ROLE_LABELS[role]}: `{s['checkpoints'][role]['path']}` (sha256 `{info['sha256'][:16]}…`, "
                     f"{model.n_glimpses} glimpse{'s' if model.n_glimpses > 1 else ''}, {model.image_size} px)")
    acc = summary["accuracy"]
    if any(v is not None for v in acc.values()):
        lines.append("- Top-1 accuracy on these images: " + ", ".join(
            f"{k} {v:.1%}" for k, v in acc.items() if v is not None))
    methods = ", ".join(mx.METHODS[m].label for m in s["methods"]) or "none"
    lines += ["", f"Saliency maps: {methods}, for {', '.join(ROLE_LABELS[m] for m in s['models'])}; each explains "
              "its model's final prediction" + ("" if s["target"] is None else f" (target: {s['target']})") + ".",
              "MGNet's focus map spreads one unit of mass over each glimpse box 2..T (`analysis.focus_map`). "
              "The random map (uniform noise) gives the chance level.", ""]
    fills = {"blur": "a strongly blurred copy of the image", "black": "black"}
    lines += ["## Deletion and insertion AUC", "",
              f"Pixels of the model input are ranked by the map and changed in {s['steps']} steps (Petsiuk et al. "
              f"2018): deletion replaces the most salient first with {fills[s['fill']]}, insertion "
              "starts from that and puts them back. The score is the scoring model's softmax probability of its "
              "own clean prediction; AUC is the trapezoid area over the fraction changed. Deletion: lower is "
              "better; insertion: higher is better. *own*: the map explains the scoring model; *cross*: it "
              "explains the other model. Mean ± standard error over images.", "",
              "| map | scored on | relation | deletion AUC ↓ | insertion AUC ↑ |", "|---|---|---|---|---|"]
    for row in summary["deletion_insertion"]:
        lines.append(f"| {row['map']} | {row['scored_on']} | {row['relation']} | "
                     f"{_fmt(row['deletion_auc'], row['deletion_auc_sem'])} | "
                     f"{_fmt(row['insertion_auc'], row['insertion_auc_sem'])} |")
    k = f"{s['topk']:.0%}"
    lines += ["", "## Agreement with MGNet's glimpses", "",
              "*Mass inside*: share of the map's mass inside the union of MGNet's glimpse boxes 2..T (chance "
              f"level, the boxes' mean area share: {summary['chance_mass_inside']:.3f}). *Top-{k} IoU*: IoU of "
              f"the top {k} pixels of the map and of MGNet's focus map.", "",
              f"| map | mass inside glimpse boxes | top-{k} IoU with focus map |", "|---|---|---|"]
    for row in summary["agreement"]:
        lines.append(f"| {row['map']} | {_fmt(row['mass_inside'], row['mass_inside_sem'])} | "
                     f"{_fmt(row['topk_iou'], row['topk_iou_sem'])} |")
    shown = [k for k in ("infidelity", "sensitivity") if s[k]]
    if summary["captum"] and shown:
        heads = {"infidelity": "infidelity ↓", "sensitivity": "max-sensitivity ↓"}
        lines += ["", "## Captum metrics (on the explained model)", ""]
        if s["infidelity"]:
            lines.append("Infidelity (Yeh et al. 2019, `captum.metrics.infidelity`, Gaussian noise sd 0.03, "
                         "normalised): lower is better; not defined for Grad-CAM.")
        if s["sensitivity"]:
            lines.append("Max-sensitivity (`captum.metrics.sensitivity_max`, uniform noise ±0.02): lower is more "
                         "stable.")
        lines += ["", "| map | " + " | ".join(heads[k] for k in shown) + " |", "|---" * (len(shown) + 1) + "|"]
        for row in summary["captum"]:
            if all(row[k] is None for k in shown):
                continue
            lines.append(f"| {row['map']} | " + " | ".join(_fmt(row[k], row[f"{k}_sem"], 4) for k in shown) + " |")
    lines += ["", "Files: `metrics.csv` (one row per image × map × scoring model), `metrics.json` (settings, "
              "summary, rows), `curves.json` (every per-image curve), and the plots.", ""]
    return "\n".join(lines)


# -- command line ---------------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser):
    g = p.add_argument_group("models")
    g.add_argument("--mgnet", metavar="PATH", help=f"MGNet checkpoint (default {DEFAULT_CHECKPOINTS['mgnet']})")
    g.add_argument("--baseline", metavar="PATH",
                   help=f"baseline checkpoint, or 'none' (default {DEFAULT_CHECKPOINTS['baseline']})")
    g.add_argument("--ignore-hash", action="store_true",
                   help="use a checkpoint even if its sha256 differs from the one in --settings")
    g.add_argument("--n-glimpses", type=int, metavar="T", help="glimpses MGNet takes (default: the checkpoint's)")
    g = p.add_argument_group("saliency")
    g.add_argument("--models", nargs="+", metavar="ROLE", help="whose saliency maps: mgnet and/or baseline "
                   "(default both)")
    g.add_argument("--methods", nargs="+", metavar="METHOD",
                   help=f"Captum methods, or 'none' (default saliency integrated_gradients gradcam; all: "
                        f"{' '.join(mx.METHODS)})")
    g.add_argument("--target", help="class explained: default each model's own final prediction; 'mgnet' "
                   "(MGNet's prediction for every model), a class index or a class name")
    g.add_argument("--true-grad", action="store_true",
                   help="explain MGNet with true gradients (s_grad 1.0) instead of its 0.02 re-scaling")
    g.add_argument("--topk", type=float, help="fraction of pixels for the top-k IoU (default 0.2)")
    g = p.add_argument_group("run")
    g.add_argument("--settings", metavar="JSON", help="settings file exported by the app (or a sidecar JSON "
                   "written by this tool); command-line options override it (schema: docs/figures.md)")
    g.add_argument("--out", metavar="DIR", help="output folder (created; files of the same name are replaced)")
    g.add_argument("--limit", type=int, metavar="N", help="use N images spread evenly over the sorted list (0 = all)")
    g.add_argument("--seed", type=int, help="seed of every random choice (default 0)")
    g.add_argument("--batch-size", type=int, metavar="B", help="images per forward pass (default 8)")
    g.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda (default auto)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--format", nargs="+", metavar="FMT", help="png svg pdf html (default png svg); without a "
                   "Chrome for kaleido, html is written instead with a warning")
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
               "1 unexpected failure; a failed run leaves no files behind. See docs/figures.md.")
    g = p.add_argument_group("input and figures")
    g.add_argument("--images", nargs="+", metavar="PATH", help="image files and/or folders (searched recursively)")
    g.add_argument("--figures", nargs="+", metavar="KIND", help="strip grid robustness (default all three)")
    g.add_argument("--corruption", nargs="+", metavar="NAME:SEV",
                   help="robustness rows, e.g. gaussian_noise:3 fog:5, or 'none' (default gaussian_noise:3)")
    g.add_argument("--attack", nargs="+", metavar="EPS", help="robustness rows: attack budgets in 1/255, or 'none' "
                   "(default 2)")
    g.add_argument("--attack-method", default="pgd", choices=ATTACK_METHODS, help="default pgd (pixel space, L-inf)")
    g.add_argument("--attack-steps", type=int, default=10, help="PGD steps (default 10)")
    g.add_argument("--attack-norm", default="linf", choices=("linf", "l2"))
    g.add_argument("--attack-source", default="mgnet", choices=ATTACK_SOURCES,
                   help="craft on mgnet (baseline sees a transfer attack), on baseline, or each white-box")
    g.add_argument("--attack-true-grad", action="store_true", help="craft on MGNet with true gradients (s_grad 1)")
    g = p.add_argument_group("layout")
    g.add_argument("--width", help="figure width: column (3.5 in), page (7 in) or inches (default: column for "
                   "strips, page for grids)")
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
               "  python -m mgnet.figures metrics --data ../shared/data/imagenette2-224/val --limit 50 --out metrics")
    p.add_argument("--data", metavar="DIR", help="image folder (ImageFolder layout gives true labels)")
    p.add_argument("--steps", type=int, help="deletion/insertion steps (default 20)")
    p.add_argument("--fill", choices=("blur", "black"), help="what deleted pixels become (default blur)")
    p.add_argument("--infidelity", dest="infidelity", action="store_true", default=None,
                   help="Captum infidelity of each map on its model (default on)")
    p.add_argument("--no-infidelity", dest="infidelity", action="store_false")
    p.add_argument("--sensitivity", dest="sensitivity", action="store_true", default=None,
                   help="Captum max-sensitivity (10 extra explanations per map; default off)")
    _common(p)
    p.set_defaults(images=None)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "figures"
    if argv and argv[0] in ("metrics", "figures"):
        command = argv.pop(0)
    parser = metrics_parser() if command == "metrics" else figures_parser()
    args = parser.parse_args(argv)
    staging = None
    try:
        s = build_settings(args, command)
        out = Path(args.out or ("metrics" if command == "metrics" else "figures"))
        try:
            device = pick_device(args.device)
        except (SystemExit, RuntimeError) as exc:
            raise UsageError(str(exc).removeprefix("error: ")) from None
        items = collect_images(s["images"], s["_image_files"], s["limit"])
        models = load_models(s, device, args.ignore_hash)
        for model in models.values():
            resolve_target(s["target"], model, 0)  # refuse a bad --target before any work
        photos = decode_images(items) if command == "figures" else None
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        staging = Staging(out)
        if command == "metrics":
            run_metrics(s, models, items, staging, device, progress=not args.no_progress)
        else:
            run_figures(s, models, items, photos, staging, device, progress=not args.no_progress)
        written = staging.commit()
        staging = None
        _note(f"wrote {len(written)} files to {out}/")
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


if __name__ == "__main__":
    sys.exit(main())
