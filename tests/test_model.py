import argparse

import numpy as np
import pytest
import torch

from mgnet import load_checkpoint
from mgnet.model import IMAGENET_MEAN, IMAGENET_STD, MGNet, build_model
from reference_mgnet import ReferenceMGNet

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def authors_checkpoint(path, backbone="resnet18", baseline=False, num_class=100, seed=0):
    """A file in the authors' exact layout: Lightning dict, 'model.'-prefixed keys, Namespace hparams."""
    torch.manual_seed(seed)
    n_iter, scale, alpha = (1, 1.0, 0.0) if baseline else (4, 2.33, 0.6)
    model = MGNet(backbone, num_class, n_glimpses=n_iter, scale=scale, alpha=alpha)
    # Non-trivial weights everywhere (torchvision's BN init is 1/0, which would hide key mix-ups).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bn" in name or "downsample.1" in name or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.1)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    hp = argparse.Namespace(
        n_iter=n_iter,
        scale=scale,
        scale_min=0.2,
        scale_max=0.5,
        trans_method="tight-crop",
        num_class=num_class,
        model=backbone,
        alpha=alpha,
        s=0.02,
        lr=0.1,
        batch_size=256,
        max_epochs=400,
        dataset="imagenet100",
    )
    blob = {
        "epoch": 399,
        "global_step": 1000,
        "pytorch-lightning_version": "1.0.8",
        "state_dict": state,
        "hyper_parameters": hp,
        "optimizer_states": [],
        "lr_schedulers": [],
    }
    torch.save(blob, path)
    return state


@pytest.mark.parametrize("baseline", [False, True])
def test_authors_key_layout_counts(tmp_path, baseline):
    state = authors_checkpoint(tmp_path / "a.ckpt", baseline=baseline)
    assert len(state) == (132 if not baseline else 130)
    assert len([k for k in state if not k.startswith("model.backbone.")]) == (12 if not baseline else 10)
    assert state["model.feat_fusion.mha.in_proj_weight"].shape == (1545, 515)
    assert state["model.global_fc.fc.weight"].shape == (100, 515)
    if not baseline:
        assert state["model.glimpse_fc.fc.weight"].shape == (100, 512)


def run_both(model, ref, x, weights, s_grad=None):
    """Logits, glimpse params and input gradients (w.r.t. pixels) of our model and the reference."""
    x_ours = x.clone().requires_grad_(True)
    out = model(x_ours, s_grad=s_grad)
    (out.logits * weights).sum().backward()
    x_ref = ((x - model.mean) / model.std).detach().requires_grad_(True)
    ref_logits, ref_params = ref(x_ref)
    (ref_logits * weights).sum().backward()
    return (
        (out.logits.detach(), out.glimpses.detach(), x_ours.grad),
        (ref_logits.detach(), ref_params.detach(), x_ref.grad / model.std),
    )


def make_reference(state, model, dtype, s=0.02):
    ref = ReferenceMGNet(
        {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()},
        backbone=model.backbone_name,
        n_iter=model.n_glimpses,
        scale=model.scale,
        s=s,
    )
    ref.backbone.to(dtype)
    ref.mha.to(dtype)
    return ref


