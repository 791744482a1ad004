"""What a run reads: image files, checkpoints (their sha256 checked), true labels, and the target class."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..checkpoints import CheckpointError, load_checkpoint
from ..data import IMAGE_EXTENSIONS, PHOTO_MIN_SIDE, load_image
from .settings import ROLE_LABELS, ROLES, FigureSettings, UsageError, note


def spread_indices(n: int, limit: int | None) -> np.ndarray:
    """``limit`` indices spread evenly over range(n) (all when limit is None, 0 or >= n)."""
    if not limit or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def _images_in(shown: str, folder: Path) -> list[tuple[str, Path]]:
    inside = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not inside:
        raise UsageError(f"{shown} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    return [(str(Path(shown) / p.relative_to(folder)), p) for p in inside]


def collect_images(given: list[str], files: list[Path], limit: int | None) -> list[tuple[str, Path]]:
    """(display path, file) of every image: files as given, folders searched recursively (sorted)."""
    found: list[tuple[str, Path]] = []
    for shown, path in zip(given, files):
        if path.is_dir():
            found += _images_in(shown, path)
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
    return [unique[i] for i in spread_indices(len(unique), limit)]


def decode_images(items: list[tuple[str, Path]]) -> list[np.ndarray]:
    photos = []
    for shown, path in items:
        try:
            photos.append(load_image(path, min_side=PHOTO_MIN_SIDE))  # as the app decodes it
        except ValueError as exc:
            raise UsageError(f"{shown}: {exc}") from None
    return photos


def safe_name(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:limit] or "image"


def _load_one(role: str, ref, device, ignore_hash: bool):
    if not ref.file.is_file():
        hint = (
            " Train one with python -m mgnet.train, or pass --"
            + role
            + " PATH"
            + (" (or --baseline none)" if role == "baseline" else "")
            + "."
        )
        raise UsageError(f"{ROLE_LABELS[role]} checkpoint {ref.path} not found.{hint}")
    try:
        model = load_checkpoint(ref.file, device)
    except CheckpointError as exc:
        raise UsageError(f"{ROLE_LABELS[role]} checkpoint: {exc}") from None
    sha = model.checkpoint_info["sha256"]
    if ref.sha256 and str(ref.sha256).lower() != sha:
        message = (
            f"{ROLE_LABELS[role]} checkpoint {ref.path} has sha256 {sha[:12]}..., but the settings "
            f"ask for {str(ref.sha256)[:12]}...: it is not the model the settings were made with"
        )
        if not ignore_hash:
            raise UsageError(message + " (pass --ignore-hash to use it anyway).")
        note("warning: " + message + "; using it anyway (--ignore-hash).")
    ref.sha256 = sha  # the sidecars name the file that was used
    return model


def load_models(settings: FigureSettings, device, ignore_hash: bool = False) -> dict:
    """Load the checkpoints named in the settings; check sha256 values given there. Returns {role: model}."""
    models = {
        role: _load_one(role, settings.checkpoints[role], device, ignore_hash)
        for role in ROLES
        if settings.checkpoints.get(role) is not None
    }
    if models["mgnet"].is_baseline:
        raise UsageError(
            f"--mgnet {settings.checkpoints['mgnet'].path} is a one-glimpse baseline; it needs a multi-glimpse MGNet."
        )
    if "baseline" in models and list(models["baseline"].classes) != list(models["mgnet"].classes):
        raise UsageError("the MGNet and baseline checkpoints have different classes; they cannot be compared.")
    return models


def true_labels(model, files: list[Path]) -> list[str | None]:
    """Class name of each image when its parent folder is a class id the model knows (ImageFolder layout)."""
    ids = list(model.checkpoint_info.get("class_ids") or model.classes)
    lookup = {c: i for i, c in enumerate(ids)}
    return [model.classes[lookup[f.parent.name]] if f.parent.name in lookup else None for f in files]


def resolve_target(target, model, mgnet_prediction: int | None = None) -> int | None:
    """None (the model's own prediction), 'mgnet' (MGNet's prediction), a class index or a class name."""
    if target is None:
        return None
    if target == "mgnet":
        return mgnet_prediction
    if isinstance(target, int):
        if not 0 <= target < len(model.classes):
            raise UsageError(f"--target {target} is not a class index (0..{len(model.classes) - 1}).")
        return target
    if str(target) in model.classes:
        return model.classes.index(str(target))
    raise UsageError(
        f"--target {target!r} is neither 'mgnet', a class index nor a class name of the model "
        f"(e.g. {', '.join(model.classes[:3])})."
    )
