"""MGNet (Tan, Dong & Ma, BMVC 2021) and its one-glimpse baseline.

The module layout mirrors the authors' code so that their state_dict keys load directly
(minus Lightning's ``model.`` prefix). Models take pixels in [0, 1] and normalise inside.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _nn_module
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models import resnet18, resnet34, resnet50
from torchvision.models.resnet import BasicBlock, ResNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BACKBONES = {"resnet18": (resnet18, 512), "resnet34": (resnet34, 512), "resnet50": (resnet50, 2048)}


@dataclass
class MGNetOutput:
    """Everything one forward pass produces.

    logits:   [T, B, classes], the prediction after each glimpse (the last one is final).
    glimpses: [T, B, 3], the (scale, tx, ty) used for each glimpse, authors' convention.
    glimpse_logits: [T-1, B, classes] from the auxiliary classifier on glimpses 2..T, or None.
    crops:    [T, B, 3, h, h] pixel crops the backbone saw, when asked for.
    tokens:   [T, B, D + 3] the fusion's inputs (features and the params told), when states are asked for.
    states:   [T, B, D + 3] the fused state z after each glimpse, when asked for (training the location
              network on targets needs it; it is what ``propose`` reads).
    """

    logits: torch.Tensor
    glimpses: torch.Tensor
    glimpse_logits: torch.Tensor | None = None
    crops: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    states: torch.Tensor | None = None

    @property
    def final(self) -> torch.Tensor:
        return self.logits[-1]


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by ``factor`` backward."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    if factor == 1.0 or not (x.requires_grad and torch.is_grad_enabled()):
        return x  # nothing flows back: skip the autograd node
    return _ScaleGrad.apply(x, factor)


class FeatureFusion(nn.Module):
    """Single-head self-attention over the glimpse tokens, then LayerNorm; output at the last token."""

    def __init__(self, dim: int):
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, 1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens: [t, B, dim]. Without a mask, position t of full self-attention only needs
        # the last query, so we compute just that one.
        out, _ = self.mha(tokens[-1:], tokens, tokens, need_weights=False)
        return F.relu(self.norm(out[0]))


class FoldedFusion(nn.Module):
    """``FeatureFusion`` with its four attention projections folded into two, for the inference copy.

    With one head and the output read at the last token only, the score of token i is
    (W_q x_t + b_q) . (W_k x_i + b_k) / sqrt(d) and the output is W_o (W_v sum_i a_i x_i + b_v) + b_o.
    Terms that do not depend on i drop out of the softmax, so the scores need one matrix A = W_q^T W_k / sqrt(d)
    and the output one matrix W_o W_v (both folded in float64). Each step then reads 2 of the
    4 MB of projection weights and projects no earlier token again. Same function up to float32 rounding,
    differentiable with respect to the tokens.
    """

    def __init__(self, fusion: FeatureFusion):
        super().__init__()
        mha, d = fusion.mha, fusion.mha.embed_dim
        w, b = mha.in_proj_weight.detach().double(), mha.in_proj_bias.detach().double()
        w_q, w_k, w_v = w[:d], w[d : 2 * d], w[2 * d :]
        w_o, b_o = mha.out_proj.weight.detach().double(), mha.out_proj.bias.detach().double()
        dtype = mha.in_proj_weight.dtype
        self.register_buffer("score_weight", (w_q.t() @ w_k / math.sqrt(d)).to(dtype))
        self.register_buffer("score_bias", (b[:d] @ w_k / math.sqrt(d)).to(dtype))
        self.register_buffer("value_weight", (w_o @ w_v).t().contiguous().to(dtype))
        self.register_buffer("value_bias", (w_o @ b[2 * d :] + b_o).to(dtype))
        self.norm = fusion.norm

    @staticmethod
    def applies(fusion: nn.Module) -> bool:
        """Whether ``fusion`` is the paper's fusion (one head, no extra keys, no dropout) that this folds."""
        mha = getattr(fusion, "mha", None)
        return (
            type(fusion) is FeatureFusion
            and mha.num_heads == 1
            and mha._qkv_same_embed_dim
            and mha.in_proj_bias is not None
            and mha.bias_k is None
            and not mha.add_zero_attn
            and not mha.batch_first
            and mha.dropout == 0
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if len(tokens) == 1:
            mixed = tokens[0]  # one token: its softmax weight is exactly 1
        else:
            query = torch.addmm(self.score_bias, tokens[-1], self.score_weight)  # [B, d]
            weights = torch.softmax(torch.einsum("tbd,bd->bt", tokens, query), dim=1)
            mixed = torch.einsum("bt,tbd->bd", weights, tokens)
        return F.relu(self.norm(torch.addmm(self.value_bias, mixed, self.value_weight)))


class _Head(nn.Module):
    """A Linear wrapped as ``.fc`` so keys read ``global_fc.fc.weight`` as in the authors' files."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.fc = nn.Linear(dim_in, dim_out)

    def forward(self, x):
        return self.fc(x)


class MGNet(nn.Module):
    """Multi-Glimpse Network.

    Args:
        backbone: 'resnet18' | 'resnet34' | 'resnet50' (torchvision, random init).
        num_classes: number of classes.
        n_glimpses: T, glimpses per image (1 with scale=1.0 gives the baseline).
        scale: downsampling factor; glimpses are floor(image_size / scale) pixels square.
        scale_min, scale_max: range of the glimpse scale s for glimpses 2..T.
        s_grad: backward-only gradient factor between the localisation sigmoid and the glimpse formulas.
        alpha: weight of the auxiliary glimpse classifier; it exists only when alpha > 0 and T >= 2.
        image_size: square input side the model expects.
        mean, std: normalisation applied inside forward (inputs are pixels in [0, 1]).
    """

    def __init__(
        self,
        backbone="resnet18",
        num_classes=100,
        n_glimpses=4,
        scale=2.33,
        scale_min=0.2,
        scale_max=0.5,
        s_grad=0.02,
        alpha=0.6,
        image_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
        if n_glimpses < 1:
            raise ValueError("n_glimpses must be at least 1")
        build, feat_dim = BACKBONES[backbone]
        self.backbone_name = backbone
        self.num_classes = num_classes
        self.n_glimpses = n_glimpses
        self.scale = float(scale)
        self.scale_min = float(scale_min)
        self.scale_max = float(scale_max)
        self.s_grad = float(s_grad)
        self.alpha = float(alpha)
        self.image_size = int(image_size)
        self.feat_dim = feat_dim
        self.classes: list[str] = [str(i) for i in range(num_classes)]

        self.backbone = build(weights=None)
        self.backbone.fc = nn.Identity()
        dim = feat_dim + 3
        self.feat_fusion = FeatureFusion(dim)
        self.loc_network = _Head(dim, 3)
        self.global_fc = _Head(dim, num_classes)
        self.glimpse_fc = _Head(feat_dim, num_classes) if (alpha > 0 and n_glimpses >= 2) else None
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._init_heads()

    def _init_heads(self):
        for module in [self.feat_fusion, self.loc_network, self.global_fc, self.glimpse_fc]:
            if module is None:
                continue
            for name, p in module.named_parameters():
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                elif p.dim() == 2:
                    nn.init.kaiming_normal_(p)
        nn.init.ones_(self.feat_fusion.norm.weight)

    # -- geometry -----------------------------------------------------------------------------
    def glimpse_size(self, image_size: int | None = None) -> int:
        """Side in pixels of every glimpse: floor(H / scale)."""
        return int(math.floor((image_size or self.image_size) / self.scale + 1e-9))

    @property
    def is_baseline(self) -> bool:
        return self.n_glimpses == 1 and self.scale == 1.0

    def config(self) -> dict:
        return {
            "backbone": self.backbone_name,
            "num_classes": self.num_classes,
            "n_glimpses": self.n_glimpses,
            "scale": self.scale,
            "scale_min": self.scale_min,
            "scale_max": self.scale_max,
            "s_grad": self.s_grad,
            "alpha": self.alpha,
            "image_size": self.image_size,
            "mean": [float(v) for v in self.mean.flatten()],
            "std": [float(v) for v in self.std.flatten()],
        }

    def propose(self, z: torch.Tensor, s_grad: float) -> torch.Tensor:
        """Next glimpse (s, tx, ty) from the fused state z (tight-crop translation)."""
        return self.place(scale_grad(torch.sigmoid(self.loc_network(z)), s_grad))

    def place(self, u: torch.Tensor) -> torch.Tensor:
        """(s, tx, ty) [B, 3] from the location network's sigmoid output u [B, 3] in [0, 1]."""
        s = u[:, 0] * (self.scale_max - self.scale_min) + self.scale_min
        tx = 2 * (u[:, 1] - 0.5) * (1 - s)
        ty = 2 * (u[:, 2] - 0.5) * (1 - s)
        return torch.stack([s, tx, ty], dim=1)

    @staticmethod
    def sample(x: torch.Tensor, params: torch.Tensor, size: int) -> torch.Tensor:
        """Bilinear glimpse of side ``size`` at params (s, tx, ty), align_corners=True, zero padding."""
        s, tx, ty = params.unbind(1)
        zero = torch.zeros_like(s)
        theta = torch.stack([torch.stack([s, zero, tx], 1), torch.stack([zero, s, ty], 1)], 1)
        grid = F.affine_grid(theta, [x.shape[0], x.shape[1], size, size], align_corners=True)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    # -- forward --------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        n_glimpses: int | None = None,
        s_grad: float | None = None,
        return_crops: bool = False,
        glimpse_params: torch.Tensor | None = None,
        return_states: bool = False,
    ) -> MGNetOutput:
        """Run up to ``n_glimpses`` glimpses on pixels ``x`` in [0, 1], shape [B, 3, H, W], H == W.

        ``s_grad`` overrides the gradient re-scaling for this call only (1.0 gives true gradients);
        the model itself is never modified, so concurrent callers can choose differently.
        ``glimpse_params`` ([steps - 1, B, 3], (scale, tx, ty)) replaces the proposed glimpses 2..T,
        for ablations such as "what if it had looked elsewhere"; the model then sees and is told
        those locations, exactly as if it had proposed them.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a [B, 3, H, W] batch, got shape {tuple(x.shape)}")
        if x.shape[2] != x.shape[3]:
            raise ValueError(f"MGNet needs square inputs, got {x.shape[2]}x{x.shape[3]}")
        steps = self.n_glimpses if n_glimpses is None else int(n_glimpses)
        if steps < 1:
            raise ValueError("n_glimpses must be at least 1")
        s_grad = self.s_grad if s_grad is None else float(s_grad)
        if glimpse_params is not None and tuple(glimpse_params.shape) != (steps - 1, x.shape[0], 3):
            raise ValueError(
                f"glimpse_params must have shape {(steps - 1, x.shape[0], 3)}, got {tuple(glimpse_params.shape)}"
            )
        xn = (x - self.mean) / self.std
        size = self.glimpse_size(x.shape[-1])
        batch = x.shape[0]
        params = x.new_tensor([1.0, 0.0, 0.0]).expand(batch, 3)
        tokens, logits, used, feats, crops, states = [], [], [], [], [], []
        for t in range(steps):
            if t == 0 and size == x.shape[-1]:
                glimpse = xn  # identity sampling; grid_sample would reproduce it to float precision
            else:
                glimpse = self.sample(xn, params, size)
            if return_crops:
                crops.append(glimpse * self.std + self.mean)
            f = self.backbone(glimpse)
            feats.append(f)
            used.append(params)
            tokens.append(torch.cat([f, params.detach()], dim=1))
            z = self.feat_fusion(torch.stack(tokens))
            states.append(z)
            logits.append(self.global_fc(z))
            if t + 1 < steps:
                params = self.propose(z, s_grad) if glimpse_params is None else glimpse_params[t].to(x)
        glimpse_logits = None
        if self.glimpse_fc is not None and steps >= 2 and self.training:
            glimpse_logits = torch.stack([self.glimpse_fc(f) for f in feats[1:]])
        return MGNetOutput(
            torch.stack(logits),
            torch.stack(used),
            glimpse_logits,
            torch.stack(crops) if return_crops else None,
            torch.stack(tokens) if return_states else None,
            torch.stack(states) if return_states else None,
        )

    def loss(self, out: MGNetOutput, target: torch.Tensor, criterion=F.cross_entropy) -> torch.Tensor:
        """(1 - alpha) * mean_t CE(global) + alpha * mean_{t>=2} CE(glimpse_fc); plain mean CE otherwise.
        ``criterion`` replaces CE (training passes one with label smoothing); logits are scored in fp32."""
        ce = torch.stack([criterion(lg.float(), target) for lg in out.logits]).mean()
        if out.glimpse_logits is None or self.alpha <= 0:
            return ce
        aux = torch.stack([criterion(lg.float(), target) for lg in out.glimpse_logits]).mean()
        return (1 - self.alpha) * ce + self.alpha * aux


def glimpse_options(model, n_glimpses: int | None = None, s_grad: float | None = None) -> dict:
    """The keyword arguments a forward pass of ``model`` takes for ``n_glimpses`` and ``s_grad``.

    The one place of the baseline rule: a baseline (one full-resolution glimpse) and any plain classifier
    take neither, so both are dropped for them; for MGNet a None keeps the model's own value.
    """
    if not isinstance(model, MGNet) or model.is_baseline:
        return {}
    return {k: v for k, v in (("n_glimpses", n_glimpses), ("s_grad", s_grad)) if v is not None}


def build_model(
    kind: str = "mgnet",
    backbone: str = "resnet18",
    num_classes: int = 10,
    image_size: int = 128,
    n_glimpses: int = 4,
    scale: float = 2.33,
    **kwargs,
) -> MGNet:
    """MGNet (``kind='mgnet'``) or its baseline (``kind='baseline'``: one glimpse at scale 1)."""
    if kind == "baseline":
        return MGNet(backbone, num_classes, n_glimpses=1, scale=1.0, image_size=image_size, **kwargs)
    if kind != "mgnet":
        raise ValueError(f"kind must be 'mgnet' or 'baseline', not {kind!r}")
    return MGNet(backbone, num_classes, n_glimpses=n_glimpses, scale=scale, image_size=image_size, **kwargs)


def fold_batchnorm(backbone: nn.Module) -> int:
    """Fold every eval-mode BatchNorm of a torchvision ResNet into the convolution before it, in place.

    Each (conv, bn) pair (``conv1``/``bn1``... of the stem and of every block, and ``downsample[0]``/
    ``downsample[1]``) becomes one convolution with a bias; the BatchNorm becomes an ``nn.Identity``.
    Outputs in eval mode are unchanged up to float rounding. Returns the number of pairs folded.
    """
    folded = 0
    for module in list(backbone.modules()):
        for conv_name, bn_name in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
                folded += 1
        down = getattr(module, "downsample", None)
        if (
            isinstance(down, nn.Sequential)
            and len(down) == 2
            and isinstance(down[0], nn.Conv2d)
            and isinstance(down[1], nn.BatchNorm2d)
        ):
            module.downsample = nn.Sequential(fuse_conv_bn_eval(down[0], down[1]), nn.Identity())
            folded += 1
    return folded


class PackedConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that also keeps its weight pre-packed for oneDNN and runs it there on the CPU.

    At batch 1 PyTorch sends convolutions on small feature maps (every one of a 48 px glimpse) to its
    slower native kernel and re-lays out the weight on each call; calling oneDNN with a packed weight
    cuts a glimpse's backbone time by about 40% (``benchmarks/results/latency.md``). Same arithmetic up
    to float32 rounding. Gradients with respect to the input (attacks, saliency) also run on oneDNN: the
    backward pass is a transposed convolution with the same weight, packed on first use. Anything else
    (weight gradients, another dtype or device) takes the plain path.
    """

    grad_on_onednn = True  # False where the self-check found oneDNN's input gradient differs

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, input_shape: tuple) -> "PackedConv2d":
        packed = cls.__new__(cls)
        packed.__dict__.update(conv.__dict__)  # same parameters and settings, no copy
        packed._pack_shape = tuple(input_shape)
        packed._pack()
        return packed

    def _pack(self):
        weight = self.weight.detach().contiguous().to_mkldnn()
        self._packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
            weight, list(self.padding), list(self.stride), list(self.dilation), self.groups, list(self._pack_shape)
        )
        self._packed_bias = None if self.bias is None else self.bias.detach().contiguous()
        self._geometry = (list(self.padding), list(self.stride), list(self.dilation), self.groups)

    # oneDNN's packed tensors have no storage to copy or pickle: copies pack their own weight again
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_packed", "_packed_bias", "_packed_t")}

    def __setstate__(self, state):
        super().__setstate__(state)
        self._pack()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        usable = x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.dtype == torch.float32
        if not usable or (torch.is_grad_enabled() and self.weight.requires_grad):
            return super().forward(x)
        if torch.is_grad_enabled() and x.requires_grad:
            if not self.grad_on_onednn:
                return super().forward(x)
            return _PackedConvInputGrad.apply(x, self)
        return self._run(x)

    def _run(self, x: torch.Tensor, then: str = "none") -> torch.Tensor:
        """The convolution on oneDNN, followed in the same call by ``then`` ("none" or "relu")."""
        return torch.ops.mkldnn._convolution_pointwise(
            x, self._packed, self._packed_bias, *self._geometry, then, [], ""
        )

    def run_add_relu(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """relu(conv(x) + other) in one oneDNN call: the end of a residual block. No gradients."""
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other, self._packed, self._packed_bias, *self._geometry, "add", None, "relu", [], ""
        )

    def input_gradient(self, grad: torch.Tensor, input_shape: torch.Size) -> torch.Tensor:
        """d(output . grad) / d(input): a transposed convolution of ``grad`` with the packed weight."""
        # output_padding recovers input sizes that the stride rounded away
        extra = [
            size - ((out - 1) * stride - 2 * pad + dil * (k - 1) + 1)
            for size, out, stride, pad, dil, k in zip(
                input_shape[2:], grad.shape[2:], self.stride, self.padding, self.dilation, self.kernel_size
            )
        ]
        args = (list(self.padding), extra, list(self.stride), list(self.dilation), self.groups)
        packed = getattr(self, "_packed_t", None)
        if packed is None or packed[0] != args:
            weight = self.weight.detach().contiguous()
            packed = (args, torch.ops.mkldnn._reorder_convolution_transpose_weight(weight, *args, list(grad.shape)))
            self._packed_t = packed
        return torch.ops.mkldnn._convolution_transpose_pointwise(grad, packed[1], None, *args, "none", [], "")


