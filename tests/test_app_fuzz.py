"""A seeded random walk over every widget of the app (AppTest, tiny checkpoints): no step may raise or
replace a panel with its failure message. It finds the next "glimpse 5 of 6" before a user does.

Each step picks one thing a user can do on the page as it is now (any widget drawn, a tab, an upload or a
camera photo, the export bundle) and a random value for it. Values that would only make a step slow (many
attack steps, large slow-method options) are kept small; every widget and every tab is still visited. The
walk is seeded: a failure names its step and replays the same way.
"""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("streamlit")
from conftest import IMAGENETTE_CLASSES, save_tiny_checkpoints  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402
from streamlit.testing.v1.element_tree import _format_value_for_widget  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app" / "main.py")
STEPS = 200
SEED = 14
# number inputs whose large values only cost time: (low, high) the walk draws from
CHEAP = {
    "atk_steps": (1, 3),
    "atk_iters": (1, 3),
    "atk_eps": (0.0, 16.0),
    "atk_step": (0.0, 4.0),
    "atk_seed": (0, 3),
    "cor_seed": (0, 3),
}


def _photos() -> list[tuple[str, bytes, str]]:
    """Uploads a user might make: good ones, a tiny one, and files that are not images."""
    buf = io.BytesIO()
    Image.open(ROOT / "app" / "examples" / "tench_1.jpg").convert("RGB").resize((90, 60)).save(buf, "PNG")
    tiny = io.BytesIO()
    Image.new("RGB", (1, 1), (10, 200, 10)).save(tiny, "PNG")
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(noise, "JPEG")
    return [
        ("mine.png", buf.getvalue(), "image/png"),
        ("dot.png", tiny.getvalue(), "image/png"),
        ("noise.jpg", noise.getvalue(), "image/jpeg"),
        ("notes.jpg", b"plain text, not a photo", "image/jpeg"),
        ("cut.png", buf.getvalue()[:150], "image/png"),
    ]


def _candidates(ckpt_dir: Path) -> list:
    """Every raw option value the app's choice widgets can have (their labels are formatted)."""
    from app import compare, main, robustness, services
    from mgnet import corruptions, explain

    return (
        [p.stem for p in services.examples()]
        + [p.name for p in ckpt_dir.iterdir()]
        + list(explain.METHODS)
        + list(robustness.ATTACKS)
        + ["linf", "l2", "eps", "severity"]
        + list(corruptions.CORRUPTIONS)
        + list(corruptions.EXTRA_CORRUPTIONS)
        + [compare.PREDICTED, compare.OWN]
        + IMAGENETTE_CLASSES
        + main.SOURCES
        + [1.0, 2.0, 4.0, 8.0, 16.0]
    )


def _raw_options(widget, candidates) -> list:
    """The raw values behind a choice widget's formatted options."""
    out = []
    for c in candidates:
        try:
            label = _format_value_for_widget(widget.format_func, c)
        except Exception:  # noqa: BLE001 - a format function that does not take this candidate
            continue
        if label in widget.options and c not in out:
            out.append(c)
    return out


def _edgy(rng: random.Random, lo, hi, draw):
    """A value in [lo, hi], half the time one of the ends (where off-by-one bugs live)."""
    roll = rng.random()
    return lo if roll < 0.25 else hi if roll < 0.5 else draw(lo, hi)


def usable(widgets) -> list:
    """The widgets a user can change: not the disabled ones."""
    return [w for w in widgets if not getattr(w, "disabled", False)]


def _actions(at, rng: random.Random, candidates, photos) -> list[tuple[str, callable]]:
    """(description, do) of everything a user can do on the page as drawn now."""
    acts = []
    for kind in ("selectbox", "radio", "select_slider"):
        for w in usable(at.get(kind)):
            raw = _raw_options(w, candidates)
            if raw:
                v = rng.choice(raw)
                acts.append((f"{kind} {w.key}={v!r}", lambda w=w, v=v: w.set_value(v)))
    for w in usable(at.multiselect):
        raw = _raw_options(w, candidates)
        if raw:
            v = rng.sample(raw, rng.randint(0, min(3, len(raw))))
            acts.append((f"multiselect {w.key}={v!r}", lambda w=w, v=v: w.set_value(v)))
    for w in usable(at.slider):
        v = _edgy(rng, int(w.min), int(w.max), rng.randint)
        acts.append((f"slider {w.key}={v}", lambda w=w, v=v: w.set_value(v)))
    for w in usable(at.number_input):
        lo, hi = CHEAP.get(w.key, (w.min, w.min + 2 * (w.step or 1)))
        if isinstance(w.value, float):
            v = round(_edgy(rng, float(lo), float(hi), rng.uniform) * 2) / 2
        else:
            v = _edgy(rng, int(lo), int(hi), rng.randint)
        acts.append((f"number_input {w.key}={v}", lambda w=w, v=v: w.set_value(v)))
    for w in usable([*at.checkbox, *at.toggle]):
        v = rng.random() < 0.5
        acts.append((f"check {w.key}={v}", lambda w=w, v=v: w.set_value(v)))
    for w in usable(at.button):
        acts.append((f"click {w.label}", w.click))
    for w in at.get("file_uploader"):
        name, data, mime = rng.choice(photos)
        acts.append((f"upload {name}", lambda w=w, f=(name, data, mime): w.set_value(f)))
    for w in at.get("camera_input"):
        acts.append(("camera photo", lambda w=w: w.set_value(("shot.jpg", photos[2][1], "image/jpeg"))))
    return acts


