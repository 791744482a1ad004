"""Tests for mgnet.explain on tiny random-weight models (the machine is shared with training jobs)."""

import copy
import sys
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from torch import nn  # noqa: E402

from mgnet import explain as ex  # noqa: E402
from mgnet.analysis import inference_model  # noqa: E402
from mgnet import metrics  # noqa: E402
from mgnet.model import build_model  # noqa: E402
from mgnet.utils import model_state_fingerprint  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU")

# cheap options for the multi-glimpse model; the baseline runs every method with its defaults
LIGHT = {
    "integrated_gradients": {"n_steps": 8, "internal_batch_size": 4},
    "smoothgrad": {"nt_samples": 4, "nt_samples_batch_size": 2},
    "occlusion": {"window": 16, "stride": 16},
    "gradient_shap": {"n_samples": 4, "n_samples_batch_size": 2},
}


@pytest.fixture(scope="module")
def baseline():
    torch.manual_seed(0)
    return build_model("baseline", "resnet18", num_classes=10, image_size=32).eval()


@pytest.fixture(scope="module")
def mgnet():
    torch.manual_seed(1)
    return build_model("mgnet", "resnet18", num_classes=10, image_size=64, n_glimpses=3).eval()


def image(size, seed=0):
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def no_param_grads(model):
    return all(p.grad is None for p in model.parameters())


def check_attribution(att, size, method):
    assert att.method == method
    assert att.map.shape == (size, size) and att.map.dtype == np.float32
    assert np.all(np.isfinite(att.map)) and att.map.min() >= 0
    if method == "gradcam" and att.empty:
        assert att.raw.max() <= 0  # documented: every location counts against the class
    else:
        assert att.map.max() == pytest.approx(1.0)
    assert np.all(np.isfinite(att.raw))
    assert att.seconds >= 0


@pytest.mark.parametrize("method", list(ex.METHODS))
def test_every_method_on_baseline_leaves_model_untouched(baseline, method):
    x = image(32)
    before = model_state_fingerprint(baseline)
    att = ex.explain(baseline, x, method)
    check_attribution(att, 32, method)
    with torch.no_grad():
        assert att.target == int(baseline(x).logits[-1, 0].argmax())
    assert model_state_fingerprint(baseline) == before
    assert no_param_grads(baseline)
    if method != "gradcam":
        assert att.raw.shape == (3, 32, 32)
    for key, value in ex.METHODS[method].defaults.items():
        assert key in att.options and (value is None or att.options[key] == value)


@pytest.mark.parametrize("method", list(ex.METHODS))
def test_every_method_on_mgnet(mgnet, method):
    assert method in ex.available_methods(mgnet)
    before = model_state_fingerprint(mgnet)
    att = ex.explain(mgnet, image(64, 1), method, target=3, **LIGHT.get(method, {}))
    check_attribution(att, 64, method)
    assert att.target == 3 and att.options["n_glimpses"] == 3
    assert model_state_fingerprint(mgnet) == before
    assert no_param_grads(mgnet)
    fast = inference_model(mgnet)  # the copy Captum ran on is left as it was found too
    assert model_state_fingerprint(fast)["hooks"] == 0 and no_param_grads(fast) and not fast.training


def relative_error(got, want) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def gradient(model, x, target, **kw):
    xx = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xx, **kw).logits[-1, 0, target], xx)
    return grad[0]


def test_saliency_matches_autograd_and_s_grad_is_passed(mgnet):
    x = image(64, 2)
    fast = inference_model(mgnet)  # the copy explain differentiates
    for s_grad in (None, 1.0):
        grad = gradient(fast, x, 4, s_grad=s_grad)
        att = ex.explain(mgnet, x, "saliency", target=4, s_grad=s_grad)
        np.testing.assert_allclose(att.raw, grad.numpy(), rtol=1e-4, atol=1e-7)
        expected = grad.abs().sum(0).numpy()
        np.testing.assert_allclose(att.map, expected / expected.max(), rtol=1e-4, atol=1e-6)
        # as close to the model's gradient in float64 as the model's own float32 gradient is, or closer
        reference = gradient(copy.deepcopy(mgnet).double(), x.double(), 4, s_grad=s_grad).float().numpy()
        exact = gradient(mgnet, x, 4, s_grad=s_grad).numpy()
        assert relative_error(att.raw, reference) <= max(10 * relative_error(exact, reference), 1e-3)


