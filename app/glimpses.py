"""The glimpse view: step through what MGNet looked at, and what it believed after each look."""

from __future__ import annotations

import numpy as np
import streamlit as st

from mgnet import geometry, plots
from mgnet.analysis import display_crop, display_focus_map

from . import services, ui

STEP_KEY = "step"


def _clamp_step(n: int):
    cur = st.session_state.get(STEP_KEY, n)
    st.session_state[STEP_KEY] = int(min(max(int(cur), 1), n))


def _move(delta: int, n: int):
    st.session_state[STEP_KEY] = int(min(max(st.session_state.get(STEP_KEY, 1) + delta, 1), n))


def chosen_step() -> int | None:
    """The glimpse (1-based) the tab shows, for the export's record of the view."""
    return st.session_state.get(STEP_KEY)


def step_title(a, t: int) -> str:
    name, p = a.top(t, 1)[0]
    return f"glimpse {t + 1} of {a.n_glimpses}: {name} ({p:.0%})"


def step_form(entry, n: int) -> int:
    """The glimpse chosen with ◀ / slider / ▶ (0-based)."""
    _clamp_step(n)
    if n > 1:
        c_prev, c_slider, c_next = st.columns([1, 10, 1], vertical_alignment="bottom")
        c_prev.button(
            "◀",
            key="glimpse_prev",
            on_click=_move,
            args=(-1, n),
            disabled=st.session_state[STEP_KEY] <= 1,
            help="previous glimpse",
            width="stretch",
        )
        c_slider.slider(
            "Glimpse",
            1,
            n,
            key=STEP_KEY,
            bind="query-params",
            persist_state="session",
            help="Step through the glimpses. Nothing is recomputed: the run is cached.",
        )
        c_next.button(
            "▶",
            key="glimpse_next",
            on_click=_move,
            args=(1, n),
            disabled=st.session_state[STEP_KEY] >= n,
            help="next glimpse",
            width="stretch",
        )
    elif entry.is_baseline:
        st.info(f"{entry.short} is a baseline: it takes one full-resolution look, so there is one step.")
    else:
        st.info(
            f"{entry.short} runs 1 glimpse here: only its low-resolution look at the whole photo. Raise "
            "**Glimpses** in the sidebar to let it zoom in."
        )
    return st.session_state[STEP_KEY] - 1


def show_glimpse(photo, a, t: int):
    """Glimpse ``t``: its crop zoomed and as the network saw it, its parameters, compute and prediction."""
    box = a.boxes[t]
    c1, c2 = st.columns(2)
    with c1:
        ui.image(
            display_crop(photo.image, box, 256),
            f"glimpse {t + 1} zoomed",
            caption=f"Glimpse {t + 1}, zoomed (display resolution)",
        )
    with c2:
        ui.image(
            plots.nearest_upscale(a.seen[t], 256),
            f"glimpse {t + 1} as seen",
            caption=f"What the network saw: {a.glimpse_size}×{a.glimpse_size} px",
        )
    s, tx, ty = (float(v) for v in a.params[t])
    st.markdown(
        f"**Glimpse {t + 1} of {a.n_glimpses}** · scale s = `{s:.3f}`, tx = `{tx:+.3f}`, ty = `{ty:+.3f}`  \n"
        + box_text(photo.in_file_pixels(box), photo.file_size)  # also when decoded at reduced scale
    )
    spent = float(a.gflops[t])
    st.metric(
        "Compute so far",
        f"{spent:.2f} GFLOPs",
        f"{spent / a.baseline_gflops:.0%} of one baseline pass ({a.baseline_gflops:.2f} GFLOPs)",
        delta_color="off",
        delta_arrow="off",
    )
    name, p = a.top(t, 1)[0]
    st.metric(f"Prediction after glimpse {t + 1}", name, f"{p:.1%} confidence", delta_color="off", delta_arrow="off")


