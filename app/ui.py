"""Small UI helpers shared by the panels: fault isolation, figures with downloads, explanations."""

from __future__ import annotations

import logging
import re
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch

from mgnet import static_export

log = logging.getLogger("mgnet.app")


@dataclass
class Registry:
    """Everything drawn in this run, for the "download this view" bundle."""

    figures: dict[str, go.Figure] = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


def registry() -> Registry:
    """This script run's registry (a fresh one each run, kept in session state for the export panel)."""
    return st.session_state.setdefault("_registry", Registry())


def new_registry():
    st.session_state["_registry"] = Registry()


@contextmanager
def panel(name: str):
    """Run one panel; an exception shows an error here and the rest of the page keeps working.

    Streamlit's own control-flow exceptions (rerun, stop) derive from BaseException and pass through.
    """
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - this is the fault boundary of a panel
        log.error("panel %s failed:\n%s", name, traceback.format_exc())
        if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            st.error(
                f"**{name}** ran out of memory. Try fewer methods, fewer steps or a smaller setting; "
                f"the rest of the page still works."
            )
        else:
            st.error(f"**{name}** failed: {type(exc).__name__}: {exc}. The rest of the page still works.")


def explain(text: str, title: str = "What am I looking at?", expanded: bool = False):
    with st.expander(title, expanded=expanded):
        st.markdown(text)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "figure"


def _exporter(fig: go.Figure, fmt: str):
    def make() -> bytes:
        try:
            return static_export.figure_bytes(fig, fmt)
        except static_export.ExportError as exc:
            # A deferred download cannot show Streamlit messages; the file says what happened.
            return f"Static export failed: {exc}\n".encode()

    return make


def figure(
    fig: go.Figure,
    name: str,
    key: str | None = None,
    height: int | None = None,
    downloads: bool = True,
    config: dict | None = None,
    width: str = "stretch",
):
    """Draw a plotly figure, register it for the bundle, and offer PNG/SVG/PDF/HTML downloads.

    Files are rendered only when a button is clicked (deferred), so drawing the page stays fast.
    ``width="content"`` draws a figure laid out at a fixed width (the print grids) at exactly that width.
    """
    reg = registry()
    base = slug(name)
    reg.figures[base] = fig
    st.plotly_chart(
        fig,
        key=key or f"fig-{base}",
        height=height if height else "content",
        width=width,
        theme=None,
        config=dict(displaylogo=False, toImageButtonOptions=dict(filename=base, scale=2), **(config or {})),
    )
    if downloads:
        export_buttons(fig, base)


def export_buttons(fig: go.Figure, base: str):
    with st.popover(
        "⬇ download",
        help="PNG, SVG and PDF are rendered by kaleido (headless Chromium); HTML is the interactive figure.",
    ):
        if not export_available():
            st.caption(
                f"Static export is unavailable here: {export_problem()} Use HTML, or the camera icon in "
                f"the figure's toolbar for a PNG."
            )
        else:
            for fmt in ("png", "svg", "pdf"):
                st.download_button(
                    fmt.upper(),
                    _exporter(fig, fmt),
                    file_name=f"{base}.{fmt}",
                    mime=static_export.EXPORT_FORMATS[fmt],
                    key=f"dl-{base}-{fmt}",
                    on_click="ignore",
                )
        st.download_button(
            "HTML",
            lambda: static_export.figure_html(fig),
            file_name=f"{base}.html",
            mime="text/html",
            key=f"dl-{base}-html",
            on_click="ignore",
        )


@st.cache_resource(show_spinner=False, ttl=60)
def _export_probe() -> str | None:
    """None when a Chrome for kaleido was found; otherwise the reason. Checked at most once a minute."""
    return static_export.export_problem()


def export_available() -> bool:
    return _export_probe() is None


def export_problem() -> str:
    return _export_probe() or ""


def image(img: np.ndarray, name: str, caption: str | None = None, width: int | str = "stretch"):
    """An image (st.image) registered for the bundle under ``name``."""
    registry().images[slug(name)] = img
    # inline (data URI), not a media file: a media file of an earlier run can be gone by the time the browser
    # asks for it ("Image source error" 404s while stepping); these pictures are small
    st.image(inline_uri(img), caption=caption, width=width)


def inline_uri(img: np.ndarray) -> str:
    from mgnet.plots import data_uri

    return data_uri(np.asarray(img), "png", compress_level=1)  # encoded on every rerun: speed over size


def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def rough_time(seconds: float, at_most: bool = False) -> str:
    """A time estimate in words: "under a second", "about 6 s", "at most about 3 min"."""
    if seconds < 1:
        return "under a second"
    value = f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
    return f"{'at most about' if at_most else 'about'} {value}"
