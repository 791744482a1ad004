"""AppTest flows for the Streamlit app (app/main.py), against tiny random-weight checkpoints.

The checkpoint folder is a temporary one (MGNET_CHECKPOINTS) holding a 32-pixel MGNet, a 32-pixel baseline
and one broken file, so every flow runs in seconds on a CPU. Uploads go through
``file_uploader.set_value`` and photos through ``camera_input.set_value``.
"""

from __future__ import annotations

import io
import re
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("streamlit")
from conftest import IMAGENETTE_CLASSES, save_tiny_checkpoints  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app" / "main.py")
EXAMPLE = ROOT / "app" / "examples" / "tench_1.jpg"
CLASSES = IMAGENETTE_CLASSES
TIMEOUT = 180


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    save_tiny_checkpoints(folder, CLASSES, image_size=32)
    (folder / "broken.pt").write_bytes(b"this is not a checkpoint")
    return folder


@pytest.fixture
def app(ckpt_dir, monkeypatch):
    monkeypatch.setenv("MGNET_CHECKPOINTS", str(ckpt_dir))
    monkeypatch.setenv("MGNET_DEVICE", "cpu")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def errors(at) -> list[str]:
    """Error messages in the page, except the broken checkpoint the fixture put there on purpose."""
    return [e.value for e in at.error if "broken.pt" not in e.value]


def text(at) -> str:
    return "\n".join(m.value for m in at.markdown)


def encoded(fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    img = Image.open(EXAMPLE).convert("RGB").resize((90, 60))
    if fmt == "GIF":
        img = img.convert("P")
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def services_dir(at) -> str:
    import os

    return os.environ["MGNET_CHECKPOINTS"]


def switch(at, view: str, sub: str | None = None):
    at.session_state["view"] = view
    if sub:
        at.session_state["rob_view"] = sub
    at.run()
    assert not at.exception, at.exception


def submit(at, label: str):
    next(b for b in at.button if b.label == label).click()
    at.run()
    assert not at.exception, at.exception


def test_importing_the_page_does_not_run_it(monkeypatch):
    """Tools and tests can import app/main.py: only `streamlit run` (and AppTest) run it, as __main__."""
    import importlib
    import sys

    import streamlit as st

    drawn = []
    monkeypatch.setattr(st, "title", lambda *a, **k: drawn.append(a))
    monkeypatch.setattr(st, "set_page_config", lambda *a, **k: drawn.append(a))
    monkeypatch.delitem(sys.modules, "app.main", raising=False)
    page = importlib.import_module("app.main")
    assert callable(page.main) and drawn == []
    monkeypatch.delitem(sys.modules, "app.main")


# -- opening, models ------------------------------------------------------------------------------------
def test_opens_with_an_example_analysed(app):
    assert "after 4 glimpses" in text(app)
    assert app.slider(key="step").value == 4
    assert not errors(app)
    assert any(m.label == "Compute so far" for m in app.metric)
    assert app.selectbox(key="photo").value == "parachute_1"


def test_bad_checkpoint_is_listed_with_its_message(app):
    msgs = [e.value for e in app.error if "broken.pt" in e.value]
    assert msgs and "broken.pt" in msgs[0]
    # the picker says how each was trained (these tiny files record no training run)
    assert app.selectbox(key="model").options == [
        "mgnet-tiny · recipe not recorded",
        "baseline-tiny · recipe not recorded",
    ]
    assert "CPU" in "\n".join(c.value for c in app.caption)


def test_baseline_as_main_model(app):
    app.selectbox(key="model").set_value("baseline-tiny.pt").run()
    assert not app.exception
    assert "after 1 glimpse " in text(app)
    assert not errors(app)


def test_empty_checkpoint_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MGNET_CHECKPOINTS", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("No usable checkpoint" in e.value for e in at.error)


# -- input ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fmt,mime,ext",
    [
        ("JPEG", "image/jpeg", "jpg"),
        ("PNG", "image/png", "png"),
        ("WEBP", "image/webp", "webp"),
        ("BMP", "image/bmp", "bmp"),
        ("TIFF", "image/tiff", "tif"),
        ("GIF", "image/gif", "gif"),
    ],
)
def test_upload_each_format(app, fmt, mime, ext):
    app.radio(key="source").set_value("Upload").run()
    app.file_uploader(key="upload").set_value((f"mine.{ext}", encoded(fmt), mime)).run()
    assert not app.exception
    assert f"**mine.{ext}** · 90×60 px" in text(app)
    assert not errors(app)


def test_a_large_jpeg_is_decoded_at_reduced_scale_and_the_page_says_so(app, ckpt_dir):
    rng = np.random.default_rng(1)
    big = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).resize((3000, 2600), Image.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=85)
    app.radio(key="source").set_value("Upload").run()
    app.file_uploader(key="upload").set_value(("big.jpg", buf.getvalue(), "image/jpeg")).run()
    assert not app.exception and not errors(app)
    # 2600 px is at least twice PHOTO_MIN_SIDE (1280): half scale, 1300 px on the shorter side.
    assert "**big.jpg** · 3000×2600 px (decoded at 1/2 scale, 1500×1300)" in text(app)
    # The glimpse's box is given in the file's own pixels: twice the decoded photo's.
    from mgnet import load_checkpoint
    from mgnet.analysis import analyze
    from mgnet.data import PHOTO_MIN_SIDE, load_image

    model = load_checkpoint(ckpt_dir / "mgnet-tiny.pt", "cpu")
    boxes = analyze(model, load_image(buf.getvalue(), min_side=PHOTO_MIN_SIDE)).boxes
    line = next(m for m in text(app).splitlines() if m.startswith("Box in the photo"))
    x0, x1, y0, y1 = (float(v) for v in re.findall(r"`(\d+)–(\d+)`", line) for v in v)
    assert any(
        np.allclose(
            [x0, y0, x1, y1], [max(b[0], 0) * 2, max(b[1], 0) * 2, min(b[2] * 2, 3000), min(b[3] * 2, 2600)], atol=1.5
        )
        for b in boxes[1:]
    ), (line, boxes)


