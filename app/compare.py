"""Compare MGNet's focus map with Captum saliency maps of the baselines (and of MGNet itself).

form() -> CompareRequest, compute(request) -> CompareResult, show(result): the tab reads only its own
widgets, and every number comes from ``mgnet`` (``explain.explain``, ``metrics.glimpse_agreement``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import streamlit as st

from mgnet import explain, geometry, metrics, plots
from mgnet.analysis import display_focus_map, focus_map

from . import services, ui

DEFAULT_METHODS = ["saliency", "gradcam"]
PREDICTED = "predicted"
OWN = "each model's own prediction"
QP = dict(bind="query-params", persist_state="session")
TOPK = 0.2  # fraction of pixels for the IoU with the focus map

# Options of the slow methods a user may change (each method's ``tunable`` in the registry):
# (method, option, label, min, max, step).
OPTIONS = [
    (name, info.tunable.option, info.tunable.label, info.tunable.low, info.tunable.high, info.tunable.step)
    for name, info in explain.METHODS.items()
    if info.tunable is not None
]


def _method_label(m: str) -> str:
    return explain.METHODS[m].label + (" (slow)" if explain.METHODS[m].slow else "")


def target_options(a) -> list[str]:
    """Target choices: MGNet's prediction (default), each model's own, then every class by name."""
    return [PREDICTED, OWN] + list(a.classes)


def target_label(choice: str, a) -> str:
    return f"MGNet's prediction ({a.classes[a.predicted()]})" if choice == PREDICTED else choice


def resolve_target(choice: str, a, entry) -> int | None:
    if choice == PREDICTED:
        return a.predicted()
    if choice == OWN:
        return None
    return list(entry.model.classes).index(choice)


def figure_target(choice: str) -> str | None:
    """The target choice in the figure tool's terms (``FigureSettings.target``)."""
    return "mgnet" if choice == PREDICTED else None if choice == OWN else choice


