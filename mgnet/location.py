"""Teaching MGNet's location network where to look, and data on which location matters.

The paper trains the location network only through the 0.02-damped gradient of bilinear sampling. On
this project's budgets that settles on one large centred box. The location stage adds a second signal,
in the spirit of Saccader's pre-training on the classifier's own outputs and GFNet's reward (the gain in
the true class): for every training image and glimpse step, score a grid of candidate glimpses with the
current model (on its own trajectory so far), and pull the location network's output towards the
candidates that lower the loss most, weighted by how much the location matters for that image.

Nothing here changes the model: the location network stays Linear(D + 3, 3) with a sigmoid and the
forward pass is the paper's. The label is used in training only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .utils import eval_mode

# Candidate grid in the location network's output space u = sigmoid(W z + b) in [0, 1]^3:
# u_s picks the scale within [scale_min, scale_max]; u_x, u_y place it (0 = left/top edge, 1 = right/bottom).
CANDIDATE_SCALES = (0.1, 0.5, 0.95)
REWARDS = ("log-prob", "prob")  # how candidate_losses scores a candidate


def centred(params: torch.Tensor) -> torch.Tensor:
    """Glimpse params [..., 3] = (scale, tx, ty) moved to the image centre at the same scales (a copy)."""
    moved = params.clone()
    moved[..., 1:] = 0.0
    return moved


def candidate_grid(positions: int = 3, scales=CANDIDATE_SCALES) -> torch.Tensor:
    """Candidate u values [K, 3]: every scale at each point of a positions x positions grid."""
    if positions < 1:
        raise ValueError("positions must be at least 1")
    ticks = torch.linspace(0.1, 0.9, positions) if positions > 1 else torch.tensor([0.5])
    rows = [(s, float(ux), float(uy)) for s in scales for uy in ticks for ux in ticks]
    return torch.tensor(rows)


def mirrored_candidates(grid: torch.Tensor) -> torch.Tensor:
    """For each candidate u = (s, ux, uy), the index of (s, 1 - ux, uy): the same glimpse on the photo's
    mirror image (``MGNet.place`` maps ux to tx = 2 (ux - 0.5)(1 - s))."""
    want = grid.clone()
    want[:, 1] = 1 - want[:, 1]
    dist = (want[:, None] - grid[None]).abs().amax(-1)  # [K, K]
    if not bool((dist.min(1).values < 1e-6).all()):
        raise ValueError("the candidate grid is not symmetric left to right")
    return dist.argmin(1)


def off_centre(images: torch.Tensor, seed: int = 0, side=(0.4, 0.6), blur: int = 16):
    """Each photo shrunk to a random share of the side in ``side`` and pasted at a random position on a
    blurred other photo of the batch (``blur`` px, upsampled). Deterministic for a seed.

    images: uint8 [N, 3, S, S] (or float in [0, 1]; the output has the input's dtype).
    Returns (images, boxes) with boxes [N, 4] = (x0, y0, x1, y1) of each pasted photo in pixels.
    """
    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"expected square images [N, 3, S, S], got {tuple(images.shape)}")
    n, _, size, _ = images.shape
    gen = torch.Generator().manual_seed(int(seed))
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    # Background: another photo of the batch (the photo itself when it is alone).
    donor = (
        (torch.arange(n) + 1 + torch.randint(0, max(n - 1, 1), (n,), generator=gen)) % n
        if n > 1
        else torch.zeros(1, dtype=torch.long)
    )
    small = F.interpolate(x[donor], size=(blur, blur), mode="bilinear", antialias=True, align_corners=False)
    out = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    shares = torch.empty(n).uniform_(side[0], side[1], generator=gen)
    boxes = torch.zeros(n, 4)
    for i in range(n):
        side_px = max(2, int(round(float(shares[i]) * size)))
        x0 = int(torch.randint(0, size - side_px + 1, (1,), generator=gen))
        y0 = int(torch.randint(0, size - side_px + 1, (1,), generator=gen))
        patch = F.interpolate(
            x[i : i + 1], size=(side_px, side_px), mode="bilinear", antialias=True, align_corners=False
        )
        out[i, :, y0 : y0 + side_px, x0 : x0 + side_px] = patch[0]
        boxes[i] = torch.tensor([x0, y0, x0 + side_px, y0 + side_px], dtype=torch.float)
    out = out.clamp_(0, 1)
    if images.dtype == torch.uint8:
        out = out.mul_(255).round_().to(torch.uint8)
    return out, boxes


def mix_off_centre(images: torch.Tensor, share: float, gen: torch.Generator) -> torch.Tensor:
    """Training augmentation: replace a random ``share`` of the batch by off-centre composites."""
    if share <= 0:
        return images
    pick = torch.rand(len(images), generator=gen) < share
    if not bool(pick.any()):
        return images
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    out = images.clone()
    out[pick] = off_centre(images[pick], seed)[0]
    return out


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of glimpse boxes given as params (s, tx, ty) [..., 3] (box = [t - s, t + s] per axis in the
    authors' [-1, 1] coordinates, not clipped to the image); broadcasts over the leading dimensions."""
    sa, xa, ya = a.unbind(-1)
    sb, xb, yb = b.unbind(-1)
    w = (torch.minimum(xa + sa, xb + sb) - torch.maximum(xa - sa, xb - sb)).clamp_min(0)
    h = (torch.minimum(ya + sa, yb + sb) - torch.maximum(ya - sa, yb - sb)).clamp_min(0)
    inter = w * h
    return inter / (4 * sa**2 + 4 * sb**2 - inter).clamp_min(1e-12)


@torch.no_grad()
def candidate_losses(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    grid: torch.Tensor,
    overlap: float = 0.0,
    chunk: int = 512,
    mirror: bool = False,
    reward: str = "log-prob",
):
    """For each glimpse step t = 2..T, the loss after step t had glimpse t gone to each candidate, with
    glimpses 1..t-1 where the model itself put them. Eval mode, no gradients.

    ``overlap`` > 0 adds overlap times the candidate's largest IoU with the model's own glimpses 2..t-1 (the
    first glimpse, the whole photo, does not count), so later glimpses are pushed to look somewhere new.

    ``mirror`` averages each candidate's loss with the mirrored candidate's loss on the mirror image: a place
    that helps helps in both views, while the network's noise partly differs, so the targets carry less luck
    (``evaluate.candidate_selection``'s mirrored pick). Costs a second pass.

    ``reward="prob"`` scores a candidate by minus the true class's probability instead of its cross-entropy
    (minus its log-probability). That is GFNet's reward, the gain in the true class's probability, less the
    probability before the step, which is the same for every candidate. Photos the model gets right, or
    wrong, wherever it looks then weigh little, and those where the place decides weigh most.

    x: pixels [B, 3, S, S] in [0, 1]; y: labels [B]; grid: candidate u [K, 3].
    Returns cross-entropy or minus the probability (plus the overlap cost) [T - 1, B, K].
    """
    if reward not in REWARDS:
        raise ValueError(f"unknown reward {reward!r}: use one of {', '.join(REWARDS)}")
    with eval_mode(model):
        own = model(x, return_states=True)
        steps, batch = own.logits.shape[0], x.shape[0]
        k = grid.shape[0]
        params = model.place(grid.to(x))  # [K, 3]
        xn = (x - model.mean) / model.std
        size = model.glimpse_size(x.shape[-1])
        cands = torch.arange(k).repeat_interleave(batch)  # candidate-major: row c * B + b
        imgs = torch.arange(batch).repeat(k)
        feats = []
        for i in range(0, k * batch, chunk):
            cand, img = cands[i : i + chunk], imgs[i : i + chunk]
            crops = model.sample(xn[img], params[cand], size)
            feats.append(model.backbone(crops.contiguous(memory_format=torch.channels_last)))
        feats = torch.cat(feats).view(k, batch, -1)
        cand_tokens = torch.cat([feats, params[:, None, :].expand(k, batch, 3)], dim=2)  # [K, B, D]
        losses = []
        for t in range(1, steps):
            prefix = own.tokens[:t]  # [t, B, D]
            seq = torch.cat([prefix[:, None].expand(t, k, batch, prefix.shape[-1]), cand_tokens[None]], dim=0)
            z = model.feat_fusion(seq.reshape(t + 1, k * batch, -1))
            logits = model.global_fc(z).view(k, batch, -1)
            ce = F.cross_entropy(logits.reshape(k * batch, -1), y.repeat(k), reduction="none").view(k, batch).T
            if reward == "prob":
                ce = -torch.exp(-ce)
            if overlap > 0 and t >= 2:
                seen = own.glimpses[1:t]  # [t - 1, B, 3]
                ce = ce + overlap * box_iou(seen[:, :, None, :], params[None, None]).amax(0)
            losses.append(ce)
    losses = torch.stack(losses)
    if mirror:
        from_mirror = candidate_losses(model, x.flip(-1), y, grid, overlap, chunk, reward=reward)
        losses = (losses + from_mirror[..., mirrored_candidates(grid)]) / 2
    return losses


def location_loss(
    model,
    states: torch.Tensor,
    losses: torch.Tensor,
    grid: torch.Tensor,
    width: float = 0.02,
    temperature: float = 0.1,
    objective: str = "match",
) -> torch.Tensor:
    """Pull the location network's output towards the candidates that help most.

    states: fused states z after glimpses 1..T-1 [T - 1, B, D] (with gradients); losses: [T - 1, B, K]
    from ``candidate_losses``. The network's u is scored against the candidates by a Gaussian kernel of
    ``width`` (squared distance in u space), a soft classification among candidates; the target is
    softmax(-loss / temperature). Each (image, step) is weighted by how much its best candidate beats the
    candidates' mean loss, normalised to mean 1, so images where the location matters dominate.

    ``objective="cost"`` instead minimises the expected candidate loss under the kernel scores (each
    image's losses centred on their mean). Matching a target spread over several good candidates is won
    by a point between them; the expected cost is lowered by moving towards the nearest good one.
    """
    grid = grid.to(states)
    u = torch.sigmoid(model.loc_network(states))  # [T-1, B, 3]
    d2 = ((u[..., None, :] - grid) ** 2).sum(-1)  # [T-1, B, K]
    log_p = F.log_softmax(-d2 / width, dim=-1)
    if objective == "cost":
        centred = losses - losses.mean(-1, keepdim=True)
        return (log_p.exp() * centred).sum(-1).mean()
    if objective != "match":
        raise ValueError(f"unknown location objective {objective!r}: use 'match' or 'cost'")
    target = F.softmax(-losses / temperature, dim=-1)
    ce = -(target * log_p).sum(-1)
    gain = (losses.mean(-1) - losses.min(-1).values).clamp_min(0)
    weight = gain / gain.mean().clamp_min(1e-8)
    return (weight * ce).mean()
