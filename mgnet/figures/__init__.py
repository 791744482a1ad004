"""Publication figures and focus-vs-saliency metrics from the command line.

Figures, from a folder of images (or image files, or a settings JSON exported by the app)::

    python -m mgnet.figures --images ../shared/data/imagenette2-224/val --limit 4 --out figures
    python -m mgnet.figures --settings exported.json --out figures --format png pdf --dpi 600

writes, for every image, a glimpse strip (the photo with MGNet's numbered glimpse boxes, the crops the
network saw, the top-1 class and confidence after each glimpse) and a robustness grid (clean, corrupted
and attacked rows, each with MGNet's glimpses and predictions and the baseline's prediction), and for
the images together a comparison grid (rows: images; columns: MGNet's focus map, then every chosen
model x Captum method on one colour scale). Each figure is written as PNG (at ``--dpi``) plus SVG or
PDF, next to a sidecar JSON with the settings, seed, checkpoint hashes and the numbers drawn.

Metrics over a dataset folder (ImageFolder layout)::

    python -m mgnet.figures metrics --data ../shared/data/imagenette2-224/val --limit 50 --out metrics

writes deletion/insertion AUCs (Petsiuk et al. 2018) of MGNet's focus map and of every saliency map,
scored on the model each map explains and on the other model, the agreement of each map with MGNet's
glimpses (saliency mass inside the glimpse boxes, top-k IoU with the focus map), Captum's infidelity,
as markdown + CSV + JSON tables and plots.

Same inputs, same files: no timestamps or timings are written, randomness is seeded, and the SVG/PDF
bytes that Chrome randomises (clip-path ids, creation dates) are normalised. Outputs are first written
to a hidden folder inside ``--out`` and moved into place only when everything succeeded, so a failed
run leaves no partial files. Bad arguments or missing inputs exit with status 2 and a message.

Every figure is drawn by the builders of :mod:`mgnet.plots`, the same code the app uses. The settings
JSON schema and every option are described in docs/figures.md.

The package: ``settings`` (the typed ``FigureSettings``, also built by the app), ``inputs`` (images,
checkpoints, targets), ``staging`` (all-or-nothing output, reproducible PNG/SVG/PDF), ``runs`` (the
figures command), ``metrics`` (the metrics command) and ``cli`` (argument parsing and ``main``).
"""

from .. import plots  # tests patch figure builders through it
from ..checkpoints import file_sha256
from .cli import figures_parser, main, metrics_parser
from .metrics import map_curves, run_metrics, summarise
from .runs import run_figures
from .settings import SCHEMA, Attack, CheckpointRef, Corruption, FigureSettings, Output, UsageError, build_settings
from .staging import Staging, normalise_pdf, normalise_svg, png_with_dpi

__all__ = [
    "SCHEMA",
    "Attack",
    "CheckpointRef",
    "Corruption",
    "FigureSettings",
    "Output",
    "Staging",
    "UsageError",
    "build_settings",
    "figures_parser",
    "file_sha256",
    "main",
    "map_curves",
    "metrics_parser",
    "normalise_pdf",
    "normalise_svg",
    "plots",
    "png_with_dpi",
    "run_figures",
    "run_metrics",
    "summarise",
]
