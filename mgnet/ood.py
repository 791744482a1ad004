"""Photos unlike the training data: a warning score, calibrated on val.

A classifier of 10 classes must answer with one of them, so random noise gets "parachute 82%". Three scores,
all oriented so that *higher means less like the training data*:

* ``features`` (the app's warning): how far the model's first look (the whole photo at glimpse resolution)
  sits from the training photos in the backbone's own activations. For each residual stage, the per-channel
  mean and standard deviation of its activations (stage 4: the mean only, the pooled features) are compared
  with the training photos by the Mahalanobis distance to the nearest class mean, with one covariance
  shared by the classes (Lee et al., NeurIPS 2018). Each stage's distance is standardised on val, and the
  score is the largest. Early stages catch what no photo looks like (noise, flat colours, drawn shapes),
  the last one unfamiliar content. The statistics are fitted on the training folder and stored beside the
  checkpoints (``ood-features.npz``: arrays only, read without unpickling).
* ``energy``: -logsumexp of the logits (Liu et al., NeurIPS 2020); the logits' overall size, which softmax
  throws away, says how familiar the input is.
* ``msp``: minus the largest softmax probability (Hendrycks & Gimpel, ICLR 2017), the usual baseline.

``calibrate`` sets, for each number of glimpses 1..8, the threshold that flags ``RATE`` (5%) of validation
photos, and reports how many of a set of unlike images each score flags: generated ones (``unlike_images``:
noise, flat colours, gradients, stripes, text, drawn faces, shapes) and training photos cut into shuffled
tiles (natural colours and textures, no whole object). Thresholds go to one small JSON file beside the
checkpoints (``ood.json``, keyed by the checkpoint's sha256), which the app reads and the model card reports.
MGNet's prediction after glimpse t does not depend on how many glimpses follow, so one 8-glimpse run gives
the logit scores of every glimpse count; the features score depends on the first look only.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np
import torch

from .model import glimpse_options
from .utils import atomic_write, eval_mode, git_commit

SCHEMA = "mgnet-ood/1"
FILE_NAME = "ood.json"
RATE = 0.05  # share of validation photos a threshold flags
MAX_GLIMPSES = 8  # the app's glimpse slider goes up to 8
SCORES = ("features", "energy", "msp")
LOGIT_SCORES = ("energy", "msp")
UNLIKE_KINDS = ("uniform noise", "gaussian noise", "flat colour", "gradient", "stripes", "text", "face", "shapes")
TILES = "shuffled tiles"  # training photos cut into 4x4 tiles and shuffled (made from the training folder)
FEATURES_FILE = "ood-features.npz"
FEATURES_SCHEMA = "mgnet-ood-features/1"
MAX_FEATURES_ARRAY = 64 << 20  # bytes: a 2048-channel precision matrix in float32 is 16 MiB
MAX_FEATURES_FILE = 512 << 20


def scores(logits) -> dict[str, np.ndarray]:
    """The logit scores (energy, msp) of logits [..., C] (higher = less like the training data)."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    return {
        "energy": (-torch.logsumexp(z, dim=-1)).numpy(),
        "msp": (-z.softmax(-1).max(-1).values).numpy(),
    }


