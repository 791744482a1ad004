"""Adversarial attacks on MGNet and its baseline: one verb, one registry.

    adv = attack(model, x, y, method="apgd-ce", eps=4, steps=100)
    adv.images     # [B, 3, H, W] adversarial pixels (paper PGD may leave [0, 1], every other method clamps)
    adv.success    # bool [B]: the attacked model's final prediction is no longer y (targeted: is now y)

Every method is one ``AttackInfo`` entry of ``METHODS`` (name, label, options with defaults, whether it
needs gradients). evaluate, figures and the app read that registry. Names are spelled with hyphens
(``paper-pgd``, ``apgd-ce``); ``canonical`` also accepts underscores.

Conventions shared by every method:

* Inputs ``x`` are pixels in [0, 1], shape [B, 3, H, W]; the model normalises inside.
* ``eps`` and step sizes are in units of 1/255 of the pixel range.
  - L-infinity (``norm="linf"``): every pixel moves by at most ``eps / 255``.
  - L2 (``norm="l2"``, FGSM and PGD only): the perturbation of each image, as one vector over all 3*H*W
    values, has Euclidean norm at most ``eps / 255`` (so L2 ``eps=127.5`` is the usual 0.5).
* Losses are taken on the model's FINAL prediction, ``logits[-1]``.
* ``true_gradients=True`` runs MGNet with its 0.02 backward re-scaling of the localisation path switched
  off (``s_grad=1``) for this attack only. The baseline and plain classifiers have no such path and no
  glimpses: ``model.glimpse_options`` drops ``n_glimpses``/``s_grad`` for them (the one place of that rule).
* ``source``: craft the attack on another model (a transfer attack); success is measured on ``model``.
* Gradients of an MGNet (the baseline too) are taken through its fast copy (``analysis.inference_model``:
  BatchNorm folded, convolutions and their input gradients on oneDNN), which has the same outputs and
  input gradients up to float32 rounding and takes 40% less time per step on the CPU; Captum's maps
  use it too. Square queries the same copy.
* The model is never modified: gradients are taken with ``torch.autograd.grad`` with respect to the
  input only (no parameter ``.grad``, no ``requires_grad`` change, no hooks); the model runs in eval mode
  under its shared lock (``utils.eval_mode``) and every module's training flag is restored afterwards,
  even if the attack raises. Randomness comes from a private ``torch.Generator`` seeded with ``seed``.

Why FGSM/PGD are written here rather than taken from ``captum.robust`` (captum 0.9): its L2 PGD takes
sign steps, its FGSM skips pixels whose gradient is below 1e-6 (MGNet's damped gradients can be), its
random start uses the global RNG, and it has no progress callback. For L-infinity without random start
the update is the same as captum's; a test checks that.

APGD and Square follow Croce & Hein (ICML 2020) and Andriushchenko et al. (ECCV 2020); written from the
papers (see each function).
"""

from __future__ import annotations

import contextlib
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mgnet.analysis import inference_model
from mgnet.model import IMAGENET_MEAN, IMAGENET_STD, glimpse_options
from mgnet.utils import eval_mode

NORMS = ("linf", "l2")

Progress = Callable[[int, int], None]


# -- the result -------------------------------------------------------------------------------------------
@dataclass
class Adversarial:
    """One attack on a batch.

    images:  [B, 3, H, W] adversarial pixels, on the device of ``x``.
    success: bool numpy [B], measured on the attacked ``model`` (not the source of a transfer attack).
    method:  key of ``METHODS``; ``eps`` in 1/255.
    seconds: compute time, locks held.
    options: every option used, defaults filled in (true_gradients, n_glimpses, seed, source included).
    details: method-specific numbers: ``queries`` (Square, per image), ``by`` and ``members`` (worst case:
             which member broke each image, and each member's cumulative success).
    """

    images: torch.Tensor
    success: np.ndarray
    method: str
    eps: float
    seconds: float
    options: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return METHODS[self.method].label

    @property
    def success_rate(self) -> float:
        return float(self.success.mean()) if len(self.success) else 0.0