@pytest.mark.parametrize(
    "name,data,expect",
    [
        ("notes.jpg", b"hello, I am text pretending to be a JPEG", "not an image format"),
        ("empty.png", b"", "empty"),
        ("drawing.png", b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "SVG"),
        ("cut.png", None, "damaged or truncated"),
    ],
)
def test_bad_upload_shows_message_and_app_keeps_working(app, name, data, expect):
    if data is None:
        data = encoded("PNG")[:200]
    app.radio(key="source").set_value("Upload").run()
    app.file_uploader(key="upload").set_value((name, data, "image/png")).run()
    assert not app.exception
    msgs = errors(app)
    assert len(msgs) == 1 and name in msgs[0] and expect in msgs[0], msgs
    assert "parachute_1.jpg" in text(app)  # the example is analysed instead
    # ...and the next, good upload works.
    app.file_uploader(key="upload").set_value(("good.png", encoded("PNG"), "image/png")).run()
    assert not errors(app) and "**good.png**" in text(app)


def _unusual(kind: str) -> tuple[bytes, str]:
    """Valid but unusual images, each with the size the page should report."""
    buf = io.BytesIO()
    base = Image.open(EXAMPLE).convert("RGB").resize((90, 60))
    if kind == "1x1":
        Image.new("RGB", (1, 1), (200, 10, 10)).save(buf, "PNG")
        return buf.getvalue(), "1×1"
    if kind == "16-bit":
        arr = np.asarray(base.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(arr).save(buf, "PNG")
        return buf.getvalue(), "90×60"
    if kind == "cmyk":
        base.convert("CMYK").save(buf, "JPEG")
        return buf.getvalue(), "90×60"
    if kind == "alpha":
        base.convert("RGBA").save(buf, "PNG")
        return buf.getvalue(), "90×60"
    if kind == "exif-rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees: the photo shows 60 wide, 90 high
        base.save(buf, "JPEG", exif=exif)
        return buf.getvalue(), "60×90"
    if kind == "animated":
        frames = [base.convert("P"), base.transpose(Image.FLIP_LEFT_RIGHT).convert("P")]
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
        return buf.getvalue(), "90×60"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["1x1", "16-bit", "cmyk", "alpha", "exif-rotated", "animated"])
def test_unusual_but_valid_images(app, kind):
    data, size = _unusual(kind)
    app.radio(key="source").set_value("Upload").run()
    ext = "gif" if kind == "animated" else "jpg" if kind in ("cmyk", "exif-rotated") else "png"
    app.file_uploader(key="upload").set_value((f"{kind}.{ext}", data, "image/png")).run()
    assert not app.exception and not errors(app)
    assert f"**{kind}.{ext}** · {size} px" in text(app)


def test_decompression_bomb_is_refused(app):
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    # A valid PNG header declaring 100000 x 100000 pixels (10 gigapixels), with almost no data.
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + chunk(b"IEND", b"")
    )
    app.radio(key="source").set_value("Upload").run()
    app.file_uploader(key="upload").set_value(("bomb.png", bomb, "image/png")).run()
    assert not app.exception
    msgs = errors(app)
    assert len(msgs) == 1 and "bomb.png" in msgs[0] and "decompression bomb" in msgs[0], msgs
    assert "Compute so far" in [m.label for m in app.metric]


def test_camera_photo(app):
    app.radio(key="source").set_value("Camera").run()
    app.camera_input(key="camera").set_value(("shot.jpg", encoded("JPEG"), "image/jpeg")).run()
    assert not app.exception
    assert "**camera.jpg** · 90×60 px" in text(app)


def test_gallery_choice(app):
    app.selectbox(key="photo").set_value("golf_ball_2").run()
    assert "**golf_ball_2.jpg**" in text(app)


# -- glimpses -------------------------------------------------------------------------------------------
def test_glimpse_stepping_never_recomputes(app, monkeypatch):
    import mgnet.analysis

    calls = []
    for name in ("analyze", "location_check"):
        real = getattr(mgnet.analysis, name)
        monkeypatch.setattr(mgnet.analysis, name, lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k))
    app.run()
    before = len(calls)
    next(b for b in app.button if b.key == "glimpse_prev").click().run()
    assert app.slider(key="step").value == 3
    assert "**Glimpse 3 of 4**" in text(app)
    app.slider(key="step").set_value(1).run()
    assert "**Glimpse 1 of 4**" in text(app)
    next(b for b in app.button if b.key == "glimpse_next").click().run()
    assert app.slider(key="step").value == 2
    assert len(calls) == before, "stepping through glimpses re-ran the model"
    assert not app.exception and not errors(app)


def test_location_check_under_the_glimpses(app, ckpt_dir):
    from mgnet import load_checkpoint
    from mgnet.analysis import location_check
    from mgnet.data import load_image

    para = [m.value for m in app.markdown if "Does the location matter" in m.value]
    assert len(para) == 1
    model = load_checkpoint(ckpt_dir / "mgnet-tiny.pt", device="cpu")
    check = location_check(model, load_image(ROOT / "app" / "examples" / "parachute_1.jpg"))
    name = CLASSES[check.target]
    assert f"P({name}) is **{100 * check.own[-1]:.1f}%**" in para[0]
    assert f"{100 * check.centre[-1]:.1f}% with them centred" in para[0]
    assert f"at {len(check.moved)} random positions" in para[0]
    app.slider(key="glimpses").set_value(1).run()
    assert not app.exception and not any("Does the location matter" in m.value for m in app.markdown)


