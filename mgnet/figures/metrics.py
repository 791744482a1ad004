"""The metrics command: deletion/insertion AUCs, glimpse agreement and Captum's metrics over a folder.

Each map (MGNet's focus map, every model x method saliency map, and a random map for chance level) is
scored on every model; the scores come from :mod:`mgnet.metrics`. Writes metrics.md, metrics.csv,
metrics.json, curves.json and plots.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

import numpy as np

from ..model import glimpse_options
from .. import explain, geometry, metrics, plots
from ..analysis import analyze_batch, focus_map
from ..data import image_hash, to_model_input
from .inputs import decode_images, resolve_target, true_labels
from .runs import explain_with, progress_bar, rounded
from .settings import ROLE_LABELS, ROLES, FigureSettings
from .staging import Exporter, Staging, environment

CSV_COLUMNS = [
    "image",
    "label",
    "map",
    "map_model",
    "method",
    "scored_on",
    "relation",
    "target",
    "target_class",
    "deletion_auc",
    "insertion_auc",
    "mass_inside",
    "topk_iou",
    "infidelity",
    "sensitivity",
]


def map_curves(
    models: dict,
    inputs: dict,
    targets: dict,
    saliency_map: np.ndarray,
    steps: int = 20,
    fill: str = "blur",
    n_glimpses: dict | None = None,
) -> dict:
    """Deletion and insertion curves of one map, scored on every model: {role: {mode: Curve}}."""
    out = {}
    for role, model in models.items():
        out[role] = {
            mode: metrics.deletion_insertion(
                model,
                inputs[role],
                saliency_map,
                targets[role],
                steps=steps,
                mode=mode,
                baseline=fill,
                n_glimpses=(n_glimpses or {}).get(role),
                batch_size=min(steps + 1, 32),
            )
            for mode in ("deletion", "insertion")
        }
    return out


def _stats(values) -> tuple[float | None, float | None, float | None, int]:
    xs = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if len(xs) == 0:
        return None, None, None, 0
    sd = float(xs.std(ddof=1)) if len(xs) > 1 else None
    return float(xs.mean()), sd, (sd / np.sqrt(len(xs)) if sd is not None else None), len(xs)


def summarise(records: list[dict], keys: tuple[str, ...], values: tuple[str, ...]) -> list[dict]:
    """Mean, standard deviation and standard error of ``values`` over records grouped by ``keys``
    (groups in first-seen order; missing and non-finite values skipped)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    rows = []
    for key, members in groups.items():
        row = dict(zip(keys, key))
        for v in values:
            mean, sd, sem, count = _stats([r.get(v) for r in members])
            row.update({v: rounded(mean), f"{v}_sd": rounded(sd), f"{v}_sem": rounded(sem), f"{v}_n": count})
        rows.append(row)
    return rows


def map_label(map_model: str, method: str) -> str:
    if method == "focus":
        return "MGNet focus map"
    if method == "random":
        return "random map"
    return f"{map_model} · {explain.METHODS[method].label}"


@dataclass
class MetricsRun:
    """The records and curves gathered image by image."""

    settings: FigureSettings
    models: dict
    records: list = field(default_factory=list)
    curves: list = field(default_factory=list)  # per image: every curve
    images: list = field(default_factory=list)  # per image: path, label, hash, predictions
    mean_curves: dict = field(default_factory=dict)  # (mode, scored on, map) -> [probs per image]
    correct: dict = field(default_factory=dict)  # role -> [prediction == true label]
    area: list = field(default_factory=list)  # per image: area share of the glimpse boxes
    fractions: object = None

    @property
    def roles(self) -> list[str]:
        return [r for r in ROLES if r in self.models]

    def n_glimpses(self, role: str):
        return glimpse_options(self.models[role], self.settings.n_glimpses).get("n_glimpses")


def captum_scores(run: MetricsRun, role: str, method: str, att, x) -> dict:
    """Captum's infidelity and max-sensitivity of one saliency map on the model it explains."""
    settings, model = run.settings, run.models[role]
    fw = glimpse_options(model, settings.n_glimpses, settings.s_grad)
    scores = {}
    if settings.infidelity and method != "gradcam":
        scores["infidelity"] = metrics.infidelity(model, x, method, attribution=att, seed=settings.seed, **fw)
    if settings.sensitivity:
        scores["sensitivity"] = metrics.sensitivity(
            model,
            x,
            method,
            att.target,
            seed=settings.seed,
            **fw,
            **settings.method_options.get(method, {}),
        )
    return scores


