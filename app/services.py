"""Caching and wiring between Streamlit and the ``mgnet`` library. No model maths here.

* Models: loaded once per process with ``st.cache_resource`` (keyed by path, modification time and
  size, so a replaced file is reloaded) and shared by every session. Every operation on a model goes
  through an ``mgnet`` function that holds ``mgnet.utils.model_lock(model)``.
* Figures: ``figure(kind, key, build)`` keeps built plotly figures in ``st.cache_resource`` (shared, not
  copied): a page is drawn again on every widget change, and building its figures cost more than a fifth
  of a student's server time. Nothing may change a figure once built (drawing and export only read it).
* Results: ``memo(kind, key, compute)`` stores plain results in ``st.cache_data`` (``max_entries`` and
  ``ttl`` bound the memory), keyed by the image hash and every setting. ``compute`` runs *outside*
  the cached function, so it may drive progress bars (Streamlit would otherwise try to replay those
  UI updates on a cache hit).
"""

from __future__ import annotations

import gc
import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import streamlit as st
import torch

import mgnet
from mgnet import analysis, geometry
from mgnet.checkpoints import DEFAULT_CHECKPOINTS, CheckpointError, training_recipe
from mgnet.data import PHOTO_MIN_SIDE, image_hash, load_photo, resize_rgb, to_model_input, to_tensor
from mgnet.model import glimpse_options
from mgnet.utils import device_label, pick_device

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = Path(__file__).resolve().parent / "examples"
CHECKPOINT_SUFFIXES = (".pt", ".ckpt", ".pth")
RESULT_TTL = 3600  # seconds a cached result lives
RESULT_ENTRIES = 256  # cached results (analyses, maps, attacks) per process
FIGURE_ENTRIES = 256  # built plotly figures shared by reruns and sessions (each holds a downscaled photo or none)
IMAGE_ENTRIES = 8  # decoded photos kept per process (a 12 MP JPEG decodes to 9 MB; a 120 MP PNG is 360 MB)


# -- device and checkpoints ------------------------------------------------------------------------------
@st.cache_resource(show_spinner=False)
def device() -> torch.device:
    """CUDA when present, else CPU; MGNET_DEVICE=cpu|cuda forces one (an impossible request falls back to auto)."""
    try:
        return pick_device(os.environ.get("MGNET_DEVICE") or None)
    except (SystemExit, RuntimeError, ValueError):
        return pick_device(None)


def device_text() -> str:
    return device_label(device())


def checkpoint_dir() -> Path:
    """The folder the model picker lists: $MGNET_CHECKPOINTS, else checkpoints/ in the repository."""
    folder = os.environ.get("MGNET_CHECKPOINTS")
    return Path(folder).expanduser() if folder else ROOT / "checkpoints"


@dataclass
class ModelEntry:
    """One usable checkpoint: its model (shared, read-only) and what the page says about it."""

    path: Path
    model: Any
    key: str  # path|mtime|size: names this file's contents in result caches

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def is_baseline(self) -> bool:
        return bool(self.model.is_baseline)

    @property
    def kind(self) -> str:
        return "baseline" if self.is_baseline else "MGNet"

    def glimpses(self, n_glimpses: int | None) -> int | None:
        """The glimpse count a forward pass of this model takes (None for a baseline: the one rule in
        ``mgnet.model.glimpse_options``)."""
        return glimpse_options(self.model, n_glimpses=n_glimpses).get("n_glimpses")

    @property
    def sha256(self) -> str:
        return getattr(self.model, "checkpoint_info", {}).get("sha256", "")

    @property
    def recipe(self) -> str:
        return training_recipe(getattr(self.model, "checkpoint_info", {}))

    @property
    def label(self) -> str:
        m = self.model
        if self.is_baseline:
            detail = f"baseline, {m.backbone_name}, {m.image_size}px"
        else:
            detail = f"MGNet, {m.backbone_name}, {m.n_glimpses} glimpses of {m.glimpse_size()}px"
        return f"{self.path.stem} ({detail}; {self.recipe})"

    @property
    def short(self) -> str:
        return self.path.stem


@dataclass
class Catalog:
    models: list[ModelEntry] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (file name, message)
    folder: Path | None = None

    def by_name(self, name: str | None) -> ModelEntry | None:
        return next((m for m in self.models if m.name == name), None)

    @property
    def mgnets(self) -> list[ModelEntry]:
        return [m for m in self.models if not m.is_baseline]

    @property
    def baselines(self) -> list[ModelEntry]:
        return [m for m in self.models if m.is_baseline]