def test_mgnet_gradcam_uses_first_glimpse():
    torch.manual_seed(2)
    model = build_model("mgnet", "resnet18", num_classes=10, image_size=96, n_glimpses=3).eval()
    x = image(96, 3)

    def first_glimpse_cam(net, x=x):
        acts = []
        handle = net.backbone.layer4.register_forward_hook(lambda m, i, o: acts.append(o))
        try:
            logit = net(x.clone().requires_grad_(True)).logits[-1, 0, 5]  # the copy's weights are frozen
        finally:
            handle.remove()
        assert len(acts) == 3 and acts[0].shape[-1] == 2  # layer4 ran once per glimpse, 2x2 on the first
        (grad,) = torch.autograd.grad(logit, acts[0])
        return (grad.mean((2, 3), keepdim=True) * acts[0]).sum(1)[0].detach().numpy()

    att = ex.explain(model, x, "gradcam", target=5)
    np.testing.assert_allclose(att.raw, first_glimpse_cam(inference_model(model)), rtol=1e-4, atol=1e-6)
    # as close to the model's map in float64 as the model's own float32 map is, or closer
    reference = first_glimpse_cam(copy.deepcopy(model).double(), x.double()).astype(np.float32)
    exact = first_glimpse_cam(model)
    assert relative_error(att.raw, reference) <= max(10 * relative_error(exact, reference), 1e-3)
    assert model_state_fingerprint(model)["hooks"] == 0


def test_train_mode_and_batchnorm_buffers_are_kept(baseline):
    model = build_model("baseline", "resnet18", num_classes=10, image_size=32)
    model.load_state_dict(baseline.state_dict())
    model.train()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    ex.explain(model, image(32), "saliency")
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, buffers[k]), k
    assert no_param_grads(model)


def test_seeded_methods_are_reproducible_and_leave_global_rng_alone(baseline):
    x = image(32, 4)
    state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    a = ex.explain(baseline, x, "smoothgrad", nt_samples=4, seed=7)
    b = ex.explain(baseline, x, "smoothgrad", nt_samples=4, seed=7)
    c = ex.explain(baseline, x, "smoothgrad", nt_samples=4, seed=8)
    g1 = ex.explain(baseline, x, "gradient_shap", n_samples=4, seed=7)
    g2 = ex.explain(baseline, x, "gradient_shap", n_samples=4, seed=7)
    np.testing.assert_array_equal(a.raw, b.raw)
    np.testing.assert_array_equal(g1.raw, g2.raw)
    assert not np.array_equal(a.raw, c.raw)
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)