@pytest.mark.slow
@pytest.mark.parametrize("baseline", [False, True])
def test_parity_with_reference_implementation(tmp_path, baseline):
    state = authors_checkpoint(tmp_path / "a.ckpt", baseline=baseline)
    model = load_checkpoint(tmp_path / "a.ckpt", device="cpu")
    assert model.n_glimpses == (1 if baseline else 4) and model.image_size == 224
    assert model.classes[0] == "tench" and model.classes[99] == "goose" and len(model.classes) == 100
    assert model.checkpoint_info["kind"] == ("baseline" if baseline else "mgnet")
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    weights = torch.randn(model.n_glimpses, 2, 100, generator=torch.Generator().manual_seed(2))

    # float32, as users run it: logits and glimpses to float precision. Input gradients of a ReLU net
    # are discontinuous (a gate flips on a 1e-7 difference), so in float32 compare them as a whole...
    ours, ref = run_both(model, make_reference(state, model, torch.float32), x, weights)
    torch.testing.assert_close(ours[0], ref[0], atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(ours[1], ref[1], atol=1e-5, rtol=1e-5)
    assert ((ours[2] - ref[2]).norm() / ref[2].norm()) < 3e-2
    # ... and element-wise in float64, where both implementations must agree tightly.
    model64 = model.double()
    ours, ref = run_both(model64, make_reference(state, model64, torch.float64), x.double(), weights.double())
    torch.testing.assert_close(ours[0], ref[0], atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(ours[1], ref[1], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ours[2], ref[2], atol=1e-8, rtol=1e-5)
    if not baseline:  # glimpses 2..T: scale in [0.2, 0.5] and inside the image (tight crop)
        s, tx, ty = ours[1][1:].unbind(-1)
        assert ((s >= 0.2) & (s <= 0.5)).all()
        assert (tx.abs() <= 1 - s + 1e-6).all() and (ty.abs() <= 1 - s + 1e-6).all()


def test_gradient_rescaling_is_backward_only(tmp_path):
    state = authors_checkpoint(tmp_path / "a.ckpt")
    model = load_checkpoint(tmp_path / "a.ckpt", device="cpu").double()
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    weights = torch.randn(4, 1, 100, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    damped, _ = run_both(model, make_reference(state, model, torch.float64), x, weights)
    true, ref_true = run_both(model, make_reference(state, model, torch.float64, s=1.0), x, weights, s_grad=1.0)
    torch.testing.assert_close(damped[0], true[0])  # the forward pass is identical
    assert (damped[2] - true[2]).norm() > 1e-3 * true[2].norm()  # the input gradient is not
    torch.testing.assert_close(true[2], ref_true[2], atol=1e-8, rtol=1e-5)


def test_resnet50_checkpoint_loads_and_matches_reference(tmp_path):
    state = authors_checkpoint(tmp_path / "r50.ckpt", backbone="resnet50", num_class=100)
    model = load_checkpoint(tmp_path / "r50.ckpt", device="cpu")
    assert model.backbone_name == "resnet50" and model.feat_dim == 2048
    ref = ReferenceMGNet(state, backbone="resnet50")
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, ref((x - MEAN) / STD)[0], atol=2e-4, rtol=1e-4)


def test_anytime_prediction_prefix_is_consistent():
    torch.manual_seed(0)
    model = build_model("mgnet", num_classes=10, image_size=64, n_glimpses=4).eval()
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        full = model(x)
        for t in range(1, 5):
            part = model(x, n_glimpses=t)
            assert part.logits.shape == (t, 3, 10) and part.glimpses.shape == (t, 3, 3)
            torch.testing.assert_close(part.logits, full.logits[:t])
        more = model(x, n_glimpses=6)  # keys do not depend on T: any T works
    assert more.logits.shape == (6, 3, 10)
    torch.testing.assert_close(full.glimpses[0], torch.tensor([[1.0, 0, 0]] * 3))


def test_baseline_is_one_full_resolution_glimpse():
    model = build_model("baseline", num_classes=10, image_size=64).eval()
    assert model.is_baseline and model.glimpse_size() == 64 and model.glimpse_fc is None
    out = model(torch.rand(2, 3, 64, 64), return_crops=True)
    assert out.logits.shape == (1, 2, 10) and out.crops.shape == (1, 2, 3, 64, 64)


def test_auxiliary_classifier_and_loss():
    model = build_model("mgnet", num_classes=5, image_size=64, n_glimpses=3, alpha=0.6).train()
    out = model(torch.rand(2, 3, 64, 64))
    assert out.glimpse_logits.shape == (2, 2, 5)
    y = torch.tensor([0, 3])
    ce = torch.nn.functional.cross_entropy
    expected = 0.4 * sum(ce(lg, y) for lg in out.logits) / 3 + 0.6 * sum(ce(lg, y) for lg in out.glimpse_logits) / 2
    torch.testing.assert_close(model.loss(out, y), expected)
    assert build_model("mgnet", num_classes=5, image_size=64, alpha=0.0).glimpse_fc is None


def test_initialisation_of_heads():
    model = build_model("mgnet", num_classes=10, image_size=64)
    for m in (model.loc_network.fc, model.global_fc.fc, model.glimpse_fc.fc, model.feat_fusion.mha.out_proj):
        assert torch.count_nonzero(m.bias) == 0
    assert torch.count_nonzero(model.feat_fusion.mha.in_proj_bias) == 0
    w = model.feat_fusion.mha.in_proj_weight  # kaiming normal, fan_in = 515: std = sqrt(2 / 515)
    assert abs(w.std().item() - (2 / 515) ** 0.5) < 0.005


def test_bad_inputs_raise_clear_errors():
    model = build_model("mgnet", num_classes=10, image_size=64)
    with pytest.raises(ValueError, match="square"):
        model(torch.rand(1, 3, 64, 48))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="unknown backbone"):
        MGNet("vgg16")


def test_glimpse_params_override_the_proposed_glimpses():
    torch.manual_seed(0)
    model = build_model("mgnet", num_classes=10, image_size=64, n_glimpses=3).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        own = model(x, return_crops=True)
        replay = model(x, return_crops=True, glimpse_params=own.glimpses[1:])
        torch.testing.assert_close(replay.logits, own.logits)  # replaying its own choice changes nothing

        moved = own.glimpses[1:].clone()
        moved[..., 1:] = torch.tensor([0.4, -0.3])
        out = model(x, return_crops=True, glimpse_params=moved)
    torch.testing.assert_close(out.glimpses[1:], moved)
    torch.testing.assert_close(out.logits[0], own.logits[0])  # the whole-image glimpse is untouched
    assert not torch.allclose(out.logits[1:], own.logits[1:])
    size = model.glimpse_size(64)
    for t in (1, 2):
        torch.testing.assert_close(out.crops[t], MGNet.sample(x, moved[t - 1], size), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="glimpse_params must have shape"):
        model(x, glimpse_params=moved[:1])


def test_compute_is_counted_for_every_glimpse_run_beyond_the_trained_number():
    from mgnet.analysis import analyze
    from mgnet.flops import gflops

    model = build_model("mgnet", num_classes=3, image_size=64, n_glimpses=2).eval()
    trained, base = gflops(model)
    longer, base_again = gflops(model, n_glimpses=4)
    assert len(trained) == 2 and len(longer) == 4 and base == base_again
    assert longer[:2] == trained
    step = longer[1] - longer[0]
    # each later glimpse costs about as much (one more backbone pass; the fusion grows with the tokens)
    assert step > 0 and longer[3] - longer[2] == pytest.approx(step, rel=0.1)
    result = analyze(model, np.zeros((50, 70, 3), np.uint8), n_glimpses=4)
    assert len(result.gflops) == result.probs.shape[0] == 4