# -- helpers ----------------------------------------------------------------------------------------------
@contextmanager
def _grad_enabled():
    """Autograd on, even if the caller is inside ``torch.no_grad()`` or ``torch.inference_mode()``."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def _final_logits(model: nn.Module, x: torch.Tensor, fw: dict) -> torch.Tensor:
    """The model's final logits [B, C]; MGNet's ``.logits[-1]``, a plain classifier's output as it is."""
    out = model(x, **fw)
    out = out.logits if hasattr(out, "logits") else out
    return out[-1] if out.dim() == 3 else out


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


def _linf_project(x: torch.Tensor, x_adv: torch.Tensor, radius) -> torch.Tensor:
    """Into the L-inf ball around x and [0, 1] (x is in [0, 1], so clamping never leaves the ball)."""
    return torch.min(torch.max(x_adv, x - radius), x + radius).clamp(0, 1)


def _uniform_start(x: torch.Tensor, radius: float, gen: torch.Generator) -> torch.Tensor:
    noise = (torch.rand(x.shape, generator=gen) * 2 - 1) * radius
    return _linf_project(x, x + noise.to(x), radius)


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{i != y} z_i per image: negative once the prediction is no longer y."""
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).max(1).values
    return true - other


def _dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Croce & Hein's difference-of-logits ratio (to be maximised): -(z_y - max_{i!=y} z_i) / (z_1 - z_3),
    with z_1 >= z_2 >= z_3 the sorted logits. Invariant to shifting and scaling the logits."""
    if logits.shape[1] < 3:
        raise ValueError("the DLR loss needs at least 3 classes")
    top = logits.sort(dim=1, descending=True).values
    return -_margin(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


def _loss_gradient(model, x, y, fw, targeted=False, loss="ce"):
    """(per-image loss, d sum(loss) / d x, final logits); the loss grows in the attack's direction.

    An MGNet is differentiated through its fast copy (``analysis.inference_model``: BatchNorm folded,
    convolutions and their input gradients on oneDNN), which computes the same function; the caller holds
    the model's lock."""
    x = x.detach().requires_grad_(True)
    logits = _final_logits(inference_model(model), x, fw)
    if loss == "dlr":
        per_image = _dlr_loss(logits, y)
    else:
        per_image = F.cross_entropy(logits, y, reduction="none")
        per_image = -per_image if targeted else per_image
    (grad,) = torch.autograd.grad(per_image.sum(), x)
    return per_image.detach(), grad, logits.detach()


def input_gradient(
    model: nn.Module,
    x: torch.Tensor,
    y,
    targeted: bool = False,
    s_grad: float | None = None,
    n_glimpses: int | None = None,
) -> torch.Tensor:
    """Gradient of the summed cross-entropy on the final prediction w.r.t. the pixels ``x`` (negated
    when ``targeted``): the direction FGSM and PGD follow. ``s_grad=1.0`` gives MGNet's true gradient."""
    x = _check_pixels(x)
    y = _labels(y, x)
    with _grad_enabled(), eval_mode(model):
        return _loss_gradient(model, x, y, glimpse_options(model, n_glimpses, s_grad), targeted)[1].detach()


@dataclass
class _Job:
    """What every method's ``run`` gets: the crafting model, its forward options and the common settings."""

    model: nn.Module
    fw: dict
    eps: float
    targeted: bool
    seed: int
    progress: Progress | None
    target: nn.Module  # the attacked model (differs from ``model`` for a transfer attack)
    target_fw: dict

    @property
    def radius(self) -> float:
        return self.eps / 255.0

    def tick(self, step: int, total: int):
        if self.progress is not None:
            self.progress(step, total)


# -- FGSM and PGD -------------------------------------------------------------------------------------------
def _run_pgd(job: _Job, x, y, opts) -> tuple[torch.Tensor, dict]:
    """Madry et al.'s PGD: ``steps`` steps of ``step_size`` (default 2.5 * eps / steps) along the gradient
    sign (L-inf) or the L2-normalised gradient (L2), each projected onto the ball and [0, 1]."""
    steps, norm = opts["steps"], opts["norm"]
    step_size = 2.5 * job.eps / steps if opts["step_size"] is None else opts["step_size"]
    radius, alpha = job.radius, step_size / 255.0

    def project(x_adv):
        if norm == "linf":
            return _linf_project(x, x_adv, radius)
        delta = x_adv - x
        delta = delta * (radius / _per_sample_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
        return (x + delta).clamp(0, 1)  # clamping only shrinks |delta| coordinate-wise

    x_adv = x.clone()
    if opts["random_start"] and radius > 0:
        gen = torch.Generator().manual_seed(int(job.seed))
        if norm == "linf":
            x_adv = _uniform_start(x, radius, gen)
        else:
            direction = torch.randn(x.shape, generator=gen)
            direction = direction / _per_sample_norm(direction).clamp_min(1e-12)
            r = radius * torch.rand(x.shape[0], generator=gen) ** (1.0 / x[0].numel())
            x_adv = project(x + (direction * r.view(-1, 1, 1, 1)).to(x))
    for step in range(1, steps + 1):
        grad = _loss_gradient(job.model, x_adv, y, job.fw, job.targeted)[1]
        if norm == "linf":
            direction = grad.sign()
        else:
            direction = grad / _per_sample_norm(grad).clamp_min(torch.finfo(grad.dtype).tiny)
        x_adv = project(x_adv.detach() + alpha * direction)
        job.tick(step, steps)
    return x_adv, {}


def _run_fgsm(job: _Job, x, y, opts) -> tuple[torch.Tensor, dict]:
    """One step of the full budget (PGD with one step of size eps and no random start)."""
    return _run_pgd(job, x, y, dict(opts, steps=1, step_size=job.eps, random_start=False))


def _run_paper_pgd(job: _Job, x, y, opts) -> tuple[torch.Tensor, dict]:
    """The authors' PGD, for reproducing their table only: it perturbs the ImageNet-NORMALISED image
    (``eps/255`` and ``step_size/255`` in normalised units), has no random start and no clamp to [0, 1].
    A normalised 4/255 is about 0.9/255 per pixel: about four times weaker than pixel-space PGD. The
    result is mapped back to pixels WITHOUT clamping, so it may leave [0, 1]."""
    mean = getattr(job.model, "mean", None)
    std = getattr(job.model, "std", None)
    mean = (mean if mean is not None else torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)).to(x)
    std = (std if std is not None else torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)).to(x)
    radius, alpha = job.radius, opts["step_size"] / 255.0
    xn = (x - mean) / std
    xn_adv = xn.clone()
    for i in range(1, opts["steps"] + 1):
        grad = _loss_gradient(job.model, xn_adv * std + mean, y, job.fw)[1] * std  # chain rule to xn
        xn_adv = xn + (xn_adv + alpha * grad.sign() - xn).clamp(-radius, radius)
        job.tick(i, opts["steps"])
    return xn_adv * std + mean, {}