def test_fewer_glimpses_clamps_the_step(app):
    app.slider(key="glimpses").set_value(2).run()
    assert not app.exception
    assert app.slider(key="step").value == 2
    assert "after 2 glimpses" in text(app)


def test_more_glimpses_than_trained_show_every_step(app):
    """MGNet is an anytime model: running 6 glimpses when it was trained with 4 must give a panel, numbers
    and a compute entry for each of them (an IndexError replaced the panel from glimpse 5 on)."""
    app.slider(key="glimpses").set_value(6).run()
    for step in (5, 6):
        app.slider(key="step").set_value(step).run()
        assert not app.exception, app.exception
        assert not errors(app), errors(app)
        assert f"Glimpse {step} of 6" in text(app)
        assert "Compute so far" in [m.label for m in app.metric]
        assert not any("Glimpses failed" in str(e.value) for e in app.error)


def test_query_params_restore_a_view(ckpt_dir, monkeypatch):
    monkeypatch.setenv("MGNET_CHECKPOINTS", str(ckpt_dir))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["photo"] = "golf ball #2"
    at.query_params["step"] = "2"
    at.query_params["glimpses"] = "3"
    at.run()
    assert not at.exception
    assert "**golf_ball_2.jpg**" in text(at) and "after 3 glimpses" in text(at)
    assert at.slider(key="step").value == 2


# -- compare --------------------------------------------------------------------------------------------
def test_compare_methods_grid(app):
    switch(app, "Compare")
    app.multiselect(key="methods").set_value(["saliency", "occlusion", "gradcam"])
    app.selectbox(key="target").set_value("golf ball")
    submit(app, "Compute maps")
    assert not errors(app)
    table = app.dataframe[0].value
    assert len(table) == 6  # (MGNet, baseline) x 3 methods
    assert set(table["class"]) == {"golf ball"}
    assert table["IoU with focus map"].between(0, 1).all()
    assert table["in glimpse boxes"].between(0, 1).all()
    assert app.get("progress")  # progress bar shown
    grid = app.session_state["_registry"].figures["saliency-grid"]
    # the print layout at a fixed width (page = export), thumbnails at least 160 px
    assert grid.layout.width and grid.layout.width <= 900
    m = grid.layout.margin
    assert all(
        (grid.layout[k].domain[1] - grid.layout[k].domain[0]) * (grid.layout.width - m.l - m.r) >= 160
        for k in grid.layout
        if k.startswith("xaxis")
    )
    # "in boxes" beside its chance level: the glimpse boxes' share of the photo
    from mgnet import geometry

    from mgnet import load_checkpoint
    from mgnet.analysis import analyze
    from mgnet.data import load_image

    res = analyze(
        load_checkpoint(Path(services_dir(app)) / "mgnet-tiny.pt", device="cpu"),
        load_image(ROOT / "app" / "examples" / "parachute_1.jpg"),
    )
    chance = geometry.area_share(res.boxes_model[1:], res.image_size, res.image_size)
    assert np.allclose(table["chance (boxes' share of the photo)"], chance)
    captions = [t.text for t in grid.layout.annotations]
    assert any(f"(chance {chance:.0%})" in c for c in captions), captions


def test_compare_cell_failure_stays_in_its_cell(app, monkeypatch):
    import mgnet.explain

    real = mgnet.explain.explain

    def flaky(model, x, method, *a, **k):
        if method == "gradcam":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(model, x, method, *a, **k)

    monkeypatch.setattr(mgnet.explain, "explain", flaky)
    switch(app, "Compare")
    app.multiselect(key="methods").set_value(["saliency", "gradcam"])
    app.checkbox(key="self").set_value(False)
    submit(app, "Compute maps")
    msgs = errors(app)
    assert len(msgs) == 1 and "Grad-CAM failed" in msgs[0] and "CUDA error" in msgs[0]
    assert len(app.dataframe[0].value) == 1  # the saliency cell still worked


def test_panel_failure_leaves_the_page_working(app, monkeypatch):
    from app import services
    from mgnet import plots

    def boom(*a, **k):
        raise MemoryError("simulated out of memory")

    services._figure_slot.clear()  # figures built by earlier tests are shared, as in the real server
    monkeypatch.setattr(plots, "belief_figure", boom)
    app.run()
    assert not app.exception
    assert any("Glimpses" in e for e in errors(app))
    assert any(b.key == "bundle" for b in app.get("download_button"))  # the sidebar still renders


def test_figures_are_built_once_per_content_and_shared_by_reruns_and_sessions(ckpt_dir, monkeypatch):
    """Reruns (every widget change) and other students reuse built figures; a new step builds anew."""
    from app import glimpses, services
    from mgnet import plots

    built = []
    for name in ("glimpse_figure", "belief_figure", "heatmap_figure", "location_check_figure"):
        real = getattr(plots, name)
        monkeypatch.setattr(plots, name, lambda *a, _real=real, _name=name, **k: built.append(_name) or _real(*a, **k))
    services._figure_slot.clear()
    monkeypatch.setenv("MGNET_CHECKPOINTS", str(ckpt_dir))
    monkeypatch.setenv("MGNET_DEVICE", "cpu")
    first = AppTest.from_file(APP, default_timeout=TIMEOUT)
    first.run()
    assert not first.exception and not errors(first)
    once = sorted(built)
    assert set(once) == {"glimpse_figure", "belief_figure", "heatmap_figure", "location_check_figure"}, once
    glimpse = next(f for f in first.get("plotly_chart") if "glimpse" in f.proto.spec.lower())
    first.run()  # a rerun: nothing is built again ...
    second = AppTest.from_file(APP, default_timeout=TIMEOUT)
    second.run()  # ... nor for a second session on the same photo and model, which is drawn the same
    assert sorted(built) == once
    assert [f.proto.spec for f in second.get("plotly_chart")] == [f.proto.spec for f in first.get("plotly_chart")]
    assert glimpse.proto.spec in [f.proto.spec for f in second.get("plotly_chart")]
    step = second.slider(key=glimpses.STEP_KEY)
    step.set_value(step.value - 1).run()  # another glimpse step is another figure
    assert not second.exception
    assert built.count("glimpse_figure") == once.count("glimpse_figure") + 1


