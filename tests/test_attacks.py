"""Tests for mgnet.attacks on tiny 32x32 MGNet / baseline models (random weights)."""

import sys
from pathlib import Path

import torch

torch.set_num_threads(1)  # the machine is shared with training jobs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mgnet.attacks import attack, input_gradient, paper_pgd, transfer_attack  # noqa: E402
from mgnet.model import build_model  # noqa: E402

SIZE = 32
TOL = 1e-6


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    mg = build_model("mgnet", "resnet18", num_classes=10, image_size=SIZE, n_glimpses=3).eval()
    base = build_model("baseline", "resnet18", num_classes=10, image_size=SIZE).eval()
    return {"mgnet": mg, "baseline": base}


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, SIZE, SIZE, generator=g)
    x[:, :, :4] = 0.0  # saturated rows exercise the clamp to [0, 1]
    x[:, :, -4:] = 1.0
    y = torch.tensor([0, 3, 7])
    interior = 0.2 + 0.6 * torch.rand(3, 3, SIZE, SIZE, generator=g)  # far from 0 and 1
    return x, y, interior


def final_loss(model, x, y, **kw):
    with torch.no_grad():
        return F.cross_entropy(model(x, **kw).logits[-1], y, reduction="none")


@pytest.mark.parametrize("kind", ["mgnet", "baseline"])
@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_linf_result_in_eps_ball_and_pixel_range(models, data, kind, method):
    x, y, _ = data
    x_adv = attack(models[kind], x, y, method=method, eps=4.0, steps=3)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= 4 / 255 + TOL
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > 3.9 / 255, "attack did not use its budget"


@pytest.mark.parametrize("kind", ["mgnet", "baseline"])
def test_fgsm_linf_is_eps_times_gradient_sign(models, data, kind):
    _, y, x = data  # interior pixels: the clamp to [0, 1] never bites
    model = models[kind]
    delta = attack(model, x, y, method="fgsm", eps=4.0) - x
    expected = 4 / 255 * input_gradient(model, x, y).sign()  # eps is in 1/255 units
    assert (delta - expected).abs().max() < TOL
    if kind == "baseline":  # full-resolution convolution: every pixel has a gradient
        assert (delta.abs() > 3.99 / 255).float().mean() > 0.99
    else:  # MGNet's bilinear downsampling (32 px -> 13 px glimpses) never samples some pixels
        assert (delta == 0).any() and (delta.abs() > 3.99 / 255).float().mean() > 0.3


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_l2_result_in_l2_ball(models, data, method):
    _, y, x = data
    eps = 64.0  # 64/255 = 0.25 in [0, 1] units, measured over the whole 3x32x32 image
    x_adv = attack(models["mgnet"], x, y, method=method, eps=eps, steps=3, norm="l2")
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert (norms <= eps / 255 * (1 + 1e-5)).all()
    assert (norms >= 0.95 * eps / 255).all(), "interior pixels: the step should reach the L2 sphere"
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("kind", ["mgnet", "baseline"])
def test_l2_steps_follow_the_normalised_gradient(models, data, kind):
    _, y, x = data
    model = models[kind]
    g = input_gradient(model, x, y)
    expected = 64 / 255 * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    fgsm = attack(model, x, y, method="fgsm", eps=64.0, norm="l2")
    assert (fgsm - x - expected).abs().max() < TOL
    # one PGD step of size eps without random start is the same step
    pgd = attack(model, x, y, eps=64.0, steps=1, step_size=64.0, norm="l2", random_start=False)
    assert (pgd - fgsm).abs().max() < TOL


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_is_seeded_and_leaves_global_rng_alone(models, data, norm):
    x, y, _ = data
    eps = 4.0 if norm == "linf" else 64.0
    torch.manual_seed(99)
    rng_before = torch.get_rng_state()
    a = attack(models["mgnet"], x, y, eps=eps, steps=1, norm=norm, seed=5)
    b = attack(models["mgnet"], x, y, eps=eps, steps=1, norm=norm, seed=5)
    c = attack(models["mgnet"], x, y, eps=eps, steps=1, norm=norm, seed=6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), rng_before)
    d = attack(models["mgnet"], x, y, eps=eps, steps=1, norm=norm, seed=5, random_start=False)
    assert not torch.equal(a, d)


