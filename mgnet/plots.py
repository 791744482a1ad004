"""Plotly figure builders: plain results in, ``go.Figure`` out.

Pure functions with no Streamlit import: the app draws these figures and the figure CLI writes them
to files. Conventions shared by every builder:

* Photos are RGB uint8 arrays [H, W, 3] at full resolution. They are downscaled for the figure
  (``max_side``) but the axes stay in *edge coordinates of the original photo* (0 = left edge,
  W = right edge), the same coordinates as ``GlimpseAnalysis.boxes``; so a box is drawn as given.
* Maps (focus maps, attributions) are float arrays in [0, 1] of any resolution; they are stretched
  over the whole photo, which is how the model input relates to the photo (a plain resize).
* Every heat overlay uses :data:`HEAT_COLORSCALE` on the fixed range [0, 1], so maps from different
  models and methods are comparable by colour.
* Glimpse t (1-based in titles, 0-based in arguments) always has colour ``glimpse_color(t)``.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from .data import downscale
from .geometry import centre_shift, rescale

GLIMPSE_COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")
SERIES_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
# Inferno-like, transparent at 0 so the photo shows through where a map is empty.
HEAT_COLORSCALE = [
    [0.0, "rgba(0,0,4,0)"],
    [0.1, "rgba(40,11,84,0.25)"],
    [0.3, "rgba(101,21,110,0.5)"],
    [0.5, "rgba(159,42,99,0.65)"],
    [0.7, "rgba(212,72,66,0.75)"],
    [0.85, "rgba(245,125,21,0.82)"],
    [1.0, "rgba(252,255,164,0.9)"],
]
FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=13)
MAX_SIDE = 640
HEAT_CELLS = 112  # heat maps are area-averaged to at most this many cells per side for the page


def glimpse_color(t: int) -> str:
    return GLIMPSE_COLORS[t % len(GLIMPSE_COLORS)]


# -- images --------------------------------------------------------------------------------------------
def nearest_upscale(image: np.ndarray, side: int = 256) -> np.ndarray:
    """Blow a small image up by an integer factor with nearest neighbour, so its true pixels stay visible."""
    h, w = image.shape[:2]
    k = max(1, side // max(h, w))
    return np.repeat(np.repeat(image, k, axis=0), k, axis=1)


def data_uri(image: np.ndarray, fmt: str = "png", quality: int = 90, compress_level: int = 6) -> str:
    """The image as a data URI; ``compress_level`` (PNG, 0-9): 1 encodes several times faster than the
    default 6 for a slightly larger file."""
    buf = io.BytesIO()
    pil = Image.fromarray(np.ascontiguousarray(image))
    if fmt == "jpeg":
        pil.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        pil.save(buf, format="PNG", compress_level=compress_level)
    return f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode()


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


@dataclass(frozen=True)
class Picture:
    """A photo prepared for figures: an encoded thumbnail plus the photo's size, which its axes use.

    Every builder taking a photo accepts either an RGB uint8 array or a Picture; pass a Picture made once
    with :func:`picture` when drawing the same (large) photo many times, to skip downscaling and encoding.
    ``pixel_scale``: file pixels per photo pixel (x, y), for a photo decoded at reduced scale; pixel
    distances in labels and hover text are given in the file's pixels.
    """

    uri: str
    width: int  # of the photo as given (axes and boxes are in its pixels)
    height: int
    thumb_width: int
    thumb_height: int
    pixel_scale: tuple = (1.0, 1.0)


def picture(
    image: np.ndarray, max_side: int | None = MAX_SIDE, fmt: str = "jpeg", pixel_scale: tuple = (1.0, 1.0)
) -> Picture:
    h, w = image.shape[:2]
    small = downscale(image, max_side)
    scale = (float(pixel_scale[0]), float(pixel_scale[1]))
    return Picture(data_uri(small, fmt), int(w), int(h), int(small.shape[1]), int(small.shape[0]), scale)


def _picture(image, max_side: int | None, fmt: str = "jpeg") -> Picture:
    return image if isinstance(image, Picture) else picture(np.asarray(image), max_side, fmt)


def _image_trace(image, max_side: int | None = MAX_SIDE, name: str = "photo", fmt: str = "jpeg") -> go.Image:
    """The photo (array or Picture) as an image trace whose axes are in edge coordinates of the full photo."""
    pic = _picture(image, max_side, fmt)
    dx, dy = pic.width / pic.thumb_width, pic.height / pic.thumb_height
    return go.Image(source=pic.uri, x0=dx / 2, y0=dy / 2, dx=dx, dy=dy, name=name, hoverinfo="skip")


def _photo_axes(fig: go.Figure, width: int, height: int, row=None, col=None):
    kw = {} if row is None else dict(row=row, col=col)
    fig.update_xaxes(range=[0, width], visible=False, constrain="domain", **kw)
    fig.update_yaxes(
        range=[height, 0], visible=False, scaleanchor="x" if row is None else None, constrain="domain", **kw
    )


def _layout(fig: go.Figure, title: str | None, height: int | None = None, chart: bool = False, **kw) -> go.Figure:
    """Shared look. ``chart=True`` leaves room for axis titles and tick labels."""
    margin = dict(l=60, r=20, t=45 if title else 15, b=55) if chart else dict(l=10, r=10, t=40 if title else 10, b=10)
    fig.update_layout(
        title=dict(text=title, x=0.01, xanchor="left", font=dict(size=15)) if title else None,
        font=FONT,
        margin=kw.pop("margin", margin),
        paper_bgcolor="white",
        plot_bgcolor="white",
        **kw,
    )
    if height:
        fig.update_layout(height=height)
    return fig


def _rectangle_trace(box, label: str | None = None, **style) -> go.Scatter:
    """A box (x0, y0, x1, y1) drawn as a closed line, with ``label`` at its top-left corner; ``style``:
    any other go.Scatter arguments (line, opacity, name, hover)."""
    x0, y0, x1, y1 = [float(v) for v in box]
    if label is not None:
        style = dict(mode="lines+text", text=[label, "", "", "", ""], textposition="bottom right", **style)
    style.setdefault("mode", "lines")
    return go.Scatter(x=[x0, x1, x1, x0, x0], y=[y0, y0, y1, y1, y0], **style)


# -- glimpses -------------------------------------------------------------------------------------------
def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def drawn_boxes(boxes, width: int, height: int, inset: float) -> np.ndarray:
    """Boxes as drawn: kept ``inset`` inside the photo (the whole-image glimpse reaches half a sample past
    its edges, and would be clipped away), and a box that nearly coincides with earlier ones (IoU > 0.8)
    shrunk by ``inset`` per such box, so coincident glimpses show as nested outlines."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = boxes.copy()
    for t, b in enumerate(boxes):
        k = sum(_iou(b, boxes[j]) > 0.8 for j in range(t))
        pad = inset * (1 + 2 * k)
        out[t] = [max(b[0], pad), max(b[1], pad), min(b[2], width - pad), min(b[3], height - pad)]
        if k:  # shrink about the centre as well, in case the box lies well inside the photo
            shrink = np.array([1, 1, -1, -1]) * inset * 2 * k
            inner = b + shrink
            if inner[2] > inner[0] and inner[3] > inner[1]:
                out[t] = [
                    max(out[t][0], inner[0]),
                    max(out[t][1], inner[1]),
                    min(out[t][2], inner[2]),
                    min(out[t][3], inner[3]),
                ]
    return out


