import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
DATA = ROOT.parent / "shared" / "data" / "imagenette2-224"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    os.environ["MGNET_CACHE"] = str(tmp_path_factory.mktemp("mgnet-cache"))


def make_image_folder(root: Path, classes=("n01440764", "n02102040", "n02979186"), per_class=6, size=40, seed=0):
    """A tiny ImageFolder whose classes differ by colour, so a model can learn them quickly."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            img[..., c % 3] += 150
            Image.fromarray(img).save(root / name / f"img{i}.png")
    return root


@pytest.fixture
def tiny_folder(tmp_path):
    return make_image_folder(tmp_path / "data")


# The 10 Imagenette classes in folder (wnid) order, as the default checkpoints name them.
IMAGENETTE_CLASSES = [
    "tench",
    "English springer",
    "cassette player",
    "chain saw",
    "church",
    "French horn",
    "garbage truck",
    "gas pump",
    "golf ball",
    "parachute",
]
TINY_CLASSES = IMAGENETTE_CLASSES[:3]
TINY_IDS = ["n01440764", "n02102040", "n02979186"]


def save_tiny_checkpoints(
    folder: Path,
    classes=TINY_CLASSES,
    class_ids=None,
    image_size: int = 64,
    n_glimpses: int | None = None,
    names=("mgnet-tiny.pt", "baseline-tiny.pt"),
    seed: int = 0,
) -> tuple[Path, Path]:
    """A random-weight MGNet and baseline (ResNet-18, ``image_size`` px) saved in our checkpoint format,
    seeded so every test run gets the same weights. Returns their paths (MGNet, baseline)."""
    import torch

    from mgnet import build_model, save_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    mgnet_options = {} if n_glimpses is None else {"n_glimpses": n_glimpses}
    paths = (folder / names[0], folder / names[1])
    save_checkpoint(
        build_model("mgnet", "resnet18", num_classes=len(classes), image_size=image_size, **mgnet_options),
        paths[0],
        classes=list(classes),
        class_ids=class_ids,
    )
    save_checkpoint(
        build_model("baseline", "resnet18", num_classes=len(classes), image_size=image_size),
        paths[1],
        classes=list(classes),
        class_ids=class_ids,
    )
    return paths


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """(MGNet, baseline) checkpoint paths: 3 Imagenette classes, 64 px, 3 glimpses, random weights."""
    return save_tiny_checkpoints(tmp_path_factory.mktemp("tiny-checkpoints"), class_ids=TINY_IDS, n_glimpses=3)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        'slow: takes more than a few seconds; `pytest -m "not slow"` skips it for a quick loop (CI runs everything)',
    )
