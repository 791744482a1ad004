"""ImageNet-C common corruptions (Hendrycks & Dietterich, 2019), made reproducible and thread-safe.

The pixel work is done by the ``imagecorruptions`` package (PyPI: ``imagecorruptions-imaug``), the
reference implementation of the 15 ImageNet-C corruptions and the 4 extra ("validation") ones. This
module adds what an interactive app needs on top of it:

* **Reproducibility.** Most corruptions draw from numpy's *global* RNG. ``corrupt`` seeds it with
  ``seed`` under a module-level lock and restores the caller's global RNG state afterwards, so the same
  (image, name, severity, seed) always gives the same bytes and the caller's RNG stream is untouched.
  Two corruptions do *not* use the global RNG: ``impulse_noise`` (scikit-image's ``random_noise``, fresh
  OS entropy unless given a seed) and ``glass_blur`` (a numba kernel with its own RNG, seeded from fresh
  entropy unless given a seed). For those two the library's ``seed=`` keyword is passed explicitly, so
  the output equals ``imagecorruptions.corrupt(image, corruption_name=name, severity=s, seed=seed)``;
  for every other corruption it equals ``np.random.seed(seed)`` followed by
  ``imagecorruptions.corrupt(image, corruption_name=name, severity=s)``.
* **Thread safety.** The global-RNG section is serialised by a lock. Code elsewhere that draws from
  numpy's global RNG *without* taking :data:`RNG_LOCK` at the same moment can still interleave with us;
  use the lock if that matters to you.
* **Any image size.** The library refuses images under 32 pixels on either side. Such images are
  reflect-padded (centred) up to 32 pixels, corrupted, and cropped back to their own size. The
  corruptions act per pixel (kernel sizes and noise are in pixels), so padding keeps their strength,
  but statistics taken over the whole image (contrast's mean, fog's maximum, pixelate's grid) also see
  the padded border. Non-square images of 32 pixels or more need no special handling: every corruption
  was checked on 32x32, 37x53, 53x37, 33x200, 64x64, 128x128, 224x224 and 375x500 inputs.
* **The spatter NaN.** For severities 1-3, ``spatter`` divides its liquid mask by the mask's maximum.
  When no droplet survives the threshold (it happens on small images, a few percent of seeds at 32x32,
  more below that) the library divides 0 by 0 and the NaN image casts to an all-black uint8 image. Here
  that case returns the clean image instead, which is what "no droplets" means; every other result is
  byte-identical to the library's.

Severity 0 means "no corruption" and returns a copy of the (RGB-converted) input.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from . import utils as _utils
from .data import downscale

WORK_SIDE = 224
"""Corruption strengths are defined in pixels of ImageNet-sized images: shorter side 224 px."""

CORRUPTION_GROUPS: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
    "extra": ("speckle_noise", "gaussian_blur", "spatter", "saturate"),
}
"""ImageNet-C's four groups of the 15 benchmark corruptions, plus the 4 extra ones."""

CORRUPTIONS: tuple[str, ...] = (
    CORRUPTION_GROUPS["noise"] + CORRUPTION_GROUPS["blur"] + CORRUPTION_GROUPS["weather"] + CORRUPTION_GROUPS["digital"]
)
"""The 15 ImageNet-C benchmark corruptions, in the paper's order."""

EXTRA_CORRUPTIONS: tuple[str, ...] = CORRUPTION_GROUPS["extra"]
"""The 4 extra ("validation") corruptions of ImageNet-C."""

ALL_CORRUPTIONS: tuple[str, ...] = CORRUPTIONS + EXTRA_CORRUPTIONS

CORRUPTION_LABELS: dict[str, str] = {
    "gaussian_noise": "Gaussian noise",
    "shot_noise": "Shot noise",
    "impulse_noise": "Impulse noise",
    "defocus_blur": "Defocus blur",
    "glass_blur": "Glass blur",
    "motion_blur": "Motion blur",
    "zoom_blur": "Zoom blur",
    "snow": "Snow",
    "frost": "Frost",
    "fog": "Fog",
    "brightness": "Brightness",
    "contrast": "Contrast",
    "elastic_transform": "Elastic transform",
    "pixelate": "Pixelate",
    "jpeg_compression": "JPEG compression",
    "speckle_noise": "Speckle noise",
    "gaussian_blur": "Gaussian blur",
    "spatter": "Spatter",
    "saturate": "Saturate",
}

GROUP_LABELS: dict[str, str] = {
    "noise": "Noise",
    "blur": "Blur",
    "weather": "Weather",
    "digital": "Digital",
    "extra": "Extra",
}

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

MIN_SIDE = 32
"""Smallest side ``imagecorruptions`` accepts; smaller images are reflect-padded up to it."""

# Corruptions whose randomness does not come from numpy's global RNG; they take a ``seed`` keyword.
_SEEDED_BY_KEYWORD = frozenset({"impulse_noise", "glass_blur"})