def _number_chip(fig: go.Figure, box, text: str, chips: list, chip: float, style: dict):
    """A box's number in a chip at the first corner no earlier chip uses (``_chip_corner``); ``style``:
    the annotation's colours, border, opacity and font."""
    cx, cy, xa, ya = _chip_corner(*box, chip, chip * 1.2, chips)
    fig.add_annotation(text=text, x=cx, y=cy, xanchor=xa, yanchor=ya, showarrow=False, **style)


def _glimpse_boxes(
    fig: go.Figure, boxes, shown: int, current: int | None, w: int, h: int, chip: float, scale=(1.0, 1.0)
):
    """Boxes 1..``shown`` in their glimpse colours, each numbered in a chip of its colour at a corner no
    other chip uses (the figure tool's strip language); ``current`` is drawn bold, the others thinner."""
    side = max(w, h)
    drawn = drawn_boxes(np.asarray(boxes)[:shown], w, h, inset=0.006 * side)
    chips: list = []
    for t, b in enumerate(drawn):
        x0, y0, x1, y1 = [float(v) for v in b]
        fx0, fy0, fx1, fy1 = rescale(b, *scale)
        bold = current is None or t == current
        fig.add_trace(
            _rectangle_trace(
                b,
                line=dict(color=glimpse_color(t), width=4 if bold else 2),
                opacity=1.0 if bold else 0.8,
                showlegend=False,
                name=f"glimpse {t + 1}",
                hovertemplate=f"glimpse {t + 1}<br>x {fx0:.0f}–{fx1:.0f} px<br>y {fy0:.0f}–{fy1:.0f} px<extra></extra>",
            )
        )
        _number_chip(
            fig,
            (x0, y0, x1, y1),
            f"<b>{t + 1}</b>",
            chips,
            chip,
            dict(
                bgcolor=glimpse_color(t),
                borderpad=2,
                opacity=1.0 if bold else 0.85,
                font=dict(FONT, size=15 if bold else 13, color="white"),
            ),
        )


def glimpse_figure(
    image: np.ndarray,
    boxes,
    step: int,
    title: str | None = None,
    max_side: int | None = MAX_SIDE,
    height: int | None = None,
) -> go.Figure:
    """The photo with glimpse boxes 1..step+1, each in its glimpse colour with its number in a chip of that
    colour (as in the figure tool's strip): the current one bold, earlier ones thinner. Glimpse 1 (the
    whole photo) is drawn just inside the photo's edge; boxes that coincide are drawn nested, and their
    chips take different corners."""
    boxes = np.asarray(boxes, dtype=np.float64)
    pic = _picture(image, max_side)
    w, h = pic.width, pic.height
    step = int(np.clip(step, 0, len(boxes) - 1))
    fig = go.Figure([_image_trace(pic)])
    _glimpse_boxes(fig, boxes, step + 1, step, w, h, chip=0.055 * max(w, h), scale=pic.pixel_scale)
    _photo_axes(fig, w, h)
    return _layout(fig, title, height)


def topk_figure(
    top: Sequence[tuple[str, float]],
    title: str | None = "Top-5 classes",
    highlight: str | None = None,
    height: int | None = 260,
) -> go.Figure:
    """Horizontal bars of (class, probability), highest on top; ``highlight`` marks one class."""
    names = [str(n) for n, _ in top][::-1]
    probs = [float(p) for _, p in top][::-1]
    colors = ["#d62728" if n == highlight else "#1f77b4" for n in names]
    fig = go.Figure(
        go.Bar(
            x=probs,
            y=names,
            orientation="h",
            marker_color=colors,
            text=[f"{p:.1%}" for p in probs],
            textposition="auto",
            hovertemplate="%{y}: %{x:.2%}<extra></extra>",
        )
    )
    fig.update_xaxes(range=[0, 1], tickformat=".0%", gridcolor="#eee")
    fig.update_yaxes(automargin=True)
    return _layout(fig, title, height, chart=True, margin=dict(l=10, r=20, t=45 if title else 15, b=40))


def belief_figure(
    probs,
    classes: Sequence[str],
    step: int | None = None,
    k: int = 5,
    title: str | None = "Belief across glimpses",
    height: int | None = 360,
) -> go.Figure:
    """Confidence of the ``k`` classes that were ever most believed, after each glimpse."""
    probs = np.asarray(probs, dtype=np.float64)
    n = probs.shape[0]
    order = list(np.argsort(-probs.max(axis=0))[:k])
    final = int(np.argmax(probs[-1]))
    if final not in order:
        order[-1] = final
    xs = list(range(1, n + 1))
    fig = go.Figure()
    for j, c in enumerate(order):
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=probs[:, c],
                mode="lines+markers",
                name=str(classes[c]),
                line=dict(color=SERIES_COLORS[j % len(SERIES_COLORS)], width=3 if c == final else 2),
                hovertemplate=f"{classes[c]}<br>glimpse %{{x}}: %{{y:.1%}}<extra></extra>",
            )
        )
    if step is not None:
        fig.add_vline(x=step + 1, line=dict(color="#888", dash="dash", width=1))
    return _per_glimpse_chart(fig, n, "probability", title, height)


def location_check_figure(
    check, class_name: str, title: str | None = "Does the location matter here?", height: int | None = 360
) -> go.Figure:
    """P(class) after each glimpse with MGNet's own glimpses, centred ones and randomly placed ones."""
    n = len(check.own)
    xs = list(range(1, n + 1))
    fig = go.Figure()
    for k, row in enumerate(check.moved):
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=row,
                mode="lines",
                line=dict(color="#bbb", width=1),
                name="random positions",
                legendgroup="moved",
                showlegend=k == 0,
                hovertemplate="random positions<br>glimpse %{x}: %{y:.1%}<extra></extra>",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=check.centre,
            mode="lines+markers",
            name="centred",
            line=dict(color=SERIES_COLORS[1], dash="dash", width=2),
            hovertemplate="centred<br>glimpse %{x}: %{y:.1%}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=check.own,
            mode="lines+markers",
            name="its own glimpses",
            line=dict(color=SERIES_COLORS[0], width=3),
            hovertemplate="its own glimpses<br>glimpse %{x}: %{y:.1%}<extra></extra>",
        )
    )
    return _per_glimpse_chart(fig, n, f"P({class_name})", title, height)


