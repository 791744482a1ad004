"""The figures command: glimpse strips, comparison grids and robustness grids, each with a sidecar JSON.

Every figure is drawn by a builder of :mod:`mgnet.plots`, the code the app uses, from numbers computed
by the library (``analysis``, ``explain``, ``metrics``, ``corruptions``, ``attacks``).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import corruptions, explain, geometry, metrics, plots
from ..analysis import analyze_batch, focus_map
from ..attacks import METHODS, attack
from ..checkpoints import file_sha256
from ..data import file_size, image_hash, to_model_input, to_uint8
from ..model import glimpse_options
from .inputs import resolve_target, safe_name, true_labels
from .settings import ROLE_LABELS, Attack, FigureSettings, UsageError
from .staging import Exporter, Staging, environment

ATTACK_WHERE = {"mgnet": "on MGNet", "baseline": "on baseline", "each": "white-box"}


def rounded(value, digits: int = 6):
    """Floats (or nested lists of them) rounded for JSON; non-finite values become None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return [rounded(v, digits) for v in value]
    value = float(value)
    return round(value, digits) if np.isfinite(value) else None


def prediction_text(classes, probs) -> str:
    i = int(np.argmax(probs))
    return f"{classes[i]} {float(probs[i]):.0%}"


def progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def explain_with(settings: FigureSettings, model, x, method: str, target):
    """``explain.explain`` with the run's glimpses, s_grad, seed and method options (baselines take neither
    glimpses nor s_grad)."""
    return explain.explain(
        model,
        x,
        method,
        target,
        seed=settings.seed,
        **glimpse_options(model, settings.n_glimpses, settings.s_grad),
        **settings.method_options.get(method, {}),
    )


@dataclass
class FigureRun:
    """What the three figure kinds share: settings, models, images, their analyses, and the outputs."""

    settings: FigureSettings
    models: dict
    items: list  # (display path, file) of each image
    photos: list  # decoded RGB uint8 photos
    staging: Staging
    device: object
    progress: bool = True
    outputs: list = field(default_factory=list)

    def __post_init__(self):
        settings = self.settings
        self.exporter = Exporter(self.staging, settings.output.formats, settings.output.dpi)
        self.labels = true_labels(self.models["mgnet"], [p for _, p in self.items])
        self.names = [f"{i + 1:03d}-{safe_name(Path(shown).stem)}" for i, (shown, _) in enumerate(self.items)]
        self.image_records = [
            {
                "path": shown,
                "file_sha256": file_sha256(path),
                "image_hash": image_hash(photo),
                "width": int(photo.shape[1]),  # as decoded: boxes are in these pixels
                "height": int(photo.shape[0]),
                "file_size": list(file_size(path)),  # a large JPEG decodes at 1/2 to 1/8 of it (PHOTO_MIN_SIDE)
                "label": label,
            }
            for (shown, path), photo, label in zip(self.items, self.photos, self.labels)
        ]
        self.public = settings.to_json()
        self.environment = environment(self.device)

    def width_px(self, kind: str) -> float:
        return self.settings.output.width_px(kind, plots.PX_PER_INCH)

    def write(self, fig, stem: str, kind: str, indices: list[int], data):
        """The figure in every format, and its sidecar: the settings, the images it shows, and its numbers."""
        files = self.exporter.write(fig, stem)
        doc = dict(
            self.public,
            images=[self.items[i][0] for i in indices],
            figures=[kind],
            figure=kind,
            files=files,
            image_records=[self.image_records[i] for i in indices],
            data=data,
            environment=self.environment,
        )
        self.staging.write_json(f"{stem}.json", doc)
        self.outputs.extend(files + [f"{stem}.json"])


def run_figures(
    settings: FigureSettings, models: dict, items, photos, staging: Staging, device, progress: bool = True
) -> dict:
    """Compute and write every figure; returns the manifest (also written as figures.json)."""
    run = FigureRun(settings, models, items, photos, staging, device, progress)
    bar = progress_bar(len(photos), "glimpses", progress)
    analyses = analyze_batch(models["mgnet"], photos, settings.n_glimpses, settings.batch_size, bar.update)
    bar.close()
    if "strip" in settings.figures:
        write_strips(run, analyses)
    if "grid" in settings.figures:
        write_grids(run, analyses)
    if "robustness" in settings.figures:
        write_robustness(run)
    manifest = dict(
        run.public,
        images=[shown for shown, _ in items],
        image_records=run.image_records,
        files=sorted(run.outputs),
        export_problem=run.exporter.problem,
        environment=run.environment,
    )
    staging.write_json("figures.json", manifest)
    return manifest


