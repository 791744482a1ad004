"""Measure everything the model card reports and write checkpoints/README.md with its plots.

    python -m mgnet.modelcard --data ../shared/data/imagenette2-224/val

Clean accuracy uses the whole folder; attacks and corruptions use --attack-limit / --corruption-limit
images spread evenly over it (every class present). Corrupted images do not depend on the model and
are cached (``--stage corrupt`` prepares them alone). Results go to checkpoints/modelcard.json; the
README and PNG plots are rebuilt from that file.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .checkpoints import atomic_save, load_checkpoint
from .corruptions import CORRUPTIONS
from .data import list_image_folder
from .evaluate import (_predict_correct, _stored_size, attack_batch, corrupt_batch, glimpse_statistics, label_map,
                       load_eval_images, location_ablation, paired_difference, write_json_atomic)
from .flops import gflops
from .utils import git_commit, hardware

EPSILONS = (1.0, 2.0, 4.0)
SAMPLE_CHECK = 200


def _cache_dir(args) -> Path:
    return Path(args.cache_dir or os.environ.get("MGNET_CACHE", Path.home() / ".cache" / "mgnet"))


def _corrupt_job(job):
    data, size, limit, name, severity, seed, out_size, cache_dir = job
    key = hashlib.sha256(f"{Path(data).resolve()}|{size}|{limit}|{name}|{severity}|{seed}|{out_size}".encode())
    path = Path(cache_dir) / f"corrupt-{key.hexdigest()[:16]}.pt"
    if path.exists():
        return path
    torch.set_num_threads(1)
    _, images, _ = load_eval_images(data, size, limit, cache_dir, progress=False)
    bad = corrupt_batch(images, name, severity, out_size, seed, progress=False)
    atomic_save(bad, path)
    return path


def corrupted_sets(args, out_size: int) -> dict:
    """{(name, severity): path of a cached uint8 tensor}, computed in parallel processes."""
    from tqdm import tqdm

    size = _stored_size(args.data)
    load_eval_images(args.data, size, args.corruption_limit, _cache_dir(args))  # decode once, before forking
    jobs = [(args.data, size, args.corruption_limit, n, s, args.seed, out_size, str(_cache_dir(args)))
            for n in CORRUPTIONS for s in range(1, 6)]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        paths = list(tqdm(pool.map(_corrupt_job, jobs), total=len(jobs), desc="corrupting", unit="set"))
    return {(j[3], j[4]): p for j, p in zip(jobs, paths)}


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval for a proportion."""
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(centre - half, 4), round(centre + half, 4))


def _acc(correct: torch.Tensor) -> list:
    return [round(float(c), 4) for c in correct.float().mean(1)]