def _per_glimpse_chart(fig: go.Figure, n: int, ytitle: str, title: str | None, height: int | None) -> go.Figure:
    """Axes and layout of a probability-per-glimpse chart (glimpses 1..n on x, 0-100% on y)."""
    xs = list(range(1, n + 1))
    # plain numbers under an axis title, as the compute chart: "glimpse 1" labels tilt and clip in a narrow column
    fig.update_xaxes(title="after glimpse", tickvals=xs, range=[0.8, n + 0.2], gridcolor="#eee")
    fig.update_yaxes(title=ytitle, range=[0, 1.02], tickformat=".0%", gridcolor="#eee")
    return _layout(
        fig,
        title,
        height,
        chart=True,
        legend=dict(orientation="h", y=-0.42, x=0, yanchor="top"),  # below the axis title
        margin=dict(l=60, r=20, t=45 if title else 15, b=150),
    )


def compute_figure(
    cumulative_gflops: Sequence[float],
    baseline_gflops: float,
    step: int | None = None,
    title: str | None = "Compute spent so far",
    height: int | None = 260,
) -> go.Figure:
    """Cumulative GFLOPs after each glimpse, against one full-resolution baseline pass."""
    ys = [float(v) for v in cumulative_gflops]
    xs = [str(i + 1) for i in range(len(ys))]
    colors = [glimpse_color(i) if step is None or i <= step else "#ccc" for i in range(len(ys))]
    fig = go.Figure(
        go.Bar(
            x=xs,
            y=ys,
            marker_color=colors,
            text=[f"{v / baseline_gflops:.0%}" for v in ys],
            textposition="inside",
            hovertemplate="after glimpse %{x}: %{y:.3f} GFLOPs<extra></extra>",
            cliponaxis=False,
        )
    )
    fig.update_xaxes(title="after glimpse", type="category")
    fig.add_hline(
        y=baseline_gflops,
        line=dict(color="#d62728", dash="dash"),
        annotation_text=f"one baseline pass: {baseline_gflops:.2f} GFLOPs",
        annotation_position="top left",
    )
    fig.update_yaxes(title="GFLOPs", range=[0, max(max(ys), baseline_gflops) * 1.3], gridcolor="#eee")
    return _layout(fig, title, height, chart=True)


# -- heat maps ------------------------------------------------------------------------------------------
def _cells(heat: np.ndarray) -> np.ndarray:
    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"a heat map must be 2-D, got shape {heat.shape}")
    h, w = heat.shape
    if max(h, w) > HEAT_CELLS:
        f = HEAT_CELLS / max(h, w)
        heat = np.asarray(
            Image.fromarray(heat, mode="F").resize((max(1, round(w * f)), max(1, round(h * f))), Image.BOX)
        )
    return np.nan_to_num(heat)


def _heat_trace(heat: np.ndarray, width: int, height: int, showscale: bool, colorbar_title: str = "") -> go.Heatmap:
    cells = _cells(heat)
    ch, cw = cells.shape
    dx, dy = width / cw, height / ch
    return go.Heatmap(
        z=cells,
        x0=dx / 2,
        dx=dx,
        y0=dy / 2,
        dy=dy,
        zmin=0,
        zmax=1,
        colorscale=HEAT_COLORSCALE,
        showscale=showscale,
        hovertemplate="%{z:.2f}<extra></extra>",
        colorbar=dict(title=colorbar_title, thickness=12, len=0.8, tickvals=[0, 0.5, 1]),
    )


def heatmap_figure(
    image: np.ndarray,
    heat: np.ndarray,
    title: str | None = None,
    boxes=None,
    max_side: int | None = MAX_SIDE,
    showscale: bool = True,
    height: int | None = None,
) -> go.Figure:
    """A map in [0, 1] over the photo, on the shared colour scale; optional glimpse boxes on top."""
    pic = _picture(image, max_side)
    w, h = pic.width, pic.height
    fig = go.Figure([_image_trace(pic), _heat_trace(heat, w, h, showscale)])
    if boxes is not None:
        _glimpse_boxes(fig, boxes, len(boxes), None, w, h, chip=0.055 * max(w, h), scale=pic.pixel_scale)
    _photo_axes(fig, w, h)
    return _layout(fig, title, height)


def attribution_grid(
    image: np.ndarray,
    maps: Mapping[str, Mapping[str, np.ndarray | None]],
    captions: Mapping[tuple[str, str], str] | None = None,
    title: str | None = None,
    max_side: int = 256,
    cell_height: int = 270,
    boxes=None,
    row_images: Mapping[str, np.ndarray] | None = None,
    row_boxes: Mapping[str, np.ndarray] | None = None,
) -> go.Figure:
    """Grid of heat maps: one row per model, one column per method, on one shared colour scale.

    ``maps[row][col]`` is a map in [0, 1] (or None for a cell that failed or was not asked for);
    ``captions[(row, col)]`` is printed under a cell (e.g. agreement numbers). ``boxes`` (MGNet's
    glimpses, photo coordinates) are outlined in white on every cell, the first (whole-image) one left out.
    ``row_images`` / ``row_boxes`` give a row its own photo / boxes (e.g. rows "clean" and "corrupted").
    Column titles may contain ``<br>`` to wrap long labels.
    """
    rows = list(maps)
    cols = list(dict.fromkeys(c for r in rows for c in maps[r]))
    captions = captions or {}
    row_images, row_boxes = row_images or {}, row_boxes or {}
    n_rows, n_cols = len(rows), len(cols)
    fig = make_subplots(
        rows=n_rows,
        cols=n_cols,
        column_titles=cols,
        row_titles=rows,
        horizontal_spacing=0.03,
        vertical_spacing=min(0.12, 0.45 / n_rows),
    )
    first = True
    for i, r in enumerate(rows, 1):
        pic = _picture(row_images.get(r, image), max_side)
        w, h = pic.width, pic.height
        photo = _image_trace(pic)
        rb = row_boxes.get(r, boxes)
        for j, c in enumerate(cols, 1):
            fig.add_trace(photo, row=i, col=j)
            m = maps[r].get(c)
            if m is not None:
                trace = _heat_trace(m, w, h, showscale=first)
                trace.colorbar.update(
                    orientation="h",
                    y=-0.02,
                    yanchor="top",
                    x=0.5,
                    xanchor="center",
                    len=0.5,
                    thickness=10,
                    title=dict(text="attribution (0–1)", side="top"),
                )
                fig.add_trace(trace, row=i, col=j)
                first = False
            if rb is not None:
                for b in np.asarray(rb)[1:]:
                    fig.add_trace(
                        _rectangle_trace(
                            b, line=dict(color="white", width=1), opacity=0.7, showlegend=False, hoverinfo="skip"
                        ),
                        row=i,
                        col=j,
                    )
            note = captions.get((r, c)) or ("" if m is not None else "not available")
            if note:
                fig.add_annotation(
                    text=note, x=w / 2, y=h, yshift=-3, showarrow=False, yanchor="top", font=dict(size=12), row=i, col=j
                )
            _photo_axes(fig, w, h, row=i, col=j)
    for k in range(1, n_rows * n_cols + 1):
        suffix = "" if k == 1 else str(k)
        fig.layout[f"yaxis{suffix}"].scaleanchor = f"x{suffix}"
    wrapped = max((c.count("<br>") for c in cols), default=0)
    _layout(
        fig,
        title,
        cell_height * n_rows + 110 + 16 * wrapped,
        margin=dict(l=10, r=40, t=(60 if title else 35) + 16 * wrapped, b=70),
    )
    return fig


