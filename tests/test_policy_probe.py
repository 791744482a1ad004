"""The glimpse-2 read-out probe (mgnet.policy_probe): its scores are the model's own, and its read-outs find a
location signal when there is one and none when there is not."""

import pytest
import torch

from mgnet.location import candidate_grid, mirrored_candidates
from mgnet.model import build_model
from mgnet import policy_probe
from mgnet.policy_probe import VIEWS, _others, glimpse_two_scores, probe

K = 27


def test_scores_equal_the_models_own_forward_pass_at_every_candidate_and_on_the_mirror():
    torch.manual_seed(0)
    model = build_model("mgnet", num_classes=3, image_size=64, n_glimpses=3, scale=2.0).eval()
    images = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 1, 0])
    s = glimpse_two_scores(model, images, labels, batch_size=3, progress=False)
    assert s["logp"].shape == s["logp_mirror"].shape == s["hit"].shape == (K, 5)
    assert set(s["views"]) == set(VIEWS) and all(len(v) == 5 for v in s["views"].values())
    grid, mirror = candidate_grid(3), mirrored_candidates(candidate_grid(3))
    x = images.float() / 255
    with torch.no_grad():
        for k in (0, 13, 26):
            out = model(x, n_glimpses=2, glimpse_params=model.place(grid[k].expand(5, 3))[None])
            logp = out.logits[1].log_softmax(-1)
            assert torch.allclose(s["logp"][k], logp.gather(1, labels[:, None])[:, 0], atol=1e-5)
            assert torch.equal(s["hit"][k], logp.argmax(-1) == labels)
            flipped = model(x.flip(-1), n_glimpses=2, glimpse_params=model.place(grid[mirror[k]].expand(5, 3))[None])
            want = flipped.logits[1].log_softmax(-1).gather(1, labels[:, None])[:, 0]
            assert torch.allclose(s["logp_mirror"][k], want, atol=1e-5)
        own = model(x, n_glimpses=2)
        assert torch.equal(s["own"], own.logits[1].argmax(-1) == labels)
        z1 = model(x, n_glimpses=1, return_states=True).states[0]
        assert torch.allclose(s["views"]["z1"], z1, atol=1e-5)


def synthetic_scores(n: int, signal: bool, seed: int = 0) -> dict:
    """Photos whose helpful candidate is (or is not) written in their features: with ``signal``, candidate
    k(i) = argmax of a fixed linear map of the features is right and the others mostly wrong."""
    readable = torch.randn(8, K, generator=torch.Generator().manual_seed(100))  # the same for every seed
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen)
    best = (x @ readable).argmax(-1)
    if not signal:
        best = best[torch.randperm(n, generator=gen)]  # the same picks, unrelated to the features
    hit = torch.rand(K, n, generator=gen) < 0.1
    hit[best, torch.arange(n)] = True
    logp = torch.where(hit, -0.1, -2.0) + 0.05 * torch.randn(K, n, generator=gen)
    own = centred = hit[13]
    return {
        "views": {"z1": x},
        "logp": logp,
        "logp_mirror": logp,
        "hit": hit,
        "own": own,
        "centred": centred,
    }


def test_read_outs_find_a_location_signal_when_there_is_one_and_none_when_there_is_not():
    with_signal = probe(synthetic_scores(1000, True), hiddens=(0,), epochs=150)
    row = with_signal["readouts"][0]
    assert row["accuracy"] > 0.5 and row["vs_centred"][1] > 0.3  # the CI's lower end, far above zero
    without = probe(synthetic_scores(1000, False), hiddens=(0,), epochs=150)
    low, high = without["readouts"][0]["vs_best_fixed"][1:]
    # Held out, a read-out of features that say nothing does about as well as the best single candidate.
    assert low < 0.01 and high > -0.05 and without["readouts"][0]["accuracy"] < 0.3


