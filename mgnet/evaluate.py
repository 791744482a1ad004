"""Evaluate a checkpoint on an ImageFolder directory: clean, corrupted or attacked.

    python -m mgnet.evaluate --checkpoint checkpoints/mgnet-resnet18-imagenette.pt \
        --data ../shared/data/imagenette2-224/val [--limit N] [--attack pgd --eps 2 --steps 10] \
        [--attack worst --transfer-from checkpoints/baseline-resnet18-imagenette.pt] \
        [--corruption fog --severity 3] [--json results.json]

Prints accuracy after every glimpse with its cumulative compute, and writes the same as JSON. With
--attack worst, also the accuracy under each member of the ensemble (or any member before it).
--limit N takes N images spread evenly over the sorted file list (so every class is present).
Corruptions are applied at the data's stored resolution (224 px for ImageNet-C-style inputs) and
the result is then resized to the model's input size, as a user's photo would be.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .attacks import METHODS as ATTACK_METHODS
from .attacks import method_options
from .checkpoints import CheckpointError, load_checkpoint
from .data import cached_folder, list_image_folder, resize_rgb
from .flops import gflops
from .location import box_iou, centred
from .location import off_centre as make_off_centre
from .utils import atomic_write, eval_mode, pick_device


@torch.no_grad()
def accuracy_per_glimpse(model, images_u8, labels, batch_size=256, device=None, dtype=None, progress=True):
    """Top-1 accuracy after each glimpse on uint8 images [N, 3, S, S] already at the model's size."""
    correct = _predict_correct(model, images_u8, labels, batch_size, device, dtype, progress)
    return [round(float(c) / len(images_u8), 4) for c in correct.sum(1)]


@torch.no_grad()
def _predict_correct(model, images_u8, labels, batch_size=256, device=None, dtype=None, progress=False):
    """Bool [T, N]: whether the prediction after each glimpse is right (uint8 or [0, 1] float images)."""
    return _run(model, images_u8, labels, batch_size, device, dtype, progress)[0]


@torch.no_grad()
def _run(model, images_u8, labels, batch_size=256, device=None, dtype=None, progress=False, glimpse_params=None):
    """(correct [T, N] bool, glimpse params used [T, N, 3]); ``glimpse_params`` [T - 1, N, 3] overrides
    MGNet's own glimpses 2..T (see ``MGNet.forward``)."""
    from tqdm import tqdm

    device = device or next(model.parameters()).device
    hits, used = [], []
    with eval_mode(model):
        for i in tqdm(range(0, len(images_u8), batch_size), desc="evaluating", disable=not progress, unit="batch"):
            x = images_u8[i : i + batch_size].to(device)
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
            kw = {} if glimpse_params is None else {"glimpse_params": glimpse_params[:, i : i + batch_size]}
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                out = model(x, **kw)
            hits.append(out.logits.argmax(-1).cpu() == labels[i : i + batch_size])
            used.append(out.glimpses.float().cpu())
    return torch.cat(hits, dim=1), torch.cat(used, dim=1)


def location_ablation(model, images_u8, labels, batch_size=256, seed=0, progress=False) -> dict:
    """Does it matter where MGNet looks? Accuracy after each glimpse when glimpses 2..T go where the
    model chose ("learned"), to the image centre at the scales it chose ("centre"), or where it chose
    for another image of the set, paired at random, no image with itself ("shuffled").

    Returns {"correct": {mode: bool [T, N]}, "params": learned (scale, tx, ty) [T, N, 3]}.
    """
    correct, params = _run(model, images_u8, labels, batch_size, progress=progress)
    result = {"learned": correct}
    if params.shape[0] > 1:
        donor = random_donors(params.shape[1], seed)
        for mode, override in (("centre", centred(params[1:])), ("shuffled", params[1:, donor])):
            result[mode] = _run(model, images_u8, labels, batch_size, progress=progress, glimpse_params=override)[0]
    return {"correct": result, "params": params}