@dataclass
class _Loaded:
    model: Any = None
    error: str | None = None


@st.cache_resource(show_spinner=False, max_entries=128)  # every file in the folder; errors are cached too
def _load(path: str, mtime_ns: int, size: int, device_str: str) -> _Loaded:
    """Load once per process (per file version); a bad file's message is cached too."""
    try:
        model = mgnet.load_checkpoint(path, device=device_str)
    except CheckpointError as exc:
        return _Loaded(error=str(exc))
    except Exception as exc:  # anything else a hostile file can provoke stays a message
        return _Loaded(error=f"{Path(path).name} could not be loaded ({type(exc).__name__}: {exc}).")
    for p in model.parameters():  # shared, read-only: no session may train it
        p.requires_grad_(False)
    return _Loaded(model=model)


def catalog(folder: Path | None = None) -> Catalog:
    folder = folder or checkpoint_dir()
    cat = Catalog(folder=folder)
    if not folder.is_dir():
        cat.errors.append(
            (
                str(folder),
                "The checkpoint folder does not exist. Put .pt/.ckpt files there, or "
                "point MGNET_CHECKPOINTS at a folder that has them.",
            )
        )
        return cat
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES)
    dev = str(device())
    for path in files:
        stat = path.stat()
        loaded = _load(str(path), stat.st_mtime_ns, stat.st_size, dev)
        if loaded.error:
            cat.errors.append((path.name, loaded.error))
        else:
            cat.models.append(ModelEntry(path, loaded.model, f"{path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}"))
    # MGNets first, then baselines; the project's defaults first within each, then its other checkpoints.
    cat.models.sort(
        key=lambda m: (m.is_baseline, m.name not in DEFAULT_CHECKPOINTS, "imagenette" not in m.name, m.name)
    )
    if cat.models:
        freeze_loaded_heap()
    return cat


_FROZE = threading.Event()


def freeze_loaded_heap() -> None:
    """Once per process, when the models are loaded: move every object alive now (modules, models, the libraries'
    tables) out of the garbage collector's reach with ``gc.freeze``, so that its full collections walk only what
    the script runs made since (which they still free). Before this, and with Streamlit's collection after every
    run (``runner.postScriptGC``, now off in .streamlit/config.toml), walking that heap cost about 0.3 CPU-s per
    run, 40% of a student's cycle (benchmarks/results/load_test.md)."""
    if not _FROZE.is_set():
        _FROZE.set()
        gc.collect()
        gc.freeze()


def relative_path(path: Path) -> str:
    """The path relative to the repository when it lies inside it (portable settings), else absolute."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(Path(path).resolve())


def compatible(a: ModelEntry, b: ModelEntry) -> bool:
    """Same classes and input size: their predictions, maps and attacks can be compared directly."""
    return list(a.model.classes) == list(b.model.classes) and a.model.image_size == b.model.image_size


# -- results cache ---------------------------------------------------------------------------------------
class _Miss(Exception):
    pass


_MISSING = object()


@st.cache_data(show_spinner=False, max_entries=RESULT_ENTRIES, ttl=RESULT_TTL)
def _slot(kind: str, key: tuple, _value=_MISSING):
    if _value is _MISSING:
        raise _Miss  # exceptions are not cached: the next call with a value fills this slot
    return _value


@st.cache_resource(show_spinner=False, max_entries=FIGURE_ENTRIES, ttl=RESULT_TTL)
def _figure_slot(kind: str, key: tuple, _value=_MISSING):
    """As ``_slot``, but the value is shared, not copied."""
    if _value is _MISSING:
        raise _Miss
    return _value


def _cached(slot, kind: str, key: tuple, compute: Callable[[], Any]):
    try:
        return slot(kind, key)
    except _Miss:
        pass
    return slot(kind, key, _value=compute())


def memo(kind: str, key: tuple, compute: Callable[[], Any]):
    """Cached result of ``compute()`` under (kind, key); computed outside the cache (see module doc)."""
    return _cached(_slot, kind, key, compute)


def figure(kind: str, key: tuple, build: Callable[[], Any]):
    """The figure ``build()`` makes, built once per (kind, key); ``key`` must name everything it shows."""
    return _cached(_figure_slot, kind, key, build)


def content_key(*parts) -> str:
    """A short hash of a figure's inputs: arrays by shape, dtype and bytes, anything else by its repr."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(f"{part.shape}{part.dtype}".encode())
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(repr(part).encode())
        h.update(b"|")
    return h.hexdigest()[:24]


