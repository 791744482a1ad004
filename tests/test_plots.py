"""Figure builders of mgnet.plots that the app draws (the figure tool's builders: test_figures.py)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from mgnet import plots, static_export

PHOTO = np.full((224, 224, 3), 120, dtype=np.uint8)


def _chips(fig):
    return [(a.text, a.x, a.y, a.xanchor, a.yanchor, a.bgcolor) for a in fig.layout.annotations]


def test_coincident_glimpses_stay_identifiable():
    """Four glimpses on the same box, after the whole-photo one that reaches past the photo's edge: every
    glimpse gets its own numbered chip in its colour, at its own place, and its own visible outline."""
    same = [60.0, 60.0, 160.0, 160.0]
    boxes = np.array([[-0.5, -0.5, 224.5, 224.5], same, same, same, same])
    fig = plots.glimpse_figure(PHOTO, boxes, step=4)
    chips = _chips(fig)
    assert [c[0] for c in chips] == [f"<b>{t}</b>" for t in range(1, 6)]
    assert [c[5] for c in chips] == [plots.glimpse_color(t) for t in range(5)]
    places = {c[1:5] for c in chips}
    assert len(places) == 5, chips
    outlines = [(min(t.x), min(t.y), max(t.x), max(t.y)) for t in fig.data if isinstance(t, go.Scatter)]
    assert len(outlines) == 5 and len(set(outlines)) == 5  # nested, not drawn over each other
    x0, y0, x1, y1 = outlines[0]
    assert 0 < x0 and 0 < y0 and x1 < 224 and y1 < 224  # glimpse 1 is inside the photo, so it shows
    assert [t.line.width for t in fig.data if isinstance(t, go.Scatter)] == [2, 2, 2, 2, 4]


def test_static_exports_carry_no_play_controls(monkeypatch):
    """A PNG/SVG/PDF has no use for play/pause buttons or sliders: they are dropped from what is rendered."""
    import kaleido

    fig = plots.glimpse_figure(PHOTO, np.array([[0, 0, 224, 224], [10, 10, 90, 90]]), 1)
    fig.frames = [go.Frame(name="0")]
    fig.update_layout(
        updatemenus=[dict(type="buttons", buttons=[dict(label="▶ play", method="animate", args=[None])])],
        sliders=[dict(steps=[dict(label="1", method="animate", args=[["0"]])])],
    )
    seen = []
    monkeypatch.setattr(kaleido, "start_sync_server", lambda *a, **k: None)
    monkeypatch.setattr(go.Figure, "to_image", lambda self, **k: seen.append(self) or b"png")
    assert static_export.figure_bytes(fig, "png") == b"png"
    assert not seen[0].layout.updatemenus and not seen[0].layout.sliders and not seen[0].frames
    assert fig.layout.updatemenus  # the figure on the page keeps its own


def _panels(fig):
    """(x0, y0, x1, y1) of every panel in CSS px of the figure (y down)."""
    m, w, h = fig.layout.margin, fig.layout.width, fig.layout.height
    pw, ph = w - m.l - m.r, h - m.t - m.b
    out = []
    for name in fig.layout:
        if name.startswith("xaxis"):
            xd = fig.layout[name].domain
            yd = fig.layout["yaxis" + name[5:]].domain
            out.append((m.l + xd[0] * pw, m.t + (1 - yd[1]) * ph, m.l + xd[1] * pw, m.t + (1 - yd[0]) * ph))
    return out


METHODS = [
    "Saliency (gradient)",
    "Integrated Gradients",
    "Grad-CAM",
    "Occlusion",
    "GradientSHAP",
    "SmoothGrad",
    "Guided Backprop",
]


def test_saliency_grid_is_readable_at_1_3_and_7_methods():
    """Thumbnails at least 160 px, titles and captions within their column, nothing overlapping, the colour
    bar beside the panels: at a fixed width, so the page and its exports look the same."""
    rng = np.random.default_rng(0)
    models = ["MGNet: mgnet-resnet18-imagenette", "baseline-resnet18-imagenette"]
    boxes = np.array([[-1, -1, 225, 225], [40, 40, 140, 140], [60, 50, 160, 150]])
    for k in (1, 3, 7):
        maps = {m: {c: rng.random((14, 14)) for c in METHODS[:k]} for m in models}
        caps = {(m, c): "in boxes 76% (chance 23%) · IoU 0.41" for m in models for c in METHODS[:k]}
        fig = plots.saliency_grid_figure(PHOTO, maps, caps, boxes=boxes)
        panels = _panels(fig)
        assert len(panels) == 2 * k and fig.layout.width <= 900
        for x0, y0, x1, y1 in panels:
            assert x1 - x0 >= 160 and y1 - y0 >= 160, (k, x1 - x0)
        for i, a in enumerate(panels):
            for b in panels[i + 1 :]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], "panels overlap"
        col_w = min(x1 - x0 for x0, _, x1, _ in panels)
        fpx = plots.pt_to_px(10)
        for note in fig.layout.annotations:
            longest = max(len(line) for line in note.text.split("<br>"))
            if note.textangle != -90:  # titles and captions fit their column (about 0.5 em a character)
                assert longest * 0.5 * fpx <= col_w, note.text
        bar = next(t for t in fig.data if isinstance(t, go.Heatmap) and t.showscale)
        assert bar.colorbar.x >= 1  # right of every panel, away from the captions


def test_moved_glimpses_plot_tells_runs_apart_and_says_how_far():
    """Clean and attacked boxes differ in line and chip style, each arrow gives the distance moved, and the
    legend keys are the line styles in a neutral colour (not one glimpse's colour)."""
    from mgnet.geometry import centre_shift

    clean = np.array([[0, 0, 224, 224], [20, 20, 120, 120], [100, 100, 200, 200]], dtype=float)
    attacked = np.array([[0, 0, 224, 224], [50, 60, 150, 160], [100, 100, 200, 200]], dtype=float)
    fig = plots.movement_figure(PHOTO, clean, attacked, labels=("clean", "adversarial"))
    legend = [t for t in fig.data if isinstance(t, go.Scatter) and t.showlegend is not False]
    assert [(t.name, t.line.dash, t.line.color) for t in legend] == [
        ("clean", None, "#333"),
        ("adversarial", "dash", "#333"),
    ]
    boxes = [t for t in fig.data if isinstance(t, go.Scatter) and t.showlegend is False]
    assert [t.line.dash for t in boxes] == [None, None, "dash", "dash"]
    assert [t.line.color for t in boxes] == [plots.glimpse_color(t) for t in (1, 2, 1, 2)]
    chips = {
        a.text: a for a in fig.layout.annotations if not a.showarrow and "px" not in a.text and "move" not in a.text
    }
    assert set(chips) == {"<b>2</b>", "<b>3</b>", "<b>2′</b>", "<b>3′</b>"}
    assert chips["<b>2</b>"].bgcolor == plots.glimpse_color(1) and chips["<b>2′</b>"].bgcolor == "white"
    shift = centre_shift(clean, attacked, 224, 224)
    assert np.isclose(shift[1, 0], np.hypot(30, 40)) and shift[2, 0] == 0
    notes = [a.text for a in fig.layout.annotations if "px" in a.text or "move" in a.text]
    assert notes == [f"{shift[1, 0]:.0f} px", "did not move"]


def test_pixel_distances_in_labels_are_in_the_files_pixels_for_a_photo_decoded_at_reduced_scale():
    """A photo decoded at half scale: axes and boxes stay in its own pixels, while hover text and the distance
    labels give the file's pixels (twice as many)."""
    clean = np.array([[0, 0, 224, 224], [20, 20, 120, 120]], dtype=float)
    attacked = np.array([[0, 0, 224, 224], [50, 60, 150, 160]], dtype=float)
    half = plots.picture(PHOTO, pixel_scale=(2.0, 2.0))
    notes = [a.text for a in plots.movement_figure(half, clean, attacked).layout.annotations if "px" in a.text]
    assert notes == ["100 px"]  # 50 px in the decoded photo
    fig = plots.glimpse_figure(half, clean, step=1)
    box = next(t for t in fig.data if isinstance(t, go.Scatter) and t.name == "glimpse 2")
    x0, y0, x1, y1 = plots.drawn_boxes(clean, 224, 224, inset=0.006 * 224)[1] * 2
    assert f"x {x0:.0f}–{x1:.0f} px<br>y {y0:.0f}–{y1:.0f} px" in box.hovertemplate and max(box.x) < 125
    same = plots.glimpse_figure(PHOTO, clean, step=1)
    plain = next(t for t in same.data if isinstance(t, go.Scatter) and t.name == "glimpse 2")
    assert list(plain.x) == list(box.x) and plain.hovertemplate != box.hovertemplate


def test_fooled_models_new_class_is_in_the_bar_chart():
    rows = [
        dict(model="mgnet", before=0.9, after=0.2, before_label="parachute", after_label="golf ball", after_new=0.7),
        dict(
            model="baseline", before=0.8, after=0.75, before_label="parachute", after_label="parachute", after_new=0.75
        ),
    ]
    fig = plots.prediction_compare_figure(rows)
    new = fig.data[-1]
    assert new.name == "perturbed: its new class"
    assert list(new.y) == [0.7, 0.0] and list(new.text) == ["now: golf ball", ""]
    calm = plots.prediction_compare_figure([{**rows[1]}])
    assert len(calm.data) == 2  # nobody fooled: no third bar


def test_per_glimpse_charts_label_the_x_axis_once_with_short_ticks():
    # in the app these charts sit in a third of the page, where "glimpse 1".."glimpse 4" tilted and clipped
    from types import SimpleNamespace

    probs = np.full((4, 5), 0.2)
    check = SimpleNamespace(own=[0.3, 0.4, 0.5, 0.6], centre=[0.3, 0.3, 0.2, 0.1], moved=[[0.3, 0.2, 0.1, 0.1]])
    for fig in (plots.belief_figure(probs, list("abcde")), plots.location_check_figure(check, "a")):
        axis = fig.layout.xaxis
        assert axis.title.text == "after glimpse" and list(axis.tickvals) == [1, 2, 3, 4]
        assert axis.ticktext is None or all(len(t) <= 2 for t in axis.ticktext)
        assert fig.layout.legend.y < -0.3  # the legend sits below the axis title, not on it
