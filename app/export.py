"""The "download this view" bundle: every figure and image of the current view plus a settings JSON."""

from __future__ import annotations

import datetime as _dt
import io
import json
import platform
import zipfile

import numpy as np

from mgnet import plots, static_export
from mgnet.figures.settings import SCHEMA, Attack, CheckpointRef, Corruption, FigureSettings

from app.compare import figure_target
from mgnet.utils import git_commit

README = """MGNet Explorer: one view, exported
====================================

figures/   every figure of the view: PNG (2x) and SVG, rendered by plotly + kaleido
           (or interactive HTML when static export was not possible here; see EXPORT-NOTE.txt)
images/    the images shown as pictures (crops, what the network saw, adversarial inputs), lossless PNG
photo/     the photo file exactly as it was given to the app (same bytes, same sha256)
settings.json
           the view's settings in the figure tool's schema (mgnet-figures/1, docs/figures.md):
           checkpoints with their sha256, the photo, methods, target, glimpses, corruption, attack and
           seed. Under "app": everything else the app knew (photo hashes, glimpse step, the URL query that
           reopens this view, software versions, git commit).

Reproduce the view's figures from the repository root (the tool checks the checkpoints' sha256):

    python -m mgnet.figures --settings path/to/this/folder/settings.json --out figures
"""


def versions() -> dict:
    import plotly
    import streamlit
    import torch

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "streamlit": streamlit.__version__,
        "plotly": plotly.__version__,
    }
    try:
        import captum

        out["captum"] = captum.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


FIGURE_OF_VIEW = {"Glimpses": ["strip"], "Compare": ["grid"], "Robustness": ["robustness"]}


def figure_settings(
    view: str,
    photo_file: str,
    mgnet: CheckpointRef,
    baseline: CheckpointRef | None,
    n_glimpses: int | None,
    compare=None,
    corruption=None,
    attack: Attack | None = None,
) -> FigureSettings:
    """The view as the figure tool's settings: ``python -m mgnet.figures --settings`` redraws its figure.

    ``compare``: the Compare tab's request (``app.compare.CompareRequest``); ``corruption``: the Corruption
    tab's request; ``attack``: the attack already in the tool's terms (source "mgnet" or "baseline").
    """
    settings = FigureSettings(
        checkpoints={"mgnet": mgnet, "baseline": baseline},
        images=[photo_file],
        figures=list(FIGURE_OF_VIEW.get(view, ["strip"])),
        models=["mgnet"] + (["baseline"] if baseline else []),
        n_glimpses=n_glimpses,
    )
    if compare is not None:
        settings.methods = list(compare.methods)
        settings.target = figure_target(compare.target)
        settings.s_grad = 1.0 if compare.true_grad else None
        settings.method_options = {m: o for m, o in compare.method_options.items() if o}
    if corruption is not None:
        settings.corruptions = [Corruption(corruption.name, int(corruption.severity), int(corruption.seed))]
    if attack is not None:
        settings.attacks = [attack]
    return settings.validate()


def settings_document(settings: dict, figure_doc: dict | None = None) -> dict:
    """settings.json of a bundle: the figure tool's settings, with the app's own under "app"."""
    app = {
        "name": "MGNet Explorer",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mgnet_commit": git_commit(),
        "versions": versions(),
    }
    app.update(settings)
    doc = dict(figure_doc or {"schema": SCHEMA})
    doc["app"] = app
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


def build_bundle(
    figures: dict,
    images: dict,
    settings: dict,
    static: bool = True,
    figure_doc: dict | None = None,
    photo: tuple[str, bytes] | None = None,
) -> bytes:
    """A zip of figures (PNG + SVG, or HTML when static export fails), images (PNG), the photo file as given
    (``photo`` = (file name, bytes), stored as photo/<name>) and settings.json."""
    buf = io.BytesIO()
    problems = []
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("README.txt", README)
        zf.writestr("settings.json", json.dumps(_jsonable(settings_document(settings, figure_doc)), indent=2))
        if photo is not None:
            zf.writestr(f"photo/{photo[0]}", photo[1])
        for name, fig in figures.items():
            done = False
            if static and not problems:
                try:
                    zf.writestr(f"figures/{name}.png", static_export.figure_bytes(fig, "png"))
                    zf.writestr(f"figures/{name}.svg", static_export.figure_bytes(fig, "svg"))
                    done = True
                except static_export.ExportError as exc:
                    problems.append(str(exc))
            if not done:
                zf.writestr(f"figures/{name}.html", static_export.figure_html(fig))
        for name, img in images.items():
            zf.writestr(f"images/{name}.png", plots.png_bytes(np.asarray(img)))
        if problems:
            zf.writestr(
                "EXPORT-NOTE.txt",
                "Static export was not possible, so figures are interactive HTML.\n" + "\n".join(problems) + "\n",
            )
    return buf.getvalue()