def measure(args) -> dict:
    mg = load_checkpoint(args.mgnet)
    base = load_checkpoint(args.baseline)
    folder_classes, _ = list_image_folder(args.data)
    cache = _cache_dir(args)
    result = {"data": str(args.data), "git_commit": git_commit(), "hardware": hardware(),
              "date": time.strftime("%Y-%m-%d"), "seed": args.seed,
              "checkpoints": {}, "clean": {}, "attacks": {}, "corruptions": {}}
    for name, model in (("mgnet", mg), ("baseline", base)):
        cumulative, full = gflops(model)
        result["checkpoints"][name] = {
            "path": model.checkpoint_info["path"], "sha256": model.checkpoint_info["sha256"],
            "parameters": sum(p.numel() for p in model.parameters()), "config": model.config(),
            "gflops_per_glimpse": [round(g, 4) for g in cumulative], "baseline_gflops": round(full, 4),
            "provenance": model.checkpoint_info["provenance"]}

    # Clean accuracy on the whole folder.
    _, images, labels = load_eval_images(args.data, mg.image_size, 0, cache)
    for name, model in (("mgnet", mg), ("baseline", base)):
        correct = _predict_correct(model, images, label_map(model, folder_classes)[labels], progress=True)
        n = correct.shape[1]
        result["clean"][name] = {"images": n, "accuracy_per_glimpse": _acc(correct),
                                 "ci95_final": wilson(float(correct[-1].sum()), n)}

    # Where MGNet looks, and whether it matters: its own glimpses vs centred and shuffled ones.
    y = label_map(mg, folder_classes)[labels]
    ablation = location_ablation(mg, images, y, seed=args.seed, progress=True)
    result["locations"] = {"images": len(images), "seed": args.seed,
                           "accuracy": {m: _acc(c) for m, c in ablation["correct"].items()},
                           "gain_ci95": {m: paired_difference(ablation["correct"]["learned"][-1], c[-1])
                                         for m, c in ablation["correct"].items() if m != "learned"},
                           "glimpses": glimpse_statistics(ablation["params"])}

    # A small fixed sample that the test suite re-checks against the committed checkpoints.
    _, images, labels = load_eval_images(args.data, mg.image_size, SAMPLE_CHECK, cache)
    result["sample_check"] = {"limit": SAMPLE_CHECK, **{
        name: _acc(_predict_correct(model, images, label_map(model, folder_classes)[labels]))
        for name, model in (("mgnet", mg), ("baseline", base))}}

    # Pixel-space PGD-10 (L-inf), standard and true gradients, plus transfer from the baseline.
    _, images, labels = load_eval_images(args.data, mg.image_size, args.attack_limit, cache)
    y_mg = label_map(mg, folder_classes)[labels]
    y_base = label_map(base, folder_classes)[labels]
    attacks = {}
    for eps in EPSILONS:
        kw = {"method": "pgd", "eps": eps, "steps": 10, "seed": args.seed}
        adv_mg = attack_batch(mg, images, y_mg, **kw)
        adv_mg_true = attack_batch(mg, images, y_mg, s_grad=1.0, **kw)
        adv_base = attack_batch(base, images, y_base, **kw)
        attacks[str(eps)] = {
            "mgnet": _acc(_predict_correct(mg, adv_mg, y_mg)),
            "mgnet_true_gradients": _acc(_predict_correct(mg, adv_mg_true, y_mg)),
            "baseline": _acc(_predict_correct(base, adv_base, y_base)),
            "transfer_baseline_to_mgnet": _acc(_predict_correct(mg, adv_base, y_mg)),
        }
    paper = {}
    for name, model, y in (("mgnet", mg, y_mg), ("baseline", base, y_base)):
        adv = attack_batch(model, images, y, method="paper-pgd", eps=4.0, steps=10)
        paper[name] = _acc(_predict_correct(model, adv, y))
    clean_subset = {n: _acc(_predict_correct(m, images, y)) for n, m, y in (("mgnet", mg, y_mg),
                                                                           ("baseline", base, y_base))}
    result["attacks"] = {"images": len(images), "steps": 10, "norm": "linf", "epsilons": list(EPSILONS),
                         "clean_on_subset": clean_subset, "pgd": attacks, "paper_pgd_eps4": paper}

    # ImageNet-C: 15 corruptions x 5 severities on a subset.
    sets = corrupted_sets(args, mg.image_size)
    _, _, labels = load_eval_images(args.data, _stored_size(args.data), args.corruption_limit, cache, False)
    y_mg = label_map(mg, folder_classes)[labels]
    y_base = label_map(base, folder_classes)[labels]
    table = {}
    for (cname, sev), path in sets.items():
        bad = torch.load(path, weights_only=True)
        entry = table.setdefault(cname, {})
        entry[str(sev)] = {"mgnet": _acc(_predict_correct(mg, bad, y_mg)),
                           "baseline": _acc(_predict_correct(base, bad, y_base))}
    result["corruptions"] = {"images": int(len(labels)), "table": table}
    return result