@pytest.mark.parametrize("kind", ["mgnet", "baseline"])
def test_pgd_raises_loss_on_final_prediction(models, data, kind):
    x, y, _ = data
    model = models[kind]
    x_adv = attack(model, x, y, eps=8.0, steps=4)
    clean, adv = final_loss(model, x, y), final_loss(model, x_adv, y)
    assert (adv > clean + 0.1).all(), (clean, adv)


@pytest.mark.parametrize("kind", ["mgnet", "baseline"])
def test_targeted_pgd_raises_target_probability(models, data, kind):
    x, _, _ = data
    model = models[kind]
    with torch.no_grad():
        target = model(x).logits[-1].argmin(dim=1)  # the least likely class of each image
    x_adv = attack(model, x, target, eps=8.0, steps=4, targeted=True)
    with torch.no_grad():
        p_clean = model(x).logits[-1].softmax(1).gather(1, target[:, None])
        p_adv = model(x_adv).logits[-1].softmax(1).gather(1, target[:, None])
    assert (p_adv > 1.2 * p_clean).all(), (p_clean, p_adv)


def plain_gradient(model, x, y, **kw):
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x, **kw).logits[-1], y, reduction="sum")
    return torch.autograd.grad(loss, x)[0]


def test_s_grad_one_gives_true_gradient_on_mgnet(models, data):
    x, y, _ = data
    model = models["mgnet"]
    damped, true = input_gradient(model, x, y), input_gradient(model, x, y, s_grad=1.0)
    assert torch.allclose(damped, plain_gradient(model, x, y), atol=1e-6, rtol=1e-4)
    assert torch.allclose(true, plain_gradient(model, x, y, s_grad=1.0), atol=1e-6, rtol=1e-4)
    assert (damped - true).abs().max() > 0.05 * true.abs().max(), "re-scaling should change input gradients"
    assert model.s_grad == 0.02  # the override applied to one call only
    fgsm_damped = attack(model, x, y, method="fgsm")
    fgsm_true = attack(model, x, y, method="fgsm", s_grad=1.0)
    assert not torch.equal(fgsm_damped, fgsm_true)


def test_s_grad_is_irrelevant_for_the_baseline(models, data):
    x, y, _ = data
    base = models["baseline"]
    assert torch.allclose(input_gradient(base, x, y), input_gradient(base, x, y, s_grad=1.0), atol=1e-7)


def test_attacks_leave_the_model_untouched(models, data):
    x, y, _ = data
    model = models["mgnet"]
    model.train()
    model.backbone.layer1.eval()  # a mixed state must come back exactly
    model.backbone.conv1.weight.requires_grad_(False)
    try:
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        training = {n: m.training for n, m in model.named_modules()}
        state = {k: v.clone() for k, v in model.state_dict().items()}
        hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())
        with torch.no_grad():  # must still work inside no_grad
            attack(model, x, y, steps=2)
        attack(model, x, y, steps=2, norm="l2", eps=32, s_grad=1.0)
        paper_pgd(model, x, y, steps=2)
        transfer_attack(models["baseline"], model, x, y, steps=1)
        input_gradient(model, x, y)
        assert all(p.grad is None for p in model.parameters())
        assert all(p.grad is None for p in models["baseline"].parameters())
        assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
        assert {n: m.training for n, m in model.named_modules()} == training
        assert not models["baseline"].training
        # BatchNorm running statistics unchanged: the attack ran in eval mode.
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k
        assert hooks == sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
        )
    finally:
        model.backbone.conv1.weight.requires_grad_(True)
        model.eval()


