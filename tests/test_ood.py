"""The unlike-photo score (mgnet.ood): calibration on val, generated unlike images, the ood.json file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_CLASSES, make_image_folder, save_tiny_checkpoints

from mgnet import load_checkpoint, ood

torch.set_num_threads(1)


def test_scores_are_higher_for_flatter_logits():
    sharp, flat = np.array([10.0, 0.0, 0.0]), np.array([0.1, 0.0, 0.0])
    s = ood.scores(np.stack([sharp, flat]))
    assert s["energy"][1] > s["energy"][0] and s["msp"][1] > s["msp"][0]
    assert np.isclose(s["energy"][0], -np.log(np.exp(10) + 2))


def test_unlike_images_cover_every_kind():
    images, kinds = ood.unlike_images(per_kind=2, size=48, seed=1)
    assert images.shape == (2 * len(ood.UNLIKE_KINDS), 3, 48, 48) and images.dtype == torch.uint8
    assert list(dict.fromkeys(kinds)) == list(ood.UNLIKE_KINDS)
    flat = images[kinds.index("flat colour")]
    assert (flat == flat[:, :1, :1]).all()
    assert images[kinds.index("text")].float().std() > 0  # the text was drawn


def test_calibration_flags_the_rate_of_val_at_every_glimpse_count(tmp_path):
    mg, base = save_tiny_checkpoints(tmp_path / "ck", TINY_CLASSES, image_size=32, n_glimpses=3)
    val = make_image_folder(tmp_path / "val", per_class=15)  # 45: a linear quantile would flag 5 (11%)
    train = make_image_folder(tmp_path / "train", per_class=30, seed=1)
    doc, fitted = ood.calibrate([mg, base], val, per_kind=3, rate=0.1, train=train)
    m, b = doc["models"]["mgnet-tiny.pt"], doc["models"]["baseline-tiny.pt"]
    assert doc["score"] == "features" and doc["unlike"]["kinds"][-1] == ood.TILES
    assert list(m["energy"]["thresholds"]) == [str(n) for n in range(1, ood.MAX_GLIMPSES + 1)]
    assert list(b["energy"]["thresholds"]) == ["1"]
    for rec in (m["features"], m["energy"], m["msp"], b["features"], b["energy"]):
        for n, rate in rec["val_flagged"].items():
            assert rate <= 0.1 + 1e-9 and 0 <= rec["unlike_flagged"][n] <= 1
            assert set(rec["per_kind"][n]) == set(ood.UNLIKE_KINDS) | {ood.TILES}
    # the features score depends on the first look only: one threshold for every glimpse count
    assert len(set(m["features"]["thresholds"].values())) == 1
    assert doc["data"] == str(val) and doc["git_commit"] and m["val_images"] == 45 and m["train_images"] == 90
    assert m["unlike_images"] == 3 * (len(ood.UNLIKE_KINDS) + 1)
    # an 8-glimpse run's step t gives exactly the t-glimpse run's logits, so one run calibrates every count
    model = load_checkpoint(mg, device="cpu")
    x = ood.unlike_images(1, 32)[0][:4]
    long = ood.logits_per_glimpse(model, x, 8)
    with torch.inference_mode():
        short = model(x.float() / 255, n_glimpses=2).logits.numpy()
    assert np.allclose(long[:2], short, atol=1e-5)
    # the files beside the checkpoints, looked up by sha256
    ood.write(doc, tmp_path / "ck")
    ood.write_features(fitted, tmp_path / "ck")
    back, stats = ood.read(tmp_path / "ck"), ood.read_features(tmp_path / "ck")
    assert back == doc and set(stats) == {m["sha256"], b["sha256"]}
    assert ood.threshold_for(back, m["sha256"], 5) == ("features", m["features"]["thresholds"]["5"])
    assert ood.threshold_for(back, b["sha256"], None) == ("features", b["features"]["thresholds"]["1"])
    assert ood.threshold_for(back, "0" * 64, 4) is None and ood.threshold_for(None, m["sha256"], 4) is None
    flagged, value = ood.is_unlike(np.zeros(3), "energy", m["energy"]["thresholds"]["3"])
    assert value == -np.log(3) and isinstance(flagged, bool)
    # the app's check of one photo gives the score the calibration gave the same image
    unlike, kinds = ood.unlike_images(3, 32)
    looks = ood.first_looks(model, unlike)
    scores = ood.features_of(model, stats[m["sha256"]], looks)
    verdict = ood.check(model, back, stats, m["sha256"], 4, None, looks[0].permute(1, 2, 0).numpy())
    assert verdict[1:] == ("features", pytest.approx(scores[0]), m["features"]["thresholds"]["4"])
    flat = [scores[i] > verdict[3] for i, k in enumerate(kinds) if k == "flat colour"]
    assert np.mean(flat) == m["features"]["per_kind"]["4"]["flat colour"]
    assert ood.check(model, back, {}, m["sha256"], 4, None, looks[0].permute(1, 2, 0).numpy()) is None


def test_features_score_is_the_mahalanobis_distance_to_the_nearest_class(tmp_path):
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(300, 5)) * [1, 2, 3, 0.5, 1] + rng.normal(size=(1, 5)))
    labels = torch.from_numpy(rng.integers(0, 3, 300))
    x[labels == 1] += 4  # class 1 sits apart
    (stage,) = ood.fit_features([x], labels, ridge=0.0)
    means = np.stack([x[labels == c].numpy().mean(0) for c in range(3)])
    resid = x.numpy() - means[labels.numpy()]
    precision = np.linalg.inv(resid.T @ resid / len(x))
    probe = rng.normal(size=(7, 5)) * 3
    direct = np.min([np.einsum("nd,de,ne->n", probe - mu, precision, probe - mu) for mu in means], axis=0)
    got = ood.stage_distances([stage], [torch.from_numpy(probe)])[0]
    np.testing.assert_allclose(got, direct, rtol=1e-4)
    stage.update(centre=1.0, spread=2.0)
    np.testing.assert_allclose(ood.features_score([stage], got[None]), (direct - 1) / 2, rtol=1e-4)


def test_first_looks_and_stage_statistics_are_what_the_model_sees(tmp_path):
    """The first look is the app's glimpse 1 (analysis.analyze's seen[0]); the stage statistics of the folded
    inference copy match the exact backbone's activations."""
    from mgnet.analysis import analyze

    mg, _ = save_tiny_checkpoints(tmp_path / "ck", TINY_CLASSES, image_size=32)
    model = load_checkpoint(mg, device="cpu")
    images, _ = ood.unlike_images(1, 32, seed=3)
    looks = ood.first_looks(model, images)
    assert looks.shape == (len(images), 3, model.glimpse_size(32), model.glimpse_size(32))
    for i in (0, 5):
        seen = analyze(model, images[i].permute(1, 2, 0).numpy()).seen[0]
        assert np.abs(looks[i].permute(1, 2, 0).numpy().astype(int) - seen.astype(int)).max() <= 1
    stats = ood.stage_statistics(model, looks)
    assert [s.shape[1] for s in stats] == [128, 256, 512, 512]
    b = model.backbone.eval()
    with torch.inference_mode():
        h = b.maxpool(b.relu(b.bn1(b.conv1((looks.float() / 255 - model.mean) / model.std))))
        h = b.layer2(b.layer1(h))
    np.testing.assert_allclose(stats[1][:, :128], h.flatten(2).mean(2).double(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(stats[1][:, 128:], h.flatten(2).std(2, correction=0).double(), rtol=1e-3, atol=1e-4)


def test_shuffled_tiles_rearrange_each_photo(tmp_path):
    photos = torch.arange(2 * 3 * 16 * 16, dtype=torch.int64).reshape(2, 3, 16, 16).remainder(251).byte()
    tiled = ood.shuffled_tiles(photos, 5, seed=0)
    assert tiled.shape == (5, 3, 16, 16) and tiled.dtype == torch.uint8
    for img in tiled:
        tiles = sorted(
            img[:, r : r + 4, c : c + 4].flatten().tolist() for r in range(0, 16, 4) for c in range(0, 16, 4)
        )
        sources = [
            sorted(p[:, r : r + 4, c : c + 4].flatten().tolist() for r in range(0, 16, 4) for c in range(0, 16, 4))
            for p in photos
        ]
        assert tiles in sources  # the same 16 tiles as one photo...
    assert not any(torch.equal(img, p) for img in tiled for p in photos)  # ...in another order


def test_a_hostile_or_missing_features_file_disables_the_score(tmp_path):
    import pickle

    good = dict(means=np.zeros((2, 3), np.float32), precision=np.eye(3, dtype=np.float32), centre=1.0, spread=2.0)

    def write(**stage):
        arrays = {f"ab/0/{k}": np.asarray(v) for k, v in stage.items()}
        np.savez(tmp_path / ood.FEATURES_FILE, schema=np.array(ood.FEATURES_SCHEMA), **arrays)
        return ood.read_features(tmp_path)

    assert ood.read_features(tmp_path) == {}  # missing
    back = write(**good)  # well formed: read back
    assert set(back) == {"ab"} and back["ab"][0]["spread"] == 2.0 and back["ab"][0]["means"].shape == (2, 3)
    assert write(**{**good, "means": np.array([{"a": 1}], dtype=object)}) == {}  # would need unpickling
    assert write(**{**good, "precision": np.zeros(ood.MAX_FEATURES_ARRAY // 4 + 1, np.float32)}) == {}  # too big
    assert write(**{k: v for k, v in good.items() if k != "spread"}) == {}  # a stage half there
    assert write(**{k: v for k, v in good.items() if k != "spread"}, bogus=1.0) == {}  # wrong names
    assert write(**{**good, "precision": np.eye(4, dtype=np.float32)}) == {}  # shapes that disagree
    assert write(**{**good, "spread": 0.0}) == {} and write(**{**good, "spread": np.nan}) == {}
    path = tmp_path / ood.FEATURES_FILE
    path.write_bytes(pickle.dumps({"schema": ood.FEATURES_SCHEMA}))
    assert ood.read_features(tmp_path) == {}
    path.write_bytes(b"not an archive")
    assert ood.read_features(tmp_path) == {}


def test_statistics_that_do_not_fit_the_backbone_give_no_check(tmp_path):
    mg, _ = save_tiny_checkpoints(tmp_path / "ck", TINY_CLASSES, image_size=32)
    model = load_checkpoint(mg, device="cpu")
    wrong = [dict(means=torch.zeros(3, 5), precision=torch.eye(5), centre=0.0, spread=1.0)] * 4
    sha = model.checkpoint_info["sha256"]
    doc = {"score": "features", "models": {"m": {"sha256": sha, "features": {"thresholds": {"4": 1.0}}}}}
    look = np.zeros((model.glimpse_size(32), model.glimpse_size(32), 3), np.uint8)
    assert ood.check(model, doc, {sha: wrong}, sha, 4, None, look) is None