@torch.no_grad()
def candidate_selection(model, images_u8, labels, positions: int = 3, batch_size: int = 100) -> dict:
    """Do the model's own outputs single out helpful glimpses? Accuracy after glimpse 2 with glimpse 2 at each of
    the location stage's candidates (``location.candidate_grid``), against MGNet's own glimpse and the same
    glimpse moved to the centre; and two per-image selections among the candidates: with the label (no policy
    can use it, and picking the best of K noisy predictions by their label gains even when location does not
    matter) and without it (the candidate whose prediction is most confident, a heuristic rather than a bound).
    Where the label-free selection gains nothing over the best fixed glimpse, the model's confidence does not
    tell helpful glimpses apart on these photos.

    How much of the label's gain is location, and how much the luck of picking among noisy predictions: the
    label also picks, per photo, the candidate with the highest true-class probability, once on the photo
    itself (``label_pick_same``) and once on its mirror image, mirrored back (``label_pick_mirrored``). A
    location that helps on the photo helps on its mirror at the mirrored place; the network's noise on the
    two differs. So the mirrored pick keeps the location part of the gain and loses part of the luck. The
    two views' noise is still correlated, so the mirrored pick is an upper estimate of the location part.

    Returns accuracies in [0, 1]: own, centred, per-candidate (list, grid order), best_fixed, label_oracle,
    most_confident, label_pick_same, label_pick_mirrored; plus the candidates' u values.
    """
    from .location import candidate_grid, mirrored_candidates

    if model.is_baseline:
        raise ValueError("candidate selection needs an MGNet (a baseline takes no glimpse 2)")
    grid = candidate_grid(positions)
    mirror = mirrored_candidates(grid)
    device = next(model.parameters()).device
    own, at_centre, hit, conf, true_p, true_p_mirror = [], [], [], [], [], []

    def at_candidates(x):  # class probabilities after glimpse 2 at each candidate: [K, B, C]
        place = [model.place(u.to(x).expand(len(x), 3))[None] for u in grid]
        return torch.stack([model(x, n_glimpses=2, glimpse_params=p).logits[1].softmax(-1) for p in place])

    with eval_mode(model):
        for i in range(0, len(images_u8), batch_size):
            x = images_u8[i : i + batch_size].to(device)
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
            y = labels[i : i + batch_size].to(device)
            out = model(x, n_glimpses=2)
            own.append(out.logits[1].argmax(-1) == y)
            at_centre.append(
                model(x, n_glimpses=2, glimpse_params=centred(out.glimpses[1:2])).logits[1].argmax(-1) == y
            )
            probs = at_candidates(x)
            hit.append(probs.argmax(-1) == y)
            conf.append(probs.max(-1).values)
            index = y[None, :, None].expand(len(grid), -1, 1)
            true_p.append(probs.gather(-1, index)[..., 0])
            true_p_mirror.append(at_candidates(x.flip(-1)).gather(-1, index)[..., 0])
    hit, conf = torch.cat(hit, 1).cpu().float(), torch.cat(conf, 1).cpu()
    true_p, true_p_mirror = torch.cat(true_p, 1).cpu(), torch.cat(true_p_mirror, 1).cpu()
    per = hit.mean(1)
    photos = torch.arange(hit.shape[1])
    confident = hit[conf.argmax(0), photos]
    return {
        "images": int(hit.shape[1]),
        "own": float(torch.cat(own).float().mean()),
        "centred": float(torch.cat(at_centre).float().mean()),
        "candidates": [round(float(v), 4) for v in per],
        "candidate_u": grid.tolist(),
        "best_fixed": float(per.max()),
        "label_oracle": float(hit.max(0).values.mean()),
        "most_confident": float(confident.mean()),
        "label_pick_same": float(hit[true_p.argmax(0), photos].mean()),
        "label_pick_mirrored": float(hit[mirror[true_p_mirror.argmax(0)], photos].mean()),
    }