# -- unlike images ---------------------------------------------------------------------------------------
def _text_image(rng, size: int) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(8, size // 10))
    words = ["the", "model", "knows", "ten", "classes", "glimpse", "photo", "lorem", "ipsum", "data"]
    for row in range(0, size, max(10, size // 8)):
        line = " ".join(rng.choice(words, 4))
        draw.text((2, row), line, fill=tuple(int(v) for v in rng.integers(0, 80, 3)), font=font)
    return np.array(img)


def _face_image(rng, size: int) -> np.ndarray:
    """A drawn face: skin-coloured oval, eyes, nose and mouth on a plain background."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(img)
    skin = tuple(int(v) for v in (rng.integers(150, 256), rng.integers(100, 200), rng.integers(70, 160)))
    c, r = size / 2 + rng.uniform(-0.05, 0.05) * size, size * rng.uniform(0.3, 0.42)
    d.ellipse((c - r * 0.8, c - r, c + r * 0.8, c + r), fill=skin, outline=(60, 40, 30))
    for side in (-1, 1):
        ex, ey = c + side * r * 0.35, c - r * 0.25
        d.ellipse((ex - r * 0.15, ey - r * 0.1, ex + r * 0.15, ey + r * 0.1), fill="white", outline="black")
        d.ellipse((ex - r * 0.06, ey - r * 0.06, ex + r * 0.06, ey + r * 0.06), fill=(40, 30, 20))
    d.line((c, c - r * 0.1, c - r * 0.08, c + r * 0.2, c + r * 0.05, c + r * 0.2), fill=(90, 50, 40), width=2)
    d.arc((c - r * 0.35, c + r * 0.2, c + r * 0.35, c + r * 0.6), 20, 160, fill=(150, 30, 40), width=3)
    return np.array(img)


def _shapes_image(rng, size: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(rng.integers(3, 9)):
        x0, y0 = rng.uniform(0, size * 0.8, 2)
        w, h = rng.uniform(size * 0.1, size * 0.5, 2)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)((x0, y0, x0 + w, y0 + h), fill=fill)
    return np.array(img)


def unlike_image(kind: str, rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """One RGB uint8 image of ``kind`` (one of ``UNLIKE_KINDS``), drawn with ``rng``."""
    if kind == "uniform noise":
        return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    if kind == "gaussian noise":
        return np.clip(rng.normal(rng.uniform(60, 200), rng.uniform(20, 70), (size, size, 3)), 0, 255).astype(np.uint8)
    if kind == "flat colour":
        return np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (size, size, 3)).copy()
    if kind == "gradient":
        t = np.linspace(0, 1, size)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, size)[:, None, None]
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        return np.broadcast_to(a + (b - a) * t, (size, size, 3)).astype(np.uint8)
    if kind == "stripes":
        period = rng.integers(4, 32)
        yy, xx = np.mgrid[:size, :size]
        on = ((xx + yy * rng.integers(0, 2)) // period) % 2 == 0
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        return np.where(on[..., None], a, b).astype(np.uint8)
    if kind == "text":
        return _text_image(rng, size)
    if kind == "face":
        return _face_image(rng, size)
    if kind == "shapes":
        return _shapes_image(rng, size)
    raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(UNLIKE_KINDS)}")


def shuffled_tiles(photos_u8: torch.Tensor, n: int, seed: int = 0, grid: int = 4) -> torch.Tensor:
    """``n`` images [n, 3, S, S] uint8, each one of ``photos_u8`` cut into ``grid`` x ``grid`` tiles in a random
    order: the colours and textures of real photos, no whole object."""
    rng = np.random.default_rng(seed)
    size = photos_u8.shape[-1] - photos_u8.shape[-1] % grid
    step = size // grid
    out = []
    for i in rng.choice(len(photos_u8), n, replace=n > len(photos_u8)):
        img = photos_u8[i, :, :size, :size]
        tiles = [img[:, r * step : (r + 1) * step, c * step : (c + 1) * step] for r in range(grid) for c in range(grid)]
        order = rng.permutation(len(tiles))
        rows = [torch.cat([tiles[order[r * grid + c]] for c in range(grid)], dim=2) for r in range(grid)]
        out.append(torch.cat(rows, dim=1))
    tiled = torch.stack(out)
    if size != photos_u8.shape[-1]:
        tiled = torch.nn.functional.pad(tiled, (0, photos_u8.shape[-1] - size, 0, photos_u8.shape[-1] - size))
    return tiled


def unlike_images(per_kind: int = 40, size: int = 128, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """``per_kind`` images of every kind as uint8 [N, 3, size, size], and each one's kind."""
    rng = np.random.default_rng(seed)
    images, kinds = [], []
    for kind in UNLIKE_KINDS:
        for _ in range(per_kind):
            images.append(torch.from_numpy(unlike_image(kind, rng, size)).permute(2, 0, 1))
            kinds.append(kind)
    return torch.stack(images), kinds


def _at_model_size(model, images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 images [N, 3, S, S] resized to the model's input size (as the app resizes a photo)."""
    from .data import resize_rgb

    if images_u8.shape[-1] == model.image_size:
        return images_u8
    return torch.stack(
        [
            torch.from_numpy(resize_rgb(im.permute(1, 2, 0).numpy(), model.image_size)).permute(2, 0, 1)
            for im in images_u8
        ]
    )


# -- the features score ----------------------------------------------------------------------------------
def first_looks(model, images_u8: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The model's first glimpse of each image (the whole photo at glimpse resolution) as uint8 [N, 3, g, g],
    rounded to 8 bits as ``analysis.analyze`` keeps it (``GlimpseAnalysis.seen[0]``)."""
    from .analysis import inference_model, model_device

    dev = model_device(model)
    out = []
    with eval_mode(model), torch.inference_mode():
        fast = inference_model(model)
        for lo in range(0, len(images_u8), batch_size):
            chunk = images_u8[lo : lo + batch_size]
            chunk = _at_model_size(model, chunk)
            crops = fast((chunk.float() / 255).to(dev), n_glimpses=1, return_crops=True).crops[0]
            out.append((crops.float().clamp(0, 1) * 255 + 0.5).byte().cpu())
    return torch.cat(out)


def stage_statistics(model, looks_u8: torch.Tensor, batch_size: int = 64) -> list[torch.Tensor]:
    """Per residual stage of the backbone, float64 [N, D]: the per-channel mean and standard deviation of its
    activations on ``looks_u8`` (uint8 first looks, [N, 3, g, g]); the last stage gives the mean only (the
    pooled features the model classifies). Needs a torchvision-style ResNet backbone."""
    from .analysis import inference_model, model_device

    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    if not all(hasattr(model.backbone, n) for n in names):
        raise ValueError("the features score needs a ResNet backbone (conv1, bn1, ..., layer4)")
    dev = model_device(model)
    parts: list[list[torch.Tensor]] = [[], [], [], []]
    with eval_mode(model), torch.inference_mode():
        b = inference_model(model).backbone
        for lo in range(0, len(looks_u8), batch_size):
            x = ((looks_u8[lo : lo + batch_size].float() / 255).to(dev) - model.mean) / model.std
            h = b.maxpool(b.relu(b.bn1(b.conv1(x))))
            for i, stage in enumerate((b.layer1, b.layer2, b.layer3, b.layer4)):
                h = stage(h)
                flat = h.float().flatten(2)
                stats = flat.mean(2) if i == 3 else torch.cat([flat.mean(2), flat.std(2, correction=0)], dim=1)
                parts[i].append(stats.double().cpu())
    return [torch.cat(p) for p in parts]


def _min_distance(stats: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> np.ndarray:
    """Squared Mahalanobis distance of each row of ``stats`` [N, D] to the nearest of ``means`` [C, D]."""
    d = stats[:, None, :] - means[None]
    return torch.einsum("ncd,de,nce->nc", d, precision, d).min(dim=1).values.numpy()


def fit_features(train_stats: list[torch.Tensor], labels: torch.Tensor, ridge: float = 1e-3) -> list[dict]:
    """Per stage: class means and the inverse of the shared within-class covariance (plus ``ridge`` times its
    mean variance on the diagonal, so that near-constant channels do not dominate)."""
    labels = torch.as_tensor(labels)
    fitted = []
    for x in train_stats:
        classes = sorted(int(c) for c in labels.unique())
        means = torch.stack([x[labels == c].mean(0) for c in classes])
        centred = x - means[torch.searchsorted(torch.tensor(classes), labels)]
        cov = centred.T @ centred / len(x)
        cov += ridge * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype)
        # stored as float32 (a precision matrix can exceed float16's range); distances use what is stored
        fitted.append(dict(means=means.float(), precision=torch.linalg.inv(cov).float()))
    return fitted


def stage_distances(fitted: list[dict], stats: list[torch.Tensor]) -> np.ndarray:
    """[stages, N] squared Mahalanobis distances of ``stats`` under ``fitted``."""
    return np.stack([_min_distance(s, f["means"].double(), f["precision"].double()) for f, s in zip(fitted, stats)])


def features_score(fitted: list[dict], distances: np.ndarray) -> np.ndarray:
    """The largest stage distance, each standardised by the val centre and spread stored in ``fitted``."""
    centre = np.array([f["centre"] for f in fitted])[:, None]
    spread = np.array([f["spread"] for f in fitted])[:, None]
    return ((distances - centre) / spread).max(axis=0)


def features_of(model, fitted: list[dict], looks_u8: torch.Tensor) -> np.ndarray:
    """The features score [N] of uint8 first looks under a fitted detector."""
    return features_score(fitted, stage_distances(fitted, stage_statistics(model, looks_u8)))


def write_features(entries: dict, folder) -> Path:
    """``ood-features.npz`` beside the checkpoints: the fitted stages of each checkpoint, by sha256."""
    arrays = {"schema": np.array(FEATURES_SCHEMA)}
    for sha, stages in entries.items():
        for i, st in enumerate(stages):
            for key in ("means", "precision", "centre", "spread"):
                arrays[f"{sha}/{i}/{key}"] = np.asarray(
                    st[key], dtype=np.float32 if key in ("means", "precision") else np.float64
                )
    path = Path(folder) / FEATURES_FILE

    def save(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    return atomic_write(path, save)


def read_features(folder) -> dict:
    """{sha256: fitted stages} from ``ood-features.npz`` in ``folder``; {} when absent, unreadable, too large or
    not exactly this format (arrays only, from one open file: nothing is unpickled, and every array's header is
    checked against a size bound before its data is read)."""
    import zipfile

    path = Path(folder) / FEATURES_FILE
    found: dict = {}
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if sum(m.file_size for m in members) > MAX_FEATURES_FILE:
                return {}
            arrays = {}
            for member in members:
                with archive.open(member) as fh:
                    version = np.lib.format.read_magic(fh)
                    header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, fortran, dtype = header(fh)
                    if dtype.hasobject or int(np.prod(shape)) * dtype.itemsize > MAX_FEATURES_ARRAY:
                        return {}
                    arrays[member.filename.removesuffix(".npy")] = _read_body(fh, shape, fortran, dtype)
        if str(arrays.pop("schema", "")) != FEATURES_SCHEMA:
            return {}
        for name, value in arrays.items():
            sha, i, key = name.split("/")
            found.setdefault(sha, {}).setdefault(int(i), {})[key] = value
    except Exception:  # a missing, truncated or hostile file only disables the features score
        return {}
    out = {}
    for sha, stages in found.items():
        if sorted(stages) != list(range(len(stages))):
            return {}
        ordered = []
        for i in sorted(stages):
            st = stages[i]
            if set(st) != {"means", "precision", "centre", "spread"}:
                return {}
            means, precision = st["means"], st["precision"]
            centre, spread = float(st["centre"]), float(st["spread"])
            if means.ndim != 2 or precision.shape != (means.shape[1], means.shape[1]):
                return {}
            if not (np.isfinite(centre) and np.isfinite(spread) and spread > 0):
                return {}
            ordered.append(
                dict(means=torch.from_numpy(means), precision=torch.from_numpy(precision), centre=centre, spread=spread)
            )
        out[sha] = ordered
    return out


def _read_body(fh, shape, fortran: bool, dtype) -> np.ndarray:
    """The data of one .npy member after its header: exactly the declared number of bytes."""
    count = int(np.prod(shape))
    data = fh.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise ValueError("truncated array")
    array = np.frombuffer(data, dtype=dtype).copy()
    return array.reshape(shape[::-1]).transpose() if fortran else array.reshape(shape)


# -- calibration -----------------------------------------------------------------------------------------
def logits_per_glimpse(model, images_u8: torch.Tensor, max_glimpses: int = MAX_GLIMPSES, batch_size: int = 64):
    """Logits [T, N, C] after each glimpse 1..T (T = ``max_glimpses``; 1 for a baseline) of uint8 images."""
    from .analysis import model_device

    dev = model_device(model)
    glimpses = glimpse_options(model, n_glimpses=max_glimpses)
    out = []
    with eval_mode(model), torch.inference_mode():  # eval_mode holds the model's lock
        for lo in range(0, len(images_u8), batch_size):
            chunk = images_u8[lo : lo + batch_size]
            chunk = _at_model_size(model, chunk)
            x = (chunk.float() / 255).to(dev)
            out.append(model(x, **glimpses).logits.float().cpu())
    return torch.cat(out, dim=1).numpy()


def _flagged(values: np.ndarray, threshold: float) -> float:
    return float(np.mean(values > threshold)) if len(values) else 0.0


def calibrate_model(
    model,
    val_u8: torch.Tensor,
    unlike_u8: torch.Tensor,
    kinds: list[str],
    rate: float = RATE,
    train: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[dict, list[dict] | None]:
    """Per score: thresholds per glimpse count (flagging ``rate`` of val), and the share flagged of val and of
    each kind of unlike image at each glimpse count. With ``train`` (uint8 images, labels) the features
    score is fitted on it and included; its fitted stages are returned beside the record."""
    val, unl = logits_per_glimpse(model, val_u8), logits_per_glimpse(model, unlike_u8)
    values = {name: (scores(val)[name], scores(unl)[name]) for name in LOGIT_SCORES}  # [T, N] each
    fitted = None
    if train is not None:
        fitted = fit_features(stage_statistics(model, first_looks(model, train[0])), train[1])
        dist_val = stage_distances(fitted, stage_statistics(model, first_looks(model, val_u8)))
        for f, d in zip(fitted, dist_val):
            f["centre"], f["spread"] = float(np.median(d)), float(max(d.std(), 1e-12))
        dist_unl = stage_distances(fitted, stage_statistics(model, first_looks(model, unlike_u8)))
        steps = val.shape[0]  # the first look is the same whatever the glimpse count
        values["features"] = tuple(np.repeat(features_score(fitted, d)[None], steps, 0) for d in (dist_val, dist_unl))
    kinds_arr = np.asarray(kinds)
    record = {}
    for name in SCORES:
        if name not in values:
            continue
        sv, su = values[name]
        thresholds, val_rate, unlike_rate, per_kind = {}, {}, {}, {}
        for t in range(sv.shape[0]):
            thr = float(np.quantile(sv[t], 1 - rate, method="higher"))  # flags at most `rate` of val
            key = str(t + 1)
            thresholds[key] = thr
            val_rate[key] = _flagged(sv[t], thr)
            unlike_rate[key] = _flagged(su[t], thr)
            per_kind[key] = {k: _flagged(su[t][kinds_arr == k], thr) for k in dict.fromkeys(kinds)}
        record[name] = dict(thresholds=thresholds, val_flagged=val_rate, unlike_flagged=unlike_rate, per_kind=per_kind)
    return record, fitted


def calibrate(
    paths, data, per_kind: int = 40, seed: int = 0, rate: float = RATE, command: str = "", train=None
) -> tuple[dict, dict]:
    """The ood.json document for the checkpoints at ``paths``, calibrated on the val ImageFolder ``data``, and
    the features score's fitted statistics per sha256 (for ``write_features``; empty without ``train``, the
    training ImageFolder the statistics are fitted on)."""
    from .checkpoints import file_sha256, load_checkpoint
    from .evaluate import load_eval_images

    doc = {
        "schema": SCHEMA,
        "rate": rate,
        "score": "features" if train is not None else "energy",
        "data": str(data),
        "train": None if train is None else str(train),
        "unlike": {
            "kinds": list(UNLIKE_KINDS) + ([TILES] if train is not None else []),
            "per_kind": per_kind,
            "seed": seed,
        },
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(mark_dirty=True),
        "command": command,
        "models": {},
    }
    fitted_all = {}
    loaded: dict = {}  # (folder, size) -> (images, labels): the checkpoints usually share one input size

    def images_at(folder, size):
        if (folder, size) not in loaded:
            loaded[folder, size] = load_eval_images(str(folder), size, 0, progress=False)[1:]
        return loaded[folder, size]

    for path in paths:
        model = load_checkpoint(path, device="cpu")
        val_u8, _ = images_at(data, model.image_size)
        unlike_u8, kinds = unlike_images(per_kind, model.image_size, seed)
        train_set = None
        if train is not None:
            train_u8, train_labels = images_at(train, model.image_size)
            train_set = (train_u8, train_labels)
            unlike_u8 = torch.cat([unlike_u8, shuffled_tiles(train_u8, per_kind, seed)])
            kinds = kinds + [TILES] * per_kind
        rec, fitted = calibrate_model(model, val_u8, unlike_u8, kinds, rate, train_set)
        sha = file_sha256(path)
        if fitted is not None:
            fitted_all[sha] = fitted
        doc["models"][Path(path).name] = {
            "sha256": sha,
            "kind": "baseline" if model.is_baseline else "MGNet",
            "trained_glimpses": None if model.is_baseline else int(model.n_glimpses),
            "classes": len(model.classes),
            "val_images": int(len(val_u8)),
            "train_images": None if train_set is None else int(len(train_set[0])),
            "unlike_images": int(len(unlike_u8)),
            **rec,
        }
    return doc, fitted_all


def write(doc: dict, folder) -> Path:
    path = Path(folder) / FILE_NAME
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=2) + "\n"))


def read(folder) -> dict | None:
    """The ood.json of ``folder``, or None when there is none or it cannot be read."""
    path = Path(folder) / FILE_NAME
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("schema") == SCHEMA else None


def threshold_for(doc: dict | None, sha256: str, n_glimpses: int | None) -> tuple[str, float] | None:
    """(score name, threshold) calibrated for the checkpoint with ``sha256`` at ``n_glimpses`` (None: a
    baseline's single look), or None when that checkpoint was not calibrated."""
    if not doc:
        return None
    entry = next((m for m in doc.get("models", {}).values() if m.get("sha256") == sha256), None)
    if entry is None:
        return None
    score = doc.get("score", "energy")
    thresholds = entry.get(score, {}).get("thresholds", {})
    value = thresholds.get(str(n_glimpses or 1))
    return None if value is None else (score, float(value))


def is_unlike(logits_final, score: str, threshold: float) -> tuple[bool, float]:
    """Whether final logits [C] score above ``threshold`` on a logit score (energy, msp), and the score."""
    value = float(scores(np.asarray(logits_final)[None])[score][0])
    return value > threshold, value


def check(model, doc: dict | None, fitted: dict, sha256: str, n_glimpses: int | None, logits_final, first_look):
    """The app's verdict for one photo: (flagged, score name, value, threshold), or None when this checkpoint
    has no calibration (or, for the features score, no fitted statistics). ``first_look``: uint8 [g, g, 3],
    the photo's first glimpse as ``analysis.analyze`` keeps it."""
    found = threshold_for(doc, sha256, n_glimpses)
    if found is None:
        return None
    score, threshold = found
    if score != "features":
        flagged, value = is_unlike(logits_final, score, threshold)
        return flagged, score, value, threshold
    stages = fitted.get(sha256)
    if stages is None:
        return None
    look = torch.from_numpy(np.ascontiguousarray(first_look)).permute(2, 0, 1)[None]
    try:
        value = float(features_of(model, stages, look)[0])
    except (RuntimeError, ValueError, IndexError, KeyError, TypeError):  # statistics that do not fit: no check
        return None
    return value > threshold, score, value, threshold