class _PackedConvInputGrad(torch.autograd.Function):
    """A ``PackedConv2d`` with a frozen weight, differentiable with respect to its input only."""

    @staticmethod
    def forward(ctx, x, conv):
        ctx.conv, ctx.input_shape = conv, x.shape
        return conv._run(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        return ctx.conv.input_gradient(grad, ctx.input_shape), None


def pack_convolutions(backbone: nn.Module, input_shape: tuple) -> int:
    """Replace every ``nn.Conv2d`` of a CPU float32 backbone by a ``PackedConv2d``, in place, if oneDNN is
    available and gives the same output on a random input of ``input_shape``; else change nothing.
    Returns the number of convolutions packed."""
    convs = [(parent, name, child) for parent in backbone.modules() for name, child in parent.named_children()]
    convs = [(parent, name, c) for parent, name, c in convs if type(c) is nn.Conv2d and c.padding_mode == "zeros"]
    first = next(backbone.parameters(), None)
    if not convs or first is None or first.device.type != "cpu" or first.dtype != torch.float32:
        return 0
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")):
        return 0
    shapes: dict = {}

    def record(module, args):  # returns None: the input passes unchanged
        shapes.setdefault(module, tuple(args[0].shape))

    hooks = [c.register_forward_pre_hook(record) for _, _, c in convs]
    x = torch.rand(input_shape, generator=torch.Generator().manual_seed(0)).to(memory_format=torch.channels_last)
    try:
        with torch.inference_mode():
            expected = backbone(x)
    finally:
        for h in hooks:
            h.remove()
    expected_grad = _input_gradient(backbone, x)
    swapped = []
    try:
        for parent, name, conv in convs:
            if conv in shapes:
                setattr(parent, name, PackedConv2d.from_conv(conv, shapes[conv]))
                swapped.append((parent, name, conv))
        with torch.inference_mode():
            same = torch.allclose(backbone(x), expected, rtol=1e-4, atol=1e-5)
    except (RuntimeError, AttributeError):  # an older or newer torch without these oneDNN entry points
        same = False
    if not same:
        for parent, name, conv in swapped:
            setattr(parent, name, conv)
        return 0
    try:
        grad = _input_gradient(backbone, x)
        grads_same = torch.allclose(grad, expected_grad, rtol=1e-4, atol=1e-4 * float(expected_grad.abs().max()))
    except (RuntimeError, AttributeError):
        grads_same = False
    if not grads_same:  # keep the packed forward; input gradients take the plain path
        for parent, name, _ in swapped:
            getattr(parent, name).grad_on_onednn = False
    return len(swapped)


class FusedResNet(ResNet):
    """The torchvision ResNet-18/34 backbone of the inference copy, run without gradients as a flat list of
    oneDNN calls: the stem convolution with its ReLU, then per residual block conv1 with its ReLU, the
    downsampling convolution if any, and conv2 with the residual sum and the final ReLU in one call. The
    same operations in the same order as ``ResNet.forward`` on the folded, packed model, without the module
    calls between them: at batch 1 that saves about a tenth of a 48 px glimpse (``benchmarks/latency.py``).
    With gradients (attacks, saliency), with hooks on any of its modules (Grad-CAM, feature probes), or for
    another dtype or device it runs ``ResNet.forward``. Made by ``fuse_backbone``, which checks it first."""

    plan: tuple = ()  # (conv1, conv2, downsampling conv or None) per residual block
    hooks: tuple = ()  # the forward (pre-)hook dicts of its modules: any hook there must fire

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = (
            torch.is_grad_enabled()
            or x.device.type != "cpu"
            or x.dtype != torch.float32
            or _nn_module._global_forward_hooks
            or _nn_module._global_forward_pre_hooks
            or any(self.hooks)
        )
        if plain:
            return super().forward(x)
        x = self.maxpool(self.conv1._run(x, "relu"))
        for conv1, conv2, down in self.plan:
            x = conv2.run_add_relu(conv1._run(x, "relu"), x if down is None else down._run(x))
        return x.mean((2, 3))


def fuse_backbone(backbone: nn.Module, input_shape: tuple) -> bool:
    """Turn a packed, BatchNorm-folded ResNet-18/34 backbone (``fc`` removed) into a ``FusedResNet``, in
    place, if it then gives the same output on a random input of ``input_shape``; else change nothing."""

    def packed(m) -> bool:
        return isinstance(m, PackedConv2d)

    def fusable(block) -> bool:
        down = block.downsample
        return (
            type(block) is BasicBlock
            and packed(block.conv1)
            and packed(block.conv2)
            and isinstance(block.bn1, nn.Identity)
            and isinstance(block.bn2, nn.Identity)
            and (down is None or (len(down) == 2 and packed(down[0]) and isinstance(down[1], nn.Identity)))
        )

    if type(backbone) is not ResNet:
        return False
    blocks = [b for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4) for b in layer]
    pool = backbone.avgpool
    if not (
        packed(backbone.conv1)
        and isinstance(backbone.bn1, nn.Identity)
        and isinstance(pool, nn.AdaptiveAvgPool2d)
        and pool.output_size in (1, (1, 1))
        and isinstance(backbone.fc, nn.Identity)
        and all(fusable(b) for b in blocks)
    ):
        return False
    x = torch.rand(input_shape, generator=torch.Generator().manual_seed(0)).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = backbone(x)
        backbone.__class__ = FusedResNet
        backbone.plan = tuple((b.conv1, b.conv2, None if b.downsample is None else b.downsample[0]) for b in blocks)
        parts = tuple(backbone.modules())[1:]
        backbone.hooks = tuple(m._forward_hooks for m in parts) + tuple(m._forward_pre_hooks for m in parts)
        try:
            same = torch.allclose(backbone(x), expected, rtol=1e-4, atol=1e-5)
        except (RuntimeError, AttributeError):  # a torch without oneDNN's fused convolutions
            same = False
    if not same:
        backbone.__class__ = ResNet
        del backbone.plan, backbone.hooks
    return same