def random_donors(n: int, seed: int = 0) -> torch.Tensor:
    """A random pairing of n items with no item paired with itself (n >= 2): one random cycle."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    donor = torch.empty_like(order)
    donor[order] = order.roll(-1)
    return donor


def glimpse_statistics(params: torch.Tensor, bins: int = 16) -> list[dict]:
    """Where glimpses 2..T land, from params [T, N, 3]: mean scale (share of the image side), mean
    distance of the glimpse centre from the image centre (share of the image side), share of glimpses
    that cover the image centre, and a bins x bins histogram of centres (rows: top to bottom)."""
    stats = []
    for t in range(1, params.shape[0]):
        s, tx, ty = params[t].double().unbind(1)
        hist, _, _ = np.histogram2d(ty.numpy(), tx.numpy(), bins=bins, range=[[-1, 1], [-1, 1]])
        stats.append(
            {
                "glimpse": t + 1,
                "mean_scale": round(float(s.mean()), 4),
                "mean_offset": round(float((tx**2 + ty**2).sqrt().mean() / 2), 4),
                "covers_centre": round(float(((tx.abs() <= s) & (ty.abs() <= s)).double().mean()), 4),
                "centre_histogram": hist.astype(int).tolist(),
            }
        )
    return stats


def glimpse_overlap(params: torch.Tensor) -> float:
    """Mean IoU between the boxes of glimpses 2..T of the same image, over all pairs and images
    (params [T, N, 3]); nan with fewer than two such glimpses."""
    if params.shape[0] < 3:
        return float("nan")
    later = params[1:].double()
    ious = [box_iou(later[i], later[j]) for i in range(len(later)) for j in range(i + 1, len(later))]
    return round(float(torch.stack(ious).mean()), 4)


def paired_difference(a: torch.Tensor, b: torch.Tensor, z: float = 1.96) -> list:
    """Mean of a - b over paired per-image outcomes (bool [N]) with a normal-approximation 95% interval."""
    d = a.double() - b.double()
    mean = float(d.mean())
    half = z * float(d.std()) / math.sqrt(len(d)) if len(d) > 1 else float("inf")
    return [round(mean, 4), round(mean - half, 4), round(mean + half, 4)]


def location_report(model, images_u8, labels, seed=0, batch_size=256, progress=False) -> dict:
    """The location ablation summarised: accuracy after each glimpse for own, centred and shuffled
    glimpses; own minus each, with a paired 95% interval, after glimpse 2 and after the last; where
    glimpse 2 lands (mean offset from the centre, share of the side) and how much glimpses 2..T overlap."""
    ablation = location_ablation(model, images_u8, labels, batch_size, seed, progress)
    correct, params = ablation["correct"], ablation["params"]
    report = {
        "images": int(len(labels)),
        "seed": seed,
        "accuracy": {m: [round(float(v), 4) for v in c.float().mean(1)] for m, c in correct.items()},
    }
    if params.shape[0] > 1:
        report["gain_ci95"] = {
            f"{m}@{t + 1}": paired_difference(correct["learned"][t], c[t])
            for m, c in correct.items()
            if m != "learned"
            for t in sorted({1, params.shape[0] - 1})
        }
        stats = glimpse_statistics(params)
        report["glimpse2_offset"] = stats[0]["mean_offset"]
        report["glimpse2_scale"] = stats[0]["mean_scale"]
        report["overlap_iou"] = glimpse_overlap(params)
        report["glimpses"] = stats
    return report


def format_location_report(report: dict) -> str:
    lines = [f"{'glimpse':>7}  " + "  ".join(f"{m:>9}" for m in report["accuracy"])]
    for t in range(len(report["accuracy"]["learned"])):
        lines.append(f"{t + 1:>7}  " + "  ".join(f"{100 * a[t]:>8.2f}%" for a in report["accuracy"].values()))
    for key, (mean, low, high) in report.get("gain_ci95", {}).items():
        mode, t = key.split("@")
        lines.append(
            f"own - {mode} after glimpse {t}: {100 * mean:+.1f} points (95% CI {100 * low:+.1f} to {100 * high:+.1f})"
        )
    if "glimpse2_offset" in report:
        lines.append(
            f"glimpse 2: mean side {report['glimpse2_scale']:.3f}, mean offset from the centre "
            f"{report['glimpse2_offset']:.3f} of the side; mean IoU of glimpses 2..T {report['overlap_iou']:.3f}"
        )
    return "\n".join(lines)


def spread_indices(n: int, limit: int) -> np.ndarray:
    """``limit`` indices spread evenly over range(n) (all of them when limit is 0 or >= n)."""
    if not limit or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def label_map(model, folder_classes) -> torch.Tensor:
    """Map folder label -> model output index, using the checkpoint's class ids (WordNet ids)."""
    ids = model.checkpoint_info.get("class_ids") or model.classes
    lookup = {c: i for i, c in enumerate(ids)}
    missing = [c for c in folder_classes if c not in lookup]
    if missing:
        raise ValueError(
            f"the data has classes the model does not know: {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''} (model classes: {', '.join(ids[:5])} ...)."
        )
    return torch.tensor([lookup[c] for c in folder_classes])


