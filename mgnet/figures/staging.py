"""Where a run's files go: staged in a hidden folder and moved into place only when everything succeeded,
written reproducibly (PNG with its dpi, SVG and PDF without Chrome's random ids and dates)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import struct
import tempfile
import warnings
import zlib
from pathlib import Path

import plotly.graph_objects as go
import torch

from .. import plots, static_export
from .settings import UsageError, note


class Staging:
    """Files are written into a hidden folder inside ``out`` and moved into place by :meth:`commit`;
    :meth:`abort` removes them, so a failed run never leaves partial output."""

    def __init__(self, out: Path):
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"--out {self.out} exists and is not a folder.")
        self.created = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=".mgnet-figures-", dir=self.out))
        self.names: list[str] = []

    def write(self, name: str, data: bytes | str):
        if name in self.names:
            raise RuntimeError(f"{name} written twice")
        with open(self.tmp / name, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        self.names.append(name)

    def write_json(self, name: str, obj):
        self.write(name, json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n")

    def commit(self) -> list[Path]:
        done = []
        for name in self.names:
            os.replace(self.tmp / name, self.out / name)
            done.append(self.out / name)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return done

    def abort(self):
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.created:
            try:
                self.out.rmdir()
            except OSError:
                pass


def png_with_dpi(data: bytes, dpi: float) -> bytes:
    """The PNG with a pHYs chunk saying ``dpi`` (so page-layout tools place it at its physical size)."""
    sig = b"\x89PNG\r\n\x1a\n"
    if not data.startswith(sig):
        return data
    ppm = int(round(dpi / 0.0254))
    body = struct.pack(">IIB", ppm, ppm, 1)
    chunk = struct.pack(">I", len(body)) + b"pHYs" + body + struct.pack(">I", zlib.crc32(b"pHYs" + body) & 0xFFFFFFFF)
    parts, pos = [sig], 8
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if kind != b"pHYs":
            parts.append(data[pos:end])
        if kind == b"IHDR":
            parts.append(chunk)
        pos = end
    return b"".join(parts)


def normalise_svg(data: bytes, token: str) -> bytes:
    """Replace the random id plotly.js gives each rendered figure (clip paths, gradients) by ``token``."""
    text = data.decode("utf-8")
    m = re.search(r'id="defs-([0-9a-z]+)"', text)
    if m:
        uid = m.group(1)
        # everywhere (clip paths, gradients, legend clips) except inside embedded images' base64 data
        parts = re.split(r'((?:href|src)="data:[^"]*")', text)
        text = "".join(p if i % 2 else p.replace(uid, token) for i, p in enumerate(parts))
    return text.encode("utf-8")


_PDF_DATE = re.compile(rb"/(CreationDate|ModDate) \(D:[0-9]{14}[^)]*\)")


def normalise_pdf(data: bytes) -> bytes:
    """Fix the creation and modification dates Chrome writes (same length, so offsets stay valid)."""

    def fixed(m):
        old = m.group(0)
        head = b"/" + m.group(1) + b" (D:20000101000000"
        new = head + old[len(head) :]
        return new if len(new) == len(old) else old

    return _PDF_DATE.sub(fixed, data)


class Exporter:
    """Writes a figure in the chosen formats; falls back to interactive HTML, with one clear message,
    when static export (kaleido + a Chrome) is impossible here."""

    def __init__(self, staging: Staging, formats: list[str], dpi: int):
        self.staging, self.formats, self.dpi = staging, formats, dpi
        self.problem = None
        static = [f for f in formats if f != "html"]
        if static:
            problem = static_export.export_problem()
            if problem:
                self._fail(problem)

    def _fail(self, problem: str):
        self.problem = problem
        note(
            f"warning: PNG/SVG/PDF export is not possible here: {problem} Writing interactive HTML figures "
            f"instead (open them in a browser; the camera icon saves a PNG). To get static files install "
            f"Chromium (apt-get install chromium) or set BROWSER_PATH to a Chrome binary."
        )

    def write(self, fig, stem: str) -> list[str]:
        names = []
        fig = go.Figure(fig)  # a copy, with fixed trace ids (plotly.js would draw random ones into SVG ids)
        for i, trace in enumerate(fig.data):
            trace.uid = f"t{i:03d}"
        formats = list(self.formats)
        for fmt in formats:
            if fmt != "html" and self.problem is None:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        data = static_export.figure_bytes(
                            fig,
                            fmt,
                            width=fig.layout.width,
                            height=fig.layout.height,
                            scale=self.dpi / plots.PX_PER_INCH,
                        )
                except static_export.ExportError as exc:
                    self._fail(str(exc))
                else:
                    if fmt == "png":
                        data = png_with_dpi(data, self.dpi)
                    elif fmt == "svg":
                        data = normalise_svg(data, hashlib.sha256(stem.encode()).hexdigest()[:6])
                    elif fmt == "pdf":
                        data = normalise_pdf(data)
                    self.staging.write(f"{stem}.{fmt}", data)
                    names.append(f"{stem}.{fmt}")
                    continue
            if f"{stem}.html" not in names:
                html = fig.to_html(include_plotlyjs="cdn", full_html=True, div_id=f"fig-{stem}")
                self.staging.write(f"{stem}.html", html)
                names.append(f"{stem}.html")
        return names


def environment(device) -> dict:
    import importlib.metadata as md

    env = {"python": platform.python_version(), "device": torch.device(device).type}
    for pkg in ("torch", "torchvision", "captum", "numpy", "plotly", "kaleido"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            env[pkg] = None
    return env
