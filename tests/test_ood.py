"""The unlike-photo score (mgnet.ood): calibration on val, generated unlike images, the ood.json file."""

from __future__ import annotations

import numpy as np
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
    val = make_image_folder(tmp_path / "val", per_class=20)
    doc = ood.calibrate([mg, base], val, per_kind=3, rate=0.1)
    m, b = doc["models"]["mgnet-tiny.pt"], doc["models"]["baseline-tiny.pt"]
    assert list(m["energy"]["thresholds"]) == [str(n) for n in range(1, ood.MAX_GLIMPSES + 1)]
    assert list(b["energy"]["thresholds"]) == ["1"]
    for rec in (m["energy"], m["msp"], b["energy"]):
        for n, rate in rec["val_flagged"].items():
            assert rate <= 0.1 + 1e-9 and 0 <= rec["unlike_flagged"][n] <= 1
            assert set(rec["per_kind"][n]) == set(ood.UNLIKE_KINDS)
    assert doc["data"] == str(val) and doc["git_commit"] and m["val_images"] == 60
    # an 8-glimpse run's step t gives exactly the t-glimpse run's logits, so one run calibrates every count
    model = load_checkpoint(mg, device="cpu")
    x = ood.unlike_images(1, 32)[0][:4]
    long = ood.logits_per_glimpse(model, x, 8)
    with torch.inference_mode():
        short = model(x.float() / 255, n_glimpses=2).logits.numpy()
    assert np.allclose(long[:2], short, atol=1e-5)
    # the file beside the checkpoints, looked up by sha256
    ood.write(doc, tmp_path / "ck")
    back = ood.read(tmp_path / "ck")
    assert back == doc
    assert ood.threshold_for(back, m["sha256"], 5) == ("energy", m["energy"]["thresholds"]["5"])
    assert ood.threshold_for(back, b["sha256"], None) == ("energy", b["energy"]["thresholds"]["1"])
    assert ood.threshold_for(back, "0" * 64, 4) is None and ood.threshold_for(None, m["sha256"], 4) is None
    flagged, value = ood.is_unlike(np.zeros(3), "energy", m["energy"]["thresholds"]["3"])
    assert value == -np.log(3) and isinstance(flagged, bool)