def load_eval_images(data, size, limit=0, cache_dir=None, progress=True):
    classes, images, labels = cached_folder(data, size, cache_dir, progress=progress)
    keep = torch.from_numpy(spread_indices(len(images), limit))
    return classes, images[keep], labels[keep]


def corrupt_batch(
    images_u8: torch.Tensor, name: str, severity: int, out_size: int, seed: int = 0, progress=True
) -> torch.Tensor:
    from tqdm import tqdm

    from .corruptions import corrupt

    out = torch.empty(len(images_u8), 3, out_size, out_size, dtype=torch.uint8)
    for i in tqdm(range(len(images_u8)), desc=f"{name} s{severity}", disable=not progress, unit="img"):
        img = images_u8[i].permute(1, 2, 0).numpy()
        bad = corrupt(img, name, severity, seed=seed + i)
        out[i] = torch.from_numpy(resize_rgb(bad, out_size)).permute(2, 0, 1)
    return out


def attack_batch(model, images, labels, method="pgd", eps=4.0, batch_size=64, progress=True, source=None, **kwargs):
    """``attacks.attack`` over a data set in batches: one ``Adversarial`` for all of it (images on the CPU).

    ``images``: uint8 [N, 3, S, S] or pixels in [0, 1]; ``source``: craft on this model (transfer);
    ``kwargs``: what ``attack`` takes (true_gradients, n_glimpses, seed, the method's options)."""
    from tqdm import tqdm

    from .attacks import Adversarial, attack

    device = next((source or model).parameters()).device
    parts = []
    for i in tqdm(range(0, len(images), batch_size), desc=f"{method} eps {eps:g}", disable=not progress, unit="batch"):
        x = images[i : i + batch_size].to(device)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
        adv = attack(model, x, labels[i : i + batch_size].to(device), method, eps, source, **kwargs)
        adv.images = adv.images.cpu()
        parts.append(adv)
    details = {}
    for key in ("by", "queries"):
        if parts and key in parts[0].details:
            details[key] = [v for p in parts for v in p.details[key]]
    if parts and "members" in parts[0].details:
        details["members"] = {
            m: [v for p in parts for v in p.details["members"][m]] for m in parts[0].details["members"]
        }
    return Adversarial(
        torch.cat([p.images for p in parts]),
        np.concatenate([p.success for p in parts]),
        parts[0].method,
        float(eps),
        sum(p.seconds for p in parts),
        parts[0].options,
        details,
    )


