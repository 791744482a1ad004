"""Compute cost per glimpse, counted with torch's FlopCounterMode.

Reported as GFLOPs in the multiply-accumulate convention of the ResNet and MGNet papers
(ResNet-18 at 224 px = 1.82), i.e. half of the floating-point operations FlopCounterMode counts.
Convolutions and matrix products are counted; element-wise work (BN, ReLU, sampling) is not.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch.utils.flop_counter import FlopCounterMode

from .model import MGNet


def _count(model: MGNet, n_glimpses: int, image_size: int) -> float:
    x = torch.rand(1, 3, image_size, image_size, device=next(model.parameters()).device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, n_glimpses=n_glimpses)
    return counter.get_total_flops() / 2 / 1e9


@lru_cache(maxsize=64)
def _cached(config_key: tuple, image_size: int, steps: int) -> tuple:
    cfg = dict(config_key)
    cfg["mean"], cfg["std"] = list(cfg["mean"]), list(cfg["std"])
    model = MGNet(**cfg).eval()
    cumulative = tuple(_count(model, t, image_size) for t in range(1, steps + 1))
    baseline = MGNet(cfg["backbone"], cfg["num_classes"], n_glimpses=1, scale=1.0, image_size=image_size).eval()
    return cumulative, _count(baseline, 1, image_size)


def gflops(model: MGNet, image_size: int | None = None, n_glimpses: int | None = None) -> tuple[list[float], float]:
    """(cumulative GFLOPs after each glimpse, GFLOPs of one full-resolution baseline pass).

    One entry per glimpse up to ``n_glimpses`` (default: the number it was trained with; MGNet may run
    longer, as an anytime model, and a baseline always takes one look)."""
    size = image_size or model.image_size
    key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in model.config().items()))
    steps = 1 if model.is_baseline else max(1, int(n_glimpses or model.n_glimpses))
    cumulative, baseline = _cached(key, size, steps)
    return list(cumulative), baseline
