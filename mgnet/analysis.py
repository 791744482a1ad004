"""Run MGNet on a photo and return plain results the app and the figure CLI draw."""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from . import geometry
from .data import image_hash, to_model_input
from .flops import gflops
from .location import centred
from .model import MGNet, glimpse_options, prepare_for_inference
from .utils import eval_mode


@dataclass
class GlimpseAnalysis:
    """What MGNet did on one photo. Boxes are in edge coordinates of the original photo."""

    classes: list
    probs: np.ndarray  # [T, C] softmax after each glimpse
    params: np.ndarray  # [T, 3] (scale, tx, ty)
    boxes: np.ndarray  # [T, 4] in the original photo
    boxes_model: np.ndarray  # [T, 4] in the model input
    seen: np.ndarray  # [T, h, h, 3] uint8: the glimpses at the resolution the network saw
    width: int
    height: int
    image_size: int
    glimpse_size: int
    gflops: list  # cumulative, after each glimpse
    baseline_gflops: float  # one full-resolution pass of the same backbone
    seconds: float
    image_hash: str = ""
    extra: dict = field(default_factory=dict)
    logits: np.ndarray | None = None  # [T, C] before softmax (the unlike-photo score needs them)

    @property
    def n_glimpses(self) -> int:
        return len(self.probs)

    def top(self, t: int, k: int = 5) -> list[tuple[str, float]]:
        order = np.argsort(-self.probs[t])[:k]
        return [(self.classes[i], float(self.probs[t, i])) for i in order]

    def predicted(self, t: int = -1) -> int:
        return int(np.argmax(self.probs[t]))


def model_device(model) -> torch.device:
    return next(model.parameters()).device


_FAST_GUARD = threading.Lock()
_FAST: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> (fingerprint, inference copy)


def _fingerprint(model) -> tuple:
    """Changes whenever the model's weights, device or settings do (in-place updates bump ``_version``)."""
    tensors = [*model.parameters(), *model.buffers()]
    return tuple((t.data_ptr(), t._version) for t in tensors), str(model.config())


def inference_model(model):
    """The fast copy of ``model`` (``model.prepare_for_inference``) used for analyses, attacks and maps.

    Built on first use and kept while ``model`` lives; rebuilt if ``model``'s weights or settings change.
    Call it with ``model``'s lock held: the copy is run under that lock, like the model itself.
    Analyses run it forward; attacks and Captum's maps take input gradients through it (the same as
    ``model``'s up to float32 rounding). Training and weight gradients use ``model``. Any other classifier
    (not an MGNet) is returned as it is.
    """
    if not isinstance(model, MGNet):
        return model
    key = _fingerprint(model)
    with _FAST_GUARD:
        found = _FAST.get(model)
    if found is not None and found[0] == key:
        return found[1]
    fast = prepare_for_inference(model)
    with _FAST_GUARD:
        _FAST[model] = (key, fast)
    return fast


def analyze(
    model, image: np.ndarray, n_glimpses: int | None = None, s_grad=None, *, model_input=None, key=None
) -> GlimpseAnalysis:
    """Forward one RGB uint8 photo through ``model`` (eval mode, no gradients).

    A caller that already has the model's view of the photo (``to_model_input(image, model.image_size)``)
    or its ``image_hash`` may pass them: from a 12 MP photo each takes tens of milliseconds to compute.
    ``seconds`` is the analysis alone: what is done once per model (its fast copy, its FLOP count) is done
    first, untimed."""
    with eval_mode(model):
        inference_model(model)
    gflops(model, n_glimpses=n_glimpses)  # cached per model settings
    start = time.perf_counter()
    inputs = None if model_input is None else [model_input]
    result = analyze_batch(model, [image], n_glimpses, inputs=inputs, keys=None if key is None else [key])[0]
    result.seconds = time.perf_counter() - start
    return result