def robust_accuracy(model, images, labels, method="pgd", eps=4.0, batch_size=64, progress=True, **kwargs) -> dict:
    """Accuracy of ``model`` under one attack (final prediction), attacking only the images it classifies
    correctly when clean (the others count as wrong already). For ``worst``, also the accuracy under each
    member or any earlier one, and how many images each member broke that no earlier one had."""
    clean_ok = _predict_correct(model, images, labels, batch_size)[-1]
    keep = clean_ok.nonzero()[:, 0]
    n = len(labels)
    result = {"images": n, "clean": round(float(clean_ok.sum()) / n, 4), "method": method, "eps": eps}
    if len(keep) == 0:
        return dict(result, accuracy=0.0, seconds=0.0)
    adv = attack_batch(model, images[keep], labels[keep], method, eps, batch_size, progress, **kwargs)
    result["accuracy"] = round(float((~adv.success).sum()) / n, 4)
    result["seconds"] = round(adv.seconds, 1)
    if "members" in adv.details:
        fooled = adv.details["members"]
        result["members"] = {m: round((len(keep) - sum(f)) / n, 4) for m, f in fooled.items()}
        result["broke_first"] = {m: adv.details["by"].count(m) for m in fooled}
    return result


def evaluate(
    model,
    data,
    limit=0,
    attack=None,
    corruption=None,
    severity=3,
    transfer_from=None,
    batch_size=128,
    seed=0,
    cache_dir=None,
    progress=True,
    off_centre=False,
    location=False,
    candidates=False,
) -> dict:
    """Accuracy after each glimpse of ``model`` on an ImageFolder, optionally corrupted or attacked.

    attack: None or dict(method=..., eps=..., **what ``mgnet.attacks.attack`` takes), method a key of
    ``attacks.METHODS``. transfer_from: the model to craft the attack on instead of ``model``; for the
    ``worst`` ensemble, the model its transfer member is crafted on.
    """
    started = time.time()
    folder_classes, _ = list_image_folder(data)
    to_model = label_map(model, folder_classes)
    if corruption:
        stored = _stored_size(data)
        _, images, labels = load_eval_images(data, stored, limit, cache_dir, progress)
        images = corrupt_batch(images, corruption, severity, model.image_size, seed, progress)
    else:
        _, images, labels = load_eval_images(data, model.image_size, limit, cache_dir, progress)
    labels = to_model[labels]
    if off_centre:
        images = make_off_centre(images, seed)[0]
    worst = None
    if attack:
        kw = dict(attack)
        if kw.get("method") == "worst":
            kw["transfer_from"] = transfer_from
        else:
            kw["source"] = transfer_from
        result = attack_batch(model, images, labels, progress=progress, seed=seed, **kw)
        adv = result.images
        correct = _predict_correct(model, adv, labels, batch_size)
        if "members" in result.details:
            worst = {m: round(1 - float(np.mean(f)), 4) for m, f in result.details["members"].items()}
    else:
        correct = _predict_correct(model, images, labels, batch_size, progress=progress)
    cumulative, base = gflops(model)
    acc = [round(float(c) / len(labels), 4) for c in correct.sum(1)]
    return {
        "checkpoint": model.checkpoint_info.get("path"),
        "sha256": model.checkpoint_info.get("sha256"),
        "kind": model.checkpoint_info.get("kind"),
        "data": str(data),
        "images": int(len(labels)),
        "accuracy": acc[-1],
        "accuracy_per_glimpse": acc,
        "gflops_per_glimpse": [round(g, 4) for g in cumulative],
        "gflops_per_image": round(cumulative[-1], 4),
        "baseline_gflops": round(base, 4),
        "attack": dict(attack) if attack else None,
        "worst_case_members": worst,
        "transfer_from": (transfer_from.checkpoint_info.get("path") if transfer_from is not None else None),
        "corruption": {"name": corruption, "severity": severity} if corruption else None,
        "off_centre": bool(off_centre),
        "location": (
            location_report(model, adv if attack else images, labels, seed, batch_size)
            if location and model.n_glimpses > 1
            else None
        ),
        "candidates": (
            candidate_selection(model, adv if attack else images, labels)
            if candidates and model.n_glimpses > 1
            else None
        ),
        "seed": seed,
        "seconds": round(time.time() - started, 1),
    }