# -- APGD (Croce & Hein 2020) --------------------------------------------------------------------------------
def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations where APGD may halve its step: w_j = ceil(p_j * steps) with p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(round(q * steps, 6)) for q in p[1:]} - {0})  # round: 0.41 + 0.16 is 0.5700…01


def _apgd_once(job: _Job, x, y, steps, loss, gen, rho=0.75, momentum=0.75) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run from a random start: (best image per image, fooled bool [B]). The best image is the
    first one that fooled the model, else the one with the highest loss seen."""
    radius = job.radius
    checkpoints = set(apgd_checkpoints(steps))
    view = (-1, 1, 1, 1)
    x_cur = _uniform_start(x, radius, gen)
    f_cur, grad, logits = _loss_gradient(job.model, x_cur, y, job.fw, job.targeted, loss)
    fooled = logits.argmax(1) != y
    x_best_adv = x_cur.clone()
    x_max, f_max, g_max = x_cur.clone(), f_cur.clone(), grad.clone()
    eta = torch.full((len(x),), 2 * radius, device=x.device, dtype=x.dtype)
    x_prev = x_cur.clone()
    increases = torch.zeros(len(x), device=x.device)
    last_w, last_eta, last_fmax = 0, eta.clone(), f_max.clone()
    for k in range(steps):
        z = _linf_project(x, x_cur + eta.view(view) * grad.sign(), radius)
        if k == 0:
            x_next = z
        else:  # momentum: a mix of the new step and the last move
            a = momentum
            x_next = _linf_project(x, x_cur + a * (z - x_cur) + (1 - a) * (x_cur - x_prev), radius)
        f_next, g_next, logits = _loss_gradient(job.model, x_next, y, job.fw, job.targeted, loss)
        now = logits.argmax(1) != y
        x_best_adv[now & ~fooled] = x_next[now & ~fooled]
        fooled |= now
        increases += (f_next > f_cur).float()
        better = f_next > f_max
        x_max[better], f_max[better], g_max[better] = x_next[better], f_next[better], g_next[better]
        x_prev, x_cur, f_cur, grad = x_cur, x_next, f_next, g_next
        if bool(fooled.all()):  # nothing left to attack in this run
            job.tick(steps, steps)
            break
        if k + 1 in checkpoints:  # halve the step where progress stalled; restart from the best point
            window = k + 1 - last_w
            halve = (increases < rho * window) | ((last_eta == eta) & (last_fmax == f_max))
            last_eta, last_fmax, last_w = eta.clone(), f_max.clone(), k + 1
            eta[halve] /= 2
            x_cur[halve], f_cur[halve], grad[halve] = x_max[halve], f_max[halve], g_max[halve]
            x_prev[halve] = x_cur[halve]
            increases.zero_()
        job.tick(k + 1, steps)
    x_best_adv[~fooled] = x_max[~fooled]
    return x_best_adv, fooled


def _apgd(job: _Job, x, y, opts, loss) -> tuple[torch.Tensor, dict]:
    """APGD: ``restarts`` runs of ``steps`` iterations from random starts; each restart attacks only the
    images no earlier run fooled."""
    if job.targeted:
        raise ValueError("APGD is untargeted here; use PGD for a targeted attack")
    gen = torch.Generator().manual_seed(int(job.seed))
    best, fooled = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
    total = opts["steps"] * opts["restarts"]
    for r in range(opts["restarts"]):
        todo = (~fooled).nonzero()[:, 0]
        if len(todo) == 0:
            break
        sub = dict(vars(job), progress=lambda s, t, r=r: job.tick(r * opts["steps"] + s, total))
        x_r, fooled_r = _apgd_once(_Job(**sub), x[todo], y[todo], opts["steps"], loss, gen)
        keep = fooled_r | (r == 0)  # the first run's best point stands until a restart fools the model
        best[todo[keep]] = x_r[keep]
        fooled[todo[fooled_r]] = True
    return best, {}


def _run_apgd_ce(job, x, y, opts):
    return _apgd(job, x, y, opts, "ce")


def _run_apgd_dlr(job, x, y, opts):
    return _apgd(job, x, y, opts, "dlr")


# -- Square (Andriushchenko et al. 2020), L-infinity -----------------------------------------------------------
SQUARE_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # on a 10,000-query scale
SQUARE_REDRAWS = 100  # new signs for a window that would change nothing; some draw always changes it


def square_fraction(p_init: float, query: int, queries: int) -> float:
    """The paper's schedule: the share of pixels a square covers starts at ``p_init`` and halves at each
    of SQUARE_SCHEDULE, which is stretched to the query budget."""
    scaled = int(query / queries * 10000)
    return p_init / 2 ** sum(scaled > t for t in SQUARE_SCHEDULE)


def _run_square(job: _Job, x, y, opts) -> tuple[torch.Tensor, dict]:
    """Square attack: a gradient-free random search. Start from vertical stripes of +-eps; each query
    moves one random square window (all channels, each +-eps) of images not yet fooled, and keeps the
    change where the margin z_y - max_{i!=y} z_i went down. An image stops once it is fooled. As in the
    paper, a window whose new signs would leave the image as it is gets new signs before it is queried,
    so no query is spent on an unchanged image. An MGNet is queried through its fast copy
    (``analysis.inference_model``), the one the app analyses with."""
    if job.targeted:
        raise ValueError("Square is untargeted here; use PGD for a targeted attack")
    queries, radius = opts["queries"], job.radius
    gen = torch.Generator().manual_seed(int(job.seed))
    b, c, h, w = x.shape
    queried = inference_model(job.model)  # its lock is held

    def margin(images, idx):
        with torch.no_grad():
            return _margin(_final_logits(queried, images, job.fw), y[idx])

    def signs(*shape):  # +-1, drawn from the attack's seeded generator
        return torch.randint(0, 2, shape, generator=gen).to(x) * 2 - 1

    x_adv = (x + radius * signs(b, c, 1, w)).clamp(0, 1)
    all_idx = torch.arange(b, device=x.device)
    best = margin(x_adv, all_idx)
    used = torch.ones(b, dtype=torch.long)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    for q in range(1, queries):
        alive = (best > 0).nonzero()[:, 0]
        if len(alive) == 0 or radius == 0:
            job.tick(queries, queries)
            break
        side = int(round(math.sqrt(square_fraction(opts["p_init"], q, queries) * h * w)))
        side = min(max(side, 1), h - 1, w - 1)
        n = len(alive)
        top = torch.randint(0, h - side + 1, (n,), generator=gen).to(x.device)
        left = torch.randint(0, w - side + 1, (n,), generator=gen).to(x.device)
        in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)
        in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)
        window = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # [n, 1, h, w]
        origin, current = x[alive], x_adv[alive]
        delta = current - origin
        candidate = (origin + torch.where(window, signs(n, c, 1, 1) * radius, delta)).clamp(0, 1)
        for _ in range(SQUARE_REDRAWS):
            redraw = (candidate - current).abs().flatten(1).amax(1) < 1e-7
            if not redraw.any():
                break
            value = signs(int(redraw.sum()), c, 1, 1) * radius
            candidate[redraw] = (origin[redraw] + torch.where(window[redraw], value, delta[redraw])).clamp(0, 1)
        new = margin(candidate, alive)
        used[alive.cpu()] += 1
        take = new < best[alive]
        x_adv[alive[take]] = candidate[take]
        best[alive[take]] = new[take]
        job.tick(q + 1, queries)
    return _linf_project(x, x_adv, radius), {"queries": used.tolist()}


# -- the worst case over several attacks ---------------------------------------------------------------------
WORST_MEMBERS = ("pgd", "apgd-ce", "apgd-dlr", "square", "transfer", "pgd-true", "apgd-ce-true", "apgd-dlr-true")


def worst_members(model, transfer_from=None, members=WORST_MEMBERS) -> list[str]:
    """The members that apply to ``model``: true-gradient variants only for MGNet, transfer only with a
    model to craft it on. A member named ``X-true`` is attack X with MGNet's true gradients."""
    is_mgnet = bool(glimpse_options(model, s_grad=1.0))
    out = []
    for m in members:
        if m.endswith("-true") and not is_mgnet:
            continue
        if m == "transfer" and transfer_from is None:
            continue
        method = "pgd" if m == "transfer" else m.removesuffix("-true")
        if method not in METHODS or method == "worst":
            raise ValueError(f"unknown worst-case member {m!r}; members are {', '.join(WORST_MEMBERS)}")
        out.append(m)
    return out