def fold_fusion(model: MGNet) -> bool:
    """Replace ``model.feat_fusion`` by its ``FoldedFusion``, in place, if it is the paper's fusion and the fold
    gives the same output on random tokens; else change nothing."""
    if not FoldedFusion.applies(model.feat_fusion):
        return False
    with torch.no_grad():
        folded = FoldedFusion(model.feat_fusion)
        tokens = torch.randn(3, 2, folded.score_weight.shape[0], generator=torch.Generator().manual_seed(0))
        tokens = tokens.to(folded.score_weight)
        same = torch.allclose(folded(tokens), model.feat_fusion(tokens), rtol=1e-4, atol=1e-5)
    if same:
        model.feat_fusion = folded
    return same


def _input_gradient(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """d(sum of the backbone's output times a fixed random tensor) / dx with the weights frozen (as in
    the inference copy), for the packing self-check."""
    frozen = [p for p in backbone.parameters() if p.requires_grad]
    try:
        with torch.inference_mode(False), torch.enable_grad():
            for p in frozen:
                p.requires_grad_(False)
            x = x.detach().clone().requires_grad_(True)
            out = backbone(x)
            weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
            (grad,) = torch.autograd.grad((out * weights).sum(), x)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return grad


def prepare_for_inference(model: MGNet) -> MGNet:
    """A fast copy of ``model`` for analyses, attacks and maps; ``model`` itself is left untouched.

    The copy has its BatchNorms folded into the convolutions, weights in channels_last memory format,
    on the CPU its convolutions packed for oneDNN (``PackedConv2d``) and its backbone run as fused
    oneDNN calls (``FusedResNet``), its fusion's projections folded (``FoldedFusion``), and no parameter that
    requires gradients. It runs the same ``MGNet.forward`` and gives the same outputs up to float32 rounding. It
    must not be trained (folded BatchNorms keep no running statistics). Gradients with respect to its
    input (attacks, Captum) are the model's up to float32 rounding; weight gradients belong on the model.
    """
    # built outside inference mode, so that its weights can take part in input gradients later
    with torch.inference_mode(False), torch.no_grad():
        fast = copy.deepcopy(model).eval()
        fold_batchnorm(fast.backbone)
        fast = fast.to(memory_format=torch.channels_last)
        for p in fast.parameters():
            p.requires_grad_(False)
        side = fast.image_size if fast.is_baseline else fast.glimpse_size()
        if pack_convolutions(fast.backbone, (1, 3, side, side)):
            fuse_backbone(fast.backbone, (1, 3, side, side))
        fold_fusion(fast)
    return fast
