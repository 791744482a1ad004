"""Glimpse parameters <-> pixel boxes <-> crops: the single source of truth for what is drawn.

Conventions. A glimpse (s, tx, ty) samples an h x h grid with ``affine_grid(align_corners=True)``:
output pixel i (0..h-1) reads the input at normalised x = tx + s * (2i / (h-1) - 1), and
normalised -1 / +1 are the centres of the first / last input pixel. In pixel-centre coordinates of
an H-pixel input that is c_i = (x + 1) / 2 * (H - 1); neighbouring samples are
``step = s (H-1) / (h-1)`` pixels apart. The box of a glimpse is the area its samples stand for:
from half a step before the first sample to half a step after the last, in *edge* coordinates
(0 = left edge of the image, H = right edge). The full-image glimpse (1, 0, 0) at h = H is [0, H].
"""

from __future__ import annotations

import cv2
import numpy as np


def glimpse_boxes(params, image_size: int, glimpse_size: int) -> np.ndarray:
    """Boxes (x0, y0, x1, y1) in edge coordinates of the model input, for params of shape [..., 3]."""
    p = np.asarray(params, dtype=np.float64)
    s, tx, ty = p[..., 0], p[..., 1], p[..., 2]
    big, small = image_size, glimpse_size
    step = s * (big - 1) / max(small - 1, 1)
    boxes = []
    for t in (tx, ty):
        first = (t - s + 1) / 2 * (big - 1)  # centre of the first sample, pixel-centre coordinates
        last = (t + s + 1) / 2 * (big - 1)
        boxes.append((first - step / 2 + 0.5, last + step / 2 + 0.5))
    (x0, x1), (y0, y1) = boxes
    return np.stack([x0, y0, x1, y1], axis=-1)


def rescale(boxes, sx: float, sy: float) -> np.ndarray:
    """Boxes [..., 4] (x0, y0, x1, y1) with x scaled by ``sx`` and y by ``sy``."""
    return np.asarray(boxes, dtype=np.float64) * np.array([sx, sy, sx, sy])


def to_original(boxes, model_size: int, width: int, height: int) -> np.ndarray:
    """Model-input boxes -> boxes in the original photo (the model input is the whole photo resized)."""
    return rescale(boxes, width / model_size, height / model_size)


def crop(image: np.ndarray, box, out_w: int, out_h: int | None = None, interpolation=cv2.INTER_LINEAR) -> np.ndarray:
    """Resample the box (edge coordinates of ``image``) to out_w x out_h pixels, zero outside the image.

    Output pixel j's centre maps to x0 + (j + 0.5) * (x1 - x0) / out_w, so cropping a model input at its
    glimpse box with out = glimpse size reproduces the glimpse the network sampled.
    """
    out_h = out_h or out_w
    x0, y0, x1, y1 = [float(v) for v in box]
    sx, sy = (x1 - x0) / out_w, (y1 - y0) / out_h
    # source (centre coords) = a * dst + b, with centre coords = edge coords - 0.5
    matrix = np.array([[sx, 0.0, x0 + 0.5 * sx - 0.5], [0.0, sy, y0 + 0.5 * sy - 0.5]])
    flags = interpolation | cv2.WARP_INVERSE_MAP
    if image.dtype == np.uint8 or image.dtype == np.float32:
        src = image
    else:
        src = image.astype(np.float32)
    return cv2.warpAffine(src, matrix, (out_w, out_h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def box_mask(box, width: int, height: int) -> np.ndarray:
    """Fraction of each pixel covered by the box (edge coordinates), as float32 [height, width]."""
    x0, y0, x1, y1 = [float(v) for v in box]

    def cover(lo, hi, n):
        edges = np.arange(n, dtype=np.float64)
        return np.clip(np.minimum(edges + 1, hi) - np.maximum(edges, lo), 0, 1)

    return np.outer(cover(y0, y1, height), cover(x0, x1, width)).astype(np.float32)


def area_share(boxes, width: int, height: int) -> float:
    """Share of a ``width`` x ``height`` image covered by the union of ``boxes`` (clipped to the image)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return 0.0
    if len(boxes) == 1:  # exact and cheap at any photo size
        x0, y0, x1, y1 = boxes[0]
        covered = max(0.0, min(x1, width) - max(x0, 0.0)) * max(0.0, min(y1, height) - max(y0, 0.0))
        return float(covered / (width * height))
    union = np.zeros((height, width), np.float64)
    for box in boxes:
        union = np.maximum(union, box_mask(box, width, height))
    return float(union.mean())


def centre_shift(boxes_a, boxes_b, width: int, height: int) -> np.ndarray:
    """How far each glimpse's centre moved from ``boxes_a`` to ``boxes_b`` (same photo, edge coordinates):
    [T, 2] of (pixels, share of the photo's longer side), for the glimpses both runs have."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    n = min(len(a), len(b))
    ca = (a[:n, :2] + a[:n, 2:]) / 2
    cb = (b[:n, :2] + b[:n, 2:]) / 2
    px = np.hypot(*(cb - ca).T)
    return np.stack([px, px / max(width, height)], axis=1)
