"""The forward-only inference copy (BatchNorm folded, channels_last, convolutions packed for oneDNN) gives
the exact model's outputs."""

import copy
import time

import numpy as np
import pytest
import torch
from torch import nn

from mgnet import load_checkpoint
from mgnet.analysis import analyze, analyze_batch, inference_model, location_check
from mgnet.data import list_image_folder, load_image, to_model_input
from mgnet.model import (
    FeatureFusion,
    FoldedFusion,
    FusedResNet,
    PackedConv2d,
    build_model,
    fold_batchnorm,
    fold_fusion,
    fuse_backbone,
    pack_convolutions,
    prepare_for_inference,
)
from conftest import DATA, ROOT


def trained_looking(kind="mgnet", backbone="resnet18", seed=0, **kwargs):
    """A small model whose BatchNorms have non-trivial statistics and affine weights (the default 1/0
    would make a wrong fold invisible)."""
    torch.manual_seed(seed)
    model = build_model(kind, backbone=backbone, num_classes=10, image_size=64, **kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def count(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("backbone, pairs", [("resnet18", 20), ("resnet50", 53)])
def test_fold_batchnorm_keeps_the_backbone_output(backbone, pairs):
    model = trained_looking(backbone=backbone)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before = model.backbone(x)
        assert fold_batchnorm(model.backbone) == pairs
        after = model.backbone(x)
    assert count(model.backbone, nn.BatchNorm2d) == 0
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["mgnet", "baseline"])
def test_inference_copy_matches_the_exact_model_and_leaves_it_alone(kind):
    model = trained_looking(kind)
    flags = [p.requires_grad for p in model.parameters()]
    fast = prepare_for_inference(model)
    assert fast is not model and count(fast, nn.BatchNorm2d) == 0
    assert count(model, nn.BatchNorm2d) == 20 and [p.requires_grad for p in model.parameters()] == flags
    assert not any(p.requires_grad for p in fast.parameters())
    assert fast.backbone.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        exact = model(x, return_crops=True)
    with torch.inference_mode():
        quick = fast(x, return_crops=True)
    torch.testing.assert_close(quick.logits, exact.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(quick.glimpses, exact.glimpses, atol=1e-5, rtol=1e-5)
    # a 1e-6 change of a glimpse parameter moves the crop of a noise image by up to ~1e-4
    torch.testing.assert_close(quick.crops, exact.crops, atol=3e-4, rtol=0)


needs_onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN: nothing is packed"
)


@needs_onednn
def test_inference_copy_packs_every_convolution_of_the_backbone():
    model = trained_looking("mgnet")
    fast = prepare_for_inference(model)
    assert count(fast.backbone, PackedConv2d) == count(model.backbone, nn.Conv2d) == 20
    assert count(model, PackedConv2d) == 0  # the exact model keeps plain convolutions


@needs_onednn
def test_packed_convolution_gives_the_same_numbers_and_steps_aside_for_gradients():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1).eval()
    packed = PackedConv2d.from_conv(conv, (1, 16, 12, 12))
    assert packed.weight is conv.weight  # the same parameters, not a copy
    # other batch sizes and sides than the packed one, in both memory layouts
    for shape in [(1, 16, 12, 12), (5, 16, 20, 20)]:
        for layout in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(shape).contiguous(memory_format=layout)
            with torch.inference_mode():
                torch.testing.assert_close(packed(x), conv(x), atol=1e-5, rtol=1e-5)
    # with weight gradients or in float64 it is a plain nn.Conv2d
    x = torch.randn(2, 16, 12, 12, requires_grad=True)
    packed(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and packed.weight.grad is not None
    double = copy.deepcopy(packed).double()
    torch.testing.assert_close(double(x.detach().double()), conv.double()(x.detach().double()))


@needs_onednn
@pytest.mark.parametrize(
    "kernel, stride, padding, side", [(3, 1, 1, 12), (3, 2, 1, 12), (3, 2, 1, 13), (1, 2, 0, 13), (7, 2, 3, 21)]
)
def test_packed_convolution_input_gradients_run_on_onednn_and_match(monkeypatch, kernel, stride, padding, side):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, kernel, stride=stride, padding=padding).eval().requires_grad_(False)
    packed = PackedConv2d.from_conv(conv, (1, 8, side, side))
    calls = []
    real = PackedConv2d.input_gradient
    monkeypatch.setattr(PackedConv2d, "input_gradient", lambda self, *a: calls.append(1) or real(self, *a))
    # both layouts, and other batch sizes and sides than the first call's (the packed weight is reused)
    shapes = [(2, side, torch.contiguous_format), (2, side, torch.channels_last), (16, side, torch.channels_last)]
    for batch, width, layout in shapes + [(3, side + 7, torch.channels_last)]:
        x = torch.randn(batch, 8, width, width).contiguous(memory_format=layout).requires_grad_(True)
        weights = torch.randn(conv(x).shape)
        (want,) = torch.autograd.grad((conv(x) * weights).sum(), x)
        (got,) = torch.autograd.grad((packed(x) * weights).sum(), x)
        assert got.shape == x.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert len(calls) == 4  # every backward pass ran the packed transposed convolution