def analyze_batch(
    model,
    images: list[np.ndarray],
    n_glimpses: int | None = None,
    batch_size: int = 8,
    progress=None,
    *,
    inputs: list[torch.Tensor] | None = None,
    keys: list[str] | None = None,
) -> list[GlimpseAnalysis]:
    """``analysis.analyze`` for many photos, ``batch_size`` at a time on the model's device.

    Per photo, the same as ``analyze`` up to float rounding of batched kernels; ``seconds`` is 0 so that
    outputs are reproducible. ``inputs`` and ``keys``, if given, are each photo's ``to_model_input`` and
    ``image_hash``, computed already.
    """
    size = model.image_size
    for given, what in ((inputs, "inputs"), (keys, "keys")):
        if given is not None and len(given) != len(images):
            raise ValueError(f"{what} must have one entry per image: {len(given)} for {len(images)}")
    if inputs is not None and any(tuple(t.shape) != (1, 3, size, size) for t in inputs):
        raise ValueError(f"each model input must be [1, 3, {size}, {size}] (mgnet.data.to_model_input)")
    out: list[GlimpseAnalysis] = []
    dev = model_device(model)
    cumulative, base = gflops(model, n_glimpses=n_glimpses)
    for lo in range(0, len(images), batch_size):
        chunk = images[lo : lo + batch_size]
        given = inputs[lo : lo + batch_size] if inputs is not None else [to_model_input(im, size) for im in chunk]
        x = torch.cat([t.to(dev) for t in given])
        with eval_mode(model), torch.inference_mode():
            res = inference_model(model)(x, **glimpse_options(model, n_glimpses=n_glimpses), return_crops=True)
        logits = res.logits.float().cpu()
        probs = logits.softmax(-1).numpy()  # [T, B, C]
        params = res.glimpses.float().cpu().numpy()  # [T, B, 3]
        seen = (res.crops.float().clamp(0, 1) * 255 + 0.5).byte().permute(1, 0, 3, 4, 2).cpu().numpy()
        h = seen.shape[2]
        for b, image in enumerate(chunk):
            boxes_model = geometry.glimpse_boxes(params[:, b], model.image_size, h)
            height, width = image.shape[:2]
            out.append(
                GlimpseAnalysis(
                    classes=list(model.classes),
                    probs=probs[:, b],
                    params=params[:, b],
                    boxes=geometry.to_original(boxes_model, model.image_size, width, height),
                    boxes_model=boxes_model,
                    seen=seen[b],
                    width=width,
                    height=height,
                    image_size=model.image_size,
                    glimpse_size=h,
                    gflops=cumulative[: probs.shape[0]],
                    baseline_gflops=base,
                    seconds=0.0,
                    image_hash=keys[lo + b] if keys is not None else image_hash(image),
                    logits=logits[:, b].numpy(),
                )
            )
        if progress is not None:
            progress(len(chunk))
    return out


@dataclass
class LocationCheck:
    """On one photo: does MGNet's belief depend on where glimpses 2..T went?

    Probabilities are of ``target`` (the final prediction with its own glimpses) after each glimpse.
    The moved runs keep each glimpse's scale and change only its position, and the model is told the
    new position as if it had chosen it.
    """

    target: int
    own: np.ndarray  # [T]
    centre: np.ndarray  # [T] glimpses 2..T centred on the image
    moved: np.ndarray  # [K, T] glimpses 2..T at uniformly random positions inside the image
    moved_params: np.ndarray  # [K, T, 3] the (scale, tx, ty) of those runs, glimpse 1 included
    final_class: dict  # {"own": i, "centre": i, "moved": [i] * K}: the final prediction of each run
    seed: int