def box_text(box, size: tuple) -> str:
    """The box's place in the photo. The sampling grid of a glimpse reaches half a sample past the
    pixels it covers, so a whole-photo box reads -1..W+1: it is reported as the part inside the photo."""
    width, height = size
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    share = geometry.area_share([box], width, height)
    if share > 0.995:
        return f"Box: the whole photo ({width}×{height} px)"
    return (
        f"Box in the photo: x `{x0:.0f}–{x1:.0f}`, y `{y0:.0f}–{y1:.0f}` px "
        f"({x1 - x0:.0f}×{y1 - y0:.0f} px, {share:.0%} of the photo)"
    )


def show_charts(a, t: int, akey: tuple):
    """``akey`` names the analysis ``a`` (model, photo, glimpses): the figures are built once per step."""
    top = a.top(t, 5)
    c1, c2, c3 = st.columns(3, gap="medium")
    with c1:
        fig = services.figure(
            "top5", (*akey, t), lambda: plots.topk_figure(top, f"Top-5 after glimpse {t + 1}", highlight=top[0][0])
        )
        ui.figure(fig, "top-5", key="fig-top5")
    with c2:
        fig = services.figure("belief", (*akey, t), lambda: plots.belief_figure(a.probs, a.classes, step=t))
        ui.figure(fig, "belief across glimpses", key="fig-belief")
    with c3:
        fig = services.figure("compute", (*akey, t), lambda: plots.compute_figure(a.gflops, a.baseline_gflops, step=t))
        ui.figure(fig, "compute", key="fig-compute")


def render(photo, entry, a):
    """``a`` is the GlimpseAnalysis of ``photo`` by ``entry`` (cached: nothing here runs the model)."""
    n = a.n_glimpses
    akey = services.analysis_key(entry, photo, a)
    t = step_form(entry, n)
    left, right = st.columns([3, 2], gap="medium")
    with left:
        fig = services.figure(
            "glimpses",
            (*akey, t),
            lambda: plots.glimpse_figure(services.picture(photo), a.boxes, t, title=step_title(a, t), height=520),
        )
        ui.figure(fig, "glimpses on the photo", key="fig-glimpses")
        st.caption(
            "Each glimpse's box has its own colour and numbered tag, as in the figure tool's strips; the current "
            "one is bold. Glimpse 1 is always the whole photo (the frame just inside its edge). Boxes that land "
            "on the same place are drawn nested. The ◀ / slider / ▶ above drive everything on this tab."
        )
    with right:
        show_glimpse(photo, a, t)
    show_charts(a, t, akey)
    show_focus(photo, a, akey)
    if n > 1 and not entry.is_baseline:
        location_row(photo, entry, a, akey)


def show_focus(photo, a, akey: tuple):
    c1, c2 = st.columns([1, 1], gap="medium")
    with c1:
        if a.n_glimpses > 1:
            fig = services.figure(
                "focus",
                akey,
                lambda: plots.heatmap_figure(
                    services.picture(photo),
                    display_focus_map(a),
                    "Focus map: where MGNet looked",
                    boxes=a.boxes,
                    height=420,
                ),
            )
            ui.figure(fig, "focus map", key="fig-focus")
        else:
            st.info(
                "No focus map: with a single look at the whole photo there is no chosen place to show. "
                "(A baseline always takes one look; an MGNet needs 2 or more glimpses.)"
            )
    with c2:
        ui.explain(
            "- **Glimpses.** MGNet first looks at the whole photo at low resolution, then chooses where to look "
            "next: each later glimpse is a square crop, again downsampled to the same small size, so zooming "
            "in buys detail. The zoomed crop shows that region at display resolution; *what the network saw* "
            "shows its true pixels (nearest-neighbour enlargement, no smoothing).\n"
            "- **(s, tx, ty).** s is the crop's side as a fraction of the image side; tx, ty its centre in "
            "[-1, 1] coordinates (0 = image centre).\n"
            "- **Top-5 and belief.** MGNet predicts after every glimpse; the belief chart follows the classes "
            "it ever believed most. It is an *anytime* classifier: you can stop after any glimpse.\n"
            "- **Compute.** Multiply-accumulates of the backbone and heads, cumulative, against one pass of "
            "the same ResNet on the full-resolution image (the baseline).\n"
            "- **Focus map.** Each later glimpse spreads one unit of weight over its box (small boxes are "
            "concentrated), summed and scaled to a maximum of 1, on the same colour scale as the saliency "
            "maps of the Compare tab. The first, whole-image glimpse carries no location and is left out.",
            expanded=False,
        )


