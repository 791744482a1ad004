"""Tests for mgnet.corruptions: library equality, reproducibility, RNG hygiene, odd image sizes."""

import sys
import threading
import warnings
from pathlib import Path

import torch

torch.set_num_threads(1)  # the machine is shared with training jobs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import imagecorruptions  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from imagecorruptions import corruption_dict  # noqa: E402
from PIL import Image  # noqa: E402

from mgnet.corruptions import (  # noqa: E402
    ALL_CORRUPTIONS,
    CORRUPTION_GROUPS,
    CORRUPTION_LABELS,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    corrupt,
    group_of,
    label,
)

NOISE = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")
SEEDED_BY_KEYWORD = ("impulse_noise", "glass_blur")


def make_image(h=64, w=64, seed=0):
    """Smooth structure plus noise, so blurs, crops and colour ops all have something to change."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([128 + 90 * np.sin(xx / 5.0), 128 + 90 * np.cos(yy / 4.0), (3 * xx + 2 * yy) % 256], -1)
    return np.clip(img + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def library(image, name, severity, seed):
    """The reference: imagecorruptions.corrupt after seeding numpy's global RNG."""
    kwargs = {"seed": seed} if name in SEEDED_BY_KEYWORD else {}
    np.random.seed(seed)
    return imagecorruptions.corrupt(image, corruption_name=name, severity=severity, **kwargs)


def test_names_groups_and_labels():
    assert CORRUPTIONS == tuple(imagecorruptions.get_corruption_names("common"))
    assert EXTRA_CORRUPTIONS == tuple(imagecorruptions.get_corruption_names("validation"))
    assert len(CORRUPTIONS) == 15 and len(EXTRA_CORRUPTIONS) == 4
    for group in ("noise", "blur", "weather", "digital"):
        assert CORRUPTION_GROUPS[group] == tuple(imagecorruptions.get_corruption_names(group))
    assert set(CORRUPTION_LABELS) == set(ALL_CORRUPTIONS)
    assert group_of("frost") == "weather" and group_of("saturate") == "extra"
    assert label("jpeg_compression") == "JPEG compression"


@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_every_severity_matches_library(name):
    image = make_image(64, 64)
    outputs = []
    for severity in range(1, 6):
        out = corrupt(image, name, severity, seed=3)
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert not np.array_equal(out, image), f"{name} severity {severity} left the image unchanged"
        np.testing.assert_array_equal(out, library(image, name, severity, seed=3))
        outputs.append(out)
    assert len({o.tobytes() for o in outputs}) > 1, "severity has no effect"


@pytest.mark.parametrize("name", NOISE + ("glass_blur", "motion_blur", "fog", "frost", "snow", "spatter"))
def test_same_seed_same_output_other_seed_differs(name):
    image = make_image(48, 40)
    a = corrupt(image, name, 3, seed=11)
    np.testing.assert_array_equal(a, corrupt(image, name, 3, seed=11))
    assert not np.array_equal(a, corrupt(image, name, 3, seed=12))


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise", "glass_blur", "fog"])
def test_global_numpy_rng_untouched(name):
    np.random.seed(1234)
    before = np.random.get_state()
    corrupt(make_image(40, 40), name, 2, seed=5)
    after = np.random.get_state()
    assert before[0] == after[0]
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2:] == after[2:]


def test_severity_zero_is_a_clean_copy():
    image = make_image(40, 40)
    out = corrupt(image, "fog", 0)
    np.testing.assert_array_equal(out, image)
    out[0, 0] = 0 if image[0, 0, 0] else 1
    assert not np.array_equal(out, image), "severity 0 must return a copy, not the input"


@pytest.mark.parametrize("bad", ["gaussian", "", "Gaussian_Noise", None, 3])
def test_bad_name_raises_listing_choices(bad):
    with pytest.raises(ValueError, match="gaussian_noise.*saturate"):
        corrupt(make_image(32, 32), bad, 1)


@pytest.mark.parametrize("bad", [-1, 6, 2.5, "3", True, None])
def test_bad_severity_raises_listing_choices(bad):
    with pytest.raises(ValueError, match="1, 2, 3, 4, 5"):
        corrupt(make_image(32, 32), "fog", bad)


def test_bad_image_raises():
    with pytest.raises(ValueError, match="uint8"):
        corrupt(make_image(32, 32).astype(np.float32) / 255, "fog", 1)
    with pytest.raises(ValueError, match="shape"):
        corrupt(np.zeros((32, 32, 2), np.uint8), "fog", 1)


def test_grey_rgba_and_pil_inputs():
    rgb = make_image(40, 36)
    grey = rgb[..., 0]
    expected = library(np.repeat(grey[..., None], 3, axis=2), "shot_noise", 2, seed=0)
    np.testing.assert_array_equal(corrupt(grey, "shot_noise", 2), expected)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(corrupt(rgba, "contrast", 2), corrupt(rgb, "contrast", 2))
    np.testing.assert_array_equal(corrupt(Image.fromarray(rgb), "pixelate", 4), corrupt(rgb, "pixelate", 4))


@pytest.mark.parametrize("shape", [(37, 53), (53, 37), (32, 32), (33, 90)])
def test_non_square_images_match_library(shape):
    image = make_image(*shape)
    for name in ALL_CORRUPTIONS:
        out = corrupt(image, name, 3, seed=1)
        assert out.shape == image.shape and out.dtype == np.uint8
        if name == "spatter" and not np.any(library(image, name, 3, 1)):
            continue  # the library's 0/0 case, tested separately
        np.testing.assert_array_equal(out, library(image, name, 3, seed=1), err_msg=name)


@pytest.mark.parametrize("shape", [(20, 27), (5, 40), (1, 1)])
def test_images_under_32_pixels_are_reflect_padded(shape):
    image = make_image(*shape)
    h, w = shape
    ph, pw = max(0, 32 - h), max(0, 32 - w)
    padded = np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="reflect")
    for name in ALL_CORRUPTIONS:
        out = corrupt(image, name, 2, seed=4)
        assert out.shape == image.shape and out.dtype == np.uint8, name
        if name == "spatter":
            continue  # the padded library result may hit the 0/0 case (black); ours is clean there
        expected = library(padded, name, 2, seed=4)[ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
        np.testing.assert_array_equal(out, expected, err_msg=name)


def test_spatter_without_droplets_returns_clean_image_not_black():
    image = np.full((32, 32, 3), 100, np.uint8)
    # Precondition: with this seed the library's droplet mask is empty and it computes 0/0.
    np.random.seed(35)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = np.asarray(corruption_dict["spatter"](Image.fromarray(image), 1))
        assert not np.isfinite(raw).all()
        assert not np.any(library(image, "spatter", 1, seed=35)), "library returns an all-black image here"
    out = corrupt(image, "spatter", 1, seed=35)
    np.testing.assert_array_equal(out, image)


def test_concurrent_calls_are_reproducible():
    image = make_image(64, 64)
    names = ["gaussian_noise", "shot_noise", "motion_blur", "fog", "speckle_noise", "snow"] * 3
    expected = [corrupt(image, n, 3, seed=i) for i, n in enumerate(names)]
    results = [[] for _ in names]
    start = threading.Barrier(len(names))

    def work(i):
        start.wait()
        for _ in range(3):
            results[i].append(corrupt(image, names[i], 3, seed=i))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible to provoke races
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(names))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    for i, want in enumerate(expected):
        assert len(results[i]) == 3
        for got in results[i]:
            np.testing.assert_array_equal(got, want, err_msg=names[i])
