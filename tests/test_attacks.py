"""Tests for mgnet.attacks on tiny 32x32 MGNet / baseline models (random weights)."""

import copy
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)  # the machine is shared with training jobs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from torch import nn  # noqa: E402

from mgnet.attacks import METHODS, apgd_checkpoints, attack, canonical, input_gradient, worst_members  # noqa: E402
from mgnet.analysis import inference_model  # noqa: E402
from mgnet.model import PackedConv2d, build_model  # noqa: E402

SIZE = 32
TOL = 1e-6
FAST_MEMBERS = {"pgd": {"steps": 2}, "apgd-ce": {"steps": 2}, "apgd-dlr": {"steps": 2}, "square": {"queries": 5}}
FAST = {"pgd": {"steps": 3}, "apgd-ce": {"steps": 3}, "apgd-dlr": {"steps": 3}, "square": {"queries": 20}}
FAST["worst"] = {"member_options": FAST_MEMBERS}


def adv(*args, **kwargs) -> torch.Tensor:
    """The adversarial images of one ``attack`` call."""
    return attack(*args, **kwargs).images


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
    x_adv = adv(models[kind], x, y, method=method, eps=4.0, **FAST.get(method, {}))
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= 4 / 255 + TOL
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > 3.9 / 255, "attack did not use its budget"


@pytest.mark.parametrize("kind", ["mgnet", "baseline"])
def test_fgsm_linf_is_eps_times_gradient_sign(models, data, kind):
    _, y, x = data  # interior pixels: the clamp to [0, 1] never bites
    model = models[kind]
    delta = adv(model, x, y, method="fgsm", eps=4.0) - x
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
    x_adv = adv(models["mgnet"], x, y, method=method, eps=eps, norm="l2", **FAST.get(method, {}))
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
    fgsm = adv(model, x, y, method="fgsm", eps=64.0, norm="l2")
    assert (fgsm - x - expected).abs().max() < TOL
    # one PGD step of size eps without random start is the same step
    pgd = adv(model, x, y, eps=64.0, steps=1, step_size=64.0, norm="l2", random_start=False)
    assert (pgd - fgsm).abs().max() < TOL


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_is_seeded_and_leaves_global_rng_alone(models, data, norm):
    x, y, _ = data
    eps = 4.0 if norm == "linf" else 64.0
    torch.manual_seed(99)
    rng_before = torch.get_rng_state()
    a = adv(models["mgnet"], x, y, eps=eps, steps=1, norm=norm, seed=5)
    b = adv(models["mgnet"], x, y, eps=eps, steps=1, norm=norm, seed=5)
    c = adv(models["mgnet"], x, y, eps=eps, steps=1, norm=norm, seed=6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), rng_before)
    d = adv(models["mgnet"], x, y, eps=eps, steps=1, norm=norm, seed=5, random_start=False)
    assert not torch.equal(a, d)


@pytest.mark.parametrize("kind", ["mgnet", "baseline"])
def test_pgd_raises_loss_on_final_prediction(models, data, kind):
    x, y, _ = data
    model = models[kind]
    x_adv = adv(model, x, y, eps=8.0, steps=4)
    clean, attacked = final_loss(model, x, y), final_loss(model, x_adv, y)
    assert (attacked > clean + 0.1).all(), (clean, attacked)


@pytest.mark.parametrize("kind", ["mgnet", "baseline"])
def test_targeted_pgd_raises_target_probability(models, data, kind):
    x, _, _ = data
    model = models[kind]
    with torch.no_grad():
        target = model(x).logits[-1].argmin(dim=1)  # the least likely class of each image
    x_adv = adv(model, x, target, eps=8.0, steps=4, targeted=True)
    with torch.no_grad():
        p_clean = model(x).logits[-1].softmax(1).gather(1, target[:, None])
        p_adv = model(x_adv).logits[-1].softmax(1).gather(1, target[:, None])
    assert (p_adv > 1.2 * p_clean).all(), (p_clean, p_adv)