def method_options(settings: dict, method: str) -> dict:
    """The options chosen for ``method`` that differ from the library's defaults."""
    out = {}
    for m, opt, *_ in OPTIONS:
        value = settings.get(f"{m}.{opt}")
        if m == method and value is not None and value != (explain.METHODS[m].defaults.get(opt) or 0):
            out[opt] = int(value) or None
    if out.get("window"):
        out["stride"] = max(1, out["window"] // 2)  # overlapping patches, as the default (S/8 window, S/16 stride)
    return out


@dataclass
class CompareRequest:
    """What the form asked for, and for which photo and model."""

    methods: list
    models: list  # names of the other models to explain
    target: str  # a choice of target_options
    include_self: bool
    true_grad: bool
    options: dict  # "method.option" -> value of the slow methods' inputs
    photo: str = ""
    model: str = ""

    def options_of(self, method: str) -> dict:
        return method_options(self.options, method)

    @property
    def method_options(self) -> dict:
        return {m: self.options_of(m) for m in self.methods}


@dataclass
class CompareResult:
    maps: dict = field(default_factory=dict)  # row label -> column label -> map (None: failed)
    captions: dict = field(default_factory=dict)  # (row, column) -> caption
    records: list = field(default_factory=list)  # one table row per computed map
    failures: list = field(default_factory=list)  # messages of the cells that failed


def form(photo, entry, a, cat) -> tuple[CompareRequest, bool]:
    methods_all = explain.available_methods(entry.model)
    others = [b for b in cat.models if b is not entry and services.compatible(entry, b)]
    with st.form("compare_form", border=True):
        c1, c2 = st.columns(2)
        methods = c1.multiselect(
            "Captum methods",
            methods_all,
            default=[m for m in DEFAULT_METHODS if m in methods_all],
            format_func=_method_label,
            key="methods",
            **QP,
            help="; ".join(f"{explain.METHODS[m].label}: {explain.METHODS[m].shows}" for m in methods_all),
        )
        bases = c2.multiselect(
            "Models to explain besides MGNet",
            [b.name for b in others],
            default=[b.name for b in others if b.is_baseline][:2],
            key="models",
            **QP,
            help="Baselines (and other MGNets) with the same classes and input size.",
        )
        c1, c2, c3 = st.columns([2, 1, 1])
        target = c1.selectbox(
            "Target class",
            target_options(a),
            index=0,
            key="target",
            **QP,
            format_func=lambda c: target_label(c, a),
            help="The class every map explains. By default MGNet's final prediction.",
        )
        include_self = c2.checkbox("Explain MGNet itself too", value=True, key="self", **QP)
        true_grad = c3.checkbox(
            "MGNet with true gradients",
            value=False,
            key="true_grad",
            **QP,
            help="Captum on MGNet normally sees its 0.02 gradient re-scaling on the localisation "
            "path (as the authors trained it). Tick to switch it off (s_grad = 1).",
        )
        with st.expander("Options of the slow methods"):
            options = {}
            for col, (m, opt, label, lo, hi, step) in zip(st.columns(len(OPTIONS)), OPTIONS):
                default = int(explain.METHODS[m].defaults.get(opt) or 0)
                options[f"{m}.{opt}"] = col.number_input(
                    label, lo, hi, value=default, step=step, key=f"opt_{m}_{opt}", **QP
                )
            st.caption(
                "More steps or samples give smoother, more faithful maps and take proportionally longer. "
                "Batches are bounded (internal_batch_size, perturbations_per_eval), so memory stays flat."
            )
        submitted = st.form_submit_button("Compute maps", type="primary")
    incompatible = [b for b in cat.models if b is not entry and not services.compatible(entry, b)]
    if incompatible:
        st.caption(
            "Not comparable with this MGNet (different classes or input size): "
            + ", ".join(b.short for b in incompatible)
        )
    request = CompareRequest(
        list(methods), list(bases), target, include_self, true_grad, options, photo=photo.key, model=entry.key
    )
    return request, submitted


def rows_of(request: CompareRequest, entry, cat) -> list[tuple[str, object]]:
    """(row label, model entry) of every model the request explains."""
    others = [b for b in cat.models if b is not entry and services.compatible(entry, b)]
    return ([(f"{entry.kind}: {entry.short}", entry)] if request.include_self else []) + [
        (b.short, b) for b in others if b.name in request.models
    ]


def estimate(request: CompareRequest, photo, entry, cat, n_glimpses) -> tuple[int, float]:
    """(forward passes, rough seconds) of a request, known before it runs: each method's passes
    (``explain.passes``) times the time of one analysis of the photo by that model (occlusion's passes
    are forward-only, about half the cost of a gradient pass)."""
    total, seconds = 0, 0.0
    for _, e in rows_of(request, entry, cat):
        per_pass = services.analyze(e, photo, n_glimpses).seconds
        for m in request.methods:
            k = explain.passes(m, e.model.image_size, request.options_of(m))
            total += k
            seconds += k * per_pass * (0.5 if m == "occlusion" else 1.0)
    return total, seconds


def compute(request: CompareRequest, photo, entry, a, cat, n_glimpses, progress=None) -> CompareResult:
    """Every model x method map, its agreement with the focus map, and the table rows; a failed cell is
    recorded and the others go on. ``progress(fraction, text)``."""
    s_grad = 1.0 if request.true_grad else None
    focus_model = focus_map(a.boxes_model, a.image_size, a.image_size)
    cells = [(label, e, m) for label, e in rows_of(request, entry, cat) for m in request.methods]
    # what "in boxes" would be for a map spread evenly over the photo: the boxes' share of it
    chance = geometry.area_share(a.boxes_model[1:], a.image_size, a.image_size) if a.n_glimpses > 1 else None
    result = CompareResult()
    for i, (label, e, method) in enumerate(cells):
        column = explain.METHODS[method].label
        result.maps.setdefault(label, {})[column] = None

        def report(done, total, i=i, label=label, column=column):
            if progress is not None:
                progress(
                    (i + (done / total if total else 1)) / len(cells),
                    f"{label} · {column}: {done}/{total} forward passes",
                )

        try:
            att = services.explain_image(
                e,
                photo.image,
                photo.key,
                method,
                resolve_target(request.target, a, e),
                n_glimpses,
                s_grad,
                0,
                report,
                request.options_of(method),
            )
        except Exception as exc:  # one failed cell must not take the grid down
            ui.log.exception("attribution failed")
            result.captions[(label, column)] = "failed"
            result.failures.append(f"{label} · {column} failed: {type(exc).__name__}: {exc}")
            continue
        result.maps[label][column] = att.map
        inside, iou = metrics.glimpse_agreement(att.map, a.boxes_model, focus_model, TOPK)
        result.captions[(label, column)] = (
            "map is zero everywhere"
            if att.empty
            else (f"in boxes {inside:.0%} (chance {chance:.0%})<br>" if inside is not None else "") + f"IoU {iou:.2f}"
        )
        result.records.append(
            {
                "model": label,
                "method": column,
                "class": e.model.classes[att.target],
                "in glimpse boxes": inside,
                "chance (boxes' share of the photo)": chance,
                "IoU with focus map": iou,
                "seconds": att.seconds,
            }
        )
    return result


def show(result: CompareResult, photo, a, key: tuple):
    """``key`` names the request and the analysis ``a``; a grid with failed cells is not kept."""
    for message in result.failures:
        st.error(message)

    def build():
        return plots.saliency_grid_figure(
            plots.downscale(photo.image, 640), result.maps, result.captions, boxes=a.boxes
        )

    fig = build() if result.failures else services.figure("compare-grid", key, build)
    ui.figure(fig, "saliency grid", key="fig-cmp-grid", width="content")
    if not result.records:
        return
    st.dataframe(
        pd.DataFrame(result.records),
        hide_index=True,
        width="stretch",
        column_config={
            "in glimpse boxes": st.column_config.ProgressColumn(
                format="percent",
                min_value=0.0,
                max_value=1.0,
                help="Share of the map's mass inside MGNet's glimpse boxes 2..T",
            ),
            "chance (boxes' share of the photo)": st.column_config.ProgressColumn(
                "chance",
                format="percent",
                min_value=0.0,
                max_value=1.0,
                help="The boxes' share of the photo: what 'in glimpse boxes' would be for a map spread evenly",
            ),
            "IoU with focus map": st.column_config.NumberColumn(
                "IoU", format="%.2f", help="IoU of the top-20% pixels of the map and of MGNet's focus map"
            ),
            "seconds": st.column_config.NumberColumn(format="%.2f"),
        },
    )
    ui.registry().settings["compare_table"] = result.records


def current_request(photo, entry) -> CompareRequest | None:
    """The last submitted request, carried over to a new photo or model unless it has slow methods."""
    request = st.session_state.get("cmp_request")
    if request is None or (request.photo == photo.key and request.model == entry.key):
        return request
    slow = [m for m in request.methods if explain.METHODS[m].slow]
    if slow:
        st.info(
            "The photo or model changed. Press **Compute maps** to explain this one "
            f"(slow methods selected: {', '.join(explain.METHODS[m].label for m in slow)})."
        )
        return None
    request = st.session_state["cmp_request"] = CompareRequest(
        **{**request.__dict__, "photo": photo.key, "model": entry.key}
    )
    return request


def render(photo, entry, a, cat, settings: dict):
    request, submitted = form(photo, entry, a, cat)
    if submitted or (st.session_state.get("cmp_request") is None and services.was_done("compare", request)):
        st.session_state["cmp_request"] = request  # a page address naming computed maps shows them at once
    akey = services.analysis_key(entry, photo, a)
    left, right = st.columns([1, 3], gap="medium")
    with left:
        fig = services.figure(
            "compare-focus",
            akey,
            lambda: plots.heatmap_figure(
                services.picture(photo), display_focus_map(a), "MGNet focus map", boxes=a.boxes, height=330
            ),
        )
        ui.figure(fig, "compare focus map", key="fig-cmp-focus")
        st.caption("Where MGNet looked (Glimpses tab). The maps below use the same colour scale.")
    result = None
    with right:
        had_request = st.session_state.get("cmp_request") is not None
        request = current_request(photo, entry)
        if request is None:
            if not had_request:
                st.info(
                    "Choose methods and models, then press **Compute maps**. Fast methods take a second; "
                    "those marked *slow* run many forward passes and show progress."
                )
            return
        n_cells = len(rows_of(request, entry, cat)) * len(request.methods)
        if not n_cells:
            st.warning("Nothing to compute: choose at least one method and one model.")
            return
        passes, seconds = estimate(request, photo, entry, cat, settings.get("n_glimpses"))
        about = f"{n_cells} map{'s' if n_cells > 1 else ''}, {passes} forward passes: {ui.rough_time(seconds)}"
        bar = st.progress(0.0, text=f"computing saliency maps ({about})…")
        result = compute(
            request,
            photo,
            entry,
            a,
            cat,
            settings.get("n_glimpses"),
            lambda fraction, text: bar.progress(min(fraction, 1.0), text=f"{text} ({about} in all)"),
        )
        bar.progress(1.0, text=f"{len(result.records)} of {n_cells} maps ready")
        services.mark_done("compare", request)
    if result is not None:  # the grid at the page's full width: its print layout is never squeezed
        show(result, photo, a, (*akey, *services.request_key("compare", request)))
    ui.explain(
        "- Each cell is one model's saliency map for the **target class** under one Captum method, overlaid on "
        "the photo. Maps are made non-negative and scaled to a maximum of 1 (Grad-CAM: ReLU then upsampled), "
        "so colours mean the same thing in every cell.\n"
        "- **in boxes**: the share of the map's total weight that falls inside MGNet's glimpse boxes 2..T "
        "(white outlines), beside *chance*: what it would be for a map spread evenly, the boxes' share of the "
        "photo. Well above chance: the map and the glimpses agree on where the evidence is.\n"
        "- **IoU**: overlap of the 20% highest pixels of the map with the 20% highest of MGNet's focus map "
        "(0 = disjoint, 1 = identical).\n"
        "- *Explain MGNet itself* runs Captum through all of MGNet's glimpses. Grad-CAM on MGNet uses the "
        "first (whole-image) glimpse, which is coarse."
    )