def format_candidates(c: dict) -> str:
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    return (
        f"glimpse 2 on {c['images']} images: own {pct(c['own'])}, centred {pct(c['centred'])}, best fixed candidate "
        f"{pct(c['best_fixed'])}; per image, most confident candidate {pct(c['most_confident'])}, best candidate "
        f"with the label {pct(c['label_oracle'])} (uses the label)"
    )


def _stored_size(data) -> int:
    """Side of the first image in the folder (the data's own resolution, e.g. 224)."""
    from .data import load_image

    _, samples = list_image_folder(data)
    h, w = load_image(samples[0][0]).shape[:2]
    return max(h, w)


def format_table(result: dict) -> str:
    base = result["baseline_gflops"]
    data = " off-centre" if result.get("off_centre") else ""
    lines = [
        f"{Path(result['checkpoint'] or '?').name}  ({result['kind']}, {result['images']}{data} images)",
        f"{'glimpse':>7}  {'accuracy':>8}  {'GFLOPs':>7}  {'% of baseline':>13}",
    ]
    for t, (a, g) in enumerate(zip(result["accuracy_per_glimpse"], result["gflops_per_glimpse"]), 1):
        lines.append(f"{t:>7}  {a * 100:>7.2f}%  {g:>7.3f}  {100 * g / base:>12.1f}%")
    if result.get("attack"):
        from .attacks import METHODS

        att = result["attack"]
        lines.append(
            f"accuracy under {METHODS[att['method']].label} at eps {att['eps']:g}/255: {result['accuracy']:.2%}"
        )
    for member, acc in (result.get("worst_case_members") or {}).items():
        lines.append(f"  under {member} or any attack above it: {acc:.2%}")
    return "\n".join(lines)