def test_progress_reports_real_steps(baseline):
    calls = []
    # 16 perturbations per forward (the default batches 64): one progress call per batch
    att = ex.explain(
        baseline, image(32), "occlusion", perturbations_per_eval=16, progress=lambda d, t: calls.append((d, t))
    )
    total = 1 + ((32 - 4) // 2 + 1) ** 2  # unoccluded pass + 15 x 15 windows of 4 px, stride 2
    assert att.options["window"] == 4 and att.options["stride"] == 2
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert len(calls) > 10
    done = [d for d, _ in calls]
    assert done == sorted(done) and all(t == total for _, t in calls)


def test_a_method_is_one_registry_entry(baseline, monkeypatch):
    """Adding a method is one METHODS entry: explain runs it, reports its cost as progress, and the figure
    tool's settings accept it and its options."""
    from mgnet.figures.settings import FigureSettings

    def input_times_gradient(wrapper, x, target, opts, seed):
        (grad,) = torch.autograd.grad(wrapper(x)[0, target], x)
        return grad * x * opts["scale"]

    entry = ex.MethodInfo(
        "Input x gradient",
        "In. x grad.",
        "The gradient times the pixel values.",
        False,
        {"scale": 1.0, "passes": 1},
        input_times_gradient,
        cost=lambda opts, batch, size: opts["passes"] * batch,
        tunable=ex.Tunable("passes", "Input x gradient: passes", 1, 4, 1),
    )
    monkeypatch.setitem(ex.METHODS, "input_x_gradient", entry)
    x = image(32)
    seen = []
    att = ex.explain(baseline, x, "input_x_gradient", target=3, progress=lambda d, t: seen.append((d, t)), passes=2)
    check_attribution(att, 32, "input_x_gradient")
    assert seen[0] == (0, 2) and seen[-1] == (2, 2)
    expected = ex.explain(baseline, x, "saliency", target=3).raw * x[0].numpy()
    np.testing.assert_allclose(att.raw, expected, rtol=1e-5, atol=1e-7)
    assert "input_x_gradient" in ex.available_methods(baseline)
    FigureSettings(
        images=["x.jpg"], methods=["input_x_gradient"], method_options={"input_x_gradient": {"passes": 3}}
    ).validate()
    with pytest.raises(ValueError, match="takes options"):
        ex.explain(baseline, x, "input_x_gradient", steps=3)


def test_hooks_removed_when_interrupted(mgnet):
    before = model_state_fingerprint(mgnet)

    def stop(done, total):
        if done > 0:
            raise KeyboardInterrupt  # e.g. the app cancelling

    for method in ("gradcam", "guided_backprop", "occlusion"):
        with pytest.raises(KeyboardInterrupt):
            ex.explain(mgnet, image(64), method, progress=stop, **LIGHT.get(method, {}))
        assert model_state_fingerprint(mgnet) == before
        assert no_param_grads(mgnet)


def test_two_threads_on_one_model_give_solo_results(baseline):
    x = image(32, 5)
    solo = {m: ex.explain(baseline, x, m).raw for m in ("guided_backprop", "saliency")}
    results, errors = {m: [] for m in solo}, []

    def worker(method):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for _ in range(4):
                    results[method].append(ex.explain(baseline, x, method).raw)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(m,)) for m in solo]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for method, runs in results.items():
        assert len(runs) == 4
        for raw in runs:
            np.testing.assert_allclose(raw, solo[method], rtol=1e-5, atol=1e-7)
    assert not np.allclose(solo["guided_backprop"], solo["saliency"])
    assert model_state_fingerprint(baseline)["hooks"] == 0 and no_param_grads(baseline)


def test_bad_arguments(baseline):
    with pytest.raises(ValueError, match="unknown method"):
        ex.explain(baseline, image(32), "lime")
    with pytest.raises(ValueError, match="n_steps"):
        ex.explain(baseline, image(32), "saliency", n_steps=3)
    with pytest.raises(ValueError, match=r"\[1, 3, S, S\]"):
        ex.explain(baseline, torch.rand(2, 3, 32, 32), "saliency")
    with pytest.raises(ValueError, match="target"):
        ex.explain(baseline, image(32), "saliency", target=10)


def test_a_given_target_needs_no_extra_forward_pass_and_records_the_same_glimpses(mgnet, baseline, monkeypatch):
    calls = []
    for model in (mgnet, baseline):
        monkeypatch.setattr(model, "forward", lambda *a, _f=model.forward, **k: calls.append(1) or _f(*a, **k))
    for model, size in ((mgnet, 64), (baseline, 32)):
        for n in (None, 2):
            calls.clear()
            free = ex.explain(model, image(size), "saliency", n_glimpses=n)  # its prediction: one extra pass
            extra = len(calls)
            calls.clear()
            given = ex.explain(model, image(size), "saliency", target=free.target, n_glimpses=n)
            assert len(calls) == extra - 1
            assert given.options["n_glimpses"] == free.options["n_glimpses"]
            assert np.array_equal(given.map, free.map)
    assert ex.explain(mgnet, image(64), "saliency", n_glimpses=2).options["n_glimpses"] == 2
    with pytest.raises(ValueError, match="not a class index"):
        ex.explain(mgnet, image(64), "saliency", target=10)


# -- maps on photos and agreement metrics -------------------------------------------------------------------
def test_to_photo():
    m = np.zeros((4, 4), np.float32)
    m[:, :2] = 1
    out = metrics.to_photo(m, 40, 20)
    assert out.shape == (20, 40) and out.dtype == np.float32
    assert np.all(out[:, :15] == 1) and np.all(out[:, 25:] == 0)
    assert np.allclose(metrics.to_photo(np.full((8, 8), 0.5, np.float32), 30, 50), 0.5)