# -- robustness -----------------------------------------------------------------------------------------
def test_corruption(app):
    switch(app, "Robustness")
    app.selectbox(key="cor_name").set_value("fog")
    app.slider(key="cor_sev").set_value(2).run()
    assert not app.exception and not errors(app)
    table = app.dataframe[0].value
    assert list(table["model"]) == ["mgnet-tiny", "baseline-tiny"]
    assert app.session_state["_registry"].settings["corruption"] == {
        "name": "fog",
        "severity": 2,
        "seed": 0,
        "working_side": 224,
    }


def test_corruption_saliency(app):
    switch(app, "Robustness")
    app.toggle(key="cor_saliency").set_value(True).run()
    assert not app.exception and not errors(app)
    figures = app.session_state["_registry"].figures
    assert "corruption-saliency" in figures
    assert len(figures["corruption-saliency"].layout.annotations) >= 2 + 3  # column + row titles


STEPS_KEY = {"pgd": "atk_steps", "paper-pgd": "atk_steps", "apgd-ce": "atk_iters", "apgd-dlr": "atk_iters"}


@pytest.mark.parametrize(
    "method,source,true_grad",
    [
        ("fgsm", "mgnet-tiny.pt", False),
        ("pgd", "mgnet-tiny.pt", True),
        ("pgd", "baseline-tiny.pt", False),
        ("paper-pgd", "mgnet-tiny.pt", False),
        ("apgd-ce", "mgnet-tiny.pt", True),
    ],
)
def test_attack(app, method, source, true_grad):
    from mgnet.utils import model_state_fingerprint

    switch(app, "Robustness", "Attack")
    app.selectbox(key="atk_method").set_value(method).run()
    if method in STEPS_KEY:
        app.number_input(key=STEPS_KEY[method]).set_value(3)
    app.number_input(key="atk_eps").set_value(8.0)
    app.selectbox(key="atk_source").set_value(source)
    app.checkbox(key="atk_truegrad").set_value(true_grad)
    submit(app, "Run attack")
    assert not errors(app)
    table = app.dataframe[0].value
    roles = dict(zip(table["model"], table["attack"]))
    white = source.removesuffix(".pt")
    assert roles[white] == "white-box"
    assert all(r.startswith("transfer from") for m, r in roles.items() if m != white)
    settings = app.session_state["_registry"].settings["attack"]
    assert settings["method"] == method and settings["true_grad"] == true_grad and settings["source_sha256"]
    if method in STEPS_KEY:
        assert settings["steps"] == 3
    # The shared models are left exactly as they were: eval mode, no hooks, no gradients.
    from app import services

    for entry in services.catalog(Path(services.checkpoint_dir())).models:
        fp = model_state_fingerprint(entry.model)
        assert fp["training"] is False and fp["hooks"] == 0 and fp["grads"] == 0


def test_paper_pgd_disables_what_it_ignores_and_says_when_rounding_erases_it(app):
    switch(app, "Robustness", "Attack")
    app.selectbox(key="atk_method").set_value("paper-pgd").run()
    assert app.selectbox(key="atk_norm").disabled and app.checkbox(key="atk_random").disabled
    assert app.checkbox(key="atk_targeted").disabled and not app.number_input(key="atk_steps").disabled
    app.number_input(key="atk_eps").set_value(1.0)
    app.number_input(key="atk_steps").set_value(2)
    submit(app, "Run attack")
    assert not errors(app)
    settings = app.session_state["_registry"].settings["attack"]
    assert "norm" not in settings and "random_start" not in settings  # never sent to the attack
    # A normalised 1/255 is under 0.25/255 per pixel: 8-bit rounding gives back the clean photo, and the page
    # says so instead of showing the rounded image's predictions as the attack's result.
    assert any("disappears" in w.value and "unrounded" in w.value for w in app.warning)
    assert "under 1/255" in text(app) or "below 1/255" in text(app)
    app.selectbox(key="atk_method").set_value("pgd").run()
    assert not app.selectbox(key="atk_norm").disabled and not app.checkbox(key="atk_random").disabled


def test_square_has_a_query_budget_progress_and_a_comparison(app):
    switch(app, "Robustness", "Attack")
    app.selectbox(key="atk_method").set_value("square").run()
    assert app.checkbox(key="atk_truegrad").disabled  # no gradients to make true
    app.number_input(key="atk_queries").set_value(20)
    app.number_input(key="atk_eps").set_value(8.0)
    submit(app, "Run attack")
    assert not errors(app)
    settings = app.session_state["_registry"].settings["attack"]
    assert settings["method"] == "square" and settings["queries"] == 20 and "steps" not in settings
    assert set(settings["gradient_attacks_fooled_source"]) == {"pgd", "apgd-ce"}
    notes = [m.value for m in list(app.warning) + list(app.info)]
    assert any("Square" in n and "PGD" in n for n in notes), notes


