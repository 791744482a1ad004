"""White-box and transfer adversarial attacks on MGNet and its baseline.

Conventions shared by every function here:

* Inputs ``x`` are pixels in [0, 1], shape [B, 3, H, W]; the model normalises inside.
* ``eps`` and step sizes are in units of 1/255 of the pixel range.
  - L-infinity (``norm="linf"``): every pixel moves by at most ``eps / 255``.
  - L2 (``norm="l2"``): the perturbation of each image, taken as one vector over all 3*H*W values,
    has Euclidean norm at most ``eps / 255``. The unit is the same as for L-infinity, so an L2 budget
    is much larger in number than an L-infinity one: the usual L2 budget of 0.5 (in [0, 1] units) is
    ``eps=127.5`` here; L2 ``eps=4`` is a tiny perturbation.
* The loss is cross-entropy (summed over the batch) on the model's FINAL prediction, ``logits[-1]``;
  ``y`` is the true label (untargeted: the loss is increased) or the target label (``targeted=True``:
  the loss towards ``y`` is decreased).
* ``s_grad`` and ``n_glimpses`` are passed to the model for the attack's forward passes only;
  ``s_grad=1.0`` disables MGNet's 0.02 backward re-scaling on the localisation path ("true gradients").
  ``None`` keeps the model's own value (0.02 for the authors' MGNet).
* The model is never modified: gradients are taken with ``torch.autograd.grad`` with respect to the
  input only (no parameter ``.grad`` is written, no ``requires_grad`` flag is changed, no hooks), and
  the model runs in eval mode during the attack; every module's previous training flag is restored
  afterwards, even if the attack raises.

Why the steps are written here rather than taken from ``captum.robust`` (captum 0.9 was checked):

* captum's ``PGD`` with ``norm="L2"`` still takes *sign* (L-infinity) steps and only projects onto the
  L2 ball; standard L2 PGD steps along the L2-normalised gradient, which is what we do.
* captum's ``FGSM`` leaves every pixel whose gradient magnitude is at most ``zero_thresh`` (1e-6)
  unchanged. Input gradients of a confident model, or ones damped 50x by MGNet's re-scaling, can be
  that small, which would silently weaken the attack; a sign attack should use the sign regardless of
  magnitude.
* captum's random start draws from torch's global RNG (not seedable per call without touching global
  state shared by other threads) and its L2 random start creates the radius on the CPU, which breaks
  for CUDA inputs. We draw from a private ``torch.Generator`` seeded with ``seed``.
* captum offers no per-step callback for a progress bar.

For L-infinity without random start the update is the same as captum's (step, clip to the ball, clamp
to [0, 1]); the tests check that our PGD matches ``captum.robust.PGD`` with ``zero_thresh = 0``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mgnet.model import IMAGENET_MEAN, IMAGENET_STD
from mgnet.utils import eval_mode

METHODS = ("fgsm", "pgd")
NORMS = ("linf", "l2")

Progress = Callable[[int, int], None]


# -- helpers --------------------------------------------------------------------------------------
@contextmanager
def _grad_enabled():
    """Autograd on, even if the caller is inside ``torch.no_grad()`` or ``torch.inference_mode()``."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def _forward_logits(model: nn.Module, x: torch.Tensor, n_glimpses=None, s_grad=None) -> torch.Tensor:
    """The model's logits: [T, B, C] for MGNet; a plain classifier's [B, C] output is passed through."""
    kwargs = {}
    if n_glimpses is not None:
        kwargs["n_glimpses"] = n_glimpses
    if s_grad is not None:
        kwargs["s_grad"] = s_grad
    out = model(x, **kwargs)
    return out.logits if hasattr(out, "logits") else out


def _final(logits: torch.Tensor) -> torch.Tensor:
    return logits[-1] if logits.dim() == 3 else logits


