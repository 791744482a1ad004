"""Attribution maps for MGNet and its baseline, and metrics that compare them with where MGNet looked.

One verb, shaped like Captum's ``attribute``::

    att = explain(model, x, "integrated_gradients", target=None, n_steps=32)
    att.map        # float32 [S, S], >= 0, max 1 (see "Normalisation" below)

What is attributed. Every method explains the model's FINAL logit of ``target`` (the prediction after
the last glimpse; logits, not probabilities, so gradients do not saturate). Captum sees a small wrapper
module ``x -> model(x, n_glimpses, s_grad).logits[-1]``. ``s_grad`` defaults to the model's own
gradient re-scaling (0.02 in the paper), which damps gradients through the localisation path; pass
``s_grad=1.0`` for true gradients.

Normalisation. ``raw`` keeps Captum's signed attribution ([3, S, S] for pixel methods). ``map`` reduces
it over channels by the SUM OF ABSOLUTE VALUES, then divides by the maximum. Grad-CAM is different: its
raw map lives at layer4 resolution; ``map`` is ReLU(raw) upsampled bilinearly to S x S with
``LayerAttribution.interpolate``, then divided by its maximum. If a map is zero everywhere (possible for
Grad-CAM when every location counts against the class) it is returned as zeros, not divided, and
``Attribution.empty`` is True.

Grad-CAM on MGNet. The backbone's layer4 runs once per glimpse, so "the" layer4 activation is
ambiguous (Captum would silently keep the last glimpse's activation and paint it over the whole
image). Here Grad-CAM is restricted to the FIRST glimpse, the whole image: the gradient of the final
logit with respect to the first glimpse's layer4 activation. On MGNet that first glimpse is
downsampled (96 px for a 224 input at scale 2.33), so the map is coarse (3 x 3 before upsampling).
On the baseline it is ordinary Grad-CAM.

Guided Backprop. Captum overrides the gradient of every ``nn.ReLU`` module; torchvision's BasicBlock
calls one ReLU module twice, which Captum's hooks handle (each call gets its own tensor hooks).
MGNet's fusion uses a functional ReLU, which is not overridden. Captum warns that it sets hooks; the
hooks are removed before ``explain`` returns, also when an error interrupts it.

Shared models. Models are shared between app sessions. Every function here holds
``utils.model_lock(model)`` for its whole computation, switches the model to eval mode and restores
the mode it found, seeds its own randomness inside ``torch.random.fork_rng`` (and restores NumPy's
global RNG state), and never writes ``.grad`` on parameters (Captum uses ``torch.autograd.grad``). Occlusion, which only
runs forward passes, scores the model's cached inference copy (``analysis.inference_model``: BatchNorm
folded, same outputs to float rounding) under the same lock; every gradient method uses the model itself.
The seeded, noise-based methods (SmoothGrad, GradientSHAP, and the infidelity/sensitivity metrics) also
hold the process-wide ``utils.RNG_LOCK`` (shared with ``mgnet.corruptions``), because the global
generators are shared by all models: without it, explanations of two models at once, or an explanation
and a corruption, would reseed each other's noise half-way. Concurrent callers therefore get exactly
the results they would get alone.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import geometry
from .analysis import inference_model
from .model import MGNet
from .utils import RNG_LOCK, eval_mode, model_lock

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class MethodInfo:
    label: str      # readable name for the app
    shows: str      # one line: what the map shows
    slow: bool      # many forward passes; the app should show progress
    defaults: dict  # default options


METHODS: dict[str, MethodInfo] = {
    "saliency": MethodInfo(
        "Saliency (gradient)", "How strongly each pixel's value changes the class score, to first order.",
        False, {}),
    "integrated_gradients": MethodInfo(
        "Integrated Gradients", "Each pixel's share of the score gained going from a black image to this one.",
        True, {"n_steps": 32, "internal_batch_size": 16}),
    "smoothgrad": MethodInfo(
        "SmoothGrad", "The gradient averaged over noisy copies of the image: a less speckled saliency map.",
        True, {"nt_samples": 16, "stdevs": 0.1, "nt_samples_batch_size": 4}),
    "gradcam": MethodInfo(
        "Grad-CAM", "Which regions of the last convolutional layer support the class (coarse; on MGNet: "
        "the first, whole-image glimpse).", False, {}),
    "occlusion": MethodInfo(
        "Occlusion", "How much the class score drops when a black patch covers each region.",
        True, {"window": None, "stride": None, "perturbations_per_eval": 64}),
    "guided_backprop": MethodInfo(
        "Guided Backprop", "Gradient with only positive signals passed back through ReLUs: sharp edges "
        "and textures the network responds to.", False, {}),
    "gradient_shap": MethodInfo(
        "GradientSHAP", "Expected gradient x (image - reference) over black and random-noise references.",
        True, {"n_samples": 16, "n_baselines": 8, "stdevs": 0.0, "n_samples_batch_size": 8}),
}


RANDOM_METHODS = ("smoothgrad", "gradient_shap")  # draw noise from the global generators (seeded per call)


@dataclass
class Attribution:
    """One explanation of one image.

    map:     float32 [S, S], non-negative, max 1 (zeros when the method found nothing, see ``empty``).
    raw:     float32 numpy array, Captum's unnormalised attribution: [3, S, S] for pixel methods,
             [h, w] at layer4 resolution (signed, before ReLU) for Grad-CAM.
    method:  key of ``METHODS``.
    target:  class index explained (the final prediction unless one was given).
    seconds: compute time, lock held, excluding time spent waiting for the lock.
    options: every option used, defaults filled in (n_glimpses, s_grad and seed included).
    """

    map: np.ndarray
    raw: np.ndarray
    method: str
    target: int
    seconds: float
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return METHODS[self.method].label

    @property
    def empty(self) -> bool:
        return not float(self.map.max()) > 0


def available_methods(model) -> list[str]:
    """Method names valid for ``model``. All of them for MGNet and its baseline (Grad-CAM on a
    multi-glimpse MGNet uses the first glimpse, see the module docstring); Grad-CAM needs
    ``model.backbone.layer4``."""
    names = list(METHODS)
    if getattr(getattr(model, "backbone", None), "layer4", None) is None:
        names.remove("gradcam")
    return names


# -- shared-model hygiene ------------------------------------------------------------------------------
@contextlib.contextmanager
def _using(model, seed: int | None = None):
    """Hold the model's lock, run it in eval mode, seed torch and NumPy locally; restore everything.

    With a seed, the process-wide ``utils.RNG_LOCK`` is held too: the global generators are shared by all
    models (and by ``mgnet.corruptions``), so seeded work on two models must not interleave.
    """
    is_module = isinstance(model, nn.Module)
    with (eval_mode(model) if is_module else model_lock(model)), \
            (RNG_LOCK if seed is not None else contextlib.nullcontext()):
        np_state = np.random.get_state() if seed is not None else None
        devices = []
        if is_module and seed is not None:
            devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
        try:
            with torch.random.fork_rng(devices=devices, enabled=seed is not None):
                if seed is not None:
                    torch.manual_seed(seed)
                    np.random.seed(seed % 2**32)
                yield
        finally:
            if np_state is not None:
                np.random.set_state(np_state)


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


class _FinalLogits(nn.Module):
    """What Captum differentiates: the final logits of ``model``; counts examples for progress.

    With ``tap_first_layer4`` the output of the first call of ``model.backbone.layer4`` in each
    forward (the first glimpse) is routed through ``self.tap`` so Captum's layer methods can hook it.
    """

    def __init__(self, model, n_glimpses=None, s_grad=None, progress: Progress | None = None, total: int = 0):
        super().__init__()
        self.model = model
        self.n_glimpses = n_glimpses
        self.s_grad = s_grad
        self.tap = nn.Identity()
        self.progress = progress
        self.total = total
        self.seen = 0
        self._layer4_calls = 0

    def forward(self, x):
        self._layer4_calls = 0
        out = self.model(x, n_glimpses=self.n_glimpses, s_grad=self.s_grad)
        self.seen += x.shape[0]
        if self.progress is not None and self.total:
            self.progress(min(self.seen, self.total), self.total)
        return out.logits[-1]

    def _route_first(self, module, inputs, output):
        first = self._layer4_calls == 0
        self._layer4_calls += 1
        return self.tap(output) if first else output


# -- Captum methods ------------------------------------------------------------------------------------
def _options(method: str, size: int, given: dict) -> dict:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    opts = dict(METHODS[method].defaults)
    unknown = set(given) - set(opts)
    if unknown:
        raise ValueError(f"{method} takes options {sorted(opts) or 'none'}, not {sorted(unknown)}")
    opts.update(given)
    if method == "occlusion":
        opts["window"] = int(opts["window"] or max(1, round(size / 8)))
        opts["stride"] = int(opts["stride"] or max(1, round(size / 16)))
    return opts


def _work(method: str, opts: dict, batch: int, size: int) -> int:
    """Examples the forward wrapper will see: the ``total`` reported to ``progress``."""
    if method == "integrated_gradients":
        return opts["n_steps"] * batch
    if method == "smoothgrad":
        return opts["nt_samples"] * batch
    if method == "gradient_shap":
        return opts["n_samples"] * batch
    if method == "occlusion":
        per_side = (size - opts["window"]) // opts["stride"] + 1
        return batch + per_side * per_side * batch
    return batch


def _attribute(wrapper: _FinalLogits, method: str, x: torch.Tensor, target: int, opts: dict, seed: int):
    """Captum's attribution of ``wrapper`` at ``x`` (any batch size): a tensor."""
    from captum import attr as ca

    if method == "saliency":
        return ca.Saliency(wrapper).attribute(x, target=target, abs=False)
    if method == "integrated_gradients":
        return ca.IntegratedGradients(wrapper).attribute(
            x, baselines=torch.zeros_like(x), target=target, n_steps=opts["n_steps"],
            internal_batch_size=opts["internal_batch_size"])
    if method == "smoothgrad":
        return ca.NoiseTunnel(ca.Saliency(wrapper)).attribute(
            x, nt_type="smoothgrad", nt_samples=opts["nt_samples"], stdevs=opts["stdevs"],
            nt_samples_batch_size=opts["nt_samples_batch_size"], target=target, abs=False)
    if method == "guided_backprop":
        return ca.GuidedBackprop(wrapper).attribute(x, target=target)
    if method == "occlusion":
        w, s = opts["window"], opts["stride"]
        return ca.Occlusion(wrapper).attribute(
            x, sliding_window_shapes=(3, w, w), strides=(3, s, s), baselines=0.0, target=target,
            perturbations_per_eval=opts["perturbations_per_eval"])
    if method == "gradient_shap":
        gen = torch.Generator().manual_seed(seed)
        refs = torch.rand((opts["n_baselines"],) + tuple(x.shape[1:]), generator=gen)
        refs[0] = 0.0  # one black reference, the rest uniform noise
        refs = refs.to(x.device, x.dtype)
        explainer = ca.GradientShap(wrapper)
        total, done, acc = opts["n_samples"], 0, None
        chunk = max(1, int(opts["n_samples_batch_size"]))
        while done < total:  # GradientShap is a mean over samples: chunks give progress and bound memory
            n = min(chunk, total - done)
            part = explainer.attribute(x, baselines=refs, n_samples=n, stdevs=opts["stdevs"], target=target)
            acc = part * n if acc is None else acc + part * n
            done += n
        return acc / total
    if method == "gradcam":
        layer4 = wrapper.model.backbone.layer4
        handle = layer4.register_forward_hook(wrapper._route_first)
        try:
            return ca.LayerGradCam(wrapper, wrapper.tap).attribute(x, target=target, relu_attributions=False)
        finally:
            handle.remove()
    raise ValueError(f"unknown method {method!r}")


