"""The figure and metrics CLI (mgnet.figures) and the paper-figure builders it shares with the app.

Tiny random-weight checkpoints (64 px, 3 glimpses) and a 3-image folder keep this fast; static export
needs kaleido + Chromium: without them the CLI writes HTML with a warning, and these tests check that.
"""

import io
import json
import re
import xml.dom.minidom
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder, save_tiny_checkpoints
from PIL import Image
from torch import nn

from mgnet import plots, static_export
from mgnet import figures
from mgnet import analysis
from mgnet.analysis import analyze
from mgnet.data import load_image

CLASSES = ["tench", "English springer", "cassette player"]
IDS = ["n01440764", "n02102040", "n02979186"]
STATIC = static_export.export_problem() is None


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("figs")
    save_tiny_checkpoints(root, CLASSES, IDS, image_size=64, n_glimpses=3, names=("mg.pt", "base.pt"))
    make_image_folder(root / "data", classes=IDS, per_class=1, size=48)
    return root


def base_args(env, out, *extra):
    return [
        "--mgnet",
        str(env / "mg.pt"),
        "--baseline",
        str(env / "base.pt"),
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
        *extra,
    ]


FIG_ARGS = (
    "--images",
    "DATA",
    "--limit",
    "2",
    "--methods",
    "saliency",
    "gradcam",
    "--corruption",
    "gaussian_noise:2",
    "--attack",
    "2",
    "--attack-method",
    "fgsm",
    "--format",
    "png",
    "svg",
    "pdf",
    "--dpi",
    "100",
)


def fig_args(env, out):
    return base_args(env, out, *[str(env / "data") if a == "DATA" else a for a in FIG_ARGS])


@pytest.fixture(scope="module")
def two_runs(env):
    """The same figure command twice, into two folders."""
    outs = [env / "run1", env / "run2"]
    for out in outs:
        assert figures.main(fig_args(env, out)) == 0
    return outs


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# -- figures ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_figures_outputs_exist_with_sane_sizes(two_runs):
    out = two_runs[0]
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith(".")], "the staging folder was left behind"
    stems = sorted({n.rsplit(".", 1)[0] for n in names if n != "figures.json"})
    assert [s.split("-")[0] for s in stems] == ["grid", "robustness", "robustness", "strip", "strip"]
    exts = ("png", "svg", "pdf") if STATIC else ("html",)
    for stem in stems:
        assert (out / f"{stem}.json").is_file()
        for ext in exts:
            size = (out / f"{stem}.{ext}").stat().st_size
            assert 2_000 < size < 8_000_000, (stem, ext, size)
    manifest = json.loads((out / "figures.json").read_text())
    assert manifest["schema"] == figures.SCHEMA
    assert set(manifest["files"]) == set(names) - {"figures.json"}
    assert all(len(c["sha256"]) == 64 for c in manifest["checkpoints"].values())
    assert manifest["seed"] == 0 and manifest["methods"] == ["saliency", "gradcam"]
    if not STATIC:
        assert manifest["export_problem"]
        return
    # PNG: physical size follows --width and --dpi (strips are one column, 3.5 in, wide)
    strip = next(out.glob("strip-*.png"))
    with Image.open(strip) as im:
        assert im.size[0] == round(3.5 * 100)
        assert tuple(round(v) for v in im.info["dpi"]) == (100, 100)
    with Image.open(out / "grid-01.png") as im:
        assert im.size[0] == round(7.0 * 100)
    xml.dom.minidom.parseString((out / "grid-01.svg").read_bytes())  # well-formed SVG
    assert (out / "grid-01.pdf").read_bytes().startswith(b"%PDF")


@pytest.mark.slow
def test_figure_sidecars_hold_settings_and_numbers(two_runs, env):
    out = two_runs[0]
    strip = json.loads(next(out.glob("strip-*.json")).read_text())
    assert strip["figure"] == "strip" and len(strip["images"]) == 1
    assert strip["checkpoints"]["mgnet"]["sha256"] == figures.file_sha256(env / "mg.pt")
    assert len(strip["data"]["after_glimpse"]) == 3 and len(strip["data"]["boxes"]) == 3
    grid = json.loads((out / "grid-01.json").read_text())
    assert [len(r["maps"]) for r in grid["data"]["rows"]] == [4, 4]  # 2 models x 2 methods
    for r in grid["data"]["rows"]:
        for m in r["maps"].values():
            assert 0 <= m["mass_inside"] <= 1 and 0 <= m["topk_iou"] <= 1
    rob = json.loads(next(out.glob("robustness-*.json")).read_text())
    kinds = [r["condition"]["kind"] for r in rob["data"]["rows"]]
    assert kinds == ["clean", "corruption", "attack"]
    assert all(len(r["mgnet"]) == 3 and "baseline" in r for r in rob["data"]["rows"])