# -- glimpse strips --------------------------------------------------------------------------------------
def write_strips(run: FigureRun, analyses):
    for i, result in enumerate(analyses):
        captions = [prediction_text(result.classes, result.probs[t]) for t in range(result.n_glimpses)]
        label = run.labels[i]
        fig = plots.glimpse_strip_figure(
            run.photos[i],
            result.boxes,
            list(result.seen),
            captions,
            title=run.items[i][0] if run.settings.output.titles else None,
            photo_caption=f"true: {label}" if label else "",
            width=run.width_px("strip"),
            font_size=run.settings.output.font_size,
        )
        run.write(
            fig,
            f"strip-{run.names[i]}",
            "strip",
            [i],
            {
                "boxes": rounded(result.boxes.tolist(), 3),
                "glimpse_params": rounded(result.params.tolist()),
                "glimpse_size": result.glimpse_size,
                "image_size": result.image_size,
                "after_glimpse": [
                    {"class": result.classes[int(np.argmax(p))], "index": int(np.argmax(p)), "prob": rounded(np.max(p))}
                    for p in result.probs
                ],
            },
        )


# -- comparison grids ------------------------------------------------------------------------------------
def grid_row(run: FigureRun, i: int, result, mgnet_prediction: int) -> tuple[dict, dict]:
    """One image's row of the comparison grid (focus map, then every model x method) and its record."""
    settings, photo = run.settings, run.photos[i]
    size = run.models["mgnet"].image_size
    height, width = photo.shape[:2]
    focus_model = focus_map(result.boxes_model, size, size)
    maps = {"focus": focus_map(result.boxes, width, height)}
    captions = {"focus": prediction_text(result.classes, result.probs[-1])}
    record = {"image": run.items[i][0], "mgnet_prediction": result.classes[result.predicted()], "maps": {}}
    for role in settings.models:
        model = run.models[role]
        x = to_model_input(photo, model.image_size)
        target = resolve_target(settings.target, model, mgnet_prediction)
        for method in settings.methods:
            att = explain_with(settings, model, x, method, target)
            inside, iou = metrics.glimpse_agreement(att.map, result.boxes_model, focus_model, settings.topk)
            inside = 0.0 if inside is None else inside  # a single glimpse: no later box holds any mass
            key = f"{role}:{method}"
            maps[key] = None if att.empty else att.map
            captions[key] = f"in boxes {inside:.0%}\nIoU {iou:.2f}"
            record["maps"][key] = {
                "target": att.target,
                "target_class": model.classes[att.target],
                "empty": att.empty,
                "mass_inside": rounded(inside),
                "topk_iou": rounded(iou),
            }
    row = dict(
        image=photo,
        label=run.labels[i] or Path(run.items[i][0]).stem[:24],
        maps=maps,
        boxes=result.boxes,
        captions=captions,
        photo_caption="",
    )
    return row, record


def write_grids(run: FigureRun, analyses):
    settings = run.settings
    mgnet_predictions = [result.predicted() for result in analyses]
    columns = ["focus"] + [f"{r}:{m}" for r in settings.models for m in settings.methods]
    titles = ["MGNet<br>focus map"] + [
        f"{ROLE_LABELS[r]}<br>{explain.METHODS[m].short}" for r in settings.models for m in settings.methods
    ]
    per_grid = settings.output.grid_rows
    bar = progress_bar(len(run.photos), "saliency maps", run.progress)
    for number, lo in enumerate(range(0, len(run.photos), per_grid), 1):
        indices = list(range(lo, min(lo + per_grid, len(run.photos))))
        rows, records = [], []
        for i in indices:
            row, record = grid_row(run, i, analyses[i], mgnet_predictions[i])
            rows.append(row)
            records.append(record)
            bar.update(1)
        fig = plots.comparison_grid_figure(
            rows,
            columns,
            column_titles=titles,
            width=run.width_px("grid"),
            font_size=settings.output.font_size,
            title="Focus vs saliency" if settings.output.titles else None,
        )
        run.write(
            fig,
            f"grid-{number:02d}",
            "grid",
            indices,
            {
                "columns": columns,
                "caption_meaning": (
                    "in boxes: share of the map's mass inside MGNet's glimpse boxes 2..T; IoU: IoU of the top "
                    f"{settings.topk:.0%} pixels of the map and of MGNet's focus map; under the focus map: MGNet's "
                    "final prediction"
                ),
                "rows": records,
            },
        )
    bar.close()


# -- robustness grids ------------------------------------------------------------------------------------
def adversarial_images(
    source, clean: list[np.ndarray], labels: list[int], spec: Attack, n_glimpses, seed: int, batch_size: int
) -> list[np.ndarray]:
    """8-bit adversarial versions (source's input size) of the clean photos, crafted on ``source``."""
    device = next(source.parameters()).device
    out = []
    for lo in range(0, len(clean), batch_size):
        x = torch.cat([to_model_input(im, source.image_size) for im in clean[lo : lo + batch_size]]).to(device)
        y = torch.tensor(labels[lo : lo + batch_size], device=device)
        adv = attack(
            source,
            x,
            y,
            spec.method,
            spec.eps,
            true_gradients=spec.true_grad,
            n_glimpses=n_glimpses,
            seed=seed,
            **spec.options(),
        )
        out += to_uint8(adv.images)
    return out