def _run_worst(job: _Job, x, y, opts) -> tuple[torch.Tensor, dict]:
    """Per image, the first member attack that fooled the attacked model. Members run in order, each on
    the images no earlier member fooled (AutoAttack's order of evaluation), so the cost falls as images
    fall; the per-member success is therefore cumulative: "this member or an earlier one"."""
    names = worst_members(job.target, opts["transfer_from"], opts["members"])
    images, fooled = x.clone(), torch.zeros(len(x), dtype=torch.bool)
    by: list = [None] * len(x)
    cumulative = {}
    for i, name in enumerate(names):
        todo = (~fooled).nonzero()[:, 0]
        if len(todo):
            method = "pgd" if name == "transfer" else name.removesuffix("-true")
            member_opts = dict(opts["member_options"].get(method, {}))
            adv = attack(
                job.target,
                x[todo],
                y[todo],
                method=method,
                eps=job.eps,
                source=opts["transfer_from"] if name == "transfer" else None,
                true_gradients=name.endswith("-true"),
                n_glimpses=job.fw.get("n_glimpses"),
                seed=job.seed,
                progress=lambda s, t, i=i: job.tick(i * 1000 + int(1000 * s / max(t, 1)), 1000 * len(names)),
                **member_opts,
            )
            hit = torch.from_numpy(adv.success)
            if i == 0:  # an image no member fools keeps the first member's attempt
                images[todo] = adv.images
            images[todo[hit]] = adv.images[hit]
            for j in todo[hit].tolist():
                by[j] = name
            fooled[todo[hit]] = True
        cumulative[name] = fooled.tolist()
    return images, {"by": by, "members": cumulative}