def _check_pixels(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a [B, 3, H, W] tensor of pixels in [0, 1], got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor of pixels in [0, 1], got dtype {x.dtype}")
    x = x.detach().clone()  # also turns an inference-mode tensor into a normal one
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(
            f"x must hold pixels in [0, 1] (not ImageNet-normalised values); got range [{lo:.3f}, {hi:.3f}]"
        )
    return x.clamp_(0, 1)


def _labels(y, x: torch.Tensor) -> torch.Tensor:
    y = torch.as_tensor(y, device=x.device).long()
    if y.dim() == 0:
        y = y.expand(x.shape[0])
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must be an int or a tensor of {x.shape[0]} labels, got shape {tuple(y.shape)}")
    return y


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each sample, shaped [B, 1, 1, 1] for broadcasting."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def _loss_gradient(model, x, y, targeted, n_glimpses, s_grad) -> torch.Tensor:
    """d CE(final logits, y, sum) / d x, input only; sign-flipped for targeted attacks (ascent direction)."""
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(_final(_forward_logits(model, x, n_glimpses, s_grad)), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return -grad if targeted else grad


def input_gradient(
    model: nn.Module,
    x: torch.Tensor,
    y,
    targeted: bool = False,
    s_grad: float | None = None,
    n_glimpses: int | None = None,
) -> torch.Tensor:
    """Gradient of the summed cross-entropy on the final prediction w.r.t. the pixels ``x``.

    This is the gradient every attack here follows (negated when ``targeted``). With MGNet's default
    ``s_grad`` (0.02) the localisation path's contribution is damped; ``s_grad=1.0`` gives the true
    gradient. The model is run in eval mode and left as it was.
    """
    x = _check_pixels(x)
    y = _labels(y, x)
    with _grad_enabled(), eval_mode(model):
        return _loss_gradient(model, x, y, targeted, n_glimpses, s_grad).detach()


# -- attacks ----------------------------------------------------------------------------------------
def attack(
    model: nn.Module,
    x: torch.Tensor,
    y,
    method: str = "pgd",
    eps: float = 4.0,
    steps: int = 10,
    step_size: float | None = None,
    norm: str = "linf",
    random_start: bool = True,
    targeted: bool = False,
    s_grad: float | None = None,
    n_glimpses: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Adversarial examples in pixel space; returns ``x_adv`` clamped to [0, 1], same shape as ``x``.

    Args:
        model: MGNet, the baseline, or any classifier taking pixels (tensor or ``.logits`` output).
        x: pixels in [0, 1], [B, 3, H, W].
        y: true labels (untargeted) or target labels (``targeted=True``); an int or [B] tensor.
        method: ``"fgsm"`` (one step of size ``eps``; ``steps``, ``step_size`` and ``random_start`` are
            ignored) or ``"pgd"`` (Madry et al.: ``steps`` projected steps).
        eps: budget in 1/255 units (see the module docstring for the L2 convention).
        steps: PGD iterations.
        step_size: PGD step in 1/255 units; default ``2.5 * eps / steps``. L-infinity steps move every
            pixel by ``step_size/255`` along the gradient sign; L2 steps move by ``step_size/255`` in L2
            norm along the normalised gradient.
        norm: ``"linf"`` or ``"l2"``.
        random_start: PGD starts from a uniform random point of the eps-ball (clamped to [0, 1]),
            drawn from a private generator seeded with ``seed``: same seed, same result (bit-exact on
            CPU; CUDA backward kernels may be non-deterministic). torch's global RNG is not used.
        targeted: move towards class ``y`` instead of away from it.
        s_grad: MGNet's backward gradient factor for this attack (1.0 = true gradients; None = model's).
        n_glimpses: glimpses used while crafting (None = model's default).
        seed: seed of the random start.
        progress: optional ``callable(step, total)`` called after each step (FGSM: once, with (1, 1)).
            An exception raised from it aborts the attack; the model is still restored.
    """
    method, norm = str(method).lower(), str(norm).lower()
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if method == "fgsm":
        steps, step_size, random_start = 1, eps, False
    else:
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps}")
        steps = int(steps)
        step_size = 2.5 * eps / steps if step_size is None else step_size
        if not step_size > 0 and eps > 0:
            raise ValueError(f"step_size must be > 0, got {step_size}")
    x = _check_pixels(x)
    y = _labels(y, x)
    radius, alpha = eps / 255.0, step_size / 255.0

    def project(x_adv: torch.Tensor) -> torch.Tensor:
        delta = x_adv - x
        if norm == "linf":
            delta = delta.clamp(-radius, radius)
        else:
            delta = delta * (radius / _per_sample_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
        # x is in [0, 1], so clamping only shrinks |delta| coordinate-wise: the result stays in the ball.
        return (x + delta).clamp(0, 1)

    x_adv = x.clone()
    if random_start and radius > 0:
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        if norm == "linf":
            noise = (torch.rand(x.shape, generator=gen) * 2 - 1) * radius
        else:
            direction = torch.randn(x.shape, generator=gen)
            direction = direction / _per_sample_norm(direction).clamp_min(1e-12)
            r = radius * torch.rand(x.shape[0], generator=gen) ** (1.0 / x[0].numel())
            noise = direction * r.view(-1, 1, 1, 1)
        x_adv = project(x + noise.to(device=x.device, dtype=x.dtype))

    with _grad_enabled(), eval_mode(model):
        for step in range(1, steps + 1):
            grad = _loss_gradient(model, x_adv, y, targeted, n_glimpses, s_grad)
            if norm == "linf":
                direction = grad.sign()
            else:
                direction = grad / _per_sample_norm(grad).clamp_min(torch.finfo(grad.dtype).tiny)
            x_adv = project(x_adv.detach() + alpha * direction)
            if progress is not None:
                progress(step, steps)
    return x_adv.detach()


def paper_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y,
    eps: float = 4.0,
    step: float = 1.0,
    steps: int = 10,
    *,
    n_glimpses: int | None = None,
    s_grad: float | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """The authors' PGD, for reproducing their robustness table only.

    It perturbs the ImageNet-NORMALISED image: ``eps/255`` and ``step/255`` are measured in normalised
    units, there is no random start, no clamp to the valid pixel range, steps follow the gradient sign of
    the cross-entropy on the final prediction (model's own ``s_grad``, 0.02, unless overridden). Since our
    models take pixels, ``x`` is normalised with the model's ``mean``/``std``, attacked there, and mapped
    back with ``x_norm * std + mean`` WITHOUT clamping: the result may leave [0, 1].

    A normalised budget of 4/255 is about 4/255 * std, i.e. roughly 0.9/255 per pixel: this attack is
    about four times weaker than pixel-space PGD at the same nominal ``eps`` (use :func:`attack` for an
    honest robustness number).

    Returns pixel-space ``x_adv`` (unclamped), same shape as ``x``.
    """
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps}")
    x = _check_pixels(x)
    y = _labels(y, x)
    mean = getattr(model, "mean", None)
    std = getattr(model, "std", None)
    mean = (mean if mean is not None else torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)).to(x)
    std = (std if std is not None else torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)).to(x)
    radius, alpha = eps / 255.0, step / 255.0
    xn = (x - mean) / std
    xn_adv = xn.clone()
    with _grad_enabled(), eval_mode(model):
        for i in range(1, int(steps) + 1):
            xn_adv = xn_adv.detach().requires_grad_(True)
            logits = _final(_forward_logits(model, xn_adv * std + mean, n_glimpses, s_grad))
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xn_adv)
            xn_adv = xn_adv.detach() + alpha * grad.sign()
            xn_adv = xn + (xn_adv - xn).clamp(-radius, radius)
            if progress is not None:
                progress(i, int(steps))
    return (xn_adv * std + mean).detach()


def transfer_attack(
    source: nn.Module, target: nn.Module, x: torch.Tensor, y, *, target_n_glimpses: int | None = None, **attack_kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """Craft adversarial examples on ``source`` with :func:`attack`, then evaluate them on ``target``.

    ``attack_kwargs`` go to :func:`attack` (``n_glimpses`` and ``s_grad`` there apply to the source).
    Returns ``(x_adv, target_logits)`` where ``target_logits`` is the target's logits on ``x_adv``:
    [T, B, C] for MGNet (one prediction per glimpse, the last is final; ``target_n_glimpses`` glimpses,
    default the target's own), or a plain classifier's own output shape. The target runs in eval mode
    without gradients and is left as it was.
    """
    x_adv = attack(source, x, y, **attack_kwargs)
    with torch.no_grad(), eval_mode(target):
        target_logits = _forward_logits(target, x_adv, n_glimpses=target_n_glimpses)
    return x_adv, target_logits