def image_maps(run: MetricsRun, index: int, inputs: dict, targets: dict, focus: np.ndarray) -> list:
    """(map's model, method, map, (role, attribution) or None) of every map scored on one image."""
    settings, size = run.settings, run.models["mgnet"].image_size
    maps = [("MGNet", "focus", focus, None)]
    for role in settings.models:
        for method in settings.methods:
            att = explain_with(settings, run.models[role], inputs[role], method, targets[role])
            maps.append((ROLE_LABELS[role], method, att.map, (role, att)))
    generator = np.random.default_rng([settings.seed, index])
    maps.append(("reference", "random", generator.random((size, size)).astype(np.float32), None))
    return maps


def score_map(run: MetricsRun, shown: str, label, inputs, targets, boxes_model, focus, one_map) -> list:
    """Records and curves of one map on one image, scored on every model."""
    settings = run.settings
    map_model, method, saliency, origin = one_map
    inside, iou = metrics.glimpse_agreement(saliency, boxes_model, focus, settings.topk)
    inside = 0.0 if inside is None else inside  # a single glimpse: no later box holds any mass
    captum = captum_scores(run, origin[0], method, origin[1], inputs[origin[0]]) if origin else {}
    curves = map_curves(
        run.models, inputs, targets, saliency, settings.steps, settings.fill, {r: run.n_glimpses(r) for r in run.roles}
    )
    image_curves = []
    for role in run.roles:
        relation = "reference" if map_model == "reference" else "own" if map_model == ROLE_LABELS[role] else "cross"
        deletion, insertion = curves[role]["deletion"], curves[role]["insertion"]
        record = {
            "image": shown,
            "label": label,
            "map_model": map_model,
            "method": method,
            "map": map_label(map_model, method),
            "scored_on": ROLE_LABELS[role],
            "relation": relation,
            "target": int(targets[role]),
            "target_class": run.models[role].classes[targets[role]],
            "deletion_auc": rounded(deletion.auc),
            "insertion_auc": rounded(insertion.auc),
            "mass_inside": rounded(inside),
            "topk_iou": rounded(iou),
            "infidelity": rounded(captum.get("infidelity")) if relation == "own" else None,
            "sensitivity": rounded(captum.get("sensitivity")) if relation == "own" else None,
        }
        run.records.append(record)
        image_curves.append(
            {
                "map": record["map"],
                "scored_on": record["scored_on"],
                "deletion": rounded(deletion.probs, 5),
                "insertion": rounded(insertion.probs, 5),
            }
        )
        for mode, curve in (("deletion", deletion), ("insertion", insertion)):
            run.mean_curves.setdefault((mode, ROLE_LABELS[role], record["map"]), []).append(curve.probs)
        run.fractions = deletion.fractions
    return image_curves


def score_image(run: MetricsRun, index: int, shown: str, label, photo, results: dict):
    """Every map of one photo; ``results``: each model's analysis of it."""
    settings, size = run.settings, run.models["mgnet"].image_size
    inputs = {r: to_model_input(photo, run.models[r].image_size) for r in run.roles}
    own = {r: results[r].predicted() for r in run.roles}
    targets = {
        r: (own[r] if settings.target is None else resolve_target(settings.target, run.models[r], own["mgnet"]))
        for r in run.roles
    }
    for r in run.roles:
        if label is not None:
            run.correct.setdefault(r, []).append(run.models[r].classes[own[r]] == label)
    boxes_model = results["mgnet"].boxes_model
    focus = focus_map(boxes_model, size, size)
    run.area.append(geometry.area_share(boxes_model[1:], size, size))
    image_curves = []
    for one_map in image_maps(run, index, inputs, targets, focus):
        image_curves += score_map(run, shown, label, inputs, targets, boxes_model, focus, one_map)
    run.curves.append({"image": shown, "curves": image_curves})
    run.images.append(
        {
            "path": shown,
            "label": label,
            "image_hash": image_hash(photo),
            "predictions": {ROLE_LABELS[r]: run.models[r].classes[own[r]] for r in run.roles},
        }
    )


def summary_of(run: MetricsRun) -> dict:
    records = run.records
    mean_curves = [
        {"mode": mode, "scored_on": e, "map": m, "probs": rounded(np.mean(np.stack(v), axis=0), 5)}
        for (mode, e, m), v in run.mean_curves.items()
    ]
    return {
        "deletion_insertion": summarise(
            records, ("map", "map_model", "method", "scored_on", "relation"), ("deletion_auc", "insertion_auc")
        ),
        "agreement": summarise(
            [r for r in records if r["scored_on"] == "MGNet"],
            ("map", "map_model", "method"),
            ("mass_inside", "topk_iou"),
        ),
        "captum": summarise(
            [r for r in records if r["relation"] == "own" and r["method"] not in ("focus", "random")],
            ("map", "scored_on"),
            ("infidelity", "sensitivity"),
        ),
        "accuracy": {
            ROLE_LABELS[r]: (rounded(np.mean(run.correct[r])) if run.correct.get(r) else None) for r in run.roles
        },
        "chance_mass_inside": rounded(np.mean(run.area)),
        "fractions": rounded(run.fractions, 6),
        "mean_curves": mean_curves,
    }


