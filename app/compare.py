"""Compare MGNet's focus map with Captum saliency maps of the baselines (and of MGNet itself)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from mgnet import explain as mx
from mgnet import plots
from mgnet.analysis import focus_map

from . import services, ui

DEFAULT_METHODS = ["saliency", "gradcam"]
OWN = "each model's own prediction"
QP = dict(bind="query-params", persist_state="session")


def _method_label(m: str) -> str:
    return mx.METHODS[m].label + (" (slow)" if mx.METHODS[m].slow else "")


PREDICTED = "predicted"


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


# Options of the slow methods a user may change: (method, option, label, min, max, step).
OPTIONS = [("integrated_gradients", "n_steps", "Integrated Gradients: steps", 4, 256, 4),
           ("smoothgrad", "nt_samples", "SmoothGrad: noisy samples", 2, 128, 2),
           ("gradient_shap", "n_samples", "GradientSHAP: samples", 2, 128, 2),
           ("occlusion", "window", "Occlusion: patch side in px (0 = 1/8 of the input)", 0, 128, 1)]


def method_options(settings: dict, method: str) -> dict:
    """The options chosen for ``method`` that differ from the library's defaults."""
    out = {}
    for m, opt, *_ in OPTIONS:
        value = settings.get(f"{m}.{opt}")
        if m == method and value is not None and value != (mx.METHODS[m].defaults.get(opt) or 0):
            out[opt] = int(value) or None
    if out.get("window"):
        out["stride"] = max(1, out["window"] // 2)  # overlapping patches, as the default (S/8 window, S/16 stride)
    return out


def attribution(entry, photo, method: str, target: int | None, n_glimpses, s_grad, seed: int, progress=None,
                options: dict | None = None):
    return services.explain_image(entry, photo.image, photo.key, method, target, n_glimpses, s_grad, seed, progress,
                                  options)


def agreement(att_map: np.ndarray, a, fmap_model: np.ndarray) -> tuple[float | None, float]:
    """(share of the map's mass inside MGNet's glimpse boxes 2..T, top-20% IoU with the focus map),
    both on MGNet's input grid."""
    s = a.image_size
    m = mx.to_photo(att_map, s, s)
    boxes = np.asarray(a.boxes_model)[1:]
    inside = mx.mass_inside(m, boxes, s, s) if len(boxes) else None
    return inside, mx.topk_iou(m, fmap_model, 0.2)


def render(photo, entry, a, cat, settings: dict):
    n_glimpses = settings.get("n_glimpses")
    methods_all = mx.available_methods(entry.model)
    others = [b for b in cat.models if b is not entry and services.compatible(entry, b)]
    incompatible = [b for b in cat.models if b is not entry and not services.compatible(entry, b)]
    default_base = [b.name for b in others if b.is_baseline][:2]

    with st.form("compare_form", border=True):
        c1, c2 = st.columns(2)
        methods = c1.multiselect("Captum methods", methods_all, default=[m for m in DEFAULT_METHODS if m in methods_all],
                                 format_func=_method_label, key="methods", **QP,
                                 help="; ".join(f"{mx.METHODS[m].label}: {mx.METHODS[m].shows}" for m in methods_all))
        bases = c2.multiselect("Models to explain besides MGNet", [b.name for b in others], default=default_base,
                               key="models", **QP, help="Baselines (and other MGNets) with the same classes and input size.")
        c1, c2, c3 = st.columns([2, 1, 1])
        target_choice = c1.selectbox("Target class", target_options(a), index=0, key="target", **QP,
                                     format_func=lambda c: target_label(c, a),
                                     help="The class every map explains. By default MGNet's final prediction.")
        include_self = c2.checkbox("Explain MGNet itself too", value=True, key="self", **QP)
        true_grad = c3.checkbox("MGNet with true gradients", value=False, key="true_grad", **QP,
                                help="Captum on MGNet normally sees its 0.02 gradient re-scaling on the localisation "
                                     "path (as the authors trained it). Tick to switch it off (s_grad = 1).")
        with st.expander("Options of the slow methods"):
            cols = st.columns(len(OPTIONS))
            opts = {}
            for col, (m, opt, label, lo, hi, step) in zip(cols, OPTIONS):
                default = int(mx.METHODS[m].defaults.get(opt) or 0)
                opts[f"{m}.{opt}"] = col.number_input(label, lo, hi, value=default, step=step,
                                                      key=f"opt_{m}_{opt}", **QP)
            st.caption("More steps or samples give smoother, more faithful maps and take proportionally longer. "
                       "Batches are bounded (internal_batch_size, perturbations_per_eval), so memory stays flat.")
        submitted = st.form_submit_button("Compute maps", type="primary")
    if incompatible:
        st.caption("Not comparable with this MGNet (different classes or input size): "
                   + ", ".join(b.short for b in incompatible))

    request = {"methods": list(methods), "models": list(bases), "target": target_choice, "self": include_self,
               "true_grad": true_grad, "options": opts}
    if submitted:
        st.session_state["cmp_request"] = dict(request, photo=photo.key, model=entry.key)
    req = st.session_state.get("cmp_request")
    fmap_model = focus_map(a.boxes_model, a.image_size, a.image_size)

    left, right = st.columns([1, 3], gap="medium")
    with left:
        from .glimpses import display_focus_map
        fmap, _ = display_focus_map(a)
        ui.figure(plots.heatmap_figure(services.picture(photo), fmap, "MGNet focus map", boxes=a.boxes, height=330),
                  "compare focus map", key="fig-cmp-focus")
        st.caption("Where MGNet looked (Glimpses tab). The maps on the right use the same colour scale.")
    with right:
        if not req:
            st.info("Choose methods and models, then press **Compute maps**. Fast methods take a second; "
                    "those marked *slow* run many forward passes and show progress.")
            return
        if req.get("photo") != photo.key or req.get("model") != entry.key:
            slow = [m for m in req["methods"] if mx.METHODS[m].slow]
            if slow:
                st.info("The photo or model changed. Press **Compute maps** to explain this one "
                        f"(slow methods selected: {', '.join(mx.METHODS[m].label for m in slow)}).")
                return
            req = st.session_state["cmp_request"] = dict(req, photo=photo.key, model=entry.key)
        rows = ([(f"{entry.kind}: {entry.short}", entry)] if req["self"] else []) + \
               [(b.short, b) for b in others if b.name in req["models"]]
        if not rows or not req["methods"]:
            st.warning("Nothing to compute: choose at least one method and one model.")
            return
        s_grad = 1.0 if req["true_grad"] else None
        maps: dict = {}
        captions: dict = {}
        records = []
        cells = [(label, e, m) for label, e in rows for m in req["methods"]]
        bar = st.progress(0.0, text="computing saliency maps…")
        for i, (label, e, method) in enumerate(cells):
            col = mx.METHODS[method].label
            maps.setdefault(label, {})[col] = None

            def progress(done, total, i=i, label=label, col=col):
                frac = (i + (done / total if total else 1)) / len(cells)
                bar.progress(min(frac, 1.0), text=f"{label} · {col}: {done}/{total} forward passes")
            target = resolve_target(req["target"], a, e)
            try:
                att = attribution(e, photo, method, target, n_glimpses, s_grad, 0, progress,
                                  method_options(req.get("options", {}), method))
            except Exception as exc:  # one failed cell must not take the grid down
                ui.log.exception("attribution failed")
                captions[(label, col)] = "failed"
                st.error(f"{label} · {col} failed: {type(exc).__name__}: {exc}")
                continue
            maps[label][col] = att.map
            inside, iou = agreement(att.map, a, fmap_model)
            captions[(label, col)] = ("map is zero everywhere" if att.empty else
                                      (f"in boxes {inside:.0%} · " if inside is not None else "") + f"IoU {iou:.2f}")
            records.append({"model": label, "method": col, "class": e.model.classes[att.target],
                            "in glimpse boxes": inside, "IoU with focus map": iou, "seconds": att.seconds})
        bar.progress(1.0, text=f"{len(records)} of {len(cells)} maps ready")
        fig = plots.attribution_grid(services.picture(photo, 320), maps, captions, boxes=a.boxes)
        ui.figure(fig, "saliency grid", key="fig-cmp-grid")
        if records:
            df = pd.DataFrame(records)
            st.dataframe(df, hide_index=True, width="stretch",
                         column_config={"in glimpse boxes": st.column_config.ProgressColumn(
                                            format="percent", min_value=0.0, max_value=1.0,
                                            help="Share of the map's mass inside MGNet's glimpse boxes 2..T"),
                                        "IoU with focus map": st.column_config.NumberColumn(
                                            format="%.2f", help="IoU of the top-20% pixels of the map and of "
                                                                "MGNet's focus map"),
                                        "seconds": st.column_config.NumberColumn(format="%.2f")})
            ui.registry().settings["compare_table"] = records
    ui.explain(
        "- Each cell is one model's saliency map for the **target class** under one Captum method, overlaid on "
        "the photo. Maps are made non-negative and scaled to a maximum of 1 (Grad-CAM: ReLU then upsampled), "
        "so colours mean the same thing in every cell.\n"
        "- **in boxes**: the share of the map's total weight that falls inside MGNet's glimpse boxes 2..T "
        "(white outlines). If the map were spread uniformly it would equal the boxes' share of the image.\n"
        "- **IoU**: overlap of the 20% highest pixels of the map with the 20% highest of MGNet's focus map "
        "(0 = disjoint, 1 = identical).\n"
        "- *Explain MGNet itself* runs Captum through all of MGNet's glimpses. Grad-CAM on MGNet uses the "
        "first (whole-image) glimpse, which is coarse.")
