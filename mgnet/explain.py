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
global RNG state), and never writes ``.grad`` on parameters (Captum uses ``torch.autograd.grad``). An
MGNet (the baseline too) is run through its cached fast copy (``analysis.inference_model``: BatchNorm
folded, convolutions and their input gradients on oneDNN), whose outputs and input gradients are the
model's up to float32 rounding, under the same lock; Captum's hooks go on that copy and are removed
before returning.
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

from .analysis import inference_model
from .model import MGNet
from .utils import RNG_LOCK, eval_mode, model_lock

Progress = Callable[[int, int], None]


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
    has_layer4 = getattr(getattr(model, "backbone", None), "layer4", None) is not None
    return [name for name, info in METHODS.items() if has_layer4 or not info.needs_layer4]


# -- shared-model hygiene ------------------------------------------------------------------------------
@contextlib.contextmanager
def _using(model, seed: int | None = None):
    """Hold the model's lock, run it in eval mode, seed torch and NumPy locally; restore everything.

    With a seed, the process-wide ``utils.RNG_LOCK`` is held too: the global generators are shared by all
    models (and by ``mgnet.corruptions``), so seeded work on two models must not interleave.
    """
    is_module = isinstance(model, nn.Module)
    with (
        eval_mode(model) if is_module else model_lock(model),
        RNG_LOCK if seed is not None else contextlib.nullcontext(),
    ):
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


# -- Captum methods: one run function and one cost function each -----------------------------------------
# run(wrapper, x, target, opts, seed) -> Captum's attribution of ``wrapper`` at ``x`` (any batch size);
# cost(opts, batch, size) -> examples the wrapper will see: the ``total`` reported to ``progress``.
def _captum():
    from captum import attr

    return attr


def _one_pass(opts: dict, batch: int, size: int) -> int:
    return batch


def _run_saliency(wrapper, x, target, opts, seed):
    return _captum().Saliency(wrapper).attribute(x, target=target, abs=False)


def _run_integrated_gradients(wrapper, x, target, opts, seed):
    return (
        _captum()
        .IntegratedGradients(wrapper)
        .attribute(
            x,
            baselines=torch.zeros_like(x),
            target=target,
            n_steps=opts["n_steps"],
            internal_batch_size=opts["internal_batch_size"],
        )
    )


def _run_smoothgrad(wrapper, x, target, opts, seed):
    captum = _captum()
    return captum.NoiseTunnel(captum.Saliency(wrapper)).attribute(
        x,
        nt_type="smoothgrad",
        nt_samples=opts["nt_samples"],
        stdevs=opts["stdevs"],
        nt_samples_batch_size=opts["nt_samples_batch_size"],
        target=target,
        abs=False,
    )


def _run_gradcam(wrapper, x, target, opts, seed):
    handle = wrapper.model.backbone.layer4.register_forward_hook(wrapper._route_first)
    try:
        return _captum().LayerGradCam(wrapper, wrapper.tap).attribute(x, target=target, relu_attributions=False)
    finally:
        handle.remove()


def _run_occlusion(wrapper, x, target, opts, seed):
    window, stride = opts["window"], opts["stride"]
    return (
        _captum()
        .Occlusion(wrapper)
        .attribute(
            x,
            sliding_window_shapes=(3, window, window),
            strides=(3, stride, stride),
            baselines=0.0,
            target=target,
            perturbations_per_eval=opts["perturbations_per_eval"],
        )
    )


def _cost_occlusion(opts: dict, batch: int, size: int) -> int:
    per_side = (size - opts["window"]) // opts["stride"] + 1
    return batch + per_side * per_side * batch


def _sizes_occlusion(opts: dict, size: int) -> dict:
    """The default patch is S/8 wide and moves by S/16."""
    return dict(
        opts,
        window=int(opts["window"] or max(1, round(size / 8))),
        stride=int(opts["stride"] or max(1, round(size / 16))),
    )


def _run_guided_backprop(wrapper, x, target, opts, seed):
    return _captum().GuidedBackprop(wrapper).attribute(x, target=target)


def _run_gradient_shap(wrapper, x, target, opts, seed):
    generator = torch.Generator().manual_seed(seed)
    references = torch.rand((opts["n_baselines"],) + tuple(x.shape[1:]), generator=generator)
    references[0] = 0.0  # one black reference, the rest uniform noise
    references = references.to(x.device, x.dtype)
    explainer = _captum().GradientShap(wrapper)
    total, done, acc = opts["n_samples"], 0, None
    chunk = max(1, int(opts["n_samples_batch_size"]))
    while done < total:  # GradientShap is a mean over samples: chunks give progress and bound memory
        n = min(chunk, total - done)
        part = explainer.attribute(x, baselines=references, n_samples=n, stdevs=opts["stdevs"], target=target)
        acc = part * n if acc is None else acc + part * n
        done += n
    return acc / total


