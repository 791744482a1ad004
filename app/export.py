"""The "download this view" bundle: every figure and image of the current view plus a settings JSON."""
from __future__ import annotations

import datetime as _dt
import io
import json
import platform
import zipfile

import numpy as np

from mgnet import plots
from mgnet.utils import git_commit

README = """MGNet Explorer: one view, exported
====================================

figures/   every figure of the view: PNG (2x) and SVG, rendered by plotly + kaleido
           (or interactive HTML when static export was not possible here; see EXPORT-NOTE.txt)
images/    the images shown as pictures (crops, what the network saw, adversarial inputs), lossless PNG
settings.json
           every setting of the view: photo (file hash and pixel hash), checkpoint (file name and
           sha256), glimpses, step, methods, target, corruption, attack, seeds, software versions,
           and the URL query that reopens this view in the app.

The figures are drawn by mgnet.plots from results of the mgnet library, the same code a script or the
figure CLI uses: load the same photo and checkpoint (check the sha256 values) and call the functions
named in settings.json to reproduce them.
"""


def versions() -> dict:
    import plotly
    import streamlit
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "streamlit": streamlit.__version__,
           "plotly": plotly.__version__}
    try:
        import captum
        out["captum"] = captum.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def settings_document(settings: dict) -> dict:
    """The settings JSON of a view: the app's settings plus provenance."""
    doc = {"app": "MGNet Explorer", "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "mgnet_commit": git_commit(), "versions": versions()}
    doc.update(settings)
    return doc


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def build_bundle(figures: dict, images: dict, settings: dict, static: bool = True) -> bytes:
    """A zip of figures (PNG + SVG, or HTML when static export fails), images (PNG) and settings.json."""
    buf = io.BytesIO()
    problems = []
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("README.txt", README)
        zf.writestr("settings.json", json.dumps(_jsonable(settings_document(settings)), indent=2, sort_keys=False))
        for name, fig in figures.items():
            done = False
            if static and not problems:
                try:
                    zf.writestr(f"figures/{name}.png", plots.figure_bytes(fig, "png"))
                    zf.writestr(f"figures/{name}.svg", plots.figure_bytes(fig, "svg"))
                    done = True
                except plots.ExportError as exc:
                    problems.append(str(exc))
            if not done:
                zf.writestr(f"figures/{name}.html", plots.figure_html(fig))
        for name, img in images.items():
            zf.writestr(f"images/{name}.png", plots.png_bytes(np.asarray(img)))
        if problems:
            zf.writestr("EXPORT-NOTE.txt", "Static export was not possible, so figures are interactive HTML.\n"
                                           + "\n".join(problems) + "\n")
    return buf.getvalue()