def write_json_atomic(obj, path):
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m mgnet.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", required=True, help="our .pt checkpoint or the authors' Lightning .ckpt")
    p.add_argument("--data", required=True, help="ImageFolder directory: DIR/<WordNet id>/<image>")
    p.add_argument("--limit", type=int, default=0, help="evaluate N images spread over the folder (0 = all)")
    p.add_argument(
        "--attack",
        choices=list(ATTACK_METHODS),
        help=" ".join(f"{name}: {info.summary}" for name, info in ATTACK_METHODS.items()),
    )
    p.add_argument("--eps", type=float, default=4.0, help="attack budget in 1/255 units (L-inf)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="iterations of PGD, paper PGD or APGD (default: the method's own, 10 for PGD, 100 for APGD); "
        "for --attack worst, of its APGD members (its PGD members keep 10)",
    )
    p.add_argument("--step-size", type=float, default=None, help="PGD step in 1/255 units (default 2.5*eps/steps)")
    p.add_argument("--norm", choices=["linf", "l2"], default=None, help="FGSM/PGD norm (default linf)")
    p.add_argument("--restarts", type=int, default=None, help="APGD random restarts (default 1)")
    p.add_argument("--queries", type=int, default=None, help="Square query budget per image (default 5000)")
    p.add_argument(
        "--true-gradients", action="store_true", help="attack MGNet with the 0.02 gradient re-scaling turned off"
    )
    p.add_argument(
        "--transfer-from",
        help="craft the attack on this checkpoint, test on --checkpoint (worst: the transfer member's source)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--corruption", help="ImageNet-C corruption name (see mgnet.corruptions.CORRUPTIONS)")
    p.add_argument("--severity", type=int, default=3, help="corruption severity 1-5")
    p.add_argument(
        "--off-centre",
        action="store_true",
        help="evaluate on an off-centre version of the data: each photo shrunk to a random 40-60%% "
        "of the side and pasted at a random spot on a blurred other photo (fixed by --seed)",
    )
    p.add_argument(
        "--location",
        action="store_true",
        help="MGNet: also compare its own glimpses with centred and shuffled ones (paired 95%% CI), "
        "and report where glimpse 2 lands and how much glimpses overlap",
    )
    p.add_argument(
        "--candidates",
        action="store_true",
        help="MGNet: accuracy after glimpse 2 at each of the location stage's 27 candidate glimpses, the best "
        "fixed one, and per-image selections among them with the label (upper bound) and without it (most "
        "confident): can any glimpse-2 policy gain on this data?",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument("--json", help="also write the result as JSON to this file")
    p.add_argument("--cache-dir", help="where decoded images are cached (default ~/.cache/mgnet)")
    return p.parse_args(argv)


def attack_options(args) -> dict:
    """The command line's attack flags as ``attacks.attack`` options: only those the method takes (a flag
    the method ignores is an error there, with its name), for ``worst`` passed on to its members."""
    given = dict(
        steps=args.steps, step_size=args.step_size, norm=args.norm, restarts=args.restarts, queries=args.queries
    )
    if args.attack == "worst":
        members = {m: method_options(m, **given) for m in ("apgd-ce", "apgd-dlr", "square")}
        return {"member_options": members}
    options = {k: v for k, v in given.items() if v is not None}  # the library names any it does not take
    return {**options, "true_gradients": True} if args.true_gradients else options


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.corruption:
        from .corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS

        valid = list(CORRUPTIONS) + list(EXTRA_CORRUPTIONS)
        if args.corruption not in valid:
            print(f"error: unknown corruption {args.corruption!r}; choose from {', '.join(valid)}", file=sys.stderr)
            return 2
        if not 1 <= args.severity <= 5:
            print("error: --severity must be between 1 and 5", file=sys.stderr)
            return 2
    if args.attack and args.eps < 0:
        print("error: --eps must be non-negative", file=sys.stderr)
        return 2
    for flag, value, low in (
        ("--limit", args.limit, 0),
        ("--batch-size", args.batch_size, 1),
        ("--steps", 1 if args.steps is None else args.steps, 1),
        ("--restarts", 1 if args.restarts is None else args.restarts, 1),
        ("--queries", 1 if args.queries is None else args.queries, 1),
    ):
        if value < low:
            print(f"error: {flag} must be at least {low}, got {value}", file=sys.stderr)
            return 2
    if args.json and Path(args.json).is_dir():
        print(
            f"error: --json {args.json} is a folder; give a file name such as {Path(args.json) / 'result.json'}",
            file=sys.stderr,
        )
        return 2
    if not Path(args.data).is_dir():
        print(f"error: data folder {args.data} does not exist", file=sys.stderr)
        return 2
    try:
        device = pick_device(args.device)
        model = load_checkpoint(args.checkpoint, device)
        source = load_checkpoint(args.transfer_from, device) if args.transfer_from else None
        attack = {"method": args.attack, "eps": args.eps, **attack_options(args)} if args.attack else None
        result = evaluate(
            model,
            args.data,
            args.limit,
            attack,
            args.corruption,
            args.severity,
            source,
            args.batch_size,
            args.seed,
            args.cache_dir,
            off_centre=args.off_centre,
            location=args.location,
            candidates=args.candidates,
        )
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.attack == "worst" and not args.transfer_from:
        print("(no --transfer-from: this worst case leaves out the transfer attack from the baseline)")
    if result["location"]:
        print(format_location_report(result["location"]))
    elif args.location:
        print("(--location: this model takes one glimpse, so there is no location to compare)")
    if result["candidates"]:
        print(format_candidates(result["candidates"]))
    if args.json:
        try:
            write_json_atomic(result, args.json)
        except OSError as exc:
            print(f"error: could not write {args.json}: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
