"""Explanation metrics: where a map's mass lies, how two maps agree, and how faithful a map is.

As Captum separates ``captum.metrics`` from ``captum.attr``, the maps come from :mod:`mgnet.explain`
and are scored here:

* ``mass_inside``, ``topk_iou`` and ``glimpse_agreement``: a map against MGNet's glimpse boxes and
  focus map (what the app's Compare tab and the figure tool's captions show);
* ``deletion_insertion`` (Petsiuk et al. 2018): does removing the most salient pixels first hurt the
  prediction most;
* ``infidelity`` and ``sensitivity``: Captum's metrics, run on the same wrapper ``explain`` uses.

Every function that runs a model holds its lock and eval mode through ``explain``'s shared-model
hygiene (see :mod:`mgnet.explain`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from . import geometry
from .explain import (
    METHODS,
    Attribution,
    Progress,
    _check_input,
    _device,
    _FinalLogits,
    _using,
    explain,
    resolve_options,
)


# -- maps on photos and agreement with the glimpses ------------------------------------------------------
def to_photo(map_: np.ndarray, width: int, height: int) -> np.ndarray:
    """A model-input map ([S, S]) resized to the photo (``height`` x ``width``), bilinear.

    The model input is the whole photo resized to S x S, so a plain resize puts every value back on
    the photo pixels it came from. (Area averaging is used instead when both sides shrink, to avoid
    aliasing.) Values are not renormalised.
    """
    m = np.asarray(map_, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {m.shape}")
    if m.shape == (height, width):
        return m.copy()
    shrink = width <= m.shape[1] and height <= m.shape[0]
    return cv2.resize(m, (int(width), int(height)), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _nonnegative(m, name: str) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.ndim != 2 or not np.all(np.isfinite(m)):
        raise ValueError(f"{name} must be a finite 2-D map")
    if m.min() < 0:
        raise ValueError(f"{name} has negative values; pass a non-negative map such as Attribution.map")
    return m


def mass_inside(saliency_map, boxes, width: int, height: int) -> float:
    """Share of the saliency mass inside the union of ``boxes``, in [0, 1].

    ``boxes``: [N, 4] (x0, y0, x1, y1) in edge coordinates of a ``width`` x ``height`` image, used as
    passed (drop MGNet's first, whole-image glimpse yourself). Partly covered pixels count with the
    covered fraction (``geometry.box_mask``); overlapping boxes count once. The map is resized to
    the image first if its shape differs. A map with no mass, or no boxes, gives 0.0.
    """
    m = _nonnegative(saliency_map, "saliency_map")
    if m.shape != (height, width):
        m = to_photo(m.astype(np.float32), width, height).astype(np.float64)
    total = m.sum()
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if total <= 0 or len(boxes) == 0:
        return 0.0
    union = np.zeros((height, width), np.float64)
    for box in boxes:
        union = np.maximum(union, geometry.box_mask(box, width, height))
    return float(np.clip((m * union).sum() / total, 0.0, 1.0))


def _top_order(m: np.ndarray) -> np.ndarray:
    """Flat pixel indices, most salient first; ties in raster order (row by row, left to right)."""
    return np.argsort(-m.ravel(), kind="stable")


def topk_iou(map_a, map_b, k: float = 0.2) -> float:
    """IoU of the top-``k`` fraction of pixels of two same-shape maps, in [0, 1].

    Each map contributes its round(k * pixels) (at least 1) highest pixels, ties broken in raster order.
    """
    a = np.asarray(map_a, dtype=np.float64)
    b = np.asarray(map_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"maps must be 2-D with the same shape, got {a.shape} and {b.shape}")
    if not 0 < k <= 1:
        raise ValueError("k must be in (0, 1]")
    n = max(1, int(round(k * a.size)))
    top_a, top_b = set(_top_order(a)[:n].tolist()), set(_top_order(b)[:n].tolist())
    return len(top_a & top_b) / len(top_a | top_b)


def glimpse_agreement(saliency_map, boxes_model, focus_model: np.ndarray, k: float = 0.2) -> tuple[float | None, float]:
    """How a saliency map agrees with where MGNet looked, on the model input grid ([S, S], the focus map's):
    (share of the map's mass inside glimpse boxes 2..T, None when there is no later glimpse;
    IoU of the top ``k`` pixels of the map and of the focus map). ``boxes_model``: every glimpse's box
    in model-input pixels, the first (whole-image) one included."""
    size = focus_model.shape[0]
    on_grid = to_photo(saliency_map, size, size)
    later = np.asarray(boxes_model)[1:]
    inside = mass_inside(on_grid, later, size, size) if len(later) else None
    return inside, topk_iou(on_grid, focus_model, k)


# -- deletion / insertion --------------------------------------------------------------------------------
@dataclass
class Curve:
    """A deletion or insertion curve.

    fractions: [steps + 1] share of pixels deleted (inserted), from 0 to 1.
    probs:     [steps + 1] softmax probability of ``target`` (final prediction) at each step.
    auc:       trapezoid area under probs over fractions in [0, 1]. Deletion: lower is better
               (the map found what matters); insertion: higher is better.
    """

    fractions: np.ndarray
    probs: np.ndarray
    auc: float
    mode: str
    baseline: str
    target: int
    seconds: float = 0.0


def _final_logits(model, batch: torch.Tensor, n_glimpses=None, s_grad=None) -> torch.Tensor:
    """[B, C] final logits of an MGNet or of any callable returning logits ([B, C] or [T, B, C]) or an
    object with such ``.logits``."""
    from .model import MGNet

    if isinstance(model, MGNet):
        out = model(batch, n_glimpses=n_glimpses, s_grad=s_grad)
    else:
        if n_glimpses is not None:
            raise ValueError("n_glimpses only applies to MGNet models")
        out = model(batch)
    logits = getattr(out, "logits", out)
    if logits.dim() == 3:
        logits = logits[-1]
    if logits.dim() != 2 or logits.shape[0] != batch.shape[0]:
        raise ValueError(f"model returned logits of shape {tuple(logits.shape)}; expected [B, C] or [T, B, C]")
    return logits


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


def blurred(x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """Strong Gaussian blur of pixels [1, 3, S, S] (sigma defaults to S / 16), reflecting borders."""
    size = x.shape[-1]
    sigma = float(sigma if sigma is not None else max(1.0, size / 16))
    img = x[0].detach().float().permute(1, 2, 0).cpu().numpy()
    out = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)[None].to(x.device, x.dtype)


def deletion_insertion(
    model,
    x: torch.Tensor,
    saliency_map,
    target: int,
    steps: int = 20,
    mode: str = "deletion",
    baseline: str = "blur",
    n_glimpses: int | None = None,
    batch_size: int = 16,
    *,
    s_grad: float | None = None,
    blur_sigma: float | None = None,
    progress: Progress | None = None,
) -> Curve:
    """Deletion or insertion curve of a saliency map (Petsiuk, Das & Saenko 2018, "RISE").

    Captum has no deletion/insertion metric, so this is written here. Pixels of the [S, S] model input
    are ranked by ``saliency_map`` (highest first, ties in raster order; a map of another shape is
    resized to S x S first). Step i (0..steps) changes the top round(i * S^2 / steps) pixels, all three
    channels:
    deletion starts from the image and replaces them with the baseline; insertion starts from the
    baseline and puts the image's pixels back. Baseline 'black' is zeros, 'blur' a strong Gaussian blur
    of the image (``blurred``). The perturbed images are scored in batches of ``batch_size``.

    ``model``: an MGNet (run with ``n_glimpses``, ``s_grad``), or any callable taking [B, 3, S, S]
    pixels and returning final logits [B, C], per-step logits [T, B, C] (last used), or an object with
    such a ``.logits``. It is held under ``model_lock`` and run in eval mode without gradients.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError("mode must be 'deletion' or 'insertion'")
    if baseline not in ("blur", "black"):
        raise ValueError("baseline must be 'blur' or 'black'")
    if steps < 1 or batch_size < 1:
        raise ValueError("steps and batch_size must be at least 1")
    x = _check_input(x)
    size = x.shape[-1]
    m = _nonnegative(saliency_map, "saliency_map")
    if m.shape != (size, size):
        m = to_photo(m.astype(np.float32), size, size).astype(np.float64)
    n = size * size
    rank = np.empty(n, np.int64)
    rank[_top_order(m)] = np.arange(n)
    counts = np.array([(i * n + steps // 2) // steps for i in range(steps + 1)], np.int64)
    start = time.perf_counter()
    probs = []
    with _using(model, None), torch.no_grad():
        dev = _device(model)
        img = x.detach().to(dev, torch.float32)
        base = torch.zeros_like(img) if baseline == "black" else blurred(img, blur_sigma)
        rank_t = torch.from_numpy(rank).to(dev).view(1, 1, size, size)
        first, second = (base, img) if mode == "deletion" else (img, base)  # (changed pixels, the rest)
        if progress is not None:
            progress(0, steps + 1)
        for lo in range(0, steps + 1, batch_size):
            k = torch.from_numpy(counts[lo : lo + batch_size]).to(dev).view(-1, 1, 1, 1)
            changed = rank_t < k  # [b, 1, S, S]
            batch = torch.where(changed, first, second)
            logits = _final_logits(model, batch, n_glimpses, s_grad)
            probs.append(logits.float().softmax(-1)[:, int(target)].cpu())
            if progress is not None:
                progress(min(lo + batch_size, steps + 1), steps + 1)
    fractions = counts / n
    p = torch.cat(probs).numpy().astype(np.float64)
    return Curve(
        fractions=fractions,
        probs=p,
        auc=_trapezoid(p, fractions),
        mode=mode,
        baseline=baseline,
        target=int(target),
        seconds=time.perf_counter() - start,
    )


# -- Captum's metrics -------------------------------------------------------------------------------------
def infidelity(
    model,
    x: torch.Tensor,
    method: str,
    target: int | None = None,
    *,
    n_glimpses: int | None = None,
    s_grad: float | None = None,
    attribution: Attribution | None = None,
    n_perturb_samples: int = 10,
    noise_std: float = 0.03,
    normalize: bool = True,
    seed: int = 0,
    **options,
) -> float:
    """Captum's explanation infidelity (Yeh et al. 2019) of ``method`` at ``x``; lower is better.

    Perturbations are additive Gaussian noise I ~ N(0, noise_std^2) in pixel units; the score is
    E[(I . attribution - (f(x) - f(x - I)))^2] on the final logit of ``target``, with Captum's
    ``normalize`` (best scaling of the attribution) on by default so methods of different scale compare.
    It uses the raw, signed attribution (pass ``attribution`` to reuse one from ``explain``). Grad-CAM is
    refused: its attribution is not pixel-shaped.
    """
    from captum.metrics import infidelity as captum_infidelity

    if method == "gradcam":
        raise ValueError("infidelity needs pixel-shaped attributions; Grad-CAM lives at layer4 resolution")
    x = _check_input(x)
    if attribution is None:
        attribution = explain(model, x, method, target, n_glimpses=n_glimpses, s_grad=s_grad, seed=seed, **options)
    elif attribution.method != method or (target is not None and int(target) != attribution.target):
        raise ValueError("the attribution passed was computed for another method or target")
    target = attribution.target

    def perturb(inputs):
        noise = torch.randn_like(inputs) * noise_std
        return noise, inputs - noise

    with _using(model, seed), torch.no_grad():
        dev = _device(model)
        xx = x.detach().to(dev, torch.float32)
        attr_t = torch.from_numpy(attribution.raw).to(dev)[None]
        wrapper = _FinalLogits(model, n_glimpses, s_grad)
        score = captum_infidelity(
            wrapper, perturb, xx, attr_t, target=target, n_perturb_samples=n_perturb_samples, normalize=normalize
        )
    return float(score[0])


def sensitivity(
    model,
    x: torch.Tensor,
    method: str,
    target: int | None = None,
    *,
    n_glimpses: int | None = None,
    s_grad: float | None = None,
    perturb_radius: float = 0.02,
    n_perturb_samples: int = 10,
    seed: int = 0,
    **options,
) -> float:
    """Captum's max-sensitivity (Yeh et al. 2019): the largest relative change (Frobenius norm) of the
    raw attribution when ``x`` is perturbed uniformly within +-``perturb_radius`` (pixel units),
    over ``n_perturb_samples`` draws. Lower is more stable. Costs n_perturb_samples explanations.
    """
    from captum.metrics import sensitivity_max

    x = _check_input(x)
    opts = resolve_options(method, x.shape[-1], options)
    with _using(model, seed):
        dev = _device(model)
        xx = x.detach().to(dev, torch.float32)
        if target is None:
            with torch.no_grad():
                target = int(model(xx, n_glimpses=n_glimpses, s_grad=s_grad).logits[-1, 0].argmax())
        wrapper = _FinalLogits(model, n_glimpses, s_grad)

        def explanation(inputs, target):
            with torch.enable_grad():
                if isinstance(inputs, (tuple, list)):  # Captum passes a 1-tuple
                    (inputs,) = inputs
                inputs = inputs.detach().clone().requires_grad_(True)
                return (METHODS[method].run(wrapper, inputs, target, opts, seed).detach(),)  # tuple in, tuple out

        score = sensitivity_max(
            explanation, xx, perturb_radius=perturb_radius, n_perturb_samples=n_perturb_samples, target=int(target)
        )
    return float(score[0])