def _normalise(m: np.ndarray) -> np.ndarray:
    m = np.nan_to_num(m.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    m = np.maximum(m, 0.0)
    peak = float(m.max())
    return m / peak if peak > 0 else m


def _check_input(x: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(x) or x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
        raise ValueError(f"expected pixels of shape [1, 3, S, S], got {tuple(getattr(x, 'shape', ()))}")
    return x


def explain(model, x: torch.Tensor, method: str, target: int | None = None, *, n_glimpses: int | None = None,
            s_grad: float | None = None, seed: int = 0, progress: Progress | None = None,
            **options) -> Attribution:
    """Attribute the final logit of ``target`` to the pixels of ``x`` ([1, 3, S, S] in [0, 1]).

    ``method`` is a key of ``METHODS``; ``options`` are that method's options (``METHODS[m].defaults``):
    integrated_gradients: n_steps, internal_batch_size (black baseline);
    smoothgrad: nt_samples, stdevs (noise sd in pixel units), nt_samples_batch_size;
    occlusion: window (default S/8), stride (default S/16), perturbations_per_eval (black patches);
    gradient_shap: n_samples, n_baselines (black + uniform-noise references), stdevs, n_samples_batch_size.
    ``target`` defaults to the predicted class after the last glimpse. ``progress(done, total)`` is
    called with the number of examples forwarded so far (at the start with 0 and at the end with
    total), which gives real progress for the slow methods.
    """
    x = _check_input(x)
    size = x.shape[-1]
    opts = _options(method, size, options)
    if method == "gradcam" and getattr(getattr(model, "backbone", None), "layer4", None) is None:
        raise ValueError("Grad-CAM needs a model with backbone.layer4")
    # Only the noise-based methods use random numbers; the others neither seed nor take the RNG lock.
    with _using(model, seed if method in RANDOM_METHODS else None):
        start = time.perf_counter()
        dev = _device(model)
        x = x.detach().to(dev, torch.float32).clone().requires_grad_(True)
        with torch.no_grad():
            out = model(x, n_glimpses=n_glimpses, s_grad=s_grad)
        steps = out.logits.shape[0]
        if target is None:
            target = int(out.logits[-1, 0].argmax())
        target = int(target)
        if not 0 <= target < out.logits.shape[-1]:
            raise ValueError(f"target {target} is not a class index (0..{out.logits.shape[-1] - 1})")
        total = _work(method, opts, 1, size)
        # Occlusion only runs forward passes: it uses the faster inference copy (same outputs to float
        # rounding); every gradient method differentiates the exact model.
        scored = inference_model(model) if method == "occlusion" and isinstance(model, MGNet) else model
        wrapper = _FinalLogits(scored, n_glimpses, s_grad, progress, total)
        if progress is not None:
            progress(0, total)
        with torch.enable_grad():
            result = _attribute(wrapper, method, x, target, opts, seed)
        raw = result.detach()[0].float()
        if method == "gradcam":
            from captum.attr import LayerAttribution

            up = LayerAttribution.interpolate(F.relu(raw)[None], (size, size), interpolate_mode="bilinear")
            reduced = up[0, 0].cpu().numpy()
            raw = raw[0]
        else:
            reduced = raw.abs().sum(0).cpu().numpy()
        if progress is not None:
            progress(total, total)
        seconds = time.perf_counter() - start
    used = dict(opts, n_glimpses=steps, s_grad=float(model.s_grad if s_grad is None else s_grad), seed=seed)
    return Attribution(map=_normalise(reduced), raw=raw.cpu().numpy().astype(np.float32), method=method,
                       target=target, seconds=seconds, options=used)


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


def deletion_insertion(model, x: torch.Tensor, saliency_map, target: int, steps: int = 20,
                       mode: str = "deletion", baseline: str = "blur", n_glimpses: int | None = None,
                       batch_size: int = 16, *, s_grad: float | None = None, blur_sigma: float | None = None,
                       progress: Progress | None = None) -> Curve:
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
            k = torch.from_numpy(counts[lo:lo + batch_size]).to(dev).view(-1, 1, 1, 1)
            changed = rank_t < k  # [b, 1, S, S]
            batch = torch.where(changed, first, second)
            logits = _final_logits(model, batch, n_glimpses, s_grad)
            probs.append(logits.float().softmax(-1)[:, int(target)].cpu())
            if progress is not None:
                progress(min(lo + batch_size, steps + 1), steps + 1)
    fractions = counts / n
    p = torch.cat(probs).numpy().astype(np.float64)
    return Curve(fractions=fractions, probs=p, auc=_trapezoid(p, fractions), mode=mode, baseline=baseline,
                 target=int(target), seconds=time.perf_counter() - start)


# -- Captum's metrics -------------------------------------------------------------------------------------
def infidelity(model, x: torch.Tensor, method: str, target: int | None = None, *, n_glimpses: int | None = None,
               s_grad: float | None = None, attribution: Attribution | None = None, n_perturb_samples: int = 10,
               noise_std: float = 0.03, normalize: bool = True, seed: int = 0, **options) -> float:
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
        attribution = explain(model, x, method, target, n_glimpses=n_glimpses, s_grad=s_grad, seed=seed,
                              **options)
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
        score = captum_infidelity(wrapper, perturb, xx, attr_t, target=target,
                                  n_perturb_samples=n_perturb_samples, normalize=normalize)
    return float(score[0])


def sensitivity(model, x: torch.Tensor, method: str, target: int | None = None, *, n_glimpses: int | None = None,
                s_grad: float | None = None, perturb_radius: float = 0.02, n_perturb_samples: int = 10,
                seed: int = 0, **options) -> float:
    """Captum's max-sensitivity (Yeh et al. 2019): the largest relative change (Frobenius norm) of the
    raw attribution when ``x`` is perturbed uniformly within +-``perturb_radius`` (pixel units),
    over ``n_perturb_samples`` draws. Lower is more stable. Costs n_perturb_samples explanations.
    """
    from captum.metrics import sensitivity_max

    x = _check_input(x)
    opts = _options(method, x.shape[-1], options)
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
                return (_attribute(wrapper, method, inputs, target, opts, seed).detach(),)  # tuple in, tuple out

        score = sensitivity_max(explanation, xx, perturb_radius=perturb_radius,
                                n_perturb_samples=n_perturb_samples, target=int(target))
    return float(score[0])