# -- robustness -----------------------------------------------------------------------------------------
def perturbation_image(
    clean: np.ndarray, adversarial: np.ndarray, amplify: float | None = None
) -> tuple[np.ndarray, float]:
    """The difference adversarial - clean (both uint8 or float in [0, 1]) as a mid-grey image, amplified.

    Returns (uint8 image, amplification used). By default the largest change is stretched to half the
    range, so any perturbation is visible; the factor is reported so it is never mistaken for the real size.
    """
    a = np.asarray(adversarial, dtype=np.float32)
    c = np.asarray(clean, dtype=np.float32)
    if a.max() > 1.5 or c.max() > 1.5:
        a, c = a / 255.0, c / 255.0
    delta = a - c
    peak = float(np.abs(delta).max())
    if amplify is None:
        amplify = 0.5 / peak if peak > 0 else 1.0
    img = np.clip(0.5 + delta * amplify, 0, 1)
    return (img * 255 + 0.5).astype(np.uint8), float(amplify)


def movement_figure(
    image: np.ndarray,
    boxes_a,
    boxes_b,
    labels=("clean", "changed"),
    title: str | None = None,
    max_side: int | None = MAX_SIDE,
    height: int | None = None,
) -> go.Figure:
    """How the glimpses moved: glimpses 2..T of two runs on one photo, each in its glimpse colour, solid
    with a filled number chip for run a and dashed with an outlined chip (number and a prime) for run b,
    an arrow from each a-centre to its b-centre labelled with the distance moved. The legend shows the two
    line styles in a neutral colour (the colours are the glimpses', as everywhere)."""
    pic = _picture(image, max_side)
    w, h = pic.width, pic.height
    a, b = (np.asarray(x, dtype=np.float64).reshape(-1, 4) for x in (boxes_a, boxes_b))
    fig = go.Figure(_image_trace(pic))
    for name, dash in ((labels[0], None), (labels[1], "dash")):  # legend keys: line style only
        fig.add_trace(
            go.Scatter(x=[None], y=[None], mode="lines", line=dict(color="#333", width=3, dash=dash), name=name)
        )
    chip = 0.05 * max(w, h)
    chips: list = []
    for run, boxes, dash in ((0, a, None), (1, b, "dash")):
        for t, box in enumerate(boxes[1:], 1):
            color = glimpse_color(t)
            x0, y0, x1, y1 = [float(v) for v in box]
            fx0, fy0, fx1, fy1 = rescale(box, *pic.pixel_scale)
            fig.add_trace(
                _rectangle_trace(
                    box,
                    line=dict(color=color, width=3, dash=dash),
                    showlegend=False,
                    name=f"{labels[run]}, glimpse {t + 1}",
                    hovertemplate=f"{labels[run]}, glimpse {t + 1}<br>x {fx0:.0f}–{fx1:.0f}, y {fy0:.0f}–{fy1:.0f}"
                    "<extra></extra>",
                )
            )
            _number_chip(
                fig,
                (x0, y0, x1, y1),
                f"<b>{t + 1}{'′' if run else ''}</b>",
                chips,
                chip,
                dict(
                    bgcolor=color if run == 0 else "white",
                    bordercolor=color,
                    borderwidth=2,
                    borderpad=1,
                    font=dict(FONT, size=13, color="white" if run == 0 else color),
                ),
            )
    sx, sy = pic.pixel_scale
    shift = centre_shift(rescale(a, sx, sy), rescale(b, sx, sy), w * sx, h * sy)
    for t in range(1, len(shift)):
        ca, cb = (a[t, :2] + a[t, 2:]) / 2, (b[t, :2] + b[t, 2:]) / 2
        moved = shift[t, 1] > 1e-3
        fig.add_annotation(
            x=cb[0],
            y=cb[1],
            ax=ca[0],
            ay=ca[1],
            xref="x",
            yref="y",
            axref="x",
            ayref="y",
            showarrow=bool(moved),
            arrowhead=2,
            arrowwidth=2,
            arrowcolor=glimpse_color(t),
            text=f"{shift[t, 0]:.0f} px" if moved else "did not move",
            font=dict(FONT, size=12, color="black"),
            bgcolor="rgba(255,255,255,0.8)",
        )
    _photo_axes(fig, w, h)
    return _layout(fig, title, height, legend=dict(orientation="h", y=-0.02, x=0, yanchor="top"))