def plain_gradient(model, x, y, **kw):
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x, **kw).logits[-1], y, reduction="sum")
    return torch.autograd.grad(loss, x)[0]


def test_mgnet_gradients_come_from_the_fast_copy_and_are_as_exact_as_the_model_s(models, data, monkeypatch):
    x, y, _ = data
    model = copy.deepcopy(models["mgnet"])
    with torch.inference_mode():  # as the app's analysis builds the copy first
        inference_model(model)
    calls = []
    real = PackedConv2d.input_gradient
    monkeypatch.setattr(PackedConv2d, "input_gradient", lambda self, *a: calls.append(1) or real(self, *a))
    fast = input_gradient(model, x, y)
    assert calls, "the gradient did not run through the packed copy"
    assert not any(isinstance(m, PackedConv2d) for m in model.modules())  # the model itself is untouched
    reference = plain_gradient(copy.deepcopy(model).double(), x.double(), y).float()
    exact = plain_gradient(model, x, y)

    def error(g):
        return float((g - reference).abs().max() / reference.abs().max())

    # float32 rounding on the copy moves the gradient no further from float64 than on the exact model
    assert error(fast) <= max(10 * error(exact), 1e-5), (error(fast), error(exact))


def test_s_grad_one_gives_true_gradient_on_mgnet(models, data):
    x, y, _ = data
    model = models["mgnet"]
    damped, true = input_gradient(model, x, y), input_gradient(model, x, y, s_grad=1.0)
    # computed on the fast copy (BatchNorm folded): equal up to float32 rounding
    for got, want in ((damped, plain_gradient(model, x, y)), (true, plain_gradient(model, x, y, s_grad=1.0))):
        torch.testing.assert_close(got, want, atol=1e-4 * float(want.abs().max()), rtol=1e-3)
    assert (damped - true).abs().max() > 0.05 * true.abs().max(), "re-scaling should change input gradients"
    assert model.s_grad == 0.02  # the override applied to one call only
    fgsm_damped = adv(model, x, y, method="fgsm")
    fgsm_true = adv(model, x, y, method="fgsm", true_gradients=True)
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
            adv(model, x, y, steps=2)
        adv(model, x, y, steps=2, norm="l2", eps=32, true_gradients=True)
        adv(model, x, y, "paper-pgd", steps=2)
        adv(model, x, y, source=models["baseline"], steps=1)
        adv(model, x, y, "apgd-dlr", steps=2, true_gradients=True)
        adv(model, x, y, "square", queries=5)
        adv(model, x, y, "worst", transfer_from=models["baseline"], member_options=FAST_MEMBERS)
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
            adv(model, x, y, steps=3, progress=stop)
        assert all(m.training for m in model.modules())
    finally:
        model.eval()