def attack_label(spec: Attack) -> str:
    norm = "" if spec.norm == "linf" else " L2"
    grad = ", true grad" if spec.true_grad else ""
    return f"{METHODS[spec.method].short}{norm} ε={spec.eps:g}/255<br>{ATTACK_WHERE[spec.source]}{grad}"


def attack_condition(run: FigureRun, work: list, spec: Attack, clean_predictions: dict):
    """(row label, {role: the images that model sees}, description) of one attack row."""
    settings = run.settings
    sources = ["mgnet", "baseline"] if spec.source == "each" else [spec.source]
    if "baseline" in sources and "baseline" not in run.models:
        if spec.source == "baseline":
            raise UsageError("an attack crafted on the baseline needs a baseline checkpoint.")
        sources = ["mgnet"]
    seed = settings.attack_seed(spec)
    adversarial = {
        r: adversarial_images(
            run.models[r], work, clean_predictions[r], spec, settings.n_glimpses, seed, settings.batch_size
        )
        for r in sources
    }
    seen = {"mgnet": adversarial[sources[0]], "baseline": adversarial[sources[-1]]}
    return attack_label(spec), seen, dict(kind="attack", **dataclasses.asdict(spec) | {"seed": seed})


def conditions(run: FigureRun, work: list) -> list:
    """The rows of every robustness grid: clean, each corruption, each attack. The MGNet row and the
    baseline cell of an attack may see different images (each model attacked white-box)."""
    settings = run.settings
    rows = [("clean", {"mgnet": work, "baseline": work}, {"kind": "clean"})]
    bar = progress_bar(len(work) * (len(settings.corruptions) + len(settings.attacks)), "perturbing", run.progress)
    for spec in settings.corruptions:
        seed = settings.corruption_seed(spec)
        bad = []
        for image in work:
            bad.append(corruptions.corrupt(image, spec.name, spec.severity, seed=seed))
            bar.update(1)
        rows.append(
            (
                f"{corruptions.label(spec.name)}<br>severity {spec.severity}",
                {"mgnet": bad, "baseline": bad},
                dict(kind="corruption", **dataclasses.asdict(spec) | {"seed": seed}),
            )
        )
    predictions = {
        r: [
            a.predicted()
            for a in analyze_batch(model, work, None if r == "baseline" else settings.n_glimpses, settings.batch_size)
        ]
        for r, model in run.models.items()
    }
    for spec in settings.attacks:
        rows.append(attack_condition(run, work, spec, predictions))
        bar.update(len(work))
    bar.close()
    return rows


def _at_aspect(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """An adversarial input (model size) stretched back to the photo's aspect; other images as they are."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def robustness_row(label: str, images: dict, info: dict, mgnet_results, baseline_results, i: int, width, height):
    result = mgnet_results[i]
    row = dict(
        label=label,
        image=_at_aspect(images["mgnet"][i], width, height),
        boxes=geometry.to_original(result.boxes_model, result.image_size, width, height),
        crops=list(result.seen),
        captions=[prediction_text(result.classes, result.probs[t]) for t in range(result.n_glimpses)],
    )
    entry = {
        "condition": info,
        "mgnet": [{"class": result.classes[int(np.argmax(p))], "prob": rounded(np.max(p))} for p in result.probs],
    }
    if baseline_results is not None:
        base = baseline_results[i]
        row.update(
            baseline_image=_at_aspect(images["baseline"][i], width, height),
            baseline_caption=prediction_text(base.classes, base.probs[-1]),
        )
        entry["baseline"] = {"class": base.classes[base.predicted()], "prob": rounded(base.probs[-1].max())}
    return row, entry


def write_robustness(run: FigureRun):
    settings = run.settings
    mgnet, baseline = run.models["mgnet"], run.models.get("baseline")
    work = [corruptions.working_image(p) for p in run.photos]
    results = []
    for label, images, info in conditions(run, work):
        on_mgnet = analyze_batch(mgnet, images["mgnet"], settings.n_glimpses, settings.batch_size)
        on_baseline = (
            analyze_batch(baseline, images["baseline"], None, settings.batch_size) if baseline is not None else None
        )
        results.append((label, images, info, on_mgnet, on_baseline))
    for i in range(len(run.photos)):
        height, width = work[i].shape[:2]
        rows, data = zip(*(robustness_row(*result, i, width, height) for result in results))
        fig = plots.robustness_grid_figure(
            list(rows),
            width=run.width_px("robustness"),
            font_size=settings.output.font_size,
            title=run.items[i][0] if settings.output.titles else None,
        )
        run.write(
            fig,
            f"robustness-{run.names[i]}",
            "robustness",
            [i],
            {
                "rows": list(data),
                "note": (
                    "Corruptions are applied to the photo at shorter side 224 px; attacks change the model-size input "
                    "(8-bit, as saved), shown stretched back to the photo's aspect. Untargeted attacks push away from "
                    "the crafting model's clean prediction."
                ),
            },
        )