@needs_onednn
def test_packing_keeps_input_gradients_on_the_plain_path_if_they_differ(monkeypatch):
    model = trained_looking("baseline")
    monkeypatch.setattr(PackedConv2d, "input_gradient", lambda self, grad, shape: torch.zeros(shape))
    assert pack_convolutions(model.backbone, (1, 3, 64, 64)) == 20
    convs = [m for m in model.backbone.modules() if isinstance(m, PackedConv2d)]
    assert all(not c.grad_on_onednn for c in convs)
    x = torch.rand(1, 3, 64, 64).requires_grad_(True)
    model.requires_grad_(False)
    (grad,) = torch.autograd.grad(model(x).logits.sum(), x)
    assert grad.abs().sum() > 0  # the plain backward, not the broken one


@needs_onednn
def test_packed_copies_pack_again():
    fast = prepare_for_inference(trained_looking("mgnet"))
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        want = fast(x).logits
        other = copy.deepcopy(fast)
        assert count(other.backbone, PackedConv2d) == 20
        torch.testing.assert_close(other(x).logits, want, atol=0, rtol=0)
    # a copy of one convolution goes through __getstate__ / __setstate__ (as pickling would) and packs again
    conv = fast.backbone.layer1[0].conv1
    twin = copy.copy(conv)
    assert twin.weight is conv.weight and twin._packed is not conv._packed
    z = torch.rand(1, 64, 12, 12)
    with torch.inference_mode():
        torch.testing.assert_close(twin(z), conv(z), atol=0, rtol=0)


def test_packing_is_left_out_without_onednn(monkeypatch):
    model = trained_looking("baseline")
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert pack_convolutions(model.backbone, (1, 3, 64, 64)) == 0
    assert count(model.backbone, PackedConv2d) == 0


@needs_onednn
def test_packing_is_left_out_where_it_would_change_the_output(monkeypatch):
    model = trained_looking("baseline")
    monkeypatch.setattr(PackedConv2d, "forward", lambda self, x: nn.Conv2d.forward(self, x) + 1.0)
    assert pack_convolutions(model.backbone, (1, 3, 64, 64)) == 0
    assert count(model.backbone, PackedConv2d) == 0 and count(model.backbone, nn.Conv2d) == 20


def random_fusion(dim=19, seed=0) -> FeatureFusion:
    torch.manual_seed(seed)
    fusion = FeatureFusion(dim).eval()
    with torch.no_grad():
        for p in fusion.parameters():
            p.normal_(0, 0.5)  # biases too: the folded terms must carry them
    return fusion


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_folded_fusion_is_the_attention_it_replaces(steps):
    fusion = random_fusion()
    folded = FoldedFusion(fusion)
    tokens = torch.randn(steps, 3, 19) * 2
    torch.testing.assert_close(folded(tokens), fusion(tokens), atol=1e-5, rtol=1e-5)
    # input gradients (attacks and saliency take them through the inference copy)
    weights = torch.randn(3, 19)
    grads = []
    for module in (fusion, folded):
        x = tokens.clone().requires_grad_(True)
        (module(x) * weights).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)
    assert grads[0].abs().sum() > 0


def test_only_the_papers_fusion_is_folded():
    assert FoldedFusion.applies(random_fusion())
    two_heads = random_fusion(dim=20)
    two_heads.mha = nn.MultiheadAttention(20, 2)
    assert not FoldedFusion.applies(two_heads)
    assert isinstance(prepare_for_inference(trained_looking("mgnet")).feat_fusion, FoldedFusion)