def _tab(at, rng: random.Random, visited: set) -> tuple[str, callable]:
    """Open a tab, or one of Robustness's sub-tabs; those not opened yet first."""

    def pick(names, prefix):
        new = [n for n in names if f"{prefix} {n}" not in visited]
        return rng.choice(new or names)

    if rng.random() < 0.5:
        sub = pick(["Corruption", "Attack", "Sweep"], "robustness tab")

        def open_sub():
            at.session_state["view"] = "Robustness"
            at.session_state["rob_view"] = sub

        return f"robustness tab {sub}", open_sub
    view = pick(["Glimpses", "Compare", "Robustness"], "tab")
    return f"tab {view}", lambda: at.session_state.__setitem__("view", view)


# every tab and sub-tab in turn, and the Glimpses tab (where stepping meets the glimpse count) every other time
TOUR = [("Glimpses", None), ("Robustness", "Attack"), ("Robustness", "Sweep"), ("Compare", None)]
TOUR += [("Robustness", "Attack"), ("Robustness", "Corruption"), ("Robustness", "Attack"), ("Robustness", "Sweep")]

TOUR_ATTACKS = ["apgd-ce", "square", "pgd"]
SWITCHES = ("selectbox", "radio", "select_slider")


def _tour(at, k: int) -> tuple[str, callable]:
    view, sub = TOUR[k % len(TOUR)]

    def go():
        at.session_state["view"] = view
        if sub:
            at.session_state["rob_view"] = sub
        if sub == "Attack":  # each visit shows another method's own options
            at.session_state["atk_method"] = TOUR_ATTACKS[k % len(TOUR_ATTACKS)]

    return (f"robustness tab {sub}" if sub else f"tab {view}"), go


def _export(at):
    """The sidebar's bundle, built from this run's registry as its download button would."""
    from app.export import build_bundle

    reg = at.session_state["_registry"]
    data = build_bundle(dict(reg.figures), dict(reg.images), dict(reg.settings), static=False)
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert "settings.json" in names and all(f"figures/{k}.html" in names for k in reg.figures)


def _page_failures(at) -> list[str]:
    """Messages of a panel, cell or computation that failed (user-input messages are fine)."""
    msgs = [e.value for e in at.error]
    return [m for m in msgs if "failed:" in m or "ran out of memory" in m]


def test_random_walk_over_every_widget(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    save_tiny_checkpoints(folder, IMAGENETTE_CLASSES, image_size=32)
    monkeypatch.setenv("MGNET_CHECKPOINTS", str(folder))
    monkeypatch.setenv("MGNET_DEVICE", "cpu")
    import app.robustness

    # the attacks' own defaults (100 APGD iterations, 1,000 Square queries) would take most of the walk's time
    monkeypatch.setattr(app.robustness, "APGD_ITERATIONS", 3)
    monkeypatch.setattr(app.robustness, "SQUARE_QUERIES", 20)
    rng = random.Random(SEED)
    candidates, photos = _candidates(folder), _photos()
    at = AppTest.from_file(APP, default_timeout=300).run()
    assert not at.exception, at.exception
    done, visited, offered, times_offered = [], set(), set(), {}
    for step in range(STEPS):
        acts = _actions(at, rng, candidates, photos)
        for name in {a[0].split("=")[0] for a in acts}:
            times_offered[name] = times_offered.get(name, 0) + 1
        offered |= {a[0].split("=")[0] for a in acts}
        fresh = [a for a in acts if a[0].split("=")[0] not in visited]
        if fresh:  # the widgets met least often go first: they may vanish with the next change
            rarest = min(times_offered[a[0].split("=")[0]] for a in fresh)
            fresh = [a for a in fresh if times_offered[a[0].split("=")[0]] == rarest]
            # and the ones that leave the page as it is go before choices that redraw it
            fresh = [a for a in fresh if not a[0].startswith(SWITCHES)] or fresh
        roll = rng.random()
        if step % 8 == 7:  # a tour: every tab and sub-tab in turn, so each one's widgets are met
            what, do = _tour(at, step // 8)
        elif roll < 0.05:
            what, do = "export bundle", lambda: _export(at)
        elif roll < 0.12:
            what, do = _tab(at, rng, visited)
        elif fresh:  # something not done yet first: every widget gets its turn
            what, do = rng.choice(fresh)
        else:
            what, do = rng.choice(acts)
        done.append(what)
        visited.add(what.split("=")[0])
        do()
        if what != "export bundle":
            at.run()
        trail = "\n".join(f"{i}: {d}" for i, d in enumerate(done[-8:], len(done) - min(8, len(done))))
        assert not at.exception, f"step {step} ({what}) raised:\n{at.exception}\nlast steps:\n{trail}"
        assert not _page_failures(at), f"step {step} ({what}): {_page_failures(at)}\nlast steps:\n{trail}"
    # the walk used every widget it met, and reached every part of the page
    assert offered <= visited, f"never used: {sorted(offered - visited)}"
    for part in (
        "tab Compare",
        "robustness tab Attack",
        "robustness tab Sweep",
        "upload",
        "camera photo",
        "click Compute maps",
        "click Run attack",
        "click Run sweep",
        "export bundle",
    ):
        assert any(v.startswith(part) for v in visited), f"the walk never did {part!r}: {sorted(visited)}"