def prediction_compare_figure(
    rows: Sequence[Mapping], title: str | None = "Predictions before and after", height: int | None = None
) -> go.Figure:
    """Grouped bars: for each model, confidence in the class it predicted on the clean photo, before and after,
    and, for a model whose answer changed, a third bar: its new class and its confidence in it.

    ``rows``: dicts with ``model``, ``before`` (prob), ``after`` (prob of the same class), and optionally
    ``before_label`` / ``after_label`` (the predicted class names) and ``after_new`` (prob of the new class).
    """
    models = [str(r["model"]) for r in rows]
    fig = go.Figure(
        [
            go.Bar(
                name="clean",
                x=models,
                y=[float(r["before"]) for r in rows],
                marker_color="#1f77b4",
                text=[r.get("before_label", "") for r in rows],
                textposition="inside",
                hovertemplate="%{x}<br>clean: %{y:.1%} (%{text})<extra></extra>",
            ),
            go.Bar(
                name="perturbed",
                x=models,
                y=[float(r["after"]) for r in rows],
                marker_color="#d62728",
                text=[r.get("after_label", "") for r in rows],
                textposition="inside",
                hovertemplate="%{x}<br>perturbed: %{y:.1%}; now predicts %{text}<extra></extra>",
            ),
        ]
    )
    changed = [r.get("after_label") not in (None, r.get("before_label")) for r in rows]
    if any(changed) and all("after_new" in r for r in rows):
        # a fooled model's new answer, with its confidence, beside the class it lost
        fig.add_trace(
            go.Bar(
                name="perturbed: its new class",
                x=models,
                y=[float(r["after_new"]) if c else 0.0 for r, c in zip(rows, changed)],
                marker_color="#ff7f0e",
                text=[f"now: {r['after_label']}" if c else "" for r, c in zip(rows, changed)],
                textposition="auto",
                hovertemplate="%{x}<br>%{text} (%{y:.1%})<extra></extra>",
            )
        )
    fig.update_layout(barmode="group")
    fig.update_yaxes(title="confidence", range=[0, 1], tickformat=".0%", gridcolor="#eee")
    return _layout(
        fig,
        title,
        height or 320,
        chart=True,
        legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"),
    )


def sweep_figure(
    xs: Sequence[float],
    series: Mapping[str, Sequence[float]],
    xlabel: str,
    ylabel: str = "confidence in the clean prediction",
    title: str | None = None,
    correct: Mapping[str, Sequence[bool]] | None = None,
    height: int | None = 340,
) -> go.Figure:
    """Lines of a quantity (usually confidence) against eps or severity, one per model.

    ``correct[name][i]`` marks points where the model still predicts its clean class (filled marker)
    or not (open marker).
    """
    fig = go.Figure()
    for j, (name, ys) in enumerate(series.items()):
        color = SERIES_COLORS[j % len(SERIES_COLORS)]
        ok = list(correct[name]) if correct and name in correct else None
        symbols = ["circle" if (ok is None or o) else "circle-open" for o in (ok or [None] * len(ys))]
        fig.add_trace(
            go.Scatter(
                x=list(xs),
                y=[float(v) for v in ys],
                mode="lines+markers",
                name=name,
                line=dict(color=color, width=2),
                marker=dict(symbol=symbols, size=9, color=color),
                hovertemplate=f"{name}<br>{xlabel} %{{x}}: %{{y:.1%}}<extra></extra>",
            )
        )
    fig.update_xaxes(title=xlabel, gridcolor="#eee")
    fig.update_yaxes(title=ylabel, range=[0, 1.02], tickformat=".0%", gridcolor="#eee")
    return _layout(
        fig, title, height, chart=True, legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom")
    )


# -- static export --------------------------------------------------------------------------------------
# -- paper figures (figure CLI; usable by the app too) -------------------------------------------------
# Physical sizing: a figure is laid out in CSS pixels at 96 per inch, which is how Chrome (and so kaleido)
# sizes SVG and PDF pages; PNG is rendered at ``scale = dpi / 96``. Font sizes are given in points.
PX_PER_INCH = 96.0


def pt_to_px(points: float) -> float:
    """Typographic points (1/72 in) to CSS pixels (1/96 in)."""
    return float(points) * PX_PER_INCH / 72.0


def _axis_name(k: int) -> str:
    return "" if k == 1 else str(k)


def _wrap_caption(text: str, max_chars: int) -> list[str]:
    """Lines of ``text`` (explicit breaks: newline or <br>), each wrapped at spaces to ``max_chars``."""
    lines = []
    for part in str(text).replace("<br>", "\n").split("\n"):
        words, line = part.split(" "), ""
        for word in words:
            if line and len(line) + 1 + len(word) > max_chars:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
    return lines


@dataclass
class _Grid:
    """Where everything of a panel grid goes, in CSS pixels of the figure (see ``panel_grid_figure``)."""

    width: float
    left: float
    right: float
    top: float
    bottom: float
    unit: float  # height of every row's panels
    col_w: list  # width of each column's panels
    col_x: list  # left edge of each column
    row_h: list  # height of each row, captions and gap included
    captions: list  # [row][column] -> caption lines
    fpx: float  # font size in px
    line_h: float

    @property
    def height(self) -> float:
        return self.top + sum(self.row_h) + self.bottom

    def fx(self, px: float) -> float:  # figure px (from the left edge) -> paper fraction of the plot area
        return (px - self.left) / (self.width - self.left - self.right)

    def fy(self, px: float) -> float:  # figure px (from the top edge) -> paper fraction (0 = bottom)
        return 1 - (px - self.top) / (self.height - self.top - self.bottom)

    def domain(self, a: float, b: float) -> list:  # an axis domain: fractions a rounding error past 0..1 clamped
        return [min(1.0, max(0.0, a)), min(1.0, max(0.0, b))]


def _grid_layout(
    rows, n_cols: int, column_titles, row_labels, title, width: float, font_size: float, gap, colorbar: bool
) -> _Grid:
    fpx = pt_to_px(font_size)
    gap = fpx * 0.35 if gap is None else float(gap)
    line_h = fpx * 1.22
    aspect = []
    for j in range(n_cols):
        cell = next((r[j] for r in rows if r[j] is not None), None)
        h, w = cell["image"].shape[:2] if cell is not None else (1, 1)
        aspect.append(w / h)
    left = (2 * line_h + 2) if row_labels else 2.0
    right = (fpx * 4.2) if colorbar else 2.0
    head_lines = max((len(_wrap_caption(t, 10**6)) for t in (column_titles or []) if t), default=0)
    header = head_lines * line_h + 3 if head_lines else 0.0
    top = header + ((fpx * 1.3 * 1.25 + 4) if title else 0.0) + 2
    avail = width - left - right - gap * (n_cols - 1)
    if avail <= 0:
        raise ValueError("the figure is too narrow for this many columns")
    unit = avail / sum(aspect)
    col_w = [a * unit for a in aspect]
    col_x = [left + sum(col_w[:j]) + gap * j for j in range(n_cols)]
    captions = [
        [
            _wrap_caption(text, max(4, int(col_w[j] / (fpx * 0.52)))) if text else []
            for j, text in enumerate((cell or {}).get("caption") or "" for cell in r)
        ]
        for r in rows
    ]
    row_h = [unit + (max(len(c) for c in caps) * line_h + 2 if any(caps) else 0) + gap for caps in captions]
    return _Grid(width, left, right, top, 2.0, unit, col_w, col_x, row_h, captions, fpx, line_h)