# -- the registry ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttackInfo:
    """One attack method: ``run(job, x, y, options) -> (images, details)`` and what it accepts."""

    name: str
    label: str
    short: str  # for figure rows and table headings
    run: Callable
    defaults: dict  # the method's own options and their defaults (eps is common to all)
    needs_gradients: bool
    targeted: bool  # whether it can pull towards a class
    pixel_space: bool  # clamps to [0, 1] (paper PGD does not)
    summary: str


METHODS: dict[str, AttackInfo] = {
    info.name: info
    for info in (
        AttackInfo(
            "pgd",
            "PGD (pixel space, clamped)",
            "PGD",
            _run_pgd,
            {"steps": 10, "step_size": None, "norm": "linf", "random_start": True},
            True,
            True,
            True,
            "Madry et al. projected gradient descent on cross-entropy; step 2.5·eps/steps by default.",
        ),
        AttackInfo(
            "fgsm",
            "FGSM (one step)",
            "FGSM",
            _run_fgsm,
            {"norm": "linf"},
            True,
            True,
            True,
            "One gradient-sign step of the whole budget.",
        ),
        AttackInfo(
            "paper-pgd",
            "Paper PGD (normalised space, no clamp)",
            "paper PGD",
            _run_paper_pgd,
            {"steps": 10, "step_size": 1.0},
            True,
            False,
            False,
            "The authors' PGD: budget in normalised units (about 4x weaker), no random start, no clamp.",
        ),
        AttackInfo(
            "apgd-ce",
            "APGD-CE (AutoAttack)",
            "APGD-CE",
            _run_apgd_ce,
            {"steps": 100, "restarts": 1},
            True,
            False,
            True,
            "Croce & Hein's step-size-free PGD on cross-entropy: momentum, the step halves where progress stalls.",
        ),
        AttackInfo(
            "apgd-dlr",
            "APGD-DLR (AutoAttack)",
            "APGD-DLR",
            _run_apgd_dlr,
            {"steps": 100, "restarts": 1},
            True,
            False,
            True,
            "APGD on the difference-of-logits ratio, a loss that does not saturate like cross-entropy.",
        ),
        AttackInfo(
            "square",
            "Square (gradient-free)",
            "Square",
            _run_square,
            {"queries": 5000, "p_init": 0.05},
            False,
            False,
            True,
            "Andriushchenko et al.'s random search: needs only predictions, so hidden gradients do not stop it.",
        ),
        AttackInfo(
            "worst",
            "Worst case (per image, any attack)",
            "worst case",
            _run_worst,
            {"members": WORST_MEMBERS, "transfer_from": None, "member_options": {}},
            True,
            False,
            True,
            "Per image, whether any of PGD, APGD-CE, APGD-DLR, Square, transfer and the true-gradient variants "
            "fooled the model.",
        ),
    )
}