def summarise(res: dict) -> dict:
    """Headline numbers derived from the raw measurements."""
    mg, base = res["checkpoints"]["mgnet"], res["checkpoints"]["baseline"]
    acc_mg = res["clean"]["mgnet"]["accuracy_per_glimpse"]
    acc_base = res["clean"]["baseline"]["accuracy_per_glimpse"][-1]
    full = base["gflops_per_glimpse"][-1]
    share = [g / full for g in mg["gflops_per_glimpse"]]
    table = res["corruptions"]["table"]
    per_type = {c: {m: float(np.mean([table[c][str(s)][m][-1] for s in range(1, 6)])) for m in ("mgnet", "baseline")}
                for c in table}
    per_severity = {s: {m: float(np.mean([table[c][str(s)][m][-1] for c in table])) for m in ("mgnet", "baseline")}
                    for s in range(1, 6)}
    mg_glimpse_mean = [float(np.mean([table[c][str(s)]["mgnet"][t] for c in table for s in range(1, 6)]))
                       for t in range(len(acc_mg))]
    return {
        "clean_mgnet_final": acc_mg[-1], "clean_baseline": acc_base,
        "mgnet_after_2": acc_mg[1] if len(acc_mg) > 1 else None,
        "compute_share_after_2": share[1] if len(share) > 1 else None, "compute_share": share,
        "corruption_mean": {m: float(np.mean([per_type[c][m] for c in per_type])) for m in ("mgnet", "baseline")},
        "corruption_per_type": per_type, "corruption_per_severity": per_severity,
        "corruption_mgnet_per_glimpse": mg_glimpse_mean,
    }


def training_curves(folder: Path) -> dict:
    """Per-epoch validation accuracy of each model from ``history-<kind>.json`` (a list of the records
    ``mgnet.train`` writes to ``runs/<name>/history.json``, every stage in order, each tagged ``stage``)."""
    curves = {}
    for kind in ("mgnet", "baseline"):
        path = Path(folder) / f"history-{kind}.json"
        if not path.exists():
            continue
        rows, last_stage = [], None
        for i, rec in enumerate(json.loads(path.read_text()), 1):
            acc = rec.get("val_accuracy_per_glimpse")
            if acc:
                rows.append({"x": i, "acc": acc, "first_of_stage": rec.get("stage", 1) != last_stage})
            last_stage = rec.get("stage", 1)
        if rows:
            curves[kind] = rows
    return curves


def stage_ends(curves: dict) -> list[dict]:
    """Per stage, in order: {"stage": k, "epochs": epochs so far, kind: accuracy per glimpse at its last epoch}."""
    ends: dict[int, dict] = {}
    for kind, rows in curves.items():
        stage = 0
        for r in rows:
            stage += r["first_of_stage"]
            entry = ends.setdefault(stage, {"stage": stage, "epochs": r["x"]})
            entry["epochs"] = max(entry["epochs"], r["x"])
            entry[kind] = r["acc"]
    return [ends[k] for k in sorted(ends)]