def location_check(
    model,
    image: np.ndarray,
    n_glimpses: int | None = None,
    n_random: int = 8,
    seed: int = 0,
    *,
    model_input=None,
    own: GlimpseAnalysis | None = None,
) -> LocationCheck:
    """Run MGNet on ``image`` with its own glimpses, with glimpses 2..T centred, and with them at
    ``n_random`` random positions (same scales), in one batch. ``model_input``: as for ``analyze``;
    ``own``: ``analyze(model, image, n_glimpses)`` if the caller has it (its own-glimpse run is then reused)."""
    steps = model.n_glimpses if n_glimpses is None else int(n_glimpses)
    if steps < 2 or model.is_baseline:
        raise ValueError("this model takes a single look: there is no glimpse location to move")
    if n_random < 1:
        raise ValueError("n_random must be at least 1")
    if own is not None and (
        own.n_glimpses != steps or own.image_size != model.image_size or own.classes != model.classes
    ):
        raise ValueError("own must be this model's analysis of this image with the same number of glimpses")
    dev = model_device(model)
    x = (to_model_input(image, model.image_size) if model_input is None else model_input).to(dev)
    with eval_mode(model), torch.inference_mode():
        fast = inference_model(model)
        if own is None:
            run = fast(x, n_glimpses=steps)
            later = run.glimpses[1:].float().cpu()  # [T-1, 1, 3]
            own_probs = run.logits[:, 0].float().softmax(-1).cpu().numpy()  # [T, C]
        else:
            later = torch.from_numpy(own.params[1:, None, :].copy())
            own_probs = own.probs
        scale = later[..., :1].expand(-1, n_random, 1)
        gen = torch.Generator().manual_seed(seed)
        where = (torch.rand(later.shape[0], n_random, 2, generator=gen) * 2 - 1) * (1 - scale)
        params = torch.cat([centred(later), torch.cat([scale, where], -1)], 1)  # [T-1, 1+K, 3]
        out = fast(x.expand(1 + n_random, -1, -1, -1), n_glimpses=steps, glimpse_params=params.to(dev))
    target = int(own_probs[-1].argmax())
    probs = out.logits.float().softmax(-1).cpu().numpy()  # [T, 1+K, C]
    finals = probs[-1].argmax(-1)
    return LocationCheck(
        target=target,
        own=own_probs[:, target].copy(),
        centre=probs[:, 0, target],
        moved=probs[:, 1:, target].T.copy(),
        moved_params=out.glimpses[:, 1:].float().cpu().numpy().transpose(1, 0, 2).copy(),
        final_class={"own": target, "centre": int(finals[0]), "moved": [int(v) for v in finals[1:]]},
        seed=seed,
    )


def display_crop(image: np.ndarray, box, size: int = 256) -> np.ndarray:
    """The glimpse region of the photo (as decoded), resampled to size x size for display."""
    x0, y0, x1, y1 = box
    interp = cv2.INTER_AREA if (x1 - x0) > size else cv2.INTER_LINEAR
    if interp == cv2.INTER_AREA:  # downscale: cut the region first, then area-average
        ix0, iy0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        ix1, iy1 = min(int(np.ceil(x1)), image.shape[1]), min(int(np.ceil(y1)), image.shape[0])
        region = image[iy0:iy1, ix0:ix1]
        if region.size:
            return cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA)
    return geometry.crop(image, box, size)


def focus_map(boxes, width: int, height: int, skip_first: bool = True, blur: float = 0.02) -> np.ndarray:
    """Where MGNet looked, as a map in [0, 1] comparable to a saliency map.

    Each glimpse spreads one unit of mass evenly over its box, so small (zoomed) glimpses are
    concentrated and large ones diffuse; the maps are summed and scaled to a maximum of 1. The first
    glimpse (the whole image) carries no location and is skipped by default. A light Gaussian blur
    (sigma = ``blur`` x the longer side) softens box edges.
    """
    boxes = np.asarray(boxes)[1 if skip_first and len(boxes) > 1 else 0 :]
    out = np.zeros((height, width), np.float32)
    for box in boxes:
        m = geometry.box_mask(box, width, height)
        total = m.sum()
        if total > 0:
            out += m / total
    if blur > 0:
        sigma = blur * max(width, height)
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=sigma, sigmaY=sigma)
    peak = out.max()
    return out / peak if peak > 0 else out


def display_focus_map(result: GlimpseAnalysis, max_side: int = 256) -> np.ndarray:
    """``focus_map`` of a photo's analysis at a display resolution (longer side ``max_side``): fast for
    any photo size, and with the photo's aspect."""
    f = min(1.0, max_side / max(result.width, result.height))
    w, h = max(1, round(result.width * f)), max(1, round(result.height * f))
    return focus_map(np.asarray(result.boxes) * f, w, h)