def _reduce_pixels(raw: torch.Tensor, size: int) -> tuple[np.ndarray, torch.Tensor]:
    """[3, S, S] -> ([S, S] sum of absolute values over channels, the raw attribution as it is)."""
    return raw.abs().sum(0).cpu().numpy(), raw


def _reduce_gradcam(raw: torch.Tensor, size: int) -> tuple[np.ndarray, torch.Tensor]:
    """[1, h, w] at layer4 resolution -> (ReLU upsampled bilinearly to [S, S], the raw [h, w] map)."""
    from captum.attr import LayerAttribution

    up = LayerAttribution.interpolate(F.relu(raw)[None], (size, size), interpolate_mode="bilinear")
    return up[0, 0].cpu().numpy(), raw[0]


@dataclass(frozen=True)
class Tunable:
    """An option the app offers as a number input: its name, label and range."""

    option: str
    label: str
    low: int
    high: int
    step: int


@dataclass(frozen=True)
class MethodInfo:
    """One explanation method: everything the library, the app and the figure tool need to know of it.
    Adding a method is one entry of ``METHODS`` (plus its tests)."""

    label: str  # readable name for the app
    short: str  # column title of paper figures
    shows: str  # one line: what the map shows
    slow: bool  # many forward passes; the app shows progress and asks before recomputing
    defaults: dict  # default options
    run: Callable  # (wrapper, x, target, opts, seed) -> Captum's attribution
    cost: Callable = _one_pass  # (opts, batch, size) -> examples forwarded
    random: bool = False  # draws noise from the global generators (seeded per call, under RNG_LOCK)
    reduce: Callable = _reduce_pixels  # (raw attribution of one image, S) -> ([S, S] map, raw to keep)
    sizes: Callable | None = None  # (opts, S) -> opts with size-dependent defaults filled in
    needs_layer4: bool = False  # needs ``model.backbone.layer4``
    tunable: Tunable | None = None  # the option the app lets a user change


METHODS: dict[str, MethodInfo] = {
    "saliency": MethodInfo(
        "Saliency (gradient)",
        "Saliency",
        "How strongly each pixel's value changes the class score, to first order.",
        False,
        {},
        _run_saliency,
    ),
    "integrated_gradients": MethodInfo(
        "Integrated Gradients",
        "Int. Grad.",
        "Each pixel's share of the score gained going from a black image to this one.",
        True,
        {"n_steps": 32, "internal_batch_size": 16},
        _run_integrated_gradients,
        cost=lambda opts, batch, size: opts["n_steps"] * batch,
        tunable=Tunable("n_steps", "Integrated Gradients: steps", 4, 256, 4),
    ),
    "smoothgrad": MethodInfo(
        "SmoothGrad",
        "SmoothGrad",
        "The gradient averaged over noisy copies of the image: a less speckled saliency map.",
        True,
        {"nt_samples": 16, "stdevs": 0.1, "nt_samples_batch_size": 4},
        _run_smoothgrad,
        cost=lambda opts, batch, size: opts["nt_samples"] * batch,
        random=True,
        tunable=Tunable("nt_samples", "SmoothGrad: noisy samples", 2, 128, 2),
    ),
    "gradcam": MethodInfo(
        "Grad-CAM",
        "Grad-CAM",
        "Which regions of the last convolutional layer support the class (coarse; on "
        "MGNet: the first, whole-image glimpse).",
        False,
        {},
        _run_gradcam,
        reduce=_reduce_gradcam,
        needs_layer4=True,
    ),
    "occlusion": MethodInfo(
        "Occlusion",
        "Occlusion",
        "How much the class score drops when a black patch covers each region.",
        True,
        {"window": None, "stride": None, "perturbations_per_eval": 64},
        _run_occlusion,
        cost=_cost_occlusion,
        sizes=_sizes_occlusion,
        tunable=Tunable("window", "Occlusion: patch side in px (0 = 1/8 of the input)", 0, 128, 1),
    ),
    "guided_backprop": MethodInfo(
        "Guided Backprop",
        "Guided BP",
        "Gradient with only positive signals passed back through ReLUs: sharp "
        "edges and textures the network responds to.",
        False,
        {},
        _run_guided_backprop,
    ),
    "gradient_shap": MethodInfo(
        "GradientSHAP",
        "Grad. SHAP",
        "Expected gradient x (image - reference) over black and random-noise references.",
        True,
        {"n_samples": 16, "n_baselines": 8, "stdevs": 0.0, "n_samples_batch_size": 8},
        _run_gradient_shap,
        cost=lambda opts, batch, size: opts["n_samples"] * batch,
        random=True,
        tunable=Tunable("n_samples", "GradientSHAP: samples", 2, 128, 2),
    ),
}