def write_plots(res: dict, out_dir: Path) -> list[str]:
    import plotly.graph_objects as go

    s = summarise(res)
    figs = {}
    acc_mg = res["clean"]["mgnet"]["accuracy_per_glimpse"]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[100 * v for v in s["compute_share"]], y=[100 * a for a in acc_mg],
                             mode="lines+markers+text", name="MGNet after glimpse t",
                             text=[f"t={t}" for t in range(1, len(acc_mg) + 1)], textposition="top left"))
    fig.add_trace(go.Scatter(x=[100], y=[100 * s["clean_baseline"]], mode="markers", name="baseline (1 pass)",
                             marker=dict(size=12, symbol="diamond")))
    fig.update_layout(title="Clean accuracy vs compute (Imagenette val)", xaxis_title="compute, % of one baseline pass",
                      yaxis_title="top-1 accuracy (%)")
    figs["accuracy_vs_glimpses.png"] = fig

    fig = go.Figure()
    eps = res["attacks"]["epsilons"]
    clean = res["attacks"]["clean_on_subset"]
    for key, label in (("mgnet", "MGNet, standard gradient"), ("mgnet_true_gradients", "MGNet, true gradient"),
                       ("baseline", "baseline"), ("transfer_baseline_to_mgnet", "MGNet, transfer from baseline")):
        start = clean["baseline" if key == "baseline" else "mgnet"][-1]
        ys = [start] + [res["attacks"]["pgd"][str(e)][key][-1] for e in eps]
        fig.add_trace(go.Scatter(x=[0] + list(eps), y=[100 * v for v in ys], mode="lines+markers", name=label))
    fig.update_layout(title=f"PGD-10 (L-inf, pixel space), {res['attacks']['images']} val images",
                      xaxis_title="epsilon (/255)", yaxis_title="top-1 accuracy (%)")
    figs["accuracy_vs_eps.png"] = fig

    fig = go.Figure()
    for m, label in (("mgnet", "MGNet"), ("baseline", "baseline")):
        ys = [res["clean"][m]["accuracy_per_glimpse"][-1]] + [s["corruption_per_severity"][k][m] for k in range(1, 6)]
        fig.add_trace(go.Scatter(x=list(range(0, 6)), y=[100 * v for v in ys], mode="lines+markers", name=label))
    fig.update_layout(title=f"Mean over 15 ImageNet-C corruptions, {res['corruptions']['images']} val images",
                      xaxis_title="severity (0 = clean, full val)", yaxis_title="top-1 accuracy (%)")
    figs["accuracy_vs_severity.png"] = fig
    loc = res.get("locations")
    if loc:
        fig = go.Figure()
        for mode, label in (("learned", "its own glimpses"), ("centre", "centred glimpses, its scales"),
                            ("shuffled", "another image's glimpses")):
            acc = loc["accuracy"].get(mode)
            if acc:
                fig.add_trace(go.Scatter(x=list(range(1, len(acc) + 1)), y=[100 * a for a in acc],
                                         mode="lines+markers", name=f"MGNet, {label}"))
        fig.add_hline(y=100 * s["clean_baseline"], line=dict(color="grey", dash="dash"),
                      annotation_text="baseline", annotation_position="bottom right")
        fig.update_layout(title=f"Does it matter where MGNet looks? ({loc['images']} val images)",
                          xaxis_title="glimpses taken", yaxis_title="top-1 accuracy (%)", xaxis=dict(dtick=1),
                          legend=dict(orientation="h", y=-0.3, x=0, yanchor="top"), margin=dict(b=130))
        figs["location_ablation.png"] = fig
        figs["glimpse_locations.png"] = _location_heatmaps(loc["glimpses"])
    curves = training_curves(out_dir)
    if curves:
        fig = go.Figure()
        for kind, rows in curves.items():
            colour = "#636efa" if kind == "mgnet" else "#00a67e"
            fig.add_trace(go.Scatter(x=[r["x"] for r in rows], y=[100 * r["acc"][-1] for r in rows],
                                     mode="lines+markers", line=dict(color=colour),
                                     name="MGNet, all glimpses" if kind == "mgnet" else "baseline"))
            if kind == "mgnet" and len(rows[0]["acc"]) > 1:
                fig.add_trace(go.Scatter(x=[r["x"] for r in rows], y=[100 * r["acc"][1] for r in rows], mode="lines",
                                         line=dict(dash="dot", color=colour), name="MGNet, 2 glimpses"))
        starts = sorted({r["x"] for rows in curves.values() for r in rows if r["first_of_stage"] and r["x"] > 1})
        for x in starts:
            fig.add_vline(x=x - 0.5, line=dict(color="grey", dash="dash"))
        fig.update_layout(title="Validation accuracy during training (dashed line: a new stage starts)",
                          xaxis_title="epoch (all stages)", yaxis_title="top-1 accuracy (%)")
        figs["training_curves.png"] = fig
    written = []
    for name, fig in figs.items():
        wide = name == "glimpse_locations.png"
        fig.update_layout(template="plotly_white", width=1100 if wide else 640, height=420 if wide else 400,
                          font=dict(size=13))
        path = out_dir / name
        fig.write_image(str(path), scale=1.5)
        written.append(name)
    return written


