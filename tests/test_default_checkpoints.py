"""The committed default checkpoints load, know the 10 Imagenette classes and reach their reported accuracy."""

import json

import pytest

from mgnet import load_checkpoint
from mgnet.checkpoints import training_recipe
from mgnet.data import list_image_folder
from mgnet.evaluate import _predict_correct, label_map, load_eval_images
from conftest import DATA, IMAGENETTE_CLASSES, ROOT

CARD = ROOT / "checkpoints" / "modelcard.json"
NAMES = {"mgnet": "mgnet-resnet18-imagenette.pt", "baseline": "baseline-resnet18-imagenette.pt"}
PAPER = {kind: name.replace(".pt", "-paper-recipe.pt") for kind, name in NAMES.items()}


@pytest.mark.slow
@pytest.mark.parametrize("pair", ["default", "paper_recipe"])
@pytest.mark.parametrize("kind", ["mgnet", "baseline"])
def test_committed_checkpoint_loads_and_matches_the_model_card(kind, pair):
    path = ROOT / "checkpoints" / (NAMES if pair == "default" else PAPER)[kind]
    assert path.stat().st_size < 50 * 2**20
    model = load_checkpoint(path, device="cpu")
    assert model.classes == IMAGENETTE_CLASSES and model.checkpoint_info["kind"] == kind
    assert model.checkpoint_info["provenance"]["git_commit"]
    recipe = training_recipe(model.checkpoint_info)
    if pair == "paper_recipe":
        assert recipe == "paper recipe"
    else:
        assert recipe == ("location stage" if kind == "mgnet" else "off-centre data")
    card = json.loads(CARD.read_text())
    card = card if pair == "default" else card["paper_recipe"]
    assert card["checkpoints"][kind]["sha256"] == model.checkpoint_info["sha256"]
    check = card["sample_check"]
    folder_classes, _ = list_image_folder(DATA / "val")
    _, images, labels = load_eval_images(DATA / "val", model.image_size, check["limit"], progress=False)
    correct = _predict_correct(model, images, label_map(model, folder_classes)[labels])
    measured = correct.float().mean(1).tolist()
    for got, reported in zip(measured, check[kind]):
        assert abs(got - reported) <= 1.5 / check["limit"]  # at most one image flips across machines
    assert measured[-1] >= 0.8


def test_model_card_text_is_generated_from_its_measurements(tmp_path):
    """checkpoints/README.md is exactly what `python -m mgnet.modelcard --stage report` writes from
    modelcard.json: no number in it was edited by hand or left stale."""
    import shutil

    from mgnet.modelcard import write_readme

    for name in (
        "history-mgnet.json",
        "history-baseline.json",
        "location-pilots.json",
        "glimpse_strip.png",
        "ood.json",
        "worst_case.json",
        "location_candidates.json",
        "policy_probe.json",
    ):
        shutil.copy(ROOT / "checkpoints" / name, tmp_path / name)
    write_readme(json.loads(CARD.read_text()), tmp_path)
    assert (tmp_path / "README.md").read_text() == (ROOT / "checkpoints" / "README.md").read_text()


@pytest.mark.parametrize("kind", ["mgnet", "baseline"])
def test_unlike_photo_warning_on_the_default_checkpoints(kind):
    """Issue 14: noise and a flat blue image (called "parachute" with 82% and 91%) are flagged; the example
    photos are not; the calibration flags at most 5% of val and most of the unlike images."""
    import numpy as np

    from mgnet import ood
    from mgnet.analysis import analyze
    from mgnet.data import load_image

    model = load_checkpoint(ROOT / "checkpoints" / NAMES[kind], device="cpu")
    doc, fitted = ood.read(ROOT / "checkpoints"), ood.read_features(ROOT / "checkpoints")
    sha = model.checkpoint_info["sha256"]
    entry = next(m for m in doc["models"].values() if m["sha256"] == sha)
    n = str(entry["trained_glimpses"] or 1)
    assert doc["score"] == "features" and entry["features"]["val_flagged"][n] <= 0.05 + 1e-9
    assert entry["features"]["unlike_flagged"][n] > 0.5

    def flagged(image):
        a = analyze(model, image)
        return ood.check(model, doc, fitted, sha, None if model.is_baseline else 4, a.logits[-1], a.seen[0])[0]

    rng = np.random.default_rng(1)
    assert flagged(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    assert flagged(np.broadcast_to(np.array([40, 90, 220], np.uint8), (300, 400, 3)).copy())
    examples = sorted((ROOT / "app" / "examples").glob("*.jpg"))
    assert sum(flagged(load_image(p)) for p in examples) <= 1, "real photos of the known classes are flagged"


@pytest.mark.slow
def test_the_app_default_attack_changes_mgnet_prediction_on_the_opening_photo():
    """Issue 12: a teacher's first click must visibly do something (PGD-10 at eps 4 does not here)."""
    import torch

    from app.robustness import AttackRequest
    from mgnet.attacks import attack
    from mgnet.data import load_image, to_model_input

    model = load_checkpoint(ROOT / "checkpoints" / NAMES["mgnet"], device="cpu")
    x = to_model_input(load_image(ROOT / "app" / "examples" / "parachute_1.jpg"), model.image_size)
    with torch.no_grad():
        y = int(model(x).logits[-1, 0].argmax())
    assert model.classes[y] == "parachute"
    request = AttackRequest()  # the Attack tab's defaults
    adv = attack(model, x, y, request.method, request.eps, seed=request.seed, **request.options())
    assert adv.success.all(), "the default attack leaves the opening photo's prediction unchanged"