def resolve_options(method: str, size: int, given: dict) -> dict:
    """``method``'s options: its defaults updated by ``given`` (unknown names refused), sizes filled in."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    info = METHODS[method]
    opts = dict(info.defaults)
    unknown = set(given) - set(opts)
    if unknown:
        raise ValueError(f"{method} takes options {sorted(opts) or 'none'}, not {sorted(unknown)}")
    opts.update(given)
    return info.sizes(opts, size) if info.sizes else opts


def _normalise(m: np.ndarray) -> np.ndarray:
    m = np.nan_to_num(m.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    m = np.maximum(m, 0.0)
    peak = float(m.max())
    return m / peak if peak > 0 else m


def _check_input(x: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(x) or x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
        raise ValueError(f"expected pixels of shape [1, 3, S, S], got {tuple(getattr(x, 'shape', ()))}")
    return x


def passes(method: str, size: int, options: dict | None = None) -> int:
    """Examples ``explain`` will forward for one image of side ``size``: the total its progress reports,
    known before it starts (so a caller can estimate the time)."""
    return int(METHODS[method].cost(resolve_options(method, size, dict(options or {})), 1, size))


def explain(
    model,
    x: torch.Tensor,
    method: str,
    target: int | None = None,
    *,
    n_glimpses: int | None = None,
    s_grad: float | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    **options,
) -> Attribution:
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
    info = METHODS[method]
    if info.needs_layer4 and getattr(getattr(model, "backbone", None), "layer4", None) is None:
        raise ValueError(f"{info.label} needs a model with backbone.layer4")
    # Only the noise-based methods use random numbers; the others neither seed nor take the RNG lock.
    with _using(model, seed if info.random else None):
        start = time.perf_counter()
        x = x.detach().to(_device(model), torch.float32).clone().requires_grad_(True)
        steps, target = _steps_and_target(model, x, target, n_glimpses, s_grad)
        total = info.cost(opts, 1, size)
        # An MGNet (the baseline too) runs its fast copy: same outputs and input gradients up to float32
        # rounding, in up to a quarter less time. Captum's hooks go on the copy, under the model's lock.
        scored = inference_model(model)
        wrapper = _FinalLogits(scored, n_glimpses, s_grad, progress, total)
        if progress is not None:
            progress(0, total)
        with torch.enable_grad():
            result = info.run(wrapper, x, target, opts, seed)
        reduced, raw = info.reduce(result.detach()[0].float(), size)
        if progress is not None:
            progress(total, total)
        seconds = time.perf_counter() - start
    used = dict(opts, n_glimpses=steps, s_grad=float(model.s_grad if s_grad is None else s_grad), seed=seed)
    return Attribution(
        map=_normalise(reduced),
        raw=raw.cpu().numpy().astype(np.float32),
        method=method,
        target=target,
        seconds=seconds,
        options=used,
    )


def _steps_and_target(model, x: torch.Tensor, target: int | None, n_glimpses, s_grad) -> tuple[int, int]:
    """Glimpses the model takes, and the class explained (its final prediction when ``target`` is None).
    An MGNet with a given target needs no forward pass for this: both follow from its configuration."""
    if target is not None and isinstance(model, MGNet):
        steps, n_classes = model.n_glimpses if n_glimpses is None else int(n_glimpses), model.num_classes  # as forward
        if steps < 1:
            raise ValueError("n_glimpses must be at least 1")
    else:
        with torch.no_grad():
            out = model(x, n_glimpses=n_glimpses, s_grad=s_grad)
        steps, n_classes = out.logits.shape[0], out.logits.shape[-1]
        target = int(out.logits[-1, 0].argmax()) if target is None else target
    target = int(target)
    if not 0 <= target < n_classes:
        raise ValueError(f"target {target} is not a class index (0..{n_classes - 1})")
    return steps, target