def test_a_gradient_free_win_is_called_masking():
    from types import SimpleNamespace

    from app.robustness import AttackResult, gradient_free_note

    source = SimpleNamespace(short="mgnet")
    result = AttackResult(source, 0, None, None, None, {}, {}, {}, True, {"pgd": False, "apgd-ce": False})
    level, note = gradient_free_note(result, "square")
    assert level == "warning" and "gradient masking" in note and "overstated" in note
    result.fooled, result.gradient_fooled = False, {"pgd": True, "apgd-ce": False}
    level, note = gradient_free_note(result, "square")
    assert level == "info" and "PGD fooled mgnet where Square did not" in note


def test_attack_defaults_come_from_the_registry():
    from app.robustness import DEFAULT_ATTACK, EPS_GRID, AttackRequest

    request = AttackRequest()
    assert request.method == DEFAULT_ATTACK == "apgd-ce" and request.options() == {"steps": 100}
    paper = AttackRequest(method="paper_pgd", norm="l2", random_start=True, steps=10)
    assert paper.method == "paper-pgd" and paper.options() == {"steps": 10} and paper.norm == "linf"
    assert AttackRequest(method="square", queries=50).options() == {"queries": 50}
    assert [e for e in EPS_GRID if 4 < e < 8] == [5.0, 6.0, 7.0]


def test_targeted_attack(app):
    switch(app, "Robustness", "Attack")
    assert app.checkbox(key="atk_targeted").disabled  # the default, APGD-CE, is untargeted
    app.selectbox(key="atk_method").set_value("pgd").run()
    app.checkbox(key="atk_targeted").set_value(True)
    app.selectbox(key="atk_target").set_value("parachute")
    app.number_input(key="atk_steps").set_value(2)
    submit(app, "Run attack")
    assert not errors(app)
    assert app.session_state["_registry"].settings["attack"]["label"] == CLASSES.index("parachute")


@pytest.mark.parametrize("kind", ["eps", "severity"])
def test_sweep(app, kind):
    switch(app, "Robustness", "Sweep")
    app.radio(key="sweep_kind").set_value(kind)
    app.select_slider(key="sweep_max_eps").set_value(1.0)
    from app.robustness import AttackRequest

    # the sweep attacks with the Attack tab's last request (never its widgets): a quick FGSM here
    app.session_state["atk_request"] = AttackRequest(method="fgsm")
    next(b for b in app.button if b.key == "sweep_run").click().run()
    assert not app.exception and not errors(app)
    sweep = app.session_state["_registry"].settings["sweep"]
    assert sweep["kind"] == kind
    assert set(sweep["series"]) == {"mgnet-tiny", "baseline-tiny"}
    assert sweep["x"] == ([0.0, 0.5, 1.0] if kind == "eps" else [0, 1, 2, 3, 4, 5])
    for ys in sweep["series"].values():
        assert len(ys) == len(sweep["x"]) and all(0 <= y <= 1 for y in ys)
    if kind == "eps":
        assert app.session_state["sweep_request"].attack.method == "fgsm"
        assert "FGSM" in app.session_state["_registry"].figures["sweep"].layout.xaxis.title.text


# -- export ---------------------------------------------------------------------------------------------
def test_every_figure_has_downloads_and_the_view_a_bundle(app):
    keys = {b.key for b in app.get("download_button")}
    figures = app.session_state["_registry"].figures
    assert "bundle" in keys
    for name in figures:
        assert f"dl-{name}-html" in keys
    settings = app.session_state["_registry"].settings
    assert settings["model"]["sha256"] and len(settings["model"]["sha256"]) == 64
    assert settings["photo"]["name"] == "parachute_1.jpg" and settings["glimpse_step"] == 4