def run_metrics(settings: FigureSettings, models: dict, items, staging: Staging, device, progress: bool = True) -> dict:
    """Score every map of every image and write the tables, curves and plots; returns metrics.json."""
    run = MetricsRun(settings, models)
    labels = true_labels(models["mgnet"], [p for _, p in items])
    bar = progress_bar(len(items), "metrics", progress)
    for lo in range(0, len(items), settings.batch_size):
        chunk = items[lo : lo + settings.batch_size]
        photos = decode_images(chunk)
        results = {r: analyze_batch(models[r], photos, run.n_glimpses(r), settings.batch_size) for r in run.roles}
        for j, photo in enumerate(photos):
            score_image(run, lo + j, chunk[j][0], labels[lo + j], photo, {r: results[r][j] for r in run.roles})
            bar.update(1)
    bar.close()
    summary = summary_of(run)
    exporter = Exporter(staging, list(settings.output.formats), settings.output.dpi)
    plot_files = write_plots(run, summary, exporter, len(items))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in run.records:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
    staging.write("metrics.csv", buf.getvalue())
    staging.write("metrics.md", metrics_markdown(settings, models, items, summary))
    doc = dict(
        settings.to_json(),
        images=run.images,
        summary=summary,
        records=run.records,
        files=sorted(["metrics.csv", "metrics.md", "metrics.json", "curves.json"] + plot_files),
        export_problem=exporter.problem,
        environment=environment(device),
    )
    staging.write_json("metrics.json", doc)
    staging.write_json(
        "curves.json", {"schema": doc["schema"], "fractions": summary["fractions"], "images": run.curves}
    )
    return doc


def _bars(rows: list, key: str) -> dict:
    return {row["map"]: (row[key] or 0.0, row[f"{key}_sem"] or 0.0) for row in rows}


def write_plots(run: MetricsRun, summary: dict, exporter: Exporter, n_images: int) -> list[str]:
    """Mean deletion/insertion curves per scoring model, AUC bars, and agreement bars."""
    files = []
    for mode in ("deletion", "insertion"):
        for role in run.roles:
            series = {
                row["map"]: row["probs"]
                for row in summary["mean_curves"]
                if row["mode"] == mode and row["scored_on"] == ROLE_LABELS[role]
            }
            fig = plots.sweep_figure(
                summary["fractions"],
                series,
                f"fraction of pixels {'deleted' if mode == 'deletion' else 'inserted'}",
                ylabel="probability of the predicted class",
                title=f"{mode.capitalize()} curves scored on {ROLE_LABELS[role]} (mean of {n_images} images)",
                height=460,
            )
            fig.update_layout(
                width=760,
                legend=dict(orientation="h", x=0, y=-0.2, yanchor="top", xanchor="left"),
                margin=dict(l=60, r=20, t=45, b=150),
            )
            files += exporter.write(fig, f"{mode}-{role}")
        bars = {
            ROLE_LABELS[role]: _bars(
                [r for r in summary["deletion_insertion"] if r["scored_on"] == ROLE_LABELS[role]], f"{mode}_auc"
            )
            for role in run.roles
        }
        better = "lower" if mode == "deletion" else "higher"
        fig = plots.metric_bars_figure(
            bars,
            f"{mode} AUC ({better} is better)",
            title=f"{mode.capitalize()} AUC by map and scoring model (mean ± s.e.m.)",
            height=440,
        )
        fig.update_layout(width=760)
        files += exporter.write(fig, f"auc-{mode}")
    agreement = summary["agreement"]
    bars = {
        "mass inside glimpse boxes": _bars(agreement, "mass_inside"),
        f"top-{run.settings.topk:.0%} IoU with focus map": _bars(agreement, "topk_iou"),
    }
    fig = plots.metric_bars_figure(
        bars,
        "agreement with MGNet's glimpses",
        yrange=[0, 1],
        title="Agreement of each map with where MGNet looked (mean ± s.e.m.)",
        height=440,
    )
    fig.update_layout(width=760)
    files += exporter.write(fig, "agreement")
    return files


def _fmt(mean, sem, nd=3) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{nd}f}" + (f" ± {sem:.{nd}f}" if sem is not None else "")