def _location_heatmaps(glimpses: list[dict]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(glimpses), horizontal_spacing=0.04,
                        subplot_titles=[f"glimpse {g['glimpse']}: mean size {100 * g['mean_scale']:.0f}% of side"
                                        for g in glimpses])
    peak = max(max(max(row) for row in g["centre_histogram"]) for g in glimpses) or 1
    for i, g in enumerate(glimpses, 1):
        hist = np.asarray(g["centre_histogram"], dtype=float)
        edges = np.linspace(0, 1, hist.shape[0] + 1)
        mid = (edges[:-1] + edges[1:]) / 2
        fig.add_trace(go.Heatmap(z=hist / hist.sum() * 100, x=mid, y=mid, zmin=0, zmax=peak / hist.sum() * 100,
                                 colorscale="Viridis", showscale=i == len(glimpses),
                                 colorbar=dict(title="% of images")), row=1, col=i)
        fig.update_xaxes(range=[0, 1], constrain="domain", title_text="x (share of width)", row=1, col=i)
        fig.update_yaxes(range=[1, 0], scaleanchor=f"x{i if i > 1 else ''}", title_text="y" if i == 1 else None,
                         row=1, col=i)
    fig.update_layout(title="Where the centres of glimpses 2 onwards land on the image (0, 0 = top left)")
    return fig


def _pct(v):
    return f"{100 * v:.1f}%"


def _flag(command: str, name: str):
    words = command.split()
    return words[words.index(name) + 1] if name in words[:-1] else None


def training_stages(provenance: dict) -> list[dict]:
    """The training runs behind a checkpoint, oldest first, following its ``init_from`` chain."""
    chain, prov = [], provenance
    while prov:
        # The first checkpoints recorded the module as "train"; the command is mgnet.train.
        command = prov.get("command", "?").replace("python -m train ", "python -m mgnet.train ")
        lr = (prov.get("args") or {}).get("lr")
        if lr is None and _flag(command, "--lr") is not None:
            lr = float(_flag(command, "--lr"))
        chain.append({"command": command, "epochs": prov.get("epochs"), "lr": lr,
                      "train_seconds": prov.get("train_seconds")})
        prov = prov.get("init_from")
    return chain[::-1]


