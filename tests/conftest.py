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