def request_key(kind: str, request) -> tuple:
    import dataclasses
    import json

    return (kind, json.dumps(dataclasses.asdict(request), sort_keys=True, default=str))


def mark_done(kind: str, request):
    """Remember (process-wide, as long as results are cached) that ``request`` was computed."""
    memo("done", request_key(kind, request), lambda: True)


def was_done(kind: str, request) -> bool:
    """Whether ``request`` (a tab's request dataclass: photo, model and every setting) was computed in this
    process and its results are still cached: a page address that names it may show it without a click."""
    try:
        return bool(_slot("done", request_key(kind, request)))
    except _Miss:
        return False


# -- photos ----------------------------------------------------------------------------------------------
@dataclass
class Photo:
    image: np.ndarray  # RGB uint8; a large JPEG at 1/2 to 1/8 scale (mgnet.data.PHOTO_MIN_SIDE)
    key: str  # content hash of the decoded pixels (mgnet.data.image_hash)
    name: str
    source: str  # "example", "upload" or "camera"
    file_sha256: str
    file_size: tuple  # (width, height) of the file itself, after EXIF orientation
    data: bytes = b""  # the file as given (for the export bundle)

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    def size_text(self) -> str:
        """The size as the page shows it: "4000×3000 px", and the scale it was decoded at if not full size."""
        w, h = self.file_size
        if (w, h) == (self.width, self.height):
            return f"{w}×{h} px"
        return f"{w}×{h} px (decoded at 1/{round(w / self.width)} scale, {self.width}×{self.height})"

    @property
    def pixel_scale(self) -> tuple[float, float]:
        """File pixels per decoded pixel (x, y): 1 unless a large JPEG was decoded at reduced scale."""
        w, h = self.file_size
        return w / self.width, h / self.height

    def in_file_pixels(self, boxes) -> np.ndarray:
        """Boxes [..., 4] in the decoded photo's pixels, in the file's own pixels."""
        return geometry.rescale(boxes, *self.pixel_scale)


@st.cache_resource(show_spinner=False, max_entries=IMAGE_ENTRIES, ttl=RESULT_TTL)
def _decode(file_sha: str, _data: bytes) -> tuple[np.ndarray, str, tuple]:
    """Decoded once per file content and shared without copying (large photos are hundreds of MB), so the
    array is made read-only. An evicted photo is simply decoded again from the session's bytes."""
    image, size = load_photo(_data, min_side=PHOTO_MIN_SIDE)  # ValueError with a readable message
    image.flags.writeable = False
    return image, image_hash(image), size


def decode(data: bytes, name: str, source: str) -> Photo:
    """Decode uploaded/example bytes once per content; raises ValueError with load_image's message."""
    sha = hashlib.sha256(data).hexdigest()
    image, key, size = _decode(sha, data)
    return Photo(image, key, name, source, sha, size, data)


def picture(photo: Photo, max_side: int = 640):
    """The photo downscaled and encoded once for figures (tens of milliseconds for a large photo)."""
    from mgnet import plots

    scale = photo.pixel_scale  # labels in figures give pixel distances in the file's pixels
    return memo(
        "picture", (photo.key, max_side, scale), lambda: plots.picture(photo.image, max_side, pixel_scale=scale)
    )


def examples() -> list[Path]:
    return sorted(p for p in EXAMPLES.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))


def example_label(path: Path) -> str:
    stem = path.stem
    base, _, num = stem.rpartition("_")
    return f"{base.replace('_', ' ')} #{num}" if num.isdigit() else stem.replace("_", " ")


# -- library calls ---------------------------------------------------------------------------------------
def model_input(entry: ModelEntry, photo: Photo) -> torch.Tensor:
    """The model's view of the photo, on the model's device: [1, 3, S, S] in [0, 1]."""
    return image_input(entry, photo.image, photo.key)


def model_pixels(entry: ModelEntry, image: np.ndarray, image_key: str) -> np.ndarray:
    """The uint8 photo resized to the model's input size, once per image and size: from a large photo the
    resize takes tens of milliseconds, and a student's cycle asks for it about ten times."""
    size = entry.model.image_size
    return memo("pixels", (image_key, size), lambda: resize_rgb(image, size))


def image_input(entry: ModelEntry, image: np.ndarray, image_key: str) -> torch.Tensor:
    """``mgnet.data.to_model_input(image, S)`` on the model's device (the resize memoised)."""
    if image.dtype != np.uint8:  # a float image is already at the model's size (an unrounded attack)
        return to_model_input(image, entry.model.image_size).to(analysis.model_device(entry.model))
    pixels = model_pixels(entry, image, image_key)
    return to_tensor(pixels).unsqueeze(0).to(analysis.model_device(entry.model))