def canonical(method: str) -> str:
    """The registry's spelling of a method name (``paper_pgd`` -> ``paper-pgd``); ValueError if unknown."""
    name = str(method).strip().lower().replace("_", "-")
    if name not in METHODS:
        raise ValueError(f"unknown attack method {method!r}; choose one of {', '.join(METHODS)}")
    return name


def resolve_options(method: str, options: dict) -> dict:
    """The method's defaults updated with ``options``, checked: unknown names and bad values raise."""
    info = METHODS[canonical(method)]
    unknown = sorted(set(options) - set(info.defaults))
    if unknown:
        raise ValueError(
            f"{info.name} takes no option {', '.join(unknown)}; its options are {', '.join(info.defaults) or 'none'}"
        )
    opts = dict(info.defaults, **options)
    for key in ("steps", "restarts", "queries"):
        if key in opts and (int(opts[key]) != opts[key] or opts[key] < 1):
            raise ValueError(f"{key} must be a positive integer, got {opts[key]}")
        if key in opts:
            opts[key] = int(opts[key])
    if "norm" in opts:
        opts["norm"] = str(opts["norm"]).lower()
        if opts["norm"] not in NORMS:
            raise ValueError(f"unknown norm {opts['norm']!r}; choose one of {NORMS}")
    if opts.get("step_size") is not None and not opts["step_size"] > 0:
        raise ValueError(f"step_size must be > 0, got {opts['step_size']}")
    if "p_init" in opts and not 0 < opts["p_init"] <= 1:
        raise ValueError(f"p_init must be in (0, 1], got {opts['p_init']}")
    return opts