def write_readme(res: dict, out_dir: Path, template_extra: str = ""):
    s = summarise(res)
    mg, base = res["checkpoints"]["mgnet"], res["checkpoints"]["baseline"]
    pm, pb = mg["provenance"], base["provenance"]
    acc_mg = res["clean"]["mgnet"]["accuracy_per_glimpse"]
    lines = []
    add = lines.append
    add("# Default checkpoints: MGNet and its baseline on Imagenette\n")
    add("Generated by `python -m mgnet.modelcard --data ../shared/data/imagenette2-224/val` "
        f"on {res['date']} at commit `{res['git_commit'][:10]}` ({res['hardware']}). "
        "Every number below comes from `checkpoints/modelcard.json`, written by that command.\n")
    add("| file | kind | backbone | input | glimpses | glimpse size | parameters | sha256 |")
    add("|---|---|---|---|---|---|---|---|")
    for name, c in (("mgnet", mg), ("baseline", base)):
        cfg = c["config"]
        size = int(math.floor(cfg["image_size"] / cfg["scale"] + 1e-9))
        add(f"| `{Path(c['path']).name}` | {name} | {cfg['backbone']} | {cfg['image_size']} px | {cfg['n_glimpses']} "
            f"| {size} px | {c['parameters'] / 1e6:.2f} M | `{c['sha256'][:12]}…` |")
    add("\n## Data and recipe\n")
    add(f"- Training data: `{pm.get('data')}` (Imagenette train split, 9,469 images, 10 classes, stored at 224x224).")
    add(f"- Validation: `{res['data']}` (1,966 images, half of the official Imagenette validation split).")
    a = pm.get("args", {})
    stages = training_stages(pm)
    stages_base = training_stages(pb)
    add(f"- Both models: ResNet-18 from random initialisation, batch {a.get('batch_size')}, "
        f"SGD (Nesterov, momentum 0.9), weight decay {a.get('weight_decay')}, label smoothing {a.get('label_smoothing')}, "
        f"RandomResizedCrop({a.get('image_size')}, scale=({a.get('min_crop')}, 1)) + horizontal flip, seed {a.get('seed')}; "
        "bf16 autocast on CPU. Evaluation input: the whole image resized to "
        f"{a.get('image_size')} px (no crop), as the app does.")
    if len(stages) == 1:
        add(f"- Schedule: {stages[0]['epochs']} epochs, one-cycle learning rate with peak {stages[0]['lr']} "
            "and 20% warm-up.")
    else:
        add(f"- Schedule, {sum(st['epochs'] or 0 for st in stages)} epochs in {len(stages)} stages, the same for "
            "both models; each stage is a one-cycle learning rate with 20% warm-up and a fresh optimiser, and "
            "each later stage starts from the previous stage's exported weights (`--init-from`):")
        for i, st in enumerate(stages, 1):
            add(f"  - stage {i}: {st['epochs']} epochs, peak learning rate {st['lr']}.")
    add(f"- MGNet: T = {mg['config']['n_glimpses']}, scale {mg['config']['scale']}, alpha {mg['config']['alpha']}, "
        f"s_grad {mg['config']['s_grad']}, scale range [{mg['config']['scale_min']}, {mg['config']['scale_max']}]. "
        "The scale was chosen so that glimpses are 48 px: with the paper's 2.33 (54 px at 128 px input) ResNet's "
        "stride rounding makes two glimpses cost 44% of a baseline pass instead of the paper's 37%.")
    tm, tb = (sum(st["train_seconds"] or 0 for st in chain) / 60 for chain in (stages, stages_base))
    add(f"- Training time: MGNet {tm:.0f} min, baseline {tb:.0f} min ({pm.get('hardware')}; both trained at the "
        "same time, one thread each).")
    add("\nExact commands, in this order:\n```bash")
    for base_stage, mgnet_stage in zip(stages_base, stages):
        add(base_stage["command"])
        add(mgnet_stage["command"])
    add("python -m mgnet.modelcard --data ../shared/data/imagenette2-224/val")
    add("```\nRe-running a training command resumes from `runs/<name>/last.pt` after an interruption.\n")
    curves = training_curves(out_dir)
    if curves:
        add("Validation accuracy was measured after every epoch to watch the runs; the last epoch of each stage is "
            "what was exported, never a best-on-validation epoch. `history-<kind>.json` holds those per-epoch "
            "records (`runs/<name>/history.json` of each stage, in order, tagged with the stage).\n")
        add("![training curves](training_curves.png)\n")
        ends = stage_ends(curves)
        if len(ends) > 1:
            add("Stage lengths and peak learning rates were fixed before each stage from the time available, and "
                "the last epoch was always exported. Stages after the first were added because targets were "
                "missed, and both models always got the same stage. Validation accuracy at the end of each "
                "stage, as measured by the training run (with its bf16 autocast, so a few tenths off the fp32 "
                "tables below):\n")
            add("| after stage | epochs | MGNet, 2 glimpses | MGNet, all glimpses | baseline |")
            add("|---|---|---|---|---|")
            for e in ends:
                add(f"| {e['stage']} | {e['epochs']} | {_pct(e['mgnet'][1]) if e.get('mgnet') else ''} | "
                    f"{_pct(e['mgnet'][-1]) if e.get('mgnet') else ''} | "
                    f"{_pct(e['baseline'][-1]) if e.get('baseline') else ''} |")
            add("")

    add("## Clean accuracy and compute\n")
    add(f"Whole validation folder ({res['clean']['mgnet']['images']} images). GFLOPs are multiply-accumulates "
        "(convolutions and matrix products), cumulative after each glimpse.\n")
    add("| model | after glimpse | top-1 | 95% CI (final) | GFLOPs | % of baseline |")
    add("|---|---|---|---|---|---|")
    for t, (acc, g) in enumerate(zip(acc_mg, mg["gflops_per_glimpse"]), 1):
        ci = res["clean"]["mgnet"]["ci95_final"] if t == len(acc_mg) else None
        add(f"| MGNet | {t} | {_pct(acc)} | {f'{_pct(ci[0])}–{_pct(ci[1])}' if ci else ''} | {g:.3f} | "
            f"{_pct(s['compute_share'][t - 1])} |")
    ci = res["clean"]["baseline"]["ci95_final"]
    add(f"| baseline | 1 | {_pct(s['clean_baseline'])} | {_pct(ci[0])}–{_pct(ci[1])} | "
        f"{base['gflops_per_glimpse'][0]:.3f} | 100% |")
    add("\n![accuracy vs glimpses](accuracy_vs_glimpses.png)\n")
    add("### Targets of issue 3\n")
    checks = [
        ("Clean top-1 of MGNet >= 85%", s["clean_mgnet_final"] >= 0.85, _pct(s["clean_mgnet_final"])),
        ("Clean top-1 of baseline >= 85%", s["clean_baseline"] >= 0.85, _pct(s["clean_baseline"])),
        ("MGNet compute after 2 glimpses <= 40% of baseline", s["compute_share_after_2"] <= 0.40,
         _pct(s["compute_share_after_2"])),
        ("MGNet after 2 glimpses within 3 points of baseline", s["mgnet_after_2"] >= s["clean_baseline"] - 0.03,
         f"{100 * (s['mgnet_after_2'] - s['clean_baseline']):+.1f} points"),
        ("MGNet after all glimpses >= baseline", s["clean_mgnet_final"] >= s["clean_baseline"],
         f"{100 * (s['clean_mgnet_final'] - s['clean_baseline']):+.1f} points"),
    ]
    add("| target | met | measured |")
    add("|---|---|---|")
    for label, ok, value in checks:
        add(f"| {label} | {'yes' if ok else '**no**'} | {value} |")

    loc = res.get("locations")
    if loc:
        acc = loc["accuracy"]
        add(f"\n## Where MGNet looks, and whether it matters ({loc['images']} val images)\n")
        add("Glimpse 1 is always the whole image. For glimpses 2 onwards the table gives the mean glimpse size, "
            "how far its centre lies from the image centre (both as a share of the image side) and how often "
            "the glimpse covers the image centre.\n")
        add("| glimpse | mean size | mean distance from centre | covers the centre |")
        add("|---|---|---|---|")
        for g in loc["glimpses"]:
            add(f"| {g['glimpse']} | {_pct(g['mean_scale'])} | {_pct(g['mean_offset'])} | {_pct(g['covers_centre'])} |")
        add("\n![glimpse locations](glimpse_locations.png)\n")
        add("To test whether the chosen locations carry information, the same model was run with glimpses 2 "
            "onwards moved: to the image centre at the scale MGNet chose (\"centred\"), or to the glimpses MGNet "
            "chose for another validation image, paired at random (\"shuffled\"). The model is told the moved "
            f"location, as if it had chosen it (seed {loc['seed']}).\n")
        add("| glimpses taken | own glimpses | centred | shuffled |")
        add("|---|---|---|---|")
        for t in range(len(acc["learned"])):
            add(f"| {t + 1} | {_pct(acc['learned'][t])} | {_pct(acc['centre'][t])} | {_pct(acc['shuffled'][t])} |")
        parts = []
        for mode, label in (("centre", "centred"), ("shuffled", "shuffled")):
            gain, lo, hi = loc["gain_ci95"][mode]
            verdict = ("better" if lo > 0 else "worse" if hi < 0 else "not distinguishable at this sample size")
            parts.append(f"{100 * gain:+.1f} points against {label} glimpses (95% CI {100 * lo:+.1f} to "
                         f"{100 * hi:+.1f}, paired: {verdict})")
        add(f"\nAfter all glimpses its own locations score {parts[0]}, and {parts[1]}. Where the gain is small, "
            "the glimpse boxes the app draws say little about why this model decided, however plausible they "
            "look.\n")
        add("![location ablation](location_ablation.png)\n")

    att = res["attacks"]
    add(f"\n## Adversarial robustness (PGD-10, L-inf, pixel space, {att['images']} val images)\n")
    add("Step size 2.5·eps/10, random start, clamped to [0, 1], loss on the final prediction. "
        "\"Standard gradient\" keeps MGNet's 0.02 backward re-scaling of the localisation path (what a naive "
        "white-box attacker sees); \"true gradient\" turns it off; \"transfer\" crafts on the baseline and tests "
        "MGNet. A model's robust accuracy is the lowest of the attacks it faced.\n")
    add("| eps (/255) | baseline | MGNet, standard gradient | MGNet, true gradient | MGNet, transfer from baseline "
        "| MGNet, robust (lowest) |")
    add("|---|---|---|---|---|---|")
    add(f"| 0 (clean, same images) | {_pct(att['clean_on_subset']['baseline'][-1])} | "
        f"{_pct(att['clean_on_subset']['mgnet'][-1])} | | | |")
    for e in att["epsilons"]:
        r = att["pgd"][str(e)]
        worst = min(r["mgnet"][-1], r["mgnet_true_gradients"][-1], r["transfer_baseline_to_mgnet"][-1])
        add(f"| {e:g} | {_pct(r['baseline'][-1])} | {_pct(r['mgnet'][-1])} | {_pct(r['mgnet_true_gradients'][-1])} "
            f"| {_pct(r['transfer_baseline_to_mgnet'][-1])} | {_pct(worst)} |")
    p = att["paper_pgd_eps4"]
    add(f"\nThe authors' normalised-space PGD (eps 4, step 1, 10 steps, no random start, no clamp): baseline "
        f"{_pct(p['baseline'][-1])}, MGNet {_pct(p['mgnet'][-1])}. It is weaker than pixel-space PGD at eps 1/255.\n")
    add("![accuracy vs eps](accuracy_vs_eps.png)\n")

    cor = res["corruptions"]
    add(f"## Common corruptions (ImageNet-C, 15 types x 5 severities, {cor['images']} val images)\n")
    add("Corruptions are applied to the 224 px image, which is then resized to the model input. "
        "Mean = average over severities 1–5 for each type, then over types (the authors' protocol).\n")
    add(f"Mean accuracy: baseline **{_pct(s['corruption_mean']['baseline'])}**, MGNet "
        f"**{_pct(s['corruption_mean']['mgnet'])}** (MGNet after each glimpse: "
        + ", ".join(_pct(v) for v in s["corruption_mgnet_per_glimpse"]) + ").\n")
    add("| corruption | baseline | MGNet |")
    add("|---|---|---|")
    for c, v in s["corruption_per_type"].items():
        add(f"| {c} | {_pct(v['baseline'])} | {_pct(v['mgnet'])} |")
    add("\n| severity | baseline | MGNet |")
    add("|---|---|---|")
    for k, v in s["corruption_per_severity"].items():
        add(f"| {k} | {_pct(v['baseline'])} | {_pct(v['mgnet'])} |")
    add("\n![accuracy vs severity](accuracy_vs_severity.png)\n")
    add("## Provenance\n")
    for name, c in (("MGNet", mg), ("baseline", base)):
        pv, chain = c["provenance"], (stages if c is mg else stages_base)
        add(f"- {name}: saved {pv.get('saved', '?')}, recorded commit `{str(pv.get('git_commit', '?'))[:16]}`, "
            f"{sum(st['train_seconds'] or 0 for st in chain) / 60:.0f} min of training in "
            f"{len(chain)} stage(s), weights stored as fp16.")
    add(template_extra)
    (out_dir / "README.md").write_text("\n".join(lines) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m mgnet.modelcard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="validation ImageFolder")
    p.add_argument("--mgnet", default="checkpoints/mgnet-resnet18-imagenette.pt")
    p.add_argument("--baseline", default="checkpoints/baseline-resnet18-imagenette.pt")
    p.add_argument("--out", default="checkpoints", help="folder for README.md, modelcard.json and plots")
    p.add_argument("--attack-limit", type=int, default=300)
    p.add_argument("--corruption-limit", type=int, default=300)
    p.add_argument("--workers", type=int, default=2, help="processes for corrupting images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stage", choices=["all", "corrupt", "report"], default="all",
                   help="corrupt: only prepare corrupted images; report: rebuild README/plots from modelcard.json")
    p.add_argument("--cache-dir")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if args.stage == "corrupt":
        corrupted_sets(args, 128 if not Path(args.mgnet).exists() else load_checkpoint(args.mgnet, "cpu").image_size)
        return 0
    if args.stage == "all":
        for p in (args.mgnet, args.baseline):
            if not Path(p).exists():
                print(f"error: {p} does not exist; train it first (see checkpoints/README.md)", file=sys.stderr)
                return 2
        res = measure(args)
        write_json_atomic(res, out / "modelcard.json")
    else:
        res = json.loads((out / "modelcard.json").read_text())
    write_plots(res, out)
    write_readme(res, out)
    print(f"wrote {out / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
