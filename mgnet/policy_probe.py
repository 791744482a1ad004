"""Is the information to pick a better glimpse 2 in what the location network reads? (issue 11, goal 1)

    python -m mgnet.policy_probe --checkpoint checkpoints/mgnet-resnet18-imagenette.pt \
        --data ../shared/data/imagenette2-224/val [--limit N] [--off-centre] [--json out.json] \
        [--scores val-scores.pt] [--fit-on ../shared/data/imagenette2-224/train --fit-scores train-scores.pt]

For every photo: the state the location network reads after glimpse 1 (``z1``), richer views of the same
first look (the backbone's spatial maps before pooling), and a view the model never has (the backbone on the
whole 128 px photo). Then glimpse 2 is scored at each of the location stage's 27 candidates, on the photo and
on its mirror image. Read-outs (linear, and a small MLP) are fitted to pick a candidate from each view, with
targets from the label averaged over photo and mirror (so less of the pick is luck), by 2-fold cross-fitting
over the photos (every photo is scored by a read-out fitted on the other half), or with ``--fit-on`` on
another folder's photos (such as the training folder, which the model has fitted). Accuracy after glimpse 2 at
the picked candidate is compared with MGNet's own glimpse, the centred glimpse and the best fixed candidate.

This is a diagnostic, not a model: the read-outs are outside MGNet's architecture (except the linear one on
``z1``, which reads what the paper's location layer reads), and fitting them uses labels of these photos. It
says whether a policy *could* find the headroom from each view, not that MGNet does.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

from .checkpoints import atomic_save, file_sha256, load_checkpoint
from .evaluate import label_map, load_eval_images, paired_difference, write_json_atomic
from .location import REWARDS, candidate_grid, centred, mirrored_candidates
from .location import off_centre as make_off_centre
from .utils import eval_mode

VIEWS = ("z1", "layer3", "layer4", "whole_photo")


@torch.no_grad()
def glimpse_two_scores(model, images_u8, labels, batch_size: int = 50, progress: bool = True) -> dict:
    """Per photo: the read-out views and the true class's log-probability after glimpse 2 at each candidate.

    Returns tensors: views (dict name -> [N, D]), logp [K, N] (photo), logp_mirror [K, N] (mirror image at
    the mirrored candidate, aligned with the photo's candidate index), hit [K, N], own [N], centred [N]
    (bool: right after glimpse 2), and the candidates' u [K, 3].
    """
    from tqdm import tqdm

    grid = candidate_grid(3)
    mirror = mirrored_candidates(grid)
    size = model.glimpse_size(images_u8.shape[-1])
    maps = {}
    hooks = [
        model.backbone.layer3.register_forward_hook(lambda m, a, out: maps.__setitem__("layer3", out)),
        model.backbone.layer4.register_forward_hook(lambda m, a, out: maps.__setitem__("layer4", out)),
    ]
    out = {k: [] for k in ("logp", "logp_mirror", "hit", "own", "centred", *VIEWS)}

    def first_look(xn):  # glimpse 1 (the whole image) as MGNet.forward takes it: its token and layer maps
        whole = xn.new_tensor([1.0, 0.0, 0.0]).expand(len(xn), 3)
        token = torch.cat([model.backbone(model.sample(xn, whole, size)), whole], 1)
        return token, dict(maps)

    def at_candidates(xn, token, y):  # [K, B] true-class log-probability and hit after glimpse 2
        logp, hit = [], []
        for u in grid:
            params = model.place(u.to(xn).expand(len(xn), 3))
            f = model.backbone(model.sample(xn, params, size))
            z = model.feat_fusion(torch.stack([token, torch.cat([f, params], 1)]))
            lp = model.global_fc(z).log_softmax(-1)
            logp.append(lp.gather(1, y[:, None])[:, 0])
            hit.append(lp.argmax(-1) == y)
        return torch.stack(logp), torch.stack(hit)

    try:
        with eval_mode(model):
            for i in tqdm(range(0, len(images_u8), batch_size), desc="scoring", disable=not progress, unit="batch"):
                x = images_u8[i : i + batch_size].float().div(255.0)
                y = labels[i : i + batch_size]
                xn = (x - model.mean) / model.std
                token, first = first_look(xn)
                z1 = model.feat_fusion(token[None])
                out["z1"].append(z1)
                out["layer3"].append(first["layer3"].flatten(1))
                out["layer4"].append(first["layer4"].flatten(1))
                model.backbone(xn)  # the whole photo at full input size: a view MGNet never has
                out["whole_photo"].append(maps["layer4"].flatten(1))
                own = model(x, n_glimpses=2)
                out["own"].append(own.logits[1].argmax(-1) == y)
                moved = centred(own.glimpses[1:2])
                out["centred"].append(model(x, n_glimpses=2, glimpse_params=moved).logits[1].argmax(-1) == y)
                logp, hit = at_candidates(xn, token, y)
                out["logp"].append(logp)
                out["hit"].append(hit)
                xm = xn.flip(-1)
                token_m, _ = first_look(xm)
                out["logp_mirror"].append(at_candidates(xm, token_m, y)[0][mirror])
    finally:
        for h in hooks:
            h.remove()
    result = {k: torch.cat(v, 1 if k in ("logp", "logp_mirror", "hit") else 0) for k, v in out.items()}
    result["views"] = {k: result.pop(k).float() for k in VIEWS}
    result["grid"] = grid
    return result


def _readout(dim: int, k: int, hidden: int) -> nn.Module:
    if hidden <= 0:
        return nn.Linear(dim, k)
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, k))


def fit_readout(
    x: torch.Tensor,
    target: torch.Tensor,
    hidden: int = 0,
    temperature: float = 0.5,
    weight_decay: float = 1e-3,
    epochs: int = 300,
    seed: int = 0,
    held_out: float = 0.2,
    lr: float = 1e-2,
) -> nn.Module:
    """A read-out from features x [N, D] to K candidate scores, fitted to the soft target softmax(target / T)
    (target [N, K]: a score per candidate, such as the true class's log-probability) with full-batch Adam.
    Features are standardised inside. A ``held_out`` share of the photos picks the step to stop at (by the
    target at the read-out's pick), so nothing outside x chooses it."""
    gen = torch.Generator().manual_seed(seed)
    inner = torch.rand(len(x), generator=gen) < held_out
    fit_x, fit_t, stop_x, stop_t = x[~inner], target[~inner], x[inner], target[inner]
    mean, std = fit_x.mean(0), fit_x.std(0).clamp_min(1e-6)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = nn.Sequential(_Standardise(mean, std), _readout(x.shape[1], target.shape[1], hidden))
    soft = (fit_t / temperature).softmax(-1)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state = -float("inf"), copy.deepcopy(net.state_dict())
    with torch.random.fork_rng():  # dropout draws from its own seeded stream
        torch.manual_seed(seed)
        for step in range(1, epochs + 1):
            net.train()
            opt.zero_grad()
            loss = -(soft * net(fit_x).log_softmax(-1)).sum(-1).mean()
            loss.backward()
            opt.step()
            if step % 10 == 0 and len(stop_x):
                net.eval()
                with torch.no_grad():
                    score = float(stop_t.gather(1, net(stop_x).argmax(-1, keepdim=True)).mean())
                if score > best:
                    best, best_state = score, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    return net.eval()


class _Standardise(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        return (x - self.mean) / self.std


def probe(
    scores: dict,
    hiddens=(0, 256),
    folds: int = 2,
    seed: int = 0,
    fit_on: dict | None = None,
    keep_picks: bool = False,
    target: str = "log-prob",
    **options,
) -> dict:
    """Accuracy after glimpse 2 for every view and read-out, against own, centred and the best fixed glimpse.

    Without ``fit_on``, read-outs and the best fixed candidate are cross-fitted over the photos of ``scores``
    (each photo scored by what was fitted on the other folds). With ``fit_on`` (scores of other photos, such
    as the training folder), both are fitted there once and every photo of ``scores`` is held out.
    ``keep_picks`` adds each read-out's picked candidate per photo to its row. ``target`` is what the
    read-outs are fitted to, per candidate, averaged over the photo and its mirror: the true class's
    log-probability, or its probability ("prob", GFNet's reward: photos right or wrong wherever the glimpse
    goes weigh little)."""
    if target not in REWARDS:
        raise ValueError(f"unknown target {target!r}: use one of {', '.join(REWARDS)}")
    hit = scores["hit"].float()  # [K, N]
    n = hit.shape[1]
    photos = torch.arange(n)

    def targets(s):  # [N, K]: the true class's log-probability or probability, averaged over photo and mirror
        if target == "prob":
            return ((s["logp"].exp() + s["logp_mirror"].exp()) / 2).T
        return ((s["logp"] + s["logp_mirror"]) / 2).T

    own, at_centre = scores["own"], scores["centred"]
    if fit_on is None:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        parts = [(part, _others(n, part), scores) for part in order.chunk(folds)]
    else:
        parts = [(photos, torch.ones(fit_on["hit"].shape[1], dtype=torch.bool), fit_on)]
    fixed = torch.empty(n, dtype=torch.bool)
    for part, rest, source in parts:
        fixed[part] = hit[source["hit"][:, rest].float().mean(1).argmax(), part].bool()
    mirrored_label = hit[scores["logp_mirror"].argmax(0), photos].bool()
    rows = []
    for view, x in scores["views"].items():
        for hidden in hiddens:
            picks = torch.empty(n, dtype=torch.long)
            for part, rest, source in parts:
                net = fit_readout(
                    source["views"][view][rest], targets(source)[rest], hidden=hidden, seed=seed, **options
                )
                with torch.no_grad():
                    picks[part] = net(x[part]).argmax(-1)
            picked = hit[picks, photos].bool()
            rows.append(
                {
                    "view": view,
                    "readout": "linear" if hidden <= 0 else f"MLP ({hidden} hidden)",
                    "dim": int(x.shape[1]),
                    "accuracy": round(float(picked.float().mean()), 4),
                    "vs_centred": paired_difference(picked, at_centre),
                    "vs_best_fixed": paired_difference(picked, fixed),
                    "distinct_picks": int(picks.unique().numel()),
                    **({"picks": picks.tolist()} if keep_picks else {}),
                }
            )
    return {
        "images": n,
        "fitted_on": "cross-fitted, %d folds" % folds if fit_on is None else "%d other photos" % fit_on["hit"].shape[1],
        "own": round(float(own.float().mean()), 4),
        "centred": round(float(at_centre.float().mean()), 4),
        "best_fixed_held_out": round(float(fixed.float().mean()), 4),
        "label_pick_mirrored": round(float(mirrored_label.float().mean()), 4),
        "own_vs_centred": paired_difference(own, at_centre),
        "readouts": rows,
        "options": {"folds": folds, "seed": seed, "target": target, **options},
    }


def _others(n: int, part: torch.Tensor) -> torch.Tensor:
    rest = torch.ones(n, dtype=torch.bool)
    rest[part] = False
    return rest


def format_probe(result: dict) -> str:
    lines = [
        f"{result['images']} photos (read-outs {result['fitted_on']}), accuracy after glimpse 2: own {result['own']:.1%}, centred "
        f"{result['centred']:.1%}, best fixed candidate (held out) {result['best_fixed_held_out']:.1%}, "
        f"label's pick on the mirror image {result['label_pick_mirrored']:.1%}",
        "",
        "| view | read-out | dim | accuracy | vs centred (95% CI) | vs best fixed (95% CI) | distinct picks |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["readouts"]:
        c, f = r["vs_centred"], r["vs_best_fixed"]
        lines.append(
            f"| {r['view']} | {r['readout']} | {r['dim']} | {r['accuracy']:.1%} | {c[0]:+.1%} ({c[1]:+.1%} to "
            f"{c[2]:+.1%}) | {f[0]:+.1%} ({f[1]:+.1%} to {f[2]:+.1%}) | {r['distinct_picks']} |"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", default="checkpoints/mgnet-resnet18-imagenette.pt")
    p.add_argument("--data", required=True, help="ImageFolder directory (e.g. Imagenette val)")
    p.add_argument("--limit", type=int, default=0, help="photos spread over the folder (0: all)")
    p.add_argument("--folds", type=int, default=2)
    p.add_argument(
        "--target",
        choices=list(REWARDS),
        default="log-prob",
        help="fit the read-outs to the true class's log-probability or probability at each candidate",
    )
    p.add_argument("--temperature", type=float, default=0.5, help="of the soft target over candidates")
    p.add_argument("--weight-decay", type=float, default=1e-3)
    p.add_argument("--epochs", type=int, default=300, help="full-batch steps per read-out (the best is kept)")
    p.add_argument("--off-centre", action="store_true", help="the photos shrunk onto other photos (seed 0)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", help="write the result here")
    p.add_argument("--scores", help="cache the scored candidates here (a .pt of tensors) and reuse them")
    p.add_argument("--fit-on", help="fit the read-outs on this folder's photos (e.g. the training folder) instead")
    p.add_argument("--fit-scores", help="cache for --fit-on's scores, as --scores")
    return p.parse_args(argv)


def scored(path, data, args, model_box: list) -> dict:
    """The scores of ``data`` (cached at ``path`` when given), loading the model only when needed. A cache made
    with another checkpoint, folder, limit or off-centre setting is refused, not reused."""
    if not Path(args.checkpoint).is_file():
        raise ValueError(f"no checkpoint at {args.checkpoint}")
    limit = args.limit if data == args.data else 0
    made_with = {
        "checkpoint_sha256": file_sha256(args.checkpoint),
        "data": str(Path(data).resolve()),
        "limit": int(limit),
        "off_centre": bool(args.off_centre),
    }
    if path and Path(path).exists():
        cached = torch.load(path, weights_only=True)
        if cached.get("made_with") != made_with:
            raise ValueError(
                f"{path} holds scores made with {cached.get('made_with')}, not {made_with}; "
                "delete it or pass another --scores/--fit-scores path"
            )
        return cached
    if not model_box:
        model_box.append(load_checkpoint(args.checkpoint, device="cpu"))
    model = model_box[0]
    if model.is_baseline:
        raise ValueError("the probe needs an MGNet checkpoint (a baseline takes no glimpse 2)")
    classes, images, labels = load_eval_images(data, model.image_size, limit)
    labels = label_map(model, classes)[labels]
    if args.off_centre:
        images = make_off_centre(images, seed=0)[0]
    result = glimpse_two_scores(model, images, labels)
    result["made_with"] = made_with
    if path:
        atomic_save(result, path)
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    model_box: list = []
    try:
        scores = scored(args.scores, args.data, args, model_box)
        fit_on = scored(args.fit_scores, args.fit_on, args, model_box) if args.fit_on else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = probe(
        scores,
        folds=args.folds,
        fit_on=fit_on,
        target=args.target,
        temperature=args.temperature,
        weight_decay=args.weight_decay,
        epochs=args.epochs,
    )
    result["checkpoint"] = args.checkpoint
    result["seconds"] = round(time.time() - start, 1)
    print(format_probe(result))
    if args.json:
        write_json_atomic(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