MATTERS = 0.05  # a change of P(class) under 5 points is "didn't matter"


def location_verdict(check, classes) -> tuple[bool, str]:
    """One line for this photo: did moving glimpses 2..T change the answer or the confidence?
    Returns (mattered, sentence)."""
    name = classes[check.target]
    own = classes[check.final_class["own"]]
    centre = classes[check.final_class["centre"]]
    moved = [classes[c] for c in check.final_class["moved"]]
    flipped = [c for c in moved if c != own]
    swing = float(np.abs(np.concatenate([[check.centre[-1]], check.moved[:, -1]]) - check.own[-1]).max())
    if centre != own:
        return True, f"Where MGNet looked changed its answer: centred glimpses give '{centre}' instead of '{own}'."
    if flipped:
        others = ", ".join(f"'{c}'" for c in dict.fromkeys(flipped))
        return True, (
            f"Where MGNet looked changed its answer at {len(flipped)} of {len(moved)} random positions "
            f"(they give {others} instead of '{own}')."
        )
    if swing >= MATTERS:
        return True, (
            f"Where MGNet looked changed its confidence, not its answer: P({name}) moves by up to "
            f"{100 * swing:.0f} points when the glimpses go elsewhere."
        )
    return False, (
        f"Where MGNet looked didn't matter here: P({name}) stays within ±{100 * swing:.0f} point"
        f"{'' if round(100 * swing) == 1 else 's'} wherever the glimpses go, so the boxes show where it looked, "
        "not why it decided."
    )


def location_row(photo, entry, a, akey: tuple):
    """Counterfactual: the same photo with glimpses 2..T moved (same scales)."""
    with st.spinner("Moving the glimpses…"):
        check = services.location_check(entry, photo, a.n_glimpses)
    name = a.classes[check.target]
    mattered, verdict = location_verdict(check, a.classes)
    (st.warning if mattered else st.info)(f"**Location check:** {verdict}")
    c1, c2 = st.columns([1, 1], gap="medium")
    with c1:
        fig = services.figure("location", akey, lambda: plots.location_check_figure(check, name))
        ui.figure(fig, "location check", key="fig-location")
    with c2:
        flipped = sum(c != check.target for c in check.final_class["moved"])
        centre_name = a.classes[check.final_class["centre"]]
        spread = check.moved[:, -1]
        st.markdown(
            f"**Does the location matter for this photo?** After all glimpses, P({name}) is "
            f"**{ui.pct(check.own[-1])}** with MGNet's own glimpses, {ui.pct(check.centre[-1])} with them "
            f"centred{'' if centre_name == name else f' (prediction: {centre_name})'}, and "
            f"{ui.pct(spread.min())}–{ui.pct(spread.max())} at {len(spread)} random positions "
            f"({flipped} of which change the prediction)."
        )
        ui.explain(
            "Glimpses 2 onwards are moved while keeping the size MGNet chose, and the model is told the new "
            "position as if it had chosen it. If the curves barely differ, the boxes above show where it "
            "looked but not why it decided: the whole-image first glimpse and the zoom carry the decision. "
            "The model card (`checkpoints/README.md`, *Where MGNet looks*) measures the same thing over the "
            "validation set. Random positions are fixed (seed 0), so the chart is reproducible.",
            title="How is this measured?",
        )