def method_options(method: str, **given) -> dict:
    """Of ``given`` (a form's or a command line's values, None: not set), the options ``method`` takes."""
    takes = METHODS[canonical(method)].defaults
    return {k: v for k, v in given.items() if k in takes and v is not None}


def _success(model, images, y, fw, targeted) -> np.ndarray:
    with torch.no_grad(), eval_mode(model):
        pred = _final_logits(model, images, fw).argmax(1)
    return (pred == y if targeted else pred != y).cpu().numpy()


def attack(
    model: nn.Module,
    x: torch.Tensor,
    y,
    method: str = "pgd",
    eps: float = 4.0,
    source: nn.Module | None = None,
    *,
    targeted: bool = False,
    true_gradients: bool = False,
    n_glimpses: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    **options,
) -> Adversarial:
    """Attack ``model`` on pixels ``x`` with labels ``y``; the one verb for every method of ``METHODS``.

    Args:
        model: the attacked model (MGNet, the baseline, or any classifier taking pixels).
        x: pixels in [0, 1], [B, 3, H, W]; y: true labels (or target labels with ``targeted``), int or [B].
        method: a key of ``METHODS``. eps: budget in 1/255.
        source: craft on this model instead (transfer attack); success is still measured on ``model``.
        targeted: pull towards class ``y`` (methods whose ``AttackInfo.targeted`` is True).
        true_gradients: MGNet's 0.02 gradient re-scaling switched off while crafting (ignored for baselines).
        n_glimpses: glimpses MGNet runs (crafting and judging; None = the model's own).
        seed: seeds the method's private generator (random starts, Square's search).
        progress: ``callable(step, total)`` after each step or query; raising from it aborts the attack.
        options: the method's own options (``METHODS[method].defaults``).
    """
    method = canonical(method)
    info = METHODS[method]
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if targeted and not info.targeted:
        raise ValueError(f"{info.label} is untargeted here; targeted attacks: pgd, fgsm")
    opts = resolve_options(method, options)
    x = _check_pixels(x)
    y = _labels(y, x)
    crafting = source if source is not None else model
    fw = glimpse_options(crafting, n_glimpses, 1.0 if true_gradients else None)
    target_fw = glimpse_options(model, n_glimpses)
    job = _Job(crafting, fw, float(eps), bool(targeted), int(seed), progress, model, target_fw)
    started = time.perf_counter()
    # The worst case's members hold their own models' locks; holding one here too could deadlock.
    with _grad_enabled(), eval_mode(crafting) if method != "worst" else contextlib.nullcontext():
        images, details = info.run(job, x, y, opts)
    images = images.detach()
    success = _success(model, images, y, target_fw, targeted)
    used = dict(opts, true_gradients=bool(true_gradients), n_glimpses=n_glimpses, seed=int(seed))
    used.update(targeted=bool(targeted), source=None if source is None else _describe(source))
    if used.get("transfer_from") is not None:
        used["transfer_from"] = _describe(used["transfer_from"])
    return Adversarial(images, success, method, float(eps), time.perf_counter() - started, used, details)


def _describe(model) -> str:
    info = getattr(model, "checkpoint_info", None) or {}
    return str(info.get("path") or type(model).__name__)
