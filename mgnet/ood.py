"""Photos unlike the training data: a warning score from the model's own logits, calibrated on val.

A classifier of 10 classes must answer with one of them, so random noise gets "parachute 82%". Two scores
from the final logits, both oriented so that *higher means less like the training data*:

* ``energy``: -logsumexp of the logits (Liu et al., NeurIPS 2020, "Energy-based out-of-distribution
  detection"); the logits' overall size, which softmax throws away, says how familiar the input is.
* ``msp``: minus the largest softmax probability (Hendrycks & Gimpel, ICLR 2017), the usual baseline.

``calibrate`` sets, for each number of glimpses 1..8, the threshold that flags ``RATE`` (5%) of validation
photos, and reports how many of a generated set of unlike images (``unlike_images``: noise, flat colours,
gradients, stripes, text, drawn faces, shapes) each score flags. The thresholds of every checkpoint go to
one small JSON file beside the checkpoints (``ood.json``, keyed by the checkpoint's sha256), which the app
reads and the model card reports. MGNet's prediction after glimpse t does not depend on how many glimpses
follow, so one 8-glimpse run gives the scores of every glimpse count.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np
import torch

from .utils import atomic_write, eval_mode, git_commit, model_lock

SCHEMA = "mgnet-ood/1"
FILE_NAME = "ood.json"
RATE = 0.05  # share of validation photos a threshold flags
MAX_GLIMPSES = 8  # the app's glimpse slider goes up to 8
SCORES = ("energy", "msp")
UNLIKE_KINDS = ("uniform noise", "gaussian noise", "flat colour", "gradient", "stripes", "text", "face", "shapes")


def scores(logits) -> dict[str, np.ndarray]:
    """Both scores of logits [..., C] (higher = less like the training data)."""
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


def unlike_images(per_kind: int = 40, size: int = 128, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """``per_kind`` images of every kind as uint8 [N, 3, size, size], and each one's kind."""
    rng = np.random.default_rng(seed)
    images, kinds = [], []
    for kind in UNLIKE_KINDS:
        for _ in range(per_kind):
            images.append(torch.from_numpy(unlike_image(kind, rng, size)).permute(2, 0, 1))
            kinds.append(kind)
    return torch.stack(images), kinds


# -- calibration -----------------------------------------------------------------------------------------
def logits_per_glimpse(model, images_u8: torch.Tensor, max_glimpses: int = MAX_GLIMPSES, batch_size: int = 64):
    """Logits [T, N, C] after each glimpse 1..T (T = ``max_glimpses``; 1 for a baseline) of uint8 images."""
    from .analysis import model_device
    from .data import resize_rgb

    dev = model_device(model)
    n = None if model.is_baseline else max_glimpses
    out = []
    with model_lock(model), eval_mode(model), torch.inference_mode():
        for lo in range(0, len(images_u8), batch_size):
            chunk = images_u8[lo : lo + batch_size]
            if chunk.shape[-1] != model.image_size:
                chunk = torch.stack(
                    [
                        torch.from_numpy(resize_rgb(im.permute(1, 2, 0).numpy(), model.image_size)).permute(2, 0, 1)
                        for im in chunk
                    ]
                )
            x = (chunk.float() / 255).to(dev)
            out.append(model(x, n_glimpses=n).logits.float().cpu())
    return torch.cat(out, dim=1).numpy()


def _flagged(values: np.ndarray, threshold: float) -> float:
    return float(np.mean(values > threshold)) if len(values) else 0.0


def calibrate_model(model, val_u8: torch.Tensor, unlike_u8: torch.Tensor, kinds: list[str], rate: float = RATE) -> dict:
    """Per score: thresholds per glimpse count (flagging ``rate`` of val), and the share flagged of val and of
    each kind of unlike image at each glimpse count."""
    val, unl = logits_per_glimpse(model, val_u8), logits_per_glimpse(model, unlike_u8)
    kinds_arr = np.asarray(kinds)
    record = {}
    for name in SCORES:
        sv, su = scores(val)[name], scores(unl)[name]  # [T, N]
        thresholds, val_rate, unlike_rate, per_kind = {}, {}, {}, {}
        for t in range(sv.shape[0]):
            thr = float(np.quantile(sv[t], 1 - rate))
            key = str(t + 1)
            thresholds[key] = thr
            val_rate[key] = _flagged(sv[t], thr)
            unlike_rate[key] = _flagged(su[t], thr)
            per_kind[key] = {k: _flagged(su[t][kinds_arr == k], thr) for k in dict.fromkeys(kinds)}
        record[name] = dict(thresholds=thresholds, val_flagged=val_rate, unlike_flagged=unlike_rate, per_kind=per_kind)
    return record


def calibrate(paths, data, per_kind: int = 40, seed: int = 0, rate: float = RATE, command: str = "") -> dict:
    """The ood.json document for the checkpoints at ``paths``, calibrated on the val ImageFolder ``data``."""
    from .checkpoints import file_sha256, load_checkpoint
    from .evaluate import load_eval_images

    doc = {
        "schema": SCHEMA,
        "rate": rate,
        "score": "energy",
        "data": str(data),
        "unlike": {"kinds": list(UNLIKE_KINDS), "per_kind": per_kind, "seed": seed},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(mark_dirty=True),
        "command": command,
        "models": {},
    }
    for path in paths:
        model = load_checkpoint(path, device="cpu")
        _, val_u8, _ = load_eval_images(str(data), model.image_size, 0, progress=False)
        unlike_u8, kinds = unlike_images(per_kind, model.image_size, seed)
        rec = calibrate_model(model, val_u8, unlike_u8, kinds, rate)
        doc["models"][Path(path).name] = {
            "sha256": file_sha256(path),
            "kind": "baseline" if model.is_baseline else "MGNet",
            "trained_glimpses": None if model.is_baseline else int(model.n_glimpses),
            "classes": len(model.classes),
            "val_images": int(len(val_u8)),
            "unlike_images": int(len(unlike_u8)),
            **rec,
        }
    return doc


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
    """Whether final logits [C] score above ``threshold`` on ``score``, and the score."""
    value = float(scores(np.asarray(logits_final)[None])[score][0])
    return value > threshold, value