def test_progress_callback(models, data):
    x, y, _ = data
    calls = []
    adv(models["baseline"], x, y, steps=3, progress=lambda s, t: calls.append((s, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    calls.clear()
    adv(models["baseline"], x, y, method="fgsm", progress=lambda s, t: calls.append((s, t)))
    assert calls == [(1, 1)]


def test_paper_pgd_is_bounded_in_normalised_space_and_unclamped(models, data):
    x, y, _ = data
    model = models["mgnet"]
    x_adv = adv(model, x, y, "paper-pgd", eps=4.0, step_size=1.0, steps=6)
    mean, std = model.mean, model.std
    delta_norm = (x_adv - mean) / std - (x - mean) / std
    assert delta_norm.abs().max() <= 4 / 255 + 1e-5
    assert delta_norm.abs().max() >= 4 / 255 - 1e-5  # 6 steps of 1/255 reach the bound
    assert x_adv.min() < 0 and x_adv.max() > 1, "the authors' attack does not clamp to the pixel range"
    # In pixel units the budget is eps * std: under 1/255, far weaker than pixel-space PGD.
    assert (x_adv - x).abs().max() <= 4 / 255 * std.max() + 1e-5 < 1 / 255
    # Deterministic: no random start.
    assert torch.equal(x_adv, adv(model, x, y, "paper-pgd", eps=4.0, step_size=1.0, steps=6))


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_linf_pgd_matches_captum(models, data):
    from captum.robust import FGSM, PGD

    x, y, _ = data
    model = models["mgnet"]

    def forward(inp):
        return model(inp).logits[-1]

    def loss(out, target):  # captum wants one loss per example
        return F.cross_entropy(out, target, reduction="none")

    # PGD in float64: in float32 the two gradients differ by rounding, a sign flips where a gradient is near
    # zero, and after a few steps the paths part (0.7% of pixels on an AVX-512 CPU, under 0.1% on another).
    model = copy.deepcopy(model).double()
    x64 = x.double()
    pgd = PGD(forward, loss, lower_bound=0.0, upper_bound=1.0)
    pgd.fgsm.zero_thresh = 0.0  # captum skips pixels with |grad| <= 1e-6 by default; we do not
    ours = adv(model, x64, y, eps=4.0, steps=3, step_size=1.5, random_start=False)
    theirs = pgd.perturb(x64, radius=4 / 255, step_size=1.5 / 255, step_num=3, target=y)
    assert ours.dtype == torch.float64
    assert torch.allclose(ours, theirs, atol=1e-9)
    assert (ours - x64).abs().max() > 3.9 / 255  # the attack moved the pixels

    model = models["mgnet"]  # forward() reads this name: float32 again for FGSM

    fgsm = FGSM(forward, loss, lower_bound=0.0, upper_bound=1.0)
    fgsm.zero_thresh = 0.0
    assert torch.allclose(
        adv(model, x, y, method="fgsm", eps=4.0), fgsm.perturb(x, epsilon=4 / 255, target=y).detach(), atol=1e-6
    )
    assert all(p.grad is None for p in model.parameters())


def test_transfer_is_the_source_argument(models, data):
    x, y, _ = data
    source, target = models["baseline"], models["mgnet"]
    result = attack(target, x, y, eps=4.0, steps=2, seed=3, source=source)
    assert torch.equal(result.images, adv(source, x, y, eps=4.0, steps=2, seed=3))
    with torch.no_grad():  # success is judged on the attacked model, not on the source
        assert (result.success == (target(result.images).logits[-1].argmax(1) != y).numpy()).all()
    assert result.options["source"] == "MGNet" and result.method == "pgd" and result.seconds > 0


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


# -- every method: the budget and the pixel range -----------------------------------------------------------
@pytest.mark.parametrize("method", [m for m in METHODS if m != "paper-pgd"])
@pytest.mark.parametrize("kind", ["mgnet", "baseline"])
def test_every_method_respects_eps_and_pixel_range(models, data, method, kind):
    x, y, _ = data  # saturated rows at 0 and 1
    result = attack(models[kind], x, y, method, eps=6.0, **FAST.get(method, {}))
    assert result.images.shape == x.shape and not result.images.requires_grad
    assert (result.images - x).abs().max() <= 6 / 255 + TOL
    assert result.images.min() >= 0 and result.images.max() <= 1
    assert result.success.dtype == bool and result.success.shape == (3,)
    assert result.label == METHODS[method].label and result.eps == 6.0 and result.seconds > 0


def test_registry_spelling_and_options():
    assert canonical("paper_pgd") == canonical("Paper-PGD") == "paper-pgd"
    assert not METHODS["square"].needs_gradients and METHODS["apgd-ce"].needs_gradients
    assert METHODS["apgd-ce"].defaults["steps"] == 100 and METHODS["square"].defaults["queries"] == 5000
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]  # Croce & Hein's schedule


def test_registry_refuses_what_a_method_ignores(models, data):
    x, y, _ = data
    with pytest.raises(ValueError, match="paper-pgd takes no option norm"):
        attack(models["baseline"], x, y, "paper-pgd", norm="l2")
    with pytest.raises(ValueError, match="untargeted"):
        attack(models["baseline"], x, y, "square", targeted=True)
    with pytest.raises(ValueError, match="queries must be a positive integer"):
        attack(models["baseline"], x, y, "square", queries=0)


# -- known answers: a linear model, and one that hides its gradient -------------------------------------------
class Linear(nn.Module):
    """Three classes on 3x8x8 pixels; class 2 never wins. ``rounding`` quantises the input to 8 bits first,
    which hides the gradient (d round / dx = 0) without changing what an 8-bit change does."""

    def __init__(self, d: torch.Tensor, margin: float, rounding: bool = False):
        super().__init__()
        self.register_buffer("w", torch.stack([d, torch.zeros_like(d), torch.zeros_like(d)]))
        self.register_buffer("b", torch.tensor([0.0, 0.0, -50.0]))
        self.margin, self.rounding = margin, rounding

    def forward(self, x):
        if self.rounding:
            x = torch.round(x * 255) / 255
        return (x.flatten(1) - self.centre) @ self.w.T + self.b + torch.tensor([self.margin, 0.0, 0.0])

    centre = torch.zeros(192)


def linear_case(share: float, rounding: bool = False, n: int = 4):
    """A model whose class-0 margin at x is ``share`` of what the optimal L-inf attack (eps 8) removes:
    eps/255 * ||d||_1. The optimal attack is x - eps/255 * sign(d), in closed form."""
    g = torch.Generator().manual_seed(0)
    d = torch.randint(0, 2, (192,), generator=g).float() * 2 - 1
    d *= 0.5 + torch.rand(192, generator=g)
    x = torch.round((0.2 + 0.6 * torch.rand(1, 3, 8, 8, generator=g)) * 255) / 255  # 8-bit, interior
    x = x.expand(n, -1, -1, -1).clone()  # n copies: each attack run on them draws its own randomness
    model = Linear(d, share * 8 / 255 * float(d.abs().sum()), rounding)
    model.centre = x[0].flatten()
    optimal = x - 8 / 255 * d.sign().view(1, 3, 8, 8)
    return model, x, torch.zeros(n, dtype=torch.long), optimal


@pytest.mark.parametrize("method", ["fgsm", "pgd", "apgd-ce", "apgd-dlr"])
def test_gradient_attacks_find_the_closed_form_optimum_of_a_linear_model(method):
    model, x, y, optimal = linear_case(0.95)  # only a point within 5% of the optimum succeeds
    result = attack(model, x, y, method, eps=8.0, **FAST.get(method, {}))
    assert result.success.all()
    assert (result.images - optimal).abs().max() < 1e-5


def test_square_nears_the_linear_optimum_without_gradients():
    model, x, y, optimal = linear_case(0.6)
    result = attack(model, x, y, "square", eps=8.0, queries=1000, seed=1)
    assert result.success.all()
    assert max(result.details["queries"]) < 1000, "it should stop querying once an image is fooled"
    hopeless = attack(linear_case(2.0)[0], x, y, "square", eps=8.0, queries=300)  # beyond the optimum
    assert not hopeless.success.any() and hopeless.details["queries"] == [300] * 4


class Recorder(nn.Module):
    """A 2-class model that is never fooled and never helped (constant logits); keeps every image queried."""

    def __init__(self):
        super().__init__()
        self.queried = []

    def forward(self, x):
        self.queried.append(x.detach().clone())
        return torch.tensor([[1.0, 0.0]]).expand(len(x), -1)


def test_square_spends_no_query_on_an_unchanged_image():
    # Nothing is ever accepted, so every query must differ from the starting stripes. On a 4x4 photo the
    # late windows are single pixels, where a fresh draw repeats the current signs one time in eight.
    model = Recorder()
    x = torch.full((2, 3, 4, 4), 0.5)
    result = attack(model, x, torch.zeros(2, dtype=torch.long), "square", eps=8.0, queries=300, seed=0)
    assert len(model.queried) == 301 and result.details["queries"] == [300, 300]  # and the final check
    start, *later = model.queried[:300]
    assert all(((q - start).abs().flatten(1).amax(1) > 1e-7).all() for q in later)


def test_square_breaks_a_model_that_hides_its_gradient_and_pgd_does_not():
    model, x, y, _ = linear_case(0.5, rounding=True)
    assert input_gradient(model, x, y).abs().max() == 0  # the rounding hides the gradient
    for method in ("pgd", "apgd-ce", "apgd-dlr"):
        assert not attack(model, x, y, method, eps=8.0, **FAST.get(method, {})).success.any(), method
    square = attack(model, x, y, "square", eps=8.0, queries=1000)
    assert square.success.all()
    worst = attack(model, x, y, "worst", eps=8.0, member_options={**FAST_MEMBERS, "square": {"queries": 1000}})
    assert worst.success.all() and worst.details["by"] == ["square"] * 4


def test_square_reports_progress_and_is_seeded(models, data):
    x, y, _ = data
    calls = []
    a = attack(models["baseline"], x, y, "square", queries=6, seed=2, progress=lambda s, t: calls.append((s, t)))
    assert calls and calls[-1][1] == 6 and [s for s, _ in calls] == sorted(s for s, _ in calls)
    assert torch.equal(a.images, adv(models["baseline"], x, y, "square", queries=6, seed=2))


def test_square_queries_mgnet_through_its_fast_copy_with_the_same_result(models, data, monkeypatch):
    import mgnet.attacks as attacks_module

    x, y, _ = data
    built = []
    real = attacks_module.inference_model
    monkeypatch.setattr(attacks_module, "inference_model", lambda m: built.append(m) or real(m))
    fast = attack(models["mgnet"], x, y, "square", eps=8, queries=30, seed=3)
    assert built == [models["mgnet"]]
    monkeypatch.setattr(attacks_module, "inference_model", lambda m: m)  # query the exact model instead
    exact = attack(models["mgnet"], x, y, "square", eps=8, queries=30, seed=3)
    assert torch.equal(fast.images, exact.images) and (fast.success == exact.success).all()
    assert fast.details["queries"] == exact.details["queries"]
    # the baseline is an MGNet with one glimpse: it is queried through its copy too
    monkeypatch.setattr(attacks_module, "inference_model", lambda m: built.append(m) or real(m))
    attack(models["baseline"], x, y, "square", queries=3)
    assert built == [models["mgnet"], models["baseline"]]


def test_worst_members_follow_the_model(models, data):
    assert worst_members(models["baseline"]) == ["pgd", "apgd-ce", "apgd-dlr", "square"]
    assert worst_members(models["mgnet"], transfer_from=models["baseline"]) == [
        "pgd",
        "apgd-ce",
        "apgd-dlr",
        "square",
        "transfer",
        "pgd-true",
        "apgd-ce-true",
        "apgd-dlr-true",
    ]
    x, y, _ = data
    worst = attack(models["mgnet"], x, y, "worst", transfer_from=models["baseline"], member_options=FAST_MEMBERS)
    fooled = worst.details["members"]
    assert list(fooled) == worst_members(models["mgnet"], models["baseline"])
    assert fooled["apgd-dlr-true"] == worst.success.tolist()  # the last member's tally is the worst case
    for earlier, later in zip(list(fooled.values()), list(fooled.values())[1:]):
        assert all(b or not a for a, b in zip(earlier, later)), "cumulative: once fooled, always fooled"
    assert [b is not None for b in worst.details["by"]] == worst.success.tolist()