@pytest.mark.parametrize("static", [False, True])
def test_bundle_contents(app, static):
    from app.export import build_bundle
    from mgnet import static_export

    reg = app.session_state["_registry"]
    if static and static_export.export_problem():
        pytest.skip(f"no static export here: {static_export.export_problem()}")
    figures = {k: reg.figures[k] for k in list(reg.figures)[:2]}
    doc = reg.settings["figure_settings"]
    data = build_bundle(
        figures,
        dict(reg.images),
        dict(reg.settings),
        static=static,
        figure_doc=doc,
        photo=("parachute_1.jpg", b"jpeg bytes"),
    )
    zf = zipfile.ZipFile(io.BytesIO(data))
    names = set(zf.namelist())
    settings = json.loads(zf.read("settings.json"))
    assert settings["schema"] == "mgnet-figures/1" and settings["images"] == ["photo/parachute_1.jpg"]
    assert settings["checkpoints"]["mgnet"]["sha256"] == reg.settings["model"]["sha256"]
    assert settings["app"]["model"]["sha256"] == reg.settings["model"]["sha256"]
    assert settings["app"]["mgnet_commit"] and settings["app"]["versions"]["torch"]
    assert zf.read("photo/parachute_1.jpg") == b"jpeg bytes"
    for k in figures:
        assert ({f"figures/{k}.png", f"figures/{k}.svg"} if static else {f"figures/{k}.html"}) <= names
    for k in reg.images:
        assert f"images/{k}.png" in names
    if static:
        assert zf.read(f"figures/{next(iter(figures))}.png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_without_a_browser_degrades_gracefully(app, monkeypatch):
    from app import ui
    from mgnet import static_export

    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chrome")
    assert "does not exist" in static_export.export_problem()
    ui._export_probe.clear()
    try:
        app.run()
        assert not app.exception and not errors(app)
        notes = "\n".join(c.value for c in app.caption)
        assert "Static export is unavailable" in notes and "HTML" in notes
        assert not any(b.key.endswith("-png") for b in app.get("download_button"))
        assert any(b.key.endswith("-html") for b in app.get("download_button"))
    finally:
        ui._export_probe.clear()
    # A deferred PNG download whose export fails returns a readable note instead of raising.
    monkeypatch.setattr(
        static_export, "figure_bytes", lambda *a, **k: (_ for _ in ()).throw(static_export.ExportError("no Chrome"))
    )
    data = ui._exporter(next(iter(app.session_state["_registry"].figures.values())), "png")()
    assert b"Static export failed" in data and b"no Chrome" in data


def test_query_params_restore_compare_and_attack_settings(ckpt_dir, monkeypatch):
    monkeypatch.setenv("MGNET_CHECKPOINTS", str(ckpt_dir))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["view"] = "Compare"
    at.query_params["methods"] = ["Occlusion (slow)", "Guided Backprop"]
    at.query_params["target"] = "church"
    at.run()
    assert not at.exception
    assert at.multiselect(key="methods").value == ["occlusion", "guided_backprop"]
    assert at.selectbox(key="target").value == "church"
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update(
        {
            "view": "Robustness",
            "rob_view": "Attack",
            "atk_method": "FGSM (one step)",
            "atk_eps": "2.5",
            "atk_truegrad": "true",
        }
    )
    at.run()
    assert not at.exception
    assert at.selectbox(key="atk_method").value == "fgsm"
    assert at.number_input(key="atk_eps").value == 2.5
    assert at.checkbox(key="atk_truegrad").value is True


@pytest.mark.slow
@pytest.mark.parametrize("view", ["Compare", "Robustness"])
def test_bundle_settings_reproduce_through_the_figure_cli(app, view, tmp_path):
    """The bundle's settings.json is a valid --settings file for python -m mgnet.figures."""
    import subprocess
    import sys

    from app.export import build_bundle

    if view == "Compare":
        switch(app, "Compare")
        app.multiselect(key="methods").set_value(["saliency"])
        submit(app, "Compute maps")
    else:
        switch(app, "Robustness", "Attack")
        app.selectbox(key="atk_method").set_value("fgsm")
        submit(app, "Run attack")
    reg = app.session_state["_registry"]
    doc = reg.settings["figure_settings"]
    assert doc["figures"] == (["grid"] if view == "Compare" else ["robustness"])
    if view == "Compare":
        assert doc["methods"] == ["saliency"] and doc["target"] == "mgnet"
    else:
        assert doc["attacks"][0]["method"] == "fgsm" and doc["attacks"][0]["source"] == "mgnet"
    data = build_bundle(
        {},
        {},
        dict(reg.settings),
        static=False,
        figure_doc=doc,
        photo=("parachute_1.jpg", (ROOT / "app" / "examples" / "parachute_1.jpg").read_bytes()),
    )
    zipfile.ZipFile(io.BytesIO(data)).extractall(tmp_path / "bundle")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mgnet.figures",
            "--settings",
            str(tmp_path / "bundle" / "settings.json"),
            "--out",
            str(tmp_path / "figs"),
            "--format",
            "html",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert list((tmp_path / "figs").glob("*.html")), out.stderr[-2000:]


def test_exported_settings_keep_every_choice(app):
    """The three drifts between the app's export and the figure tool: the target "each model's own
    prediction", "random start: off", and the corruption's and the attack's own seeds."""
    from mgnet.figures.settings import FigureSettings

    switch(app, "Compare")
    app.selectbox(key="target").set_value("each model's own prediction")
    app.multiselect(key="methods").set_value(["saliency"])
    submit(app, "Compute maps")
    doc = app.session_state["_registry"].settings["figure_settings"]
    assert doc["target"] is None and FigureSettings.from_json(doc).target is None
    switch(app, "Robustness")
    app.number_input(key="cor_seed").set_value(3).run()
    switch(app, "Robustness", "Attack")
    app.selectbox(key="atk_method").set_value("pgd").run()
    app.checkbox(key="atk_random").set_value(False)
    app.number_input(key="atk_seed").set_value(9)
    app.number_input(key="atk_steps").set_value(2)
    submit(app, "Run attack")
    doc = app.session_state["_registry"].settings["figure_settings"]
    settings = FigureSettings.from_json(doc)
    assert settings.to_json() == doc
    attack, corruption = settings.attacks[0], settings.corruptions[0]
    assert attack.method == "pgd" and attack.random_start is False
    assert settings.attack_seed(attack) == 9 and settings.corruption_seed(corruption) == 3


def test_slow_method_options_reach_the_library(app, monkeypatch):
    import mgnet.explain

    seen = []
    real = mgnet.explain.explain
    monkeypatch.setattr(
        mgnet.explain,
        "explain",
        lambda model, x, method, *a, **k: seen.append((method, k)) or real(model, x, method, *a, **k),
    )
    switch(app, "Compare")
    app.multiselect(key="methods").set_value(["integrated_gradients", "occlusion"])
    app.checkbox(key="self").set_value(False)
    app.number_input(key="opt_integrated_gradients_n_steps").set_value(8)
    app.number_input(key="opt_occlusion_window").set_value(6)
    submit(app, "Compute maps")
    assert not errors(app)
    opts = {m: k for m, k in seen}
    assert opts["integrated_gradients"]["n_steps"] == 8
    assert opts["occlusion"]["window"] == 6 and opts["occlusion"]["stride"] == 3
    doc = app.session_state["_registry"].settings["figure_settings"]
    assert doc["method_options"] == {"integrated_gradients": {"n_steps": 8}, "occlusion": {"window": 6, "stride": 3}}


def test_the_picker_opens_on_the_default_checkpoints_and_says_how_each_was_trained(tmp_path):
    """With the paper-recipe files beside the defaults, the defaults come first (the app opens on them) and
    each entry names its recipe, read from the provenance the training run recorded."""
    from app import services
    from mgnet import build_model, save_checkpoint

    paper = {"command": "python -m mgnet.train --kind mgnet", "args": {"off_centre": 0.0}}
    located = {
        "command": "python -m mgnet.train --location-weight 0.05",
        "args": {"location_weight": 0.05},
        "init_from": paper,
    }
    for name, kind, prov in (
        ("mgnet-resnet18-imagenette-paper-recipe.pt", "mgnet", paper),
        ("mgnet-resnet18-imagenette.pt", "mgnet", located),
        ("baseline-resnet18-imagenette-paper-recipe.pt", "baseline", paper),
        ("baseline-resnet18-imagenette.pt", "baseline", {"args": {"off_centre": 0.4}}),
        ("another-mgnet.pt", "mgnet", paper),
    ):
        save_checkpoint(
            build_model(kind, num_classes=10, image_size=64), tmp_path / name, classes=CLASSES, provenance=prov
        )
    cat = services.catalog(tmp_path)
    assert [m.name for m in cat.models] == [
        "mgnet-resnet18-imagenette.pt",
        "mgnet-resnet18-imagenette-paper-recipe.pt",
        "another-mgnet.pt",
        "baseline-resnet18-imagenette.pt",
        "baseline-resnet18-imagenette-paper-recipe.pt",
    ]
    assert [m.recipe for m in cat.models] == [
        "location stage",
        "paper recipe",
        "paper recipe",
        "off-centre data",
        "paper recipe",
    ]
    assert cat.models[0].label.endswith("; location stage)")


# -- issue 14: the app in front of a class ---------------------------------------------------------------
def test_one_control_drives_the_glimpse_view(app):
    """The glimpse figure has no play button or slider of its own that could run ahead of the page: it
    shows the page's step, like the crops and numbers beside it."""
    app.slider(key="step").set_value(2).run()
    fig = app.session_state["_registry"].figures["glimpses-on-the-photo"]
    assert not fig.frames and not fig.layout.updatemenus and not fig.layout.sliders
    assert fig.layout.title.text.startswith("glimpse 2 of 4:")
    assert "**Glimpse 2 of 4**" in text(app)
    chips = [a.text for a in fig.layout.annotations]
    assert chips == ["<b>1</b>", "<b>2</b>"]  # boxes 1..2 shown, numbered


def test_one_glimpse_mgnet_is_not_called_a_baseline(app):
    app.slider(key="glimpses").set_value(1).run()
    assert not app.exception and not errors(app)
    notes = "\n".join(i.value for i in app.info)
    assert "baseline" not in notes.split("(A baseline")[0] and "1 glimpse" in notes
    app.selectbox(key="model").set_value("baseline-tiny.pt").run()
    assert "is a baseline" in "\n".join(i.value for i in app.info)


def test_whole_photo_box_reads_as_the_photo(app):
    """Glimpse 1's sampling grid reaches half a sample past the photo: the page says "the whole photo",
    never x -1..W+1."""
    app.slider(key="step").set_value(1).run()
    para = next(m.value for m in app.markdown if "**Glimpse 1 of 4**" in m.value)
    assert "the whole photo" in para and "`-" not in para


def test_baseline_gets_no_focus_map_of_mgnet(app):
    app.selectbox(key="model").set_value("baseline-tiny.pt").run()
    assert not app.exception and not errors(app)
    assert "focus-map" not in app.session_state["_registry"].figures
    assert not any("where MGNet looked" in str(getattr(f, "proto", "")) for f in app.get("plotly_chart"))


def test_location_check_gives_a_one_line_verdict(app, ckpt_dir):
    """The location check says in one visible line whether where MGNet looked mattered for this photo."""
    from types import SimpleNamespace

    from app.glimpses import location_verdict
    from mgnet import load_checkpoint
    from mgnet.analysis import location_check
    from mgnet.data import load_image

    model = load_checkpoint(ckpt_dir / "mgnet-tiny.pt", device="cpu")
    check = location_check(model, load_image(ROOT / "app" / "examples" / "parachute_1.jpg"))
    shown = [m.value for m in [*app.warning, *app.info] if "Location check:" in m.value]
    assert shown == [f"**Location check:** {location_verdict(check, CLASSES)[1]}"]
    # the sentence for each case
    own = np.array([0.5, 0.6, 0.7])
    calm = SimpleNamespace(
        target=9,
        own=own,
        centre=own + 0.01,
        moved=np.stack([own - 0.005] * 8),
        final_class={"own": 9, "centre": 9, "moved": [9] * 8},
    )
    mattered, line = location_verdict(calm, CLASSES)
    assert not mattered and "didn't matter here" in line and "±1 point " in line
    centred = SimpleNamespace(**{**calm.__dict__, "final_class": {"own": 9, "centre": 8, "moved": [9] * 8}})
    mattered, line = location_verdict(centred, CLASSES)
    assert mattered and "centred glimpses give 'golf ball' instead of 'parachute'" in line
    moved = SimpleNamespace(**{**calm.__dict__, "final_class": {"own": 9, "centre": 9, "moved": [9] * 6 + [0, 0]}})
    assert "at 2 of 8 random positions" in location_verdict(moved, CLASSES)[1]
    shaken = SimpleNamespace(**{**calm.__dict__, "centre": own - 0.2})
    assert "up to 20 points" in location_verdict(shaken, CLASSES)[1]


def test_class_list_and_unlike_photo_warning(tmp_path, monkeypatch):
    """Beside the prediction: the classes the model knows; and a warning when the photo scores above the
    threshold calibrated on val (ood.json and ood-features.npz beside the checkpoints), only then."""
    from conftest import make_image_folder
    from mgnet import ood

    folder = tmp_path / "checkpoints"
    mg, base = save_tiny_checkpoints(folder, CLASSES, image_size=32)
    doc, fitted = ood.calibrate(
        [mg, base],
        make_image_folder(tmp_path / "val", per_class=4),
        per_kind=2,
        train=make_image_folder(tmp_path / "train", per_class=6, seed=1),
    )
    ood.write_features(fitted, folder)
    monkeypatch.setenv("MGNET_CHECKPOINTS", str(folder))
    monkeypatch.setenv("MGNET_DEVICE", "cpu")
    thresholds = doc["models"]["mgnet-tiny.pt"]["features"]["thresholds"]

    def page(threshold=None):
        if threshold is not None:
            for n in thresholds:
                thresholds[n] = threshold
        ood.write(doc, folder)
        at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
        assert not at.exception and not errors(at)
        return at, [w.value for w in at.warning if "looks unlike the photos" in w.value]

    at, warned = page()
    captions = "\n".join(c.value for c in at.caption)
    assert "knows only these 10 classes and always picks one: " + ", ".join(CLASSES) in captions
    assert "No unlike-photo check" not in captions
    # the page's verdict is the library's for the same photo and checkpoint
    from mgnet import load_checkpoint
    from mgnet.analysis import analyze
    from mgnet.data import load_image

    model = load_checkpoint(mg, device="cpu")
    res = analyze(model, load_image(ROOT / "app" / "examples" / "parachute_1.jpg"))
    sha = doc["models"]["mgnet-tiny.pt"]["sha256"]
    verdict = ood.check(model, doc, ood.read_features(folder), sha, 4, res.logits[-1], res.seen[0])
    assert verdict[1] == "features" and bool(warned) == verdict[0]
    _, warned = page(threshold=-1e9)  # every photo is above it
    assert len(warned) == 1 and "must answer with one of them" in warned[0] and "backbone stage" in warned[0]
    _, warned = page(threshold=1e9)  # none is
    assert not warned
    # without the fitted statistics the features score cannot be computed: no check, and the page says so
    (folder / ood.FEATURES_FILE).unlink()
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert "No unlike-photo check" in "\n".join(c.value for c in at.caption)
    (folder / "ood.json").unlink()
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert "No unlike-photo check" in "\n".join(c.value for c in at.caption)


def test_slow_work_shows_an_estimate_before_it_starts(app, monkeypatch):
    """Slow saliency methods and attacks open their progress bar with the work ahead and a time estimate."""
    import streamlit as st

    texts = []
    real = st.progress
    monkeypatch.setattr(st, "progress", lambda value, text=None, **k: texts.append(text) or real(value, text=text, **k))
    switch(app, "Compare")
    app.multiselect(key="methods").set_value(["occlusion"])
    app.checkbox(key="self").set_value(False)
    submit(app, "Compute maps")
    first = next(t for t in texts if t and "saliency maps" in t)
    assert re.search(r"1 map, \d+ forward passes: (about \d+ (s|min)|under a second)", first), first
    switch(app, "Robustness", "Attack")
    app.selectbox(key="atk_method").set_value("pgd").run()
    app.number_input(key="atk_steps").set_value(3)
    submit(app, "Run attack")
    first = next(t for t in texts if t and t.startswith("attacking"))
    assert re.search(r"attacking: up to 3 steps, (at most about \d+ s|under a second)", first), first
    assert not errors(app)


def test_time_estimates_read_as_words():
    from app.ui import rough_time

    assert rough_time(0.3) == "under a second"  # not "about 0 s"
    assert rough_time(6.4) == "about 6 s" and rough_time(6.4, at_most=True) == "at most about 6 s"
    assert rough_time(200) == "about 3 min"


def test_fooled_class_shows_in_the_attack_bar_chart(app, monkeypatch):
    """When the attack changes a model's answer, its new class is a bar of the chart, not only in the table."""
    switch(app, "Robustness", "Attack")
    app.selectbox(key="atk_method").set_value("pgd").run()
    app.number_input(key="atk_eps").set_value(64.0)
    app.number_input(key="atk_steps").set_value(3)
    submit(app, "Run attack")
    table = app.dataframe[0].value
    fig = app.session_state["_registry"].figures["attack-predictions"]
    changed = list(table["changed"])
    assert any(changed), "eps 64/255 should fool the random tiny models"
    new = next(t for t in fig.data if t.name == "perturbed: its new class")
    for ok, label, text in zip(changed, table["perturbed prediction"], new.text):
        assert (text == f"now: {label.rsplit(' (', 1)[0]}") if ok else text == ""


@pytest.mark.parametrize(
    "params,button",
    [
        ({"view": "Compare", "methods": ["Guided Backprop"], "target": "church"}, "Compute maps"),
        ({"view": "Robustness", "rob_view": "Attack", "atk_method": "FGSM (one step)", "atk_eps": "2.5"}, "Run attack"),
    ],
)
def test_page_address_restores_computed_results(ckpt_dir, monkeypatch, params, button):
    """A page address that names a Compare or Attack request already computed (its results are cached)
    shows the results on opening, without a button press."""
    monkeypatch.setenv("MGNET_CHECKPOINTS", str(ckpt_dir))
    monkeypatch.setenv("MGNET_DEVICE", "cpu")
    first = AppTest.from_file(APP, default_timeout=TIMEOUT)
    first.query_params.update(params)
    first.run()
    assert not first.dataframe  # nothing computed yet: the tab waits for the button
    submit(first, button)
    expected = first.dataframe[0].value
    again = AppTest.from_file(APP, default_timeout=TIMEOUT)  # a new session opening the same address
    again.query_params.update(params)
    again.run()
    assert not again.exception and not errors(again)
    assert again.dataframe and again.dataframe[0].value.drop(columns="seconds", errors="ignore").equals(
        expected.drop(columns="seconds", errors="ignore")
    )