def _cell_ranges(w: int, h: int, cell_w: float, cell_h: float) -> tuple[list, list]:
    """Axis ranges that keep the image's aspect inside its cell: the shorter range widens symmetrically."""
    if cell_w / cell_h > w / h:
        xr = h * cell_w / cell_h
        return [-(xr - w) / 2, w + (xr - w) / 2], [h, 0]
    yr = w * cell_h / cell_w
    return [0, w], [h + (yr - h) / 2, -(yr - h) / 2]


def _chip_corner(x0, y0, x1, y1, chip_w: float, chip_h: float, chips: list) -> tuple:
    """The first inside corner of a box whose number chip does not overlap an earlier chip (else the first):
    (x, y, xanchor, yanchor); the chip's own corner is appended to ``chips``."""
    corners = [
        (x0, y0, "left", "top"),
        (x1, y0, "right", "top"),
        (x0, y1, "left", "bottom"),
        (x1, y1, "right", "bottom"),
    ]
    for cx, cy, xa, ya in corners:
        chip_x = cx if xa == "left" else cx - chip_w
        chip_y = cy if ya == "top" else cy - chip_h
        if all(abs(chip_x - px) >= chip_w or abs(chip_y - py) >= chip_h for px, py in chips):
            chips.append((chip_x, chip_y))
            return cx, cy, xa, ya
    # all four corners taken (boxes that coincide): the next free place along the top edge
    for k in range(1, max(1, int((x1 - x0) / chip_w))):
        chip_x = x0 + k * chip_w
        if all(abs(chip_x - px) >= chip_w or abs(y0 - py) >= chip_h for px, py in chips):
            chips.append((chip_x, y0))
            return chip_x, y0, "left", "top"
    chips.append(corners[0][:2])
    return corners[0]


def _panel_boxes(cell, ax: str, w: int, h: int, ranges, size, fpx: float, shapes: list, annotations: list):
    """A panel's boxes as rectangles, numbered in glimpse-coloured chips unless ``box_color`` is set."""
    (xrange, yrange), (cell_w, cell_h) = ranges, size
    first = int(cell.get("first_number", 1))
    one_color = cell.get("box_color")
    lw = max(1.0, fpx * 0.14)
    # a box reaching past the photo (the whole-image glimpse does, by half a sample) is drawn just inside
    # its edge so that the line is not clipped away
    ix = lw / 2 * (xrange[1] - xrange[0]) / cell_w
    iy = lw / 2 * abs(yrange[0] - yrange[1]) / cell_h
    chips: list[tuple[float, float]] = []
    for t, b in enumerate(np.asarray(cell["boxes"], dtype=np.float64).reshape(-1, 4)):
        color = one_color or glimpse_color(t + first - 1)
        x0, y0, x1, y1 = [float(v) for v in b]
        x0, y0, x1, y1 = max(x0, ix), max(y0, iy), min(x1, w - ix), min(y1, h - iy)
        shapes.append(
            dict(
                type="rect", xref=f"x{ax}", yref=f"y{ax}", x0=x0, y0=y0, x1=x1, y1=y1, line=dict(color=color, width=lw)
            )
        )
        if not one_color:
            chip_w, chip_h = fpx * 0.9 * ix / (lw / 2), fpx * 1.15 * iy / (lw / 2)  # chip size in data units
            cx, cy, xa, ya = _chip_corner(x0, y0, x1, y1, chip_w, chip_h, chips)
            annotations.append(
                dict(
                    text=f"<b>{t + first}</b>",
                    x=cx,
                    y=cy,
                    xref=f"x{ax}",
                    yref=f"y{ax}",
                    xanchor=xa,
                    yanchor=ya,
                    showarrow=False,
                    bgcolor=color,
                    borderpad=0.5,
                    font=dict(FONT, size=fpx * 0.85, color="white"),
                )
            )


def _panel_heat(cell, ax: str, w: int, h: int, grid: _Grid, show_scale: bool, colorbar_title: str) -> go.Heatmap:
    font = dict(FONT, size=grid.fpx)
    heat = _heat_trace(cell["heat"], w, h, show_scale, colorbar_title)
    heat.update(xaxis=f"x{ax}", yaxis=f"y{ax}", hoverinfo="skip", hovertemplate=None)
    if show_scale:
        plot_h, plot_w = grid.height - grid.top - grid.bottom, grid.width - grid.left - grid.right
        heat.colorbar = dict(
            title=dict(text=colorbar_title, side="right", font=font),
            thickness=grid.fpx * 0.8,
            len=min(1.0, 3 * grid.unit / plot_h),
            lenmode="fraction",
            x=1 + 0.6 * grid.fpx / plot_w,
            xanchor="left",
            y=grid.fy(grid.top),
            yanchor="top",
            tickvals=[0, 0.5, 1],
            tickfont=font,
            outlinewidth=0,
        )
    return heat


def _add_panel(
    fig: go.Figure,
    grid: _Grid,
    cell,
    k: int,
    j: int,
    y: float,
    heat_scale: bool,
    colorbar_title: str,
    shapes: list,
    annotations: list,
) -> bool:
    """Panel number ``k`` (column ``j``, top edge ``y``): axes, image, heat map, boxes, border. Returns
    whether it drew the colour scale."""
    ax = _axis_name(k)
    img = np.asarray(cell["image"])
    h, w = img.shape[:2]
    cell_w, cell_h = grid.col_w[j], grid.unit
    xrange, yrange = _cell_ranges(w, h, cell_w, cell_h)
    x_left = grid.col_x[j]
    fig.layout[f"xaxis{ax}"] = dict(
        domain=grid.domain(grid.fx(x_left), grid.fx(x_left + cell_w)),
        range=xrange,
        visible=False,
        anchor=f"y{ax}",
        fixedrange=True,
    )
    fig.layout[f"yaxis{ax}"] = dict(
        domain=grid.domain(grid.fy(y + cell_h), grid.fy(y)),
        range=yrange,
        visible=False,
        anchor=f"x{ax}",
        fixedrange=True,
    )
    side = max(16, int(round(max(cell_w, cell_h) * 4)))  # enough pixels for 4x (384 dpi) output
    trace = _image_trace(img, side, fmt="png" if cell.get("lossless") else "jpeg")
    trace.update(xaxis=f"x{ax}", yaxis=f"y{ax}", zsmooth=False if cell.get("lossless") else "fast")
    fig.add_trace(trace)
    drew_scale = False
    if cell.get("heat") is not None:
        fig.add_trace(_panel_heat(cell, ax, w, h, grid, heat_scale, colorbar_title))
        drew_scale = heat_scale
    if cell.get("boxes") is not None:
        _panel_boxes(cell, ax, w, h, (xrange, yrange), (cell_w, cell_h), grid.fpx, shapes, annotations)
    if cell.get("border"):
        shapes.append(
            dict(
                type="rect",
                xref=f"x{ax}",
                yref=f"y{ax}",
                x0=0,
                y0=0,
                x1=w,
                y1=h,
                line=dict(color=cell["border"], width=max(1.5, grid.fpx * 0.22)),
            )
        )
    return drew_scale