def metrics_markdown(settings: FigureSettings, models: dict, items, summary: dict) -> str:
    lines = ["# Focus vs saliency: deletion, insertion and agreement", ""]
    lines.append(
        f"{len(items)} images from `{', '.join(settings.images)}`"
        + (f" (--limit {settings.limit}, spread evenly over the sorted file list)" if settings.limit else "")
        + f"; seed {settings.seed}."
    )
    for role, model in models.items():
        info = model.checkpoint_info
        lines.append(
            f"- {ROLE_LABELS[role]}: `{settings.checkpoints[role].path}` (sha256 `{info['sha256'][:16]}…`, "
            f"{model.n_glimpses} glimpse{'s' if model.n_glimpses > 1 else ''}, {model.image_size} px)"
        )
    acc = summary["accuracy"]
    if any(v is not None for v in acc.values()):
        lines.append(
            "- Top-1 accuracy on these images: " + ", ".join(f"{k} {v:.1%}" for k, v in acc.items() if v is not None)
        )
    methods = ", ".join(explain.METHODS[m].label for m in settings.methods) or "none"
    lines += [
        "",
        f"Saliency maps: {methods}, for {', '.join(ROLE_LABELS[m] for m in settings.models)}; each explains "
        "its model's final prediction" + ("" if settings.target is None else f" (target: {settings.target})") + ".",
        "MGNet's focus map spreads one unit of mass over each glimpse box 2..T (`analysis.focus_map`). "
        "The random map (uniform noise) gives the chance level.",
        "",
    ]
    fills = {"blur": "a strongly blurred copy of the image", "black": "black"}
    lines += [
        "## Deletion and insertion AUC",
        "",
        f"Pixels of the model input are ranked by the map and changed in {settings.steps} steps (Petsiuk et al. "
        f"2018): deletion replaces the most salient first with {fills[settings.fill]}, insertion "
        "starts from that and puts them back. The score is the scoring model's softmax probability of its "
        "own clean prediction; AUC is the trapezoid area over the fraction changed. Deletion: lower is "
        "better; insertion: higher is better. *own*: the map explains the scoring model; *cross*: it "
        "explains the other model. Mean ± standard error over images.",
        "",
        "| map | scored on | relation | deletion AUC ↓ | insertion AUC ↑ |",
        "|---|---|---|---|---|",
    ]
    for row in summary["deletion_insertion"]:
        lines.append(
            f"| {row['map']} | {row['scored_on']} | {row['relation']} | "
            f"{_fmt(row['deletion_auc'], row['deletion_auc_sem'])} | "
            f"{_fmt(row['insertion_auc'], row['insertion_auc_sem'])} |"
        )
    k = f"{settings.topk:.0%}"
    lines += [
        "",
        "## Agreement with MGNet's glimpses",
        "",
        "*Mass inside*: share of the map's mass inside the union of MGNet's glimpse boxes 2..T (chance "
        f"level, the boxes' mean area share: {summary['chance_mass_inside']:.3f}). *Top-{k} IoU*: IoU of "
        f"the top {k} pixels of the map and of MGNet's focus map.",
        "",
        f"| map | mass inside glimpse boxes | top-{k} IoU with focus map |",
        "|---|---|---|",
    ]
    for row in summary["agreement"]:
        lines.append(
            f"| {row['map']} | {_fmt(row['mass_inside'], row['mass_inside_sem'])} | "
            f"{_fmt(row['topk_iou'], row['topk_iou_sem'])} |"
        )
    shown = [k for k in ("infidelity", "sensitivity") if getattr(settings, k)]
    if summary["captum"] and shown:
        heads = {"infidelity": "infidelity ↓", "sensitivity": "max-sensitivity ↓"}
        lines += ["", "## Captum metrics (on the explained model)", ""]
        if settings.infidelity:
            lines.append(
                "Infidelity (Yeh et al. 2019, `captum.metrics.infidelity`, Gaussian noise sd 0.03, "
                "normalised): lower is better; not defined for Grad-CAM."
            )
        if settings.sensitivity:
            lines.append(
                "Max-sensitivity (`captum.metrics.sensitivity_max`, uniform noise ±0.02): lower is more stable."
            )
        lines += ["", "| map | " + " | ".join(heads[k] for k in shown) + " |", "|---" * (len(shown) + 1) + "|"]
        for row in summary["captum"]:
            if all(row[k] is None for k in shown):
                continue
            lines.append(f"| {row['map']} | " + " | ".join(_fmt(row[k], row[f"{k}_sem"], 4) for k in shown) + " |")
    lines += [
        "",
        "Files: `metrics.csv` (one row per image × map × scoring model), `metrics.json` (settings, "
        "summary, rows), `curves.json` (every per-image curve), and the plots.",
        "",
    ]
    return "\n".join(lines)
