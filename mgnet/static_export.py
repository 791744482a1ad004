"""Static export of plotly figures (PNG, SVG, PDF) with kaleido, which drives a headless Chrome.

Kept apart from the figure builders in :mod:`mgnet.plots` because it has process-wide state: one
kaleido browser is started on first use and kept, and ``BROWSER_PATH`` is set in this process's
environment when it is unset and a Chromium is installed at a usual place.
"""

from __future__ import annotations

import os
import threading
import warnings

import plotly.graph_objects as go

EXPORT_FORMATS = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}


class ExportError(RuntimeError):
    """Static export (kaleido + a Chrome) is not possible here; the message says why."""


_EXPORT_LOCK = threading.Lock()
_SERVER = {"started": False}


def _ensure_browser_path():
    if not os.environ.get("BROWSER_PATH"):
        for candidate in ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"):
            if os.path.exists(candidate):
                os.environ["BROWSER_PATH"] = candidate
                break


def export_problem() -> str | None:
    """Why static export cannot work here (no kaleido, no Chrome found), or None. Starts nothing."""
    _ensure_browser_path()
    try:
        import kaleido  # noqa: F401
        from choreographer.browsers.chromium import Chromium
    except ImportError as exc:
        return f"the kaleido package is missing ({exc})."
    path = os.environ.get("BROWSER_PATH")
    if path and not os.path.exists(path):
        return f"BROWSER_PATH={path!r} does not exist."
    try:
        found = Chromium.find_browser(skip_local=False)
    except Exception:  # noqa: BLE001 - an unexpected choreographer version: let the export itself decide
        return None
    return None if found else "no Chrome or Chromium was found (install chromium, or set BROWSER_PATH)."


def without_controls(fig: go.Figure) -> go.Figure:
    """A copy of ``fig`` for paper: no play/pause buttons, sliders or animation frames (they do nothing in a
    PNG, SVG or PDF and only cover the figure)."""
    out = go.Figure(fig)
    out.layout.updatemenus = ()
    out.layout.sliders = ()
    out.frames = ()
    return out


def figure_bytes(
    fig: go.Figure, fmt: str = "png", width: int | None = None, height: int | None = None, scale: float = 2.0
) -> bytes:
    """Render a figure to PNG, SVG or PDF bytes with kaleido (which drives a headless Chrome).

    A Chrome is looked up through ``BROWSER_PATH`` (set to /usr/bin/chromium when that exists and the
    variable is unset). One kaleido browser is started on first use and kept for later exports.
    Raises :class:`ExportError` with a readable message when no export is possible.
    """
    fmt = fmt.lower()
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {sorted(EXPORT_FORMATS)}")
    _ensure_browser_path()
    try:
        import kaleido
    except ImportError as exc:  # pragma: no cover - kaleido is a requirement
        raise ExportError(f"static export needs the kaleido package ({exc}).") from None
    width = width or fig.layout.width or 900
    height = height or fig.layout.height or 600
    try:
        with _EXPORT_LOCK:
            if not _SERVER["started"]:
                kaleido.start_sync_server(silence_warnings=True)
                _SERVER["started"] = True
        with warnings.catch_warnings():  # plotly warns that kaleido's server ignores its per-call options
            warnings.simplefilter("ignore", UserWarning)
            paper = without_controls(fig)
            return paper.to_image(format=fmt, width=width, height=height, scale=scale if fmt == "png" else 1)
    except Exception as exc:  # kaleido raises many types (no Chrome, timeouts, crashed browser)
        raise ExportError(
            f"static export failed: {type(exc).__name__}: {exc}. Set BROWSER_PATH to a "
            f"Chrome/Chromium binary, or use the camera icon of the figure's toolbar "
            f"(PNG) or the HTML download."
        ) from None


def figure_html(fig: go.Figure) -> bytes:
    """A self-contained interactive HTML file (needs no kaleido; loads plotly.js from its CDN)."""
    return fig.to_html(include_plotlyjs="cdn", full_html=True).encode()