def test_probability_targets_are_the_true_class_probability_averaged_over_photo_and_mirror(monkeypatch):
    scores = synthetic_scores(1000, True)
    scores["logp_mirror"] = scores["logp"] - 0.3 * torch.rand(
        scores["logp"].shape, generator=torch.Generator().manual_seed(4)
    )
    seen = []
    real_fit = policy_probe.fit_readout

    def recording_fit(x, target, **kwargs):
        seen.append(target)
        return real_fit(x, target, **kwargs)

    monkeypatch.setattr(policy_probe, "fit_readout", recording_fit)
    result = probe(scores, hiddens=(0,), epochs=150, target="prob", temperature=0.1)
    rest = _others(1000, torch.randperm(1000, generator=torch.Generator().manual_seed(0)).chunk(2)[0])
    want = ((scores["logp"].exp() + scores["logp_mirror"].exp()) / 2).T[rest]
    assert torch.allclose(seen[0], want)
    assert result["options"]["target"] == "prob"
    assert result["readouts"][0]["accuracy"] > 0.5  # the signal is found with these targets too
    with pytest.raises(ValueError, match="unknown target"):
        probe(scores, hiddens=(0,), epochs=10, target="hit")


def test_read_outs_fitted_on_other_photos_carry_over_to_new_ones():
    train, test = synthetic_scores(1000, True, seed=1), synthetic_scores(500, True, seed=2)
    result = probe(test, fit_on=train, hiddens=(0,), epochs=150)
    assert result["fitted_on"] == "1000 other photos" and result["images"] == 500
    assert result["readouts"][0]["accuracy"] > 0.5


def scrambled(scores: dict, photos: torch.Tensor, seed: int = 9) -> dict:
    """The same scores with the targets (true-class log-probabilities) of ``photos`` replaced by noise."""
    out = dict(scores)
    for key in ("logp", "logp_mirror"):
        noisy = scores[key].clone()
        noisy[:, photos] = torch.randn(noisy.shape[0], len(photos), generator=torch.Generator().manual_seed(seed))
        out[key] = noisy
    return out


def test_no_photo_influences_the_read_out_that_picks_for_it():
    scores = synthetic_scores(400, True)
    everyone = torch.arange(400)
    # Fitted on other photos: the scored photos' own targets change nothing.
    train = synthetic_scores(600, True, seed=1)
    a = probe(scores, fit_on=train, hiddens=(0,), epochs=60, keep_picks=True)["readouts"][0]["picks"]
    b = probe(scrambled(scores, everyone), fit_on=train, hiddens=(0,), epochs=60, keep_picks=True)
    assert b["readouts"][0]["picks"] == a
    # Cross-fitted: noise in one fold's targets leaves that fold's picks as they were (and changes the others').
    fold = torch.randperm(400, generator=torch.Generator().manual_seed(0)).chunk(2)[0]
    c = probe(scores, hiddens=(0,), epochs=60, keep_picks=True)["readouts"][0]["picks"]
    d = probe(scrambled(scores, fold), hiddens=(0,), epochs=60, keep_picks=True)["readouts"][0]["picks"]
    assert [d[i] for i in fold.tolist()] == [c[i] for i in fold.tolist()]
    others = sorted(set(range(400)) - set(fold.tolist()))
    assert [d[i] for i in others] != [c[i] for i in others]


def test_a_score_cache_made_with_other_settings_is_refused(tmp_path):
    import argparse

    from mgnet.checkpoints import save_checkpoint
    from mgnet.policy_probe import scored

    torch.manual_seed(0)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(build_model("mgnet", num_classes=3, image_size=32, n_glimpses=2, scale=2.0), ckpt)
    cache = tmp_path / "scores.pt"
    torch.save({"made_with": {"checkpoint_sha256": "another", "data": "x", "limit": 0, "off_centre": False}}, cache)
    args = argparse.Namespace(checkpoint=str(ckpt), data=str(tmp_path), limit=0, off_centre=False)
    with pytest.raises(ValueError, match="scores made with"):
        scored(str(cache), str(tmp_path), args, [])
