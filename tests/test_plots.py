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