def test_folding_is_left_out_where_it_would_change_the_output(monkeypatch):
    model = trained_looking("mgnet")
    plain = model.feat_fusion
    monkeypatch.setattr(FoldedFusion, "forward", lambda self, tokens: FeatureFusion.forward(plain, tokens) + 1.0)
    assert not fold_fusion(model) and model.feat_fusion is plain


@needs_onednn
@pytest.mark.parametrize("kind", ["mgnet", "baseline"])
def test_fused_backbone_runs_fused_onednn_calls_with_the_same_numbers(monkeypatch, kind):
    model = trained_looking(kind)
    fast = prepare_for_inference(model)
    assert type(fast.backbone) is FusedResNet and type(model.backbone) is not FusedResNet
    calls = []
    original = PackedConv2d.run_add_relu
    monkeypatch.setattr(PackedConv2d, "run_add_relu", lambda self, x, o: calls.append(1) or original(self, x, o))
    x = torch.rand(2, 3, 64, 64)
    steps = 3 if kind == "mgnet" else 1
    with torch.inference_mode():
        quick = fast(x, n_glimpses=steps)
    with torch.no_grad():
        exact = model(x, n_glimpses=steps)
    assert len(calls) == steps * 8  # every residual block of every glimpse took the fused path
    torch.testing.assert_close(quick.logits, exact.logits, atol=1e-4, rtol=1e-4)


@needs_onednn
def test_fused_backbone_steps_aside_for_hooks_and_gradients():
    fast = prepare_for_inference(trained_looking("baseline"))
    backbone = fast.backbone
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        fused = backbone(x)
        seen = []
        handle = backbone.layer4.register_forward_hook(lambda m, a, out: seen.append(out))  # as Grad-CAM does
        hooked = backbone(x)
        handle.remove()
    assert len(seen) == 1 and seen[0].shape[1:] == (512, 2, 2)  # a hook on a part still fires
    torch.testing.assert_close(hooked, fused, atol=1e-5, rtol=1e-5)
    grads = []
    for cls in (FusedResNet, type(backbone).__mro__[1]):
        backbone.__class__ = cls
        z = x.clone().requires_grad_(True)
        backbone(z).square().sum().backward()
        grads.append(z.grad)
    backbone.__class__ = FusedResNet
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].abs().sum() > 0


@needs_onednn
def test_fusing_is_left_out_where_it_would_change_the_output(monkeypatch):
    model = trained_looking("baseline")
    fold_batchnorm(model.backbone)
    assert pack_convolutions(model.backbone, (1, 3, 64, 64)) == 20
    monkeypatch.setattr(PackedConv2d, "run_add_relu", lambda self, x, other: self._run(x) + other)  # no ReLU
    assert not fuse_backbone(model.backbone, (1, 3, 64, 64))
    assert type(model.backbone) is not FusedResNet and not hasattr(model.backbone, "plan")
    resnet50 = trained_looking("baseline", backbone="resnet50")
    assert not fuse_backbone(resnet50.backbone, (1, 3, 64, 64))  # bottleneck blocks are not fused


def test_a_classifier_that_is_not_an_mgnet_is_its_own_fast_copy():
    plain = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    assert inference_model(plain) is plain


def test_inference_copy_is_cached_and_follows_weight_changes():
    model = trained_looking()
    photo = (np.random.default_rng(0).random((80, 100, 3)) * 255).astype(np.uint8)
    first = inference_model(model)
    assert inference_model(model) is first
    before = analyze(model, photo).probs
    with torch.no_grad():
        model.global_fc.fc.bias[0] += 5.0  # an in-place update, as an optimiser step would make
    assert inference_model(model) is not first
    after = analyze(model, photo).probs
    with torch.no_grad():
        exact = model(to_model_input(photo, 64)).logits.softmax(-1)[:, 0].numpy()
    np.testing.assert_allclose(after, exact, atol=1e-5)
    assert not np.allclose(after, before, atol=1e-3)
    model.n_glimpses = 2  # a settings change is followed too
    assert analyze(model, photo).n_glimpses == 2


def test_location_check_uses_the_same_numbers_as_the_exact_model():
    model = trained_looking()
    photo = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
    check = location_check(model, photo, n_random=3)
    with torch.no_grad():
        own = model(to_model_input(photo, 64)).logits[:, 0].softmax(-1)
    assert check.target == int(own[-1].argmax())
    np.testing.assert_allclose(check.own, own[:, check.target].numpy(), atol=1e-5)


def val_sample(n=64):
    _, samples = list_image_folder(DATA / "val")
    picks = np.linspace(0, len(samples) - 1, n).round().astype(int)
    return [load_image(samples[i][0]) for i in picks]