def test_training_flags_restored_when_progress_raises(models, data):
    x, y, _ = data
    model = models["baseline"]
    model.train()
    try:

        def stop(step, total):
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            attack(model, x, y, steps=3, progress=stop)
        assert all(m.training for m in model.modules())
    finally:
        model.eval()


def test_progress_callback(models, data):
    x, y, _ = data
    calls = []
    attack(models["baseline"], x, y, steps=3, progress=lambda s, t: calls.append((s, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    calls.clear()
    attack(models["baseline"], x, y, method="fgsm", progress=lambda s, t: calls.append((s, t)))
    assert calls == [(1, 1)]


def test_paper_pgd_is_bounded_in_normalised_space_and_unclamped(models, data):
    x, y, _ = data
    model = models["mgnet"]
    x_adv = paper_pgd(model, x, y, eps=4.0, step=1.0, steps=6)
    mean, std = model.mean, model.std
    delta_norm = (x_adv - mean) / std - (x - mean) / std
    assert delta_norm.abs().max() <= 4 / 255 + 1e-5
    assert delta_norm.abs().max() >= 4 / 255 - 1e-5  # 6 steps of 1/255 reach the bound
    assert x_adv.min() < 0 and x_adv.max() > 1, "the authors' attack does not clamp to the pixel range"
    # In pixel units the budget is eps * std: under 1/255, far weaker than pixel-space PGD.
    assert (x_adv - x).abs().max() <= 4 / 255 * std.max() + 1e-5 < 1 / 255
    # Deterministic: no random start.
    assert torch.equal(x_adv, paper_pgd(model, x, y, eps=4.0, step=1.0, steps=6))


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_linf_pgd_matches_captum(models, data):
    from captum.robust import FGSM, PGD

    x, y, _ = data
    model = models["mgnet"]

    def forward(inp):
        return model(inp).logits[-1]

    def loss(out, target):  # captum wants one loss per example
        return F.cross_entropy(out, target, reduction="none")

    pgd = PGD(forward, loss, lower_bound=0.0, upper_bound=1.0)
    pgd.fgsm.zero_thresh = 0.0  # captum skips pixels with |grad| <= 1e-6 by default; we do not
    ours = attack(model, x, y, eps=4.0, steps=3, step_size=1.5, random_start=False)
    theirs = pgd.perturb(x, radius=4 / 255, step_size=1.5 / 255, step_num=3, target=y)
    assert ((ours - theirs).abs() > 1e-5).float().mean() < 1e-3

    fgsm = FGSM(forward, loss, lower_bound=0.0, upper_bound=1.0)
    fgsm.zero_thresh = 0.0
    assert torch.allclose(
        attack(model, x, y, method="fgsm", eps=4.0), fgsm.perturb(x, epsilon=4 / 255, target=y).detach(), atol=1e-6
    )
    assert all(p.grad is None for p in model.parameters())


def test_transfer_attack(models, data):
    x, y, _ = data
    source, target = models["baseline"], models["mgnet"]
    x_adv, logits = transfer_attack(source, target, x, y, eps=4.0, steps=2, seed=3)
    assert torch.equal(x_adv, attack(source, x, y, eps=4.0, steps=2, seed=3))
    with torch.no_grad():
        assert torch.allclose(logits, target(x_adv).logits)
    assert logits.shape == (3, 3, 10)  # [T, B, C]: one prediction per glimpse of the target
    _, logits2 = transfer_attack(source, target, x, y, steps=1, target_n_glimpses=2)
    assert logits2.shape == (2, 3, 10)


def test_bad_arguments(models, data):
    x, y, _ = data
    model = models["baseline"]
    with pytest.raises(ValueError, match="method"):
        attack(model, x, y, method="cw")
    with pytest.raises(ValueError, match="norm"):
        attack(model, x, y, norm="l1")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attack(model, (x - 0.45) / 0.225, y)  # ImageNet-normalised input by mistake
    with pytest.raises(ValueError, match="labels"):
        attack(model, x, y[:2])