def analysis_key(entry: ModelEntry, photo: Photo, a: analysis.GlimpseAnalysis) -> tuple:
    """What an analysis's figures depend on: the model, the photo and the number of glimpses."""
    return (entry.key, photo.key, a.n_glimpses)


def analyze(entry: ModelEntry, photo: Photo, n_glimpses: int | None = None) -> analysis.GlimpseAnalysis:
    return analyze_image(entry, photo.image, photo.key, n_glimpses)


def location_check(entry: ModelEntry, photo: Photo, n_glimpses: int | None = None, n_random: int = 8):
    return memo(
        "location",
        (entry.key, photo.key, n_glimpses, n_random),
        lambda: analysis.location_check(
            entry.model,
            photo.image,
            n_glimpses,
            n_random,
            model_input=model_input(entry, photo),
            own=analyze(entry, photo, n_glimpses),
        ),
    )


def explain_image(
    entry: ModelEntry,
    image: np.ndarray,
    image_key: str,
    method: str,
    target: int | None,
    n_glimpses=None,
    s_grad=None,
    seed: int = 0,
    progress=None,
    options: dict | None = None,
):
    """Captum attribution (mgnet.explain) of the model's final logit of ``target`` (None: its prediction).
    ``options``: that method's options (mgnet.explain.METHODS[method].defaults)."""
    from mgnet import explain

    glimpses = glimpse_options(entry.model, n_glimpses=n_glimpses, s_grad=s_grad)
    opts = dict(options or {})
    key = (entry.key, image_key, method, target, tuple(sorted(glimpses.items())), seed, tuple(sorted(opts.items())))

    def compute():
        x = image_input(entry, image, image_key)
        return explain.explain(entry.model, x, method, target=target, seed=seed, progress=progress, **glimpses, **opts)

    return memo("explain", key, compute)


# -- photos unlike the training data ---------------------------------------------------------------------
@st.cache_data(show_spinner=False, ttl=RESULT_TTL)
def _ood_doc(path: str, mtime_ns: int) -> dict | None:
    from mgnet import ood

    return ood.read(Path(path).parent)


@st.cache_resource(show_spinner=False, max_entries=4)
def _ood_features(path: str, mtime_ns: int) -> dict:
    from mgnet import ood

    return ood.read_features(Path(path).parent)


def _mtime_ns(path: Path) -> int:
    """The file's modification time, or 0 when it is not a readable file."""
    try:
        return path.stat().st_mtime_ns if path.is_file() else 0
    except OSError:
        return 0


def unlike_check(entry: ModelEntry, a: analysis.GlimpseAnalysis) -> dict | None:
    """How unlike the training photos this photo is for ``entry``, against the threshold calibrated on val
    (``ood.json`` beside the checkpoints, keyed by sha256; the features score also reads ``ood-features.npz``):
    {"flagged", "score", "value", "threshold", "rate", "glimpses"}; None when this checkpoint (at this glimpse
    count) was not calibrated."""
    from mgnet import ood

    folder = checkpoint_dir()
    path, stats = folder / ood.FILE_NAME, folder / ood.FEATURES_FILE
    doc_time, stats_time = _mtime_ns(path), _mtime_ns(stats)  # once each: a file may go at any moment
    doc = _ood_doc(str(path), doc_time) if doc_time else None
    fitted = _ood_features(str(stats), stats_time) if stats_time else {}
    n = entry.glimpses(a.n_glimpses)
    if a.logits is None:
        return None
    key = (entry.key, a.image_hash, n, doc_time, stats_time)
    found = memo("unlike", key, lambda: ood.check(entry.model, doc, fitted, entry.sha256, n, a.logits[-1], a.seen[0]))
    if found is None:
        return None
    flagged, score, value, threshold = found
    return dict(flagged=flagged, score=score, value=value, threshold=threshold, rate=doc["rate"], glimpses=n)


def analyze_image(entry: ModelEntry, image: np.ndarray, image_key: str, n_glimpses: int | None = None):
    n = entry.glimpses(n_glimpses)
    return memo(
        "analyze",
        (entry.key, image_key, n),
        lambda: analysis.analyze(
            entry.model, image, n_glimpses=n, model_input=image_input(entry, image, image_key), key=image_key
        ),
    )