RNG_LOCK = _utils.RNG_LOCK  # shared with mgnet.explain's seeded methods (re-entrant)
"""Held while numpy's global RNG is seeded and used by a corruption."""


def group_of(name: str) -> str:
    """The group ('noise', 'blur', 'weather', 'digital' or 'extra') of a corruption."""
    _check_name(name)
    return next(g for g, names in CORRUPTION_GROUPS.items() if name in names)


def label(name: str) -> str:
    """Human-readable name of a corruption, e.g. 'JPEG compression'."""
    _check_name(name)
    return CORRUPTION_LABELS[name]


def _check_name(name) -> None:
    if name not in ALL_CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid names: {', '.join(ALL_CORRUPTIONS)}")


def _check_severity(severity) -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 0 <= severity <= 5:
        raise ValueError(
            f"severity must be an integer in 0..5 (0 = clean), got {severity!r}; "
            f"valid severities: 0, {', '.join(map(str, SEVERITIES))}"
        )
    return int(severity)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    return int(seed)


def _as_rgb_uint8(image) -> np.ndarray:
    """[H, W, 3] uint8 copy of a PIL image or a uint8 array of shape [H, W], [H, W, 1|3|4] (alpha dropped)."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array or PIL image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image with values 0..255, got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an image of shape [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"empty image of shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[..., :3]
    return np.ascontiguousarray(image).copy()


def _run_library(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """One corruption on an RGB uint8 image with both sides >= 32, as ``imagecorruptions.corrupt`` does it.

    The library's ``corrupt`` is ``np.uint8(corruption_dict[name](Image.fromarray(image), severity))``
    after its argument checks; calling the function ourselves lets us see the float result before
    the cast, to catch spatter's 0/0.
    """
    from imagecorruptions import corruption_dict

    kwargs = {"seed": seed} if name in _SEEDED_BY_KEYWORD else {}
    with RNG_LOCK:
        saved = np.random.get_state()
        try:
            np.random.seed(seed)
            with np.errstate(invalid="ignore", divide="ignore"):
                result = corruption_dict[name](Image.fromarray(image), severity, **kwargs)
        finally:
            np.random.set_state(saved)
    result = np.asarray(result)
    if result.dtype.kind == "f" and not np.isfinite(result).all():
        if name != "spatter":  # not seen in testing; refuse rather than return a wrong image
            raise RuntimeError(
                f"imagecorruptions produced non-finite values for {name} "
                f"(severity {severity}, seed {seed}, image {image.shape})"
            )
        # Spatter without droplets: the mask is 0/0 everywhere. No droplets means no change.
        result = np.where(np.isfinite(result), result, image.astype(result.dtype))
    out = np.uint8(result)
    if out.shape != image.shape:
        raise RuntimeError(
            f"imagecorruptions returned shape {out.shape} for an image of shape {image.shape} "
            f"({name}, severity {severity})"
        )
    return out


def corrupt(image, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Apply one ImageNet-C corruption; returns a new uint8 array of shape [H, W, 3].

    Args:
        image: uint8 array [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] (alpha is dropped), or a PIL
            image. Any size: images under 32 pixels on a side are reflect-padded to 32 and cropped back
            (see the module docstring).
        name: one of :data:`ALL_CORRUPTIONS` (the 15 of :data:`CORRUPTIONS` plus the 4 of
            :data:`EXTRA_CORRUPTIONS`).
        severity: 1..5, or 0 for the clean image (a copy).
        seed: integer in [0, 2**32). Same (image, name, severity, seed), same output. numpy's global
            RNG state is the same after the call as before it.

    Raises:
        ValueError: unknown name, severity outside 0..5, bad seed, or an image that is not uint8 RGB(A)/grey.
    """
    _check_name(name)
    severity = _check_severity(severity)
    seed = _check_seed(seed)
    rgb = _as_rgb_uint8(image)
    if severity == 0:
        return rgb
    h, w = rgb.shape[:2]
    pad_h, pad_w = max(0, MIN_SIDE - h), max(0, MIN_SIDE - w)
    if pad_h or pad_w:
        top, left = pad_h // 2, pad_w // 2
        padded = np.pad(rgb, ((top, pad_h - top), (left, pad_w - left), (0, 0)), mode="reflect")
        return np.ascontiguousarray(_run_library(padded, name, severity, seed)[top : top + h, left : left + w])
    return _run_library(rgb, name, severity, seed)


def working_image(image: np.ndarray) -> np.ndarray:
    """The photo at ImageNet-C scale: shorter side ``WORK_SIDE`` px, aspect kept (smaller photos unchanged).
    Corrupt this, not the full-resolution photo, so a severity means what it means in ImageNet-C."""
    h, w = image.shape[:2]
    f = WORK_SIDE / min(h, w)
    if f < 1:
        return downscale(image, max(1, round(max(h, w) * f)))
    return image