def test_mass_inside():
    m = np.zeros((10, 10))
    m[:, :5] = 1  # all mass in the left half
    assert metrics.mass_inside(m, [[0, 0, 5, 10]], 10, 10) == pytest.approx(1.0)
    assert metrics.mass_inside(m, [[0, 0, 5, 5]], 10, 10) == pytest.approx(0.5)
    assert metrics.mass_inside(m, [[0, 0, 5, 5], [0, 0, 5, 10]], 10, 10) == pytest.approx(1.0)  # union, not sum
    assert metrics.mass_inside(m, [[5, 0, 10, 10]], 10, 10) == pytest.approx(0.0)
    uniform = np.ones((10, 10))
    assert metrics.mass_inside(uniform, [[0, 0, 2.5, 10]], 10, 10) == pytest.approx(0.25)  # partial pixels
    assert metrics.mass_inside(uniform, [[0, 0, 5, 10], [5, 0, 10, 5]], 10, 10) == pytest.approx(0.75)
    assert metrics.mass_inside(uniform, [[0, 0, 6, 10], [4, 0, 10, 5]], 10, 10) == pytest.approx(0.8)  # 60 + 30 - 10
    # a model-sized map is resized to the photo first
    assert metrics.mass_inside(np.ones((4, 4)), [[0, 0, 50, 20]], 100, 20) == pytest.approx(0.5)
    assert metrics.mass_inside(np.zeros((10, 10)), [[0, 0, 5, 5]], 10, 10) == 0.0
    with pytest.raises(ValueError):
        metrics.mass_inside(-m, [[0, 0, 5, 5]], 10, 10)


def test_topk_iou():
    ramp = np.arange(100, dtype=float).reshape(10, 10)
    assert metrics.topk_iou(ramp, ramp) == 1.0
    assert metrics.topk_iou(ramp, -ramp + 100) == 0.0
    shifted = np.roll(ramp.ravel(), -10).reshape(10, 10)  # its top 20 are flat indices 70..89
    assert metrics.topk_iou(ramp, shifted, k=0.2) == pytest.approx(10 / 30)
    assert metrics.topk_iou(ramp, shifted, k=0.1) == 0.0  # 90..99 vs 80..89
    # ties are broken in raster order: a flat map's top 10% is the first row
    first_row = np.zeros((10, 10))
    first_row[0] = 1
    assert metrics.topk_iou(np.zeros((10, 10)), first_row, k=0.1) == 1.0


# -- deletion / insertion on a model whose answer is known ----------------------------------------------------
class RegionMean(nn.Module):
    """p(class 0) = mean pixel value over rows [0, rows) exactly (logits log p, log(1 - p))."""

    def __init__(self, rows, wrap=False):
        super().__init__()
        self.rows, self.wrap = rows, wrap

    def forward(self, x):
        p = x[:, :, : self.rows].mean((1, 2, 3)).clamp(1e-7, 1 - 1e-7)
        logits = torch.stack([p.log(), (1 - p).log()], 1)
        return SimpleNamespace(logits=logits[None]) if self.wrap else logits


def test_deletion_and_insertion_by_hand():
    c = 0.8
    x = torch.full((1, 3, 8, 8), c)
    model = RegionMean(rows=4, wrap=True)  # the top half decides; 32 of 64 pixels
    top_first = np.zeros((8, 8))
    top_first[:4] = 1
    # Deleting the top half first: p falls linearly from c to 0 at fraction 0.5, then stays 0.
    curve = metrics.deletion_insertion(
        model, x, top_first, target=0, steps=20, mode="deletion", baseline="black", batch_size=6
    )
    assert curve.fractions.shape == curve.probs.shape == (21,)
    assert curve.fractions[0] == 0 and curve.fractions[-1] == 1
    expected = c * np.clip(1 - 2 * curve.fractions, 0, 1)
    np.testing.assert_allclose(curve.probs, expected, atol=1e-5)
    assert curve.auc == pytest.approx(c / 4, abs=1e-5)
    # Insertion in the same order: 0 -> c by fraction 0.5, then c.  AUC = c/4 + c/2.
    curve = metrics.deletion_insertion(model, x, top_first, 0, mode="insertion", baseline="black")
    np.testing.assert_allclose(curve.probs, c * np.clip(2 * curve.fractions, 0, 1), atol=1e-5)
    assert curve.auc == pytest.approx(0.75 * c, abs=1e-5)
    # The reverse ranking deletes the irrelevant half first: flat at c, then down.  AUC = c/2 + c/4.
    curve = metrics.deletion_insertion(RegionMean(4), x, 1 - top_first, 0, mode="deletion", baseline="black")
    assert curve.auc == pytest.approx(0.75 * c, abs=1e-5)
    # A flat map deletes in raster order, i.e. the top rows first, like ``top_first``.
    curve = metrics.deletion_insertion(RegionMean(4), x, np.zeros((8, 8)), 0, steps=8, baseline="black")
    np.testing.assert_allclose(curve.probs, [c, 0.6, 0.4, 0.2, 0, 0, 0, 0, 0], atol=1e-5)  # a row a step
    # Blurring a constant image changes nothing.
    curve = metrics.deletion_insertion(RegionMean(4), x, top_first, 0, baseline="blur")
    np.testing.assert_allclose(curve.probs, c, atol=1e-5)
    assert curve.auc == pytest.approx(c, abs=1e-5)


