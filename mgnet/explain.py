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
global RNG state), and never writes ``.grad`` on parameters (Captum uses ``torch.autograd.grad``).
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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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
        True, {"n_steps": 32, "internal_batch_size": 8}),
    "smoothgrad": MethodInfo(
        "SmoothGrad", "The gradient averaged over noisy copies of the image: a less speckled saliency map.",
        True, {"nt_samples": 16, "stdevs": 0.1, "nt_samples_batch_size": 4}),
    "gradcam": MethodInfo(
        "Grad-CAM", "Which regions of the last convolutional layer support the class (coarse; on MGNet: "
        "the first, whole-image glimpse).", False, {}),
    "occlusion": MethodInfo(
        "Occlusion", "How much the class score drops when a black patch covers each region.",
        True, {"window": None, "stride": None, "perturbations_per_eval": 16}),
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
def resolve_options(method: str, size: int, given: dict) -> dict:
    """``method``'s options: its defaults updated by ``given`` (unknown names refused), sizes filled in."""
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
    opts = resolve_options(method, size, options)
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
        wrapper = _FinalLogits(model, n_glimpses, s_grad, progress, total)
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
