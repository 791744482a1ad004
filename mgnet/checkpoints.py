"""Safe loading and saving of MGNet checkpoints: our own format and the authors' Lightning files.

Every file is loaded with ``torch.load(weights_only=True)``; the only class allowed beyond plain
containers and tensors is ``argparse.Namespace`` (the authors' hyper-parameters).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import pickle
import re
from pathlib import Path

import torch

from .model import MGNet
from .imagenet100 import IMAGENET100
from .utils import atomic_write

FORMAT = "mgnet-explorer-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with a message that says why."""


# The project's default pair in checkpoints/: the app opens on these.
DEFAULT_CHECKPOINTS = ("mgnet-resnet18-imagenette.pt", "baseline-resnet18-imagenette.pt")


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_checkpoint_file(path) -> dict:
    """torch.load with weights_only=True; turns every failure into a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist or is not a file.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path.name} is empty: not a checkpoint.")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", text)
        if found:
            raise CheckpointError(
                f"{path.name} was refused: it holds a Python object ({found.group(1)}) besides weights and plain "
                "settings. Such files can run code when loaded, so it was not unpickled."
            ) from None
        raise CheckpointError(
            f"{path.name} is not a readable PyTorch checkpoint (damaged or another kind of file)."
        ) from None
    except MemoryError:
        raise CheckpointError(f"{path.name} is too large to load in memory.") from None
    except Exception as exc:  # torch.load fails in many ways on damaged input; none of them is ours to leak
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path.name} is not a readable PyTorch checkpoint (truncated, damaged or another kind of file): {detail}."
        ) from None
    if not isinstance(blob, dict):
        raise CheckpointError(f"{path.name} holds a {type(blob).__name__}, not a checkpoint dictionary.")
    return blob


def _hparam(hp, name, default=None):
    if isinstance(hp, dict):
        return hp.get(name, default)
    return getattr(hp, name, default)


def _load_weights(model: MGNet, state: dict, name: str):
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
        if unexpected:
            parts.append(
                f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:6])}"
                f"{' ...' if len(unexpected) > 6 else ''}"
            )
        raise CheckpointError(
            f"{name} does not match an MGNet with backbone {model.backbone_name}: " + "; ".join(parts) + "."
        )
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{name}: entry {key} is not a tensor.")
        if value.shape != own[key].shape:
            raise CheckpointError(
                f"{name}: {key} has shape {tuple(value.shape)} but backbone {model.backbone_name} with "
                f"{model.num_classes} classes needs {tuple(own[key].shape)} (wrong backbone or class count?)."
            )
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})


def _from_authors(blob: dict, name: str) -> tuple[MGNet, dict]:
    hp = blob["hyper_parameters"]
    backbone = _hparam(hp, "model", "resnet18")
    num_classes = int(_hparam(hp, "num_class", 100))
    n_iter = int(_hparam(hp, "n_iter", 4))
    state = {k[len("model.") :]: v for k, v in blob["state_dict"].items() if k.startswith("model.")}
    has_aux = any(k.startswith("glimpse_fc.") for k in state)
    trans = _hparam(hp, "trans_method", "tight-crop")
    if trans not in (None, "tight-crop"):
        raise CheckpointError(f"{name} uses translation method {trans!r}; only 'tight-crop' is supported.")
    try:
        model = MGNet(
            backbone=backbone,
            num_classes=num_classes,
            n_glimpses=n_iter,
            scale=float(_hparam(hp, "scale", 2.33)),
            scale_min=float(_hparam(hp, "scale_min", 0.2)),
            scale_max=float(_hparam(hp, "scale_max", 0.5)),
            s_grad=float(_hparam(hp, "s", 0.02)),
            alpha=float(_hparam(hp, "alpha", 0.6)) if has_aux else 0.0,
            image_size=224,
        )
    except ValueError as exc:
        raise CheckpointError(f"{name}: {exc}") from None
    if has_aux and model.glimpse_fc is None:
        raise CheckpointError(f"{name} has an auxiliary classifier but n_iter={n_iter}; it needs n_iter >= 2.")
    _load_weights(model, state, name)
    if num_classes == len(IMAGENET100):
        model.classes = [label for _, label in IMAGENET100]
        class_ids = [wnid for wnid, _ in IMAGENET100]
    else:
        class_ids = [str(i) for i in range(num_classes)]
    info = {
        "format": "authors-lightning",
        "kind": "baseline" if model.is_baseline else "mgnet",
        "class_ids": class_ids,
        "provenance": {
            "source": "authors' published PyTorch-Lightning checkpoint",
            "epoch": blob.get("epoch"),
            "global_step": blob.get("global_step"),
        },
    }
    return model, info


def _from_ours(blob: dict, name: str) -> tuple[MGNet, dict]:
    if blob.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{name} was written by a newer version of this project; upgrade to load it.")
    cfg = dict(blob.get("config") or {})
    try:
        model = MGNet(**cfg)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{name}: its configuration is not valid ({exc}).") from None
    _load_weights(model, blob.get("state_dict") or {}, name)
    classes = blob.get("classes")
    if not isinstance(classes, list) or len(classes) != model.num_classes:
        raise CheckpointError(f"{name}: class list does not match its {model.num_classes} outputs.")
    model.classes = [str(c) for c in classes]
    info = {
        "format": FORMAT,
        "kind": "baseline" if model.is_baseline else "mgnet",
        "class_ids": list(blob.get("class_ids") or model.classes),
        "provenance": blob.get("provenance", {}),
    }
    return model, info


def load_checkpoint(path, device=None) -> MGNet:
    """Load a checkpoint (ours, or the authors' Lightning ``.ckpt``) into an eval-mode MGNet.

    The model carries ``classes``, ``image_size`` and ``checkpoint_info`` (format, kind, sha256,
    provenance). Its convolution weights are in channels_last memory format. For forward-only work,
    ``model.prepare_for_inference`` gives a faster copy (``analysis`` does this itself). Raises CheckpointError (a ValueError) with a readable message on any bad file.
    """
    path = Path(path)
    blob = read_checkpoint_file(path)
    if blob.get("format") == FORMAT:
        model, info = _from_ours(blob, path.name)
    elif isinstance(blob.get("state_dict"), dict) and "hyper_parameters" in blob:
        model, info = _from_authors(blob, path.name)
    else:
        raise CheckpointError(
            f"{path.name} is a PyTorch file but not an MGNet checkpoint (expected this project's format or the "
            f"authors' Lightning .ckpt with 'state_dict' and 'hyper_parameters')."
        )
    info["sha256"] = file_sha256(path)
    info["path"] = str(path)
    info["name"] = path.stem
    model.checkpoint_info = info
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    # channels_last: a memory layout only (same modules, same gradients up to float rounding); on CPU it
    # roughly halves the time of the small glimpse convolutions, forward and backward.
    return model.to(device, memory_format=torch.channels_last).eval()


def save_checkpoint(model: MGNet, path, classes=None, class_ids=None, provenance=None, half: bool = True):
    """Write our format: fp16 weights, configuration, class names and provenance, atomically."""
    path = Path(path)
    state = {
        k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu().clone()
        for k, v in model.state_dict().items()
    }
    blob = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config(),
        "classes": list(classes or model.classes),
        "class_ids": list(class_ids or classes or model.classes),
        "state_dict": state,
        "provenance": {"saved": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **(provenance or {})},
    }
    atomic_save(blob, path)
    return path


def atomic_save(obj, path):
    """torch.save to a temporary file, then rename, so a crash never leaves a half-written file."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def parent_record(path, source) -> dict:
    """What a child's provenance records of the checkpoint ``source`` loaded from ``path``: its file, sha256,
    the command that made it and, recursively, its own parents (``init_from``, ``blend``)."""
    info = source.checkpoint_info
    prov = info.get("provenance") or {}
    keep = (
        "git_commit",
        "saved",
        "command",
        "epochs",
        "train_seconds",
        "total_epochs",
        "total_train_seconds",
        "init_from",
        "blend",
        "hardware",
    )
    return {"path": str(path), "sha256": info["sha256"], **{k: prov[k] for k in keep if k in prov}}


def training_chain(provenance: dict) -> list[dict]:
    """The provenance of every training stage behind a checkpoint, oldest first (its ``init_from`` chain; a
    weight average (``blend``, ``mgnet.blend``) continues with its first parent, the second being a side branch)."""
    chain, prov = [], provenance
    while prov:
        chain.append(prov)
        prov = prov.get("init_from") or (prov.get("blend") or {}).get("first")
    return chain[::-1]


def stage_option(stage: dict, name: str):
    """A training option of one stage: from its recorded args, else read off its command line (earlier
    stages keep only their command); None when neither has it."""
    value = (stage.get("args") or {}).get(name)
    if value is None:
        words = str(stage.get("command") or "").split()
        flag = "--" + name.replace("_", "-")
        value = words[words.index(flag) + 1] if flag in words[:-1] else None
    return value


def training_recipe(info: dict) -> str:
    """How a checkpoint was trained, in a few words, from its ``checkpoint_info``: the authors' release,
    a chain of stages that included the location stage, off-centre data only, or the paper's recipe."""
    if info.get("format") == "authors-lightning":
        return "authors' checkpoint"
    chain = training_chain(info.get("provenance") or {})
    used = {o for stage in chain for o in ("location_weight", "off_centre") if float(stage_option(stage, o) or 0) > 0}
    if "location_weight" in used:
        return "location stage"
    if "off_centre" in used:
        return "off-centre data"
    return (
        "paper recipe" if any(stage.get("args") or stage.get("command") for stage in chain) else "recipe not recorded"
    )