def panel_grid_figure(
    rows: Sequence[Sequence[Mapping | None]],
    *,
    column_titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    width: float = 672,
    font_size: float = 8.0,
    gap: float | None = None,
    colorbar: bool = False,
    colorbar_title: str = "",
) -> go.Figure:
    """A grid of image panels laid out for print: exact cell sizes, aspect kept, captions under cells.

    ``rows[i][j]`` is None (empty cell) or a mapping with:
      ``image``  RGB uint8 [H, W, 3]: the panel (axes in its own edge coordinates, as everywhere here);
      ``heat``   optional map in [0, 1] stretched over the image on :data:`HEAT_COLORSCALE`;
      ``boxes``  optional [N, 4] boxes in the image's edge coordinates, numbered from ``first_number``
                 (default 1) in :func:`glimpse_color` chips; ``box_color`` draws them all in one colour
                 without numbers;
      ``border`` optional colour of a frame around the panel; ``caption`` text under it (wrapped to the
                 cell; ``\\n`` or ``<br>`` break lines); ``lossless`` keep PNG pixels (small crops).
    Column ``j`` gets the width share of the aspect ratio of its first non-empty cell; each row is as
    tall as that share allows, and a cell whose image has another aspect is centred inside its box.
    ``width`` is in CSS pixels (96 per inch) and ``font_size`` in points; the figure's height follows.
    """
    rows = [list(r) for r in rows]
    n_cols = max((len(r) for r in rows), default=0)
    if not rows or n_cols == 0:
        raise ValueError("panel_grid_figure needs at least one cell")
    for r in rows:
        r.extend([None] * (n_cols - len(r)))
    grid = _grid_layout(rows, n_cols, column_titles, row_labels, title, width, font_size, gap, colorbar)
    fig = go.Figure()
    font = dict(FONT, size=grid.fpx)
    annotations, shapes = [], []
    k, y, shown_scale = 0, grid.top, False
    for i, r in enumerate(rows):
        for j, cell in enumerate(r):
            if cell is None:
                continue
            k += 1
            shown_scale |= _add_panel(
                fig, grid, cell, k, j, y, colorbar and not shown_scale, colorbar_title, shapes, annotations
            )
            if grid.captions[i][j]:
                annotations.append(
                    dict(
                        text="<br>".join(grid.captions[i][j]),
                        x=grid.fx(grid.col_x[j] + grid.col_w[j] / 2),
                        y=grid.fy(y + grid.unit + 1),
                        xref="paper",
                        yref="paper",
                        xanchor="center",
                        yanchor="top",
                        showarrow=False,
                        align="center",
                        font=font,
                    )
                )
        if row_labels and i < len(row_labels) and row_labels[i]:
            annotations.append(
                dict(
                    text="<br>".join(_wrap_caption(row_labels[i], 10**6)),
                    x=grid.fx(grid.line_h),
                    y=grid.fy(y + grid.unit / 2),
                    xref="paper",
                    yref="paper",
                    xanchor="center",
                    yanchor="middle",
                    textangle=-90,
                    showarrow=False,
                    font=font,
                )
            )
        y += grid.row_h[i]
    for j, text in enumerate(column_titles or []):
        if j < n_cols and text:
            annotations.append(
                dict(
                    text=text,
                    x=grid.fx(grid.col_x[j] + grid.col_w[j] / 2),
                    y=grid.fy(grid.top - 1),
                    xref="paper",
                    yref="paper",
                    xanchor="center",
                    yanchor="bottom",
                    showarrow=False,
                    font=font,
                )
            )
    height = grid.height
    fig.update_layout(
        width=width,
        height=height,
        margin=dict(l=grid.left, r=grid.right, t=grid.top, b=grid.bottom, autoexpand=False),
        font=font,
        paper_bgcolor="white",
        plot_bgcolor="white",
        showlegend=False,
        annotations=annotations,
        shapes=shapes,
        title=dict(
            text=title,
            x=0,
            xref="paper",
            xanchor="left",
            y=1 - 2 / height,
            yanchor="top",
            font=dict(FONT, size=grid.fpx * 1.25),
        )
        if title
        else None,
    )
    return fig


def glimpse_strip_figure(
    image: np.ndarray,
    boxes,
    crops: Sequence[np.ndarray],
    captions: Sequence[str],
    *,
    title: str | None = None,
    photo_caption: str = "",
    width: float = 336,
    font_size: float = 8.0,
) -> go.Figure:
    """One photo with its numbered glimpse boxes, then the crops the network saw, one caption each.

    ``boxes`` are in edge coordinates of ``image``; ``crops[t]`` is glimpse t as the network saw it
    (``GlimpseAnalysis.seen``); ``captions[t]`` is usually the top-1 class and confidence after glimpse t.
    """
    row = [dict(image=image, boxes=boxes, caption=photo_caption)]
    for t, crop in enumerate(crops):
        row.append(
            dict(image=crop, border=glimpse_color(t), lossless=True, caption=captions[t] if t < len(captions) else "")
        )
    titles = ["photo"] + [f"glimpse {t + 1}" for t in range(len(crops))]
    return panel_grid_figure([row], column_titles=titles, title=title, width=width, font_size=font_size)