def test_deletion_insertion_on_mgnet_endpoints(mgnet):
    x = image(64, 6)
    with torch.no_grad():
        p_image = mgnet(x).logits[-1, 0].softmax(-1)
        p_black = mgnet(torch.zeros_like(x)).logits[-1, 0].softmax(-1)
    target = int(p_image.argmax())
    sal = np.random.default_rng(0).random((64, 64))
    before = model_state_fingerprint(mgnet)
    dele = metrics.deletion_insertion(mgnet, x, sal, target, steps=5, mode="deletion", baseline="black", batch_size=4)
    ins = metrics.deletion_insertion(mgnet, x, sal, target, steps=5, mode="insertion", baseline="black", batch_size=4)
    blur = metrics.deletion_insertion(mgnet, x, sal, target, steps=2, mode="deletion", baseline="blur")
    assert dele.probs[0] == pytest.approx(float(p_image[target]), abs=1e-5)
    assert dele.probs[-1] == pytest.approx(float(p_black[target]), abs=1e-5)
    assert ins.probs[0] == pytest.approx(float(p_black[target]), abs=1e-5)
    assert ins.probs[-1] == pytest.approx(float(p_image[target]), abs=1e-5)
    assert 0 <= dele.auc <= 1 and 0 <= ins.auc <= 1 and np.all(np.isfinite(blur.probs))
    assert model_state_fingerprint(mgnet) == before and no_param_grads(mgnet)


# -- Captum's metrics ----------------------------------------------------------------------------------------
def test_infidelity_and_sensitivity(baseline):
    x = image(32, 7)
    before = model_state_fingerprint(baseline)
    state = torch.get_rng_state()
    inf = metrics.infidelity(baseline, x, "saliency", n_perturb_samples=4)
    again = metrics.infidelity(baseline, x, "saliency", n_perturb_samples=4)
    sens = metrics.sensitivity(baseline, x, "saliency", n_perturb_samples=3)
    assert np.isfinite(inf) and inf >= 0 and inf == again
    assert np.isfinite(sens) and sens >= 0
    with pytest.raises(ValueError, match="Grad-CAM"):
        metrics.infidelity(baseline, x, "gradcam")
    assert model_state_fingerprint(baseline) == before and no_param_grads(baseline)
    assert torch.equal(torch.get_rng_state(), state)


def test_occlusion_on_the_inference_copy_matches_captum_on_the_exact_model():
    from captum.attr import Occlusion

    torch.manual_seed(2)
    model = build_model("mgnet", "resnet18", num_classes=10, image_size=32, n_glimpses=2).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrong fold would show
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    x = image(32, 5)
    att = ex.explain(model, x, "occlusion", target=4, window=8, stride=8)
    exact = Occlusion(lambda inp: model(inp).logits[-1]).attribute(
        x, sliding_window_shapes=(3, 8, 8), strides=(3, 8, 8), baselines=0.0, target=4
    )
    np.testing.assert_allclose(att.raw, exact[0].numpy(), atol=1e-4, rtol=1e-4)
    assert np.abs(att.raw).max() > 1e-3