@pytest.mark.skipif(not (DATA / "val").is_dir(), reason="needs the Imagenette val folder")
@pytest.mark.parametrize("name", ["mgnet-resnet18-imagenette.pt", "baseline-resnet18-imagenette.pt"])
def test_default_checkpoints_predict_the_same_on_a_val_sample(name):
    """64 val photos: argmax, top-5 (in order) and glimpse params after every glimpse are unchanged."""
    model = load_checkpoint(ROOT / "checkpoints" / name, device="cpu")
    photos = val_sample()
    fast = analyze_batch(model, photos, batch_size=16)
    x = torch.cat([to_model_input(p, model.image_size) for p in photos])
    with torch.no_grad():
        exact = model(x)
    probs = exact.logits.softmax(-1).numpy()  # [T, B, C]
    # batched as evaluate runs it, and one photo at a time as the app does (batch 1 takes other kernels)
    single = [analyze(model, p) for p in photos[:8]]
    for b, result in [*enumerate(fast), *enumerate(single)]:
        assert (np.argsort(-result.probs, -1)[:, :5] == np.argsort(-probs[:, b], -1)[:, :5]).all()
        np.testing.assert_allclose(result.probs, probs[:, b], atol=1e-5)
        np.testing.assert_allclose(result.params, exact.glimpses[:, b].numpy(), atol=1e-5)


@pytest.mark.parametrize("once", ["prepare_for_inference", "gflops"])
def test_analysis_time_leaves_out_what_is_done_once_per_model(monkeypatch, once):
    # the app shows this time and scales its estimates of slow methods by it
    import mgnet.analysis as analysis_module

    real, done = getattr(analysis_module, once), []

    def slow_first_time(*args, **kwargs):  # as building the fast copy, or counting FLOPs before they are cached
        if not done:
            time.sleep(1.0)
            done.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(analysis_module, once, slow_first_time)
    model = trained_looking()
    photo = (np.random.default_rng(0).random((80, 100, 3)) * 255).astype(np.uint8)
    started = time.perf_counter()
    result = analyze(model, photo)
    assert time.perf_counter() - started >= 1.0  # the slow first step ran in this call
    assert result.seconds < 0.9


def test_precomputed_input_and_key_give_the_same_analysis():
    """The app hands ``analyze`` and ``location_check`` the resized photo and its hash it already has."""
    model = trained_looking(n_glimpses=3)
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    x = to_model_input(photo, 64)
    plain, given = analyze(model, photo), analyze(model, photo, model_input=x.clone(), key="k")
    assert given.image_hash == "k" and plain.image_hash != "k"
    np.testing.assert_array_equal(plain.probs, given.probs)
    np.testing.assert_array_equal(plain.boxes, given.boxes)
    assert (given.width, given.height) == (120, 90)  # boxes still map to the photo, not the model input
    checked = location_check(model, photo, model_input=x)
    np.testing.assert_array_equal(checked.own, location_check(model, photo).own)
    reused = location_check(model, photo, model_input=x, own=given)  # the analysis's own-glimpse run reused
    for field in ("own", "centre", "moved", "moved_params"):
        np.testing.assert_array_equal(getattr(reused, field), getattr(checked, field))
    assert reused.target == checked.target and reused.final_class == checked.final_class
    with pytest.raises(ValueError, match="same number of glimpses"):
        location_check(model, photo, n_glimpses=2, own=given)
    with pytest.raises(ValueError, match="1, 3, 64, 64"):
        analyze(model, photo, model_input=x[:, :, :32])
    with pytest.raises(ValueError, match="one entry per image"):
        analyze_batch(model, [photo, photo], keys=["a"])


@needs_onednn
def test_fused_backbone_copies_still_see_new_hooks():
    """The fused path checks its modules' hook dicts; a deep copy (rebuilt through __reduce_ex__, as a pickle
    would be) must check its own."""
    fast = prepare_for_inference(trained_looking("baseline"))
    x = torch.rand(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    twin = copy.deepcopy(fast)
    seen = []
    handle = twin.backbone.layer3[1].conv2.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape))
    with torch.inference_mode():
        out = twin.backbone(x)
    handle.remove()
    assert seen == [(1, 256, 4, 4)]
    with torch.inference_mode():
        torch.testing.assert_close(out, fast.backbone(x), atol=1e-5, rtol=1e-5)