def comparison_grid_figure(
    rows: Sequence[Mapping],
    columns: Sequence[str],
    *,
    column_titles: Sequence[str] | None = None,
    photo_column: bool = True,
    width: float = 672,
    font_size: float = 8.0,
    title: str | None = None,
) -> go.Figure:
    """Rows are images, columns are maps (MGNet's focus map, then each model x method), one colour scale.

    ``rows[i]``: ``image`` (photo), ``label`` (row label), ``maps`` {column: map in [0, 1] or None},
    optional ``boxes`` (MGNet's glimpses in photo coordinates, drawn thinly in white on every map,
    the whole-image first glimpse left out), ``captions`` {column: text}, ``photo_caption``.
    A missing map leaves its cell showing the photo captioned "n/a".
    """
    grid, labels = [], []
    for r in rows:
        cells = []
        if photo_column:
            cells.append(dict(image=r["image"], caption=r.get("photo_caption", "")))
        boxes = r.get("boxes")
        thin = None if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[1:]
        for c in columns:
            m = (r.get("maps") or {}).get(c)
            cap = (r.get("captions") or {}).get(c, "")
            cells.append(
                dict(
                    image=r["image"],
                    heat=m,
                    boxes=thin,
                    box_color="rgba(255,255,255,0.85)",
                    caption=cap if m is not None else "n/a",
                )
            )
        grid.append(cells)
        labels.append(r.get("label", ""))
    titles = list(column_titles or columns)
    if photo_column:
        titles = ["photo"] + titles
    return panel_grid_figure(
        grid,
        column_titles=titles,
        row_labels=labels if any(labels) else None,
        title=title,
        width=width,
        font_size=font_size,
        colorbar=True,
    )


def saliency_grid_figure(
    image: np.ndarray,
    maps: Mapping[str, Mapping[str, np.ndarray | None]],
    captions: Mapping[tuple[str, str], str] | None = None,
    boxes=None,
    *,
    max_width: float = 780,  # fits the main column of a 1280 px wide window beside the sidebar
    cell: tuple[float, float] = (170, 260),
    font_size: float = 10.0,
    max_columns: int = 4,
) -> go.Figure:
    """The app's grid of saliency maps (``maps[model][method]``, as ``attribution_grid``) in the figure
    tool's print layout (``panel_grid_figure``): every thumbnail between ``cell`` = (min, max) CSS px wide,
    captions wrapped under their cells, the colour bar beside the grid, so nothing overlaps at any size.

    Up to ``max_columns`` methods are columns and models are rows; with more methods the grid is
    transposed (methods are rows) so thumbnails stay large. ``boxes`` (MGNet's glimpses, photo coordinates)
    are outlined in white, the whole-photo first glimpse left out. The figure has a fixed width: draw it at
    that width (not stretched) and the page shows what the export holds.
    """
    captions = captions or {}
    rows = list(maps)
    cols = list(dict.fromkeys(c for r in rows for c in maps[r]))
    transpose = len(cols) > max_columns and len(cols) > len(rows)
    row_keys, col_keys = (cols, rows) if transpose else (rows, cols)
    photo = np.asarray(image)
    small = downscale(photo, 2 * int(cell[1]))
    sx, sy = small.shape[1] / photo.shape[1], small.shape[0] / photo.shape[0]
    thin = None
    if boxes is not None:
        thin = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[1:] * [sx, sy, sx, sy]
    grid = []
    for rk in row_keys:
        cells = []
        for ck in col_keys:
            model, method = (ck, rk) if transpose else (rk, ck)
            m = maps.get(model, {}).get(method)
            note = captions.get((model, method)) or ("" if m is not None else "not available")
            cells.append(dict(image=small, heat=m, boxes=thin, box_color="rgba(255,255,255,0.85)", caption=note))
        grid.append(cells)
    fpx = pt_to_px(font_size)
    chrome = 2 * fpx * 1.22 + 2 + fpx * 4.2 + 8  # row labels, colour bar, gaps
    per = min(cell[1], max(cell[0], (max_width - chrome) / len(col_keys)))
    return panel_grid_figure(
        grid,
        column_titles=[c.replace("<br>", " ") for c in col_keys],
        row_labels=[r.replace("<br>", " ") for r in row_keys],
        width=per * len(col_keys) + chrome,
        font_size=font_size,
        colorbar=True,
        colorbar_title="attribution (0–1)",
    )


def robustness_grid_figure(
    rows: Sequence[Mapping],
    *,
    width: float = 672,
    font_size: float = 8.0,
    title: str | None = None,
    baseline_title: str = "baseline",
) -> go.Figure:
    """Rows are conditions (clean, corrupted, attacked); each shows MGNet's glimpses and predictions and
    the baseline's input and prediction.

    ``rows[i]``: ``label`` (condition), ``image`` (what MGNet was given, in any display size), ``boxes``
    (MGNet's glimpses in that image's edge coordinates), ``crops`` (glimpses as seen), ``captions``
    (per glimpse, e.g. top-1 class and confidence after it), optional ``baseline_image`` and
    ``baseline_caption`` (the baseline's single full-image look).
    """
    n = max(len(r["crops"]) for r in rows)
    has_base = any(r.get("baseline_image") is not None for r in rows)
    grid = []
    for r in rows:
        cells = [dict(image=r["image"], boxes=r.get("boxes"))]
        for t in range(n):
            if t < len(r["crops"]):
                cells.append(
                    dict(
                        image=r["crops"][t],
                        border=glimpse_color(t),
                        lossless=True,
                        caption=r["captions"][t] if t < len(r["captions"]) else "",
                    )
                )
            else:
                cells.append(None)
        if has_base:
            b = r.get("baseline_image")
            cells.append(None if b is None else dict(image=b, caption=r.get("baseline_caption", ""), border="#555555"))
        grid.append(cells)
    titles = ["MGNet's glimpses"] + [f"glimpse {t + 1}" for t in range(n)] + ([baseline_title] if has_base else [])
    return panel_grid_figure(
        grid,
        column_titles=titles,
        row_labels=[r.get("label", "") for r in rows],
        title=title,
        width=width,
        font_size=font_size,
    )


def metric_bars_figure(
    values: Mapping[str, Mapping[str, tuple[float, float]]],
    ylabel: str,
    *,
    title: str | None = None,
    height: int | None = 360,
    yrange=None,
) -> go.Figure:
    """Grouped bars with error bars: ``values[series][category] = (mean, error)``; one colour per series."""
    fig = go.Figure()
    for j, (series, points) in enumerate(values.items()):
        cats = list(points)
        fig.add_trace(
            go.Bar(
                name=str(series),
                x=cats,
                y=[float(points[c][0]) for c in cats],
                error_y=dict(type="data", array=[float(points[c][1]) for c in cats], thickness=1),
                marker_color=SERIES_COLORS[j % len(SERIES_COLORS)],
                hovertemplate=f"{series}<br>%{{x}}: %{{y:.3f}}<extra></extra>",
            )
        )
    fig.update_layout(barmode="group")
    fig.update_xaxes(tickangle=-30, automargin=True)
    fig.update_yaxes(title=ylabel, gridcolor="#eee", range=yrange)
    _layout(fig, title, height, legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"))
    fig.update_layout(margin=dict(l=60, r=20, t=45 if title else 15, b=90))
    return fig