@pytest.mark.slow
def test_same_inputs_give_byte_identical_files(two_runs):
    a, b = (files_of(d) for d in two_runs)
    assert a.keys() == b.keys()
    different = [n for n in a if a[n] != b[n]]
    assert not different, f"files differ between identical runs: {different}"


def test_a_sidecar_reproduces_its_run(env):
    first, again = env / "side1", env / "side2"
    assert (
        figures.main(
            base_args(
                env, first, "--images", str(env / "data"), "--limit", "1", "--figures", "strip", "--format", "svg"
            )
        )
        == 0
    )
    # the run's manifest is a settings file: feeding it back gives the same files
    assert (
        figures.main(
            ["--settings", str(first / "figures.json"), "--out", str(again), "--no-progress", "--device", "cpu"]
        )
        == 0
    )
    assert files_of(first) == files_of(again)


def test_checkpoint_hash_mismatch_is_refused(env, capsys):
    settings = {
        "schema": figures.SCHEMA,
        "images": [str(env / "data")],
        "figures": ["strip"],
        "checkpoints": {"mgnet": {"path": str(env / "mg.pt"), "sha256": "0" * 64}, "baseline": None},
    }
    path = env / "bad-hash.json"
    path.write_text(json.dumps(settings))
    out = env / "never"
    assert figures.main(["--settings", str(path), "--out", str(out), "--no-progress"]) == 2
    assert "sha256" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "nope"], "unknown method"),
        (["--figures", "poster"], "unknown figure kind"),
        (["--corruption", "rain:3"], "unknown corruption"),
        (["--corruption", "fog:9"], "severity"),
        (["--format", "gif"], "unknown format"),
        (["--dpi", "5"], "--dpi"),
        (["--width", "wide"], "--width"),
        (["--target", "zebra"], "--target"),
        (["--n-glimpses", "0"], "--n-glimpses"),
    ],
)
def test_bad_arguments_exit_2_and_write_nothing(env, capsys, extra, message):
    out = env / "bad-out"
    code = figures.main(base_args(env, out, "--images", str(env / "data"), "--figures", "strip", "grid", *extra))
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_inputs_exit_2(env, capsys, tmp_path):
    out = tmp_path / "o"
    assert figures.main(base_args(env, out, "--images", str(tmp_path / "missing"))) == 2
    assert "does not exist" in capsys.readouterr().err
    assert figures.main(["--mgnet", str(tmp_path / "none.pt"), "--images", str(env / "data"), "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{not json")
    assert figures.main(["--settings", str(tmp_path / "broken.json"), "--out", str(out)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert figures.main(base_args(env, out, "--images", str(env / "mg.pt"), "--figures", "strip")) == 2  # not an image
    assert not out.exists()
    with pytest.raises(SystemExit) as exc:  # argparse: not a number
        figures.main(base_args(env, out, "--dpi", "many"))
    assert exc.value.code == 2


def test_a_failure_midway_leaves_no_partial_output(env, monkeypatch):
    out = env / "partial"
    out.mkdir()
    (out / "keep.txt").write_text("from before")

    def boom(*a, **k):
        raise RuntimeError("simulated crash while drawing the grid")

    monkeypatch.setattr(plots, "comparison_grid_figure", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        figures.main(
            base_args(
                env,
                out,
                "--images",
                str(env / "data"),
                "--limit",
                "1",
                "--figures",
                "strip",
                "grid",
                "--methods",
                "saliency",
                "--format",
                "svg",
            )
        )
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # strips were staged, then discarded


def test_help_mentions_both_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        figures.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "metrics" in text and "--images" in text and "docs/figures.md" in text
    with pytest.raises(SystemExit):
        figures.main(["metrics", "--help"])
    assert "--data" in capsys.readouterr().out


# -- metrics ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def metric_runs(env):
    outs = [env / "m1", env / "m2"]
    for out in outs:
        assert (
            figures.main(
                [
                    "metrics",
                    "--data",
                    str(env / "data"),
                    "--limit",
                    "2",
                    "--methods",
                    "saliency",
                    "--steps",
                    "4",
                    "--format",
                    "svg",
                    *base_args(env, out),
                ]
            )
            == 0
        )
    return outs


@pytest.mark.slow
def test_metrics_tables_and_plots(metric_runs):
    out = metric_runs[0]
    for name in ("metrics.md", "metrics.csv", "metrics.json", "curves.json"):
        assert (out / name).stat().st_size > 200
    plot_ext = "svg" if STATIC else "html"
    for stem in ("deletion-mgnet", "insertion-baseline", "auc-deletion", "auc-insertion", "agreement"):
        assert (out / f"{stem}.{plot_ext}").is_file()
    doc = json.loads((out / "metrics.json").read_text())
    # 2 images x (focus + 2 saliency maps + random) x 2 scoring models
    assert len(doc["records"]) == 16
    assert len((out / "metrics.csv").read_text().strip().splitlines()) == 17
    relations = {(r["map"], r["scored_on"]): r["relation"] for r in doc["summary"]["deletion_insertion"]}
    assert relations[("MGNet focus map", "MGNet")] == "own"
    assert relations[("Baseline · Saliency (gradient)", "MGNet")] == "cross"
    assert relations[("random map", "Baseline")] == "reference"
    for r in doc["records"]:
        assert 0 <= r["deletion_auc"] <= 1 and 0 <= r["insertion_auc"] <= 1
        assert 0 <= r["mass_inside"] <= 1 and 0 <= r["topk_iou"] <= 1
    focus = next(r for r in doc["summary"]["agreement"] if r["method"] == "focus")
    assert focus["topk_iou"] == 1.0 and focus["mass_inside"] > 0.8  # the focus map lies in the boxes
    md = (out / "metrics.md").read_text()
    assert "| map | scored on | relation | deletion AUC ↓ | insertion AUC ↑ |" in md
    curves = json.loads((out / "curves.json").read_text())
    assert len(curves["fractions"]) == 5 and len(curves["images"]) == 2


@pytest.mark.slow
def test_metrics_are_deterministic(metric_runs):
    a, b = (files_of(d) for d in metric_runs)
    assert a.keys() == b.keys()
    assert [n for n in a if a[n] != b[n]] == []


class QuadrantModel(nn.Module):
    """p(class 0) = share of the top-left quadrant's pixels still present (value 1); known AUCs."""

    def forward(self, x):
        f = x[:, :, :4, :4].mean(dim=(1, 2, 3)).clamp(0, 1)
        return torch.stack([torch.log(f + 1e-12), torch.log(1 - f + 1e-12)], dim=1)


def test_deletion_insertion_on_a_constructed_case():
    x = torch.ones(1, 3, 8, 8)
    quadrant = np.zeros((8, 8), np.float32)
    quadrant[:4, :4] = 1.0
    model = QuadrantModel()
    # the quadrant is 1/4 of the pixels: with 4 steps, a perfect map deletes it all in the first step
    good = figures.map_curves({"toy": model}, {"toy": x}, {"toy": 0}, quadrant, steps=4, fill="black")["toy"]
    np.testing.assert_allclose(good["deletion"].probs, [1, 0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(good["insertion"].probs, [0, 1, 1, 1, 1], atol=1e-6)
    assert good["deletion"].auc == pytest.approx(0.125, abs=1e-6)  # 0.25 * (1 + 0) / 2
    assert good["insertion"].auc == pytest.approx(0.875, abs=1e-6)  # 0.125 + 0.75
    # the opposite map removes the quadrant last
    bad = figures.map_curves({"toy": model}, {"toy": x}, {"toy": 0}, 1 - quadrant, steps=4, fill="black")["toy"]
    assert bad["deletion"].auc == pytest.approx(0.875, abs=1e-6)
    assert bad["insertion"].auc == pytest.approx(0.125, abs=1e-6)


def test_summary_statistics_on_known_values():
    records = [
        {"map": "a", "v": 0.2},
        {"map": "a", "v": 0.4},
        {"map": "b", "v": 0.5},
        {"map": "b", "v": None},
        {"map": "a", "v": float("nan")},
    ]
    rows = figures.summarise(records, ("map",), ("v",))
    assert [r["map"] for r in rows] == ["a", "b"]
    a, b = rows
    assert a["v"] == pytest.approx(0.3) and a["v_n"] == 2
    assert a["v_sd"] == pytest.approx(np.sqrt(0.02), abs=1e-6) and a["v_sem"] == pytest.approx(0.1, abs=1e-6)
    assert b["v"] == 0.5 and b["v_n"] == 1 and b["v_sem"] is None


# -- library pieces -----------------------------------------------------------------------------------
def test_analyze_batch_matches_analyze(env):
    from mgnet import load_checkpoint

    model = load_checkpoint(env / "mg.pt", "cpu")
    images = [load_image(p) for p in sorted((env / "data").rglob("*.png"))[:2]]
    images[1] = np.ascontiguousarray(np.repeat(images[1], 2, axis=1))  # a non-square photo too
    batch = analysis.analyze_batch(model, images, batch_size=2)
    for image, got in zip(images, batch):
        want = analyze(model, image)
        np.testing.assert_allclose(got.probs, want.probs, atol=1e-5)
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)
        assert np.abs(got.seen.astype(int) - want.seen.astype(int)).max() <= 1
        assert got.image_hash == want.image_hash


def test_output_normalisers():
    buf = io.BytesIO()
    Image.new("RGB", (3, 2), "red").save(buf, format="PNG")
    png = figures.png_with_dpi(figures.png_with_dpi(buf.getvalue(), 600), 300)  # replaces, never duplicates
    with Image.open(io.BytesIO(png)) as im:
        assert tuple(round(v) for v in im.info["dpi"]) == (300, 300) and im.size == (3, 2)
    assert png.count(b"pHYs") == 1
    pdf = b"%PDF-1.4\n/CreationDate (D:20261125031047+00'00')\n/ModDate (D:20261125031047+00'00')>>"
    fixed = figures.normalise_pdf(pdf)
    assert len(fixed) == len(pdf) and b"20261125" not in fixed and fixed.count(b"D:20000101000000") == 2
    svg = (
        b'<svg><defs id="defs-a1b2c3"><clipPath id="clipa1b2c3xy"/><clipPath id="legenda1b2c3"/></defs>'
        b'<g style="fill: url(\'#ga1b2c3-x\')"/><image href="data:image/png;base64,QUa1b2c3=="/></svg>'
    )
    out = figures.normalise_svg(svg, "000000")
    assert out.count(b"a1b2c3") == 1 and out.count(b"000000") == 4  # the image data is left alone


def test_panel_grid_keeps_aspect_and_physical_size():
    wide = np.zeros((10, 20, 3), np.uint8)
    square = np.zeros((10, 10, 3), np.uint8)
    fig = plots.panel_grid_figure(
        [
            [{"image": wide, "boxes": [[0, 0, 20, 10], [2, 2, 8, 8]]}, {"image": square}],
            [{"image": wide, "caption": "a long caption that wraps " * 4}, None],
        ],
        column_titles=["photo", "crop"],
        row_labels=["one", "two"],
        width=336,
        font_size=8,
    )
    assert fig.layout.width == 336
    lay = fig.layout
    plot_w = 336 - lay.margin.l - lay.margin.r
    plot_h = lay.height - lay.margin.t - lay.margin.b
    for ax in ("", "2", "3"):
        xd, yd = lay[f"xaxis{ax}"].domain, lay[f"yaxis{ax}"].domain
        cell_aspect = (xd[1] - xd[0]) * plot_w / ((yd[1] - yd[0]) * plot_h)
        assert cell_aspect == pytest.approx(2.0 if ax != "2" else 1.0, rel=1e-6)
    # the whole-image box is drawn just inside the photo, numbered chips in glimpse colours
    rects = [s for s in lay.shapes if s.xref == "x"]
    assert rects[0].x0 > 0 and rects[0].x1 < 20 and rects[0].line.color == plots.glimpse_color(0)
    assert any(a.text == "<b>2</b>" for a in lay.annotations)
    assert any(re.search("long caption", a.text or "") and "<br>" in a.text for a in lay.annotations)


def test_without_chrome_figures_fall_back_to_html(env, monkeypatch, capsys):
    monkeypatch.setattr(static_export, "export_problem", lambda: "no Chrome or Chromium was found (simulated).")
    out = env / "no-chrome"
    assert (
        figures.main(
            base_args(
                env, out, "--images", str(env / "data"), "--limit", "1", "--figures", "strip", "--format", "png", "svg"
            )
        )
        == 0
    )
    assert "Writing interactive HTML" in capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    assert [n.rsplit(".", 1)[1] for n in names] == ["json", "html", "json"]
    assert json.loads((out / "figures.json").read_text())["export_problem"].startswith("no Chrome")


def test_metrics_with_captum_sensitivity(env):
    out = env / "m-sens"
    assert (
        figures.main(
            [
                "metrics",
                "--data",
                str(env / "data"),
                "--limit",
                "1",
                "--methods",
                "saliency",
                "--models",
                "mgnet",
                "--steps",
                "2",
                "--sensitivity",
                "--no-infidelity",
                "--format",
                "html",
                *base_args(env, out),
            ]
        )
        == 0
    )
    doc = json.loads((out / "metrics.json").read_text())
    row = next(r for r in doc["summary"]["captum"] if r["map"] == "MGNet · Saliency (gradient)")
    assert row["sensitivity"] is not None and row["sensitivity"] >= 0 and row["infidelity"] is None
    md = (out / "metrics.md").read_text()
    assert "| map | max-sensitivity ↓ |" in md and "infidelity ↓" not in md
    assert (out / "agreement.html").is_file()
