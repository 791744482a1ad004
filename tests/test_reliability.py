"""Reliability and security across the library: shared models under concurrent sessions, hostile checkpoints
(also through the app's checkpoint listing), temporary files, and the command-line tools' failures.

Complements tests/test_data.py (hostile images), tests/test_checkpoints.py (hostile checkpoints),
tests/test_explain.py / tests/test_attacks.py (hygiene of one operation), tests/test_evaluate.py (bad
arguments) and tests/test_train.py (resume after SIGKILL); what is tested there is not repeated here.
Models are tiny and random (ResNet-18, 3 classes, 64 px); torch runs on one thread so results are
bit-exact and comparable between a solo run and a concurrent one.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from conftest import ROOT, make_image_folder, save_tiny_checkpoints  # noqa: E402
from mgnet import CheckpointError, build_model, load_checkpoint, load_image, save_checkpoint  # noqa: E402
from mgnet import attacks  # noqa: E402
from mgnet.analysis import inference_model  # noqa: E402
from mgnet import corruptions  # noqa: E402
from mgnet import explain  # noqa: E402
from mgnet import metrics as explanation_metrics  # noqa: E402
from mgnet.analysis import analyze  # noqa: E402
from mgnet.data import to_model_input  # noqa: E402
from mgnet.utils import model_lock, model_state_fingerprint  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU", "ignore::UserWarning")
CLASSES = ["tench", "springer", "cassette"]
CLASS_IDS = ["n01440764", "n02102040", "n02979186"]  # the folders of conftest.make_image_folder
SIZE = 64


# -- fixtures -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpts")
    save_tiny_checkpoints(folder, CLASSES, CLASS_IDS, image_size=SIZE, n_glimpses=3)
    return folder


@pytest.fixture(scope="module")
def models(ckpts):
    """Loaded as the app loads them (eval, parameters frozen) for MGNet; the baseline as the library
    leaves it (eval, parameters trainable), so both flag states are checked."""
    mg = load_checkpoint(ckpts / "mgnet-tiny.pt", device="cpu")
    for p in mg.parameters():
        p.requires_grad_(False)
    base = load_checkpoint(ckpts / "baseline-tiny.pt", device="cpu")
    return {"mgnet": mg, "baseline": base}


def photo(seed=0, h=80, w=100):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


class Snapshot:
    """Everything a session could leave behind on a shared model."""

    def __init__(self, model):
        self.model = model
        self.fingerprint = model_state_fingerprint(model)
        self.modes = [m.training for m in model.modules()]
        self.state = {k: v.clone() for k, v in model.state_dict().items()}

    def problems(self) -> list[str]:
        m = self.model
        out = []
        now = model_state_fingerprint(m)
        if now != self.fingerprint:
            changed = {
                k: (self.fingerprint[k], now[k]) for k in now if now[k] != self.fingerprint[k] and k != "requires_grad"
            }
            if now["requires_grad"] != self.fingerprint["requires_grad"]:
                changed["requires_grad"] = "changed"
            out.append(f"fingerprint {changed}")
        if [x.training for x in m.modules()] != self.modes:
            out.append("train/eval flags of some module changed")
        for k, v in m.state_dict().items():
            if not torch.equal(v, self.state[k]):
                out.append(f"weight or buffer {k} changed")
                break
        return out


# -- jobs: one session's operations, each returning plain arrays --------------------------------------------
LIGHT = {
    "saliency": {},
    "integrated_gradients": {"n_steps": 4, "internal_batch_size": 4},
    "smoothgrad": {"nt_samples": 4, "nt_samples_batch_size": 2},
    "gradient_shap": {"n_samples": 4, "n_baselines": 4, "n_samples_batch_size": 2},
    "guided_backprop": {},
    "gradcam": {},
    "occlusion": {"window": 16, "stride": 16},
}


def jobs_for(models, image):
    x = to_model_input(image, SIZE)
    jobs = {}
    for role, m in models.items():
        jobs[f"{role}/analyze"] = (m, lambda m=m: analyze(m, image).probs)
        for method, opts in LIGHT.items():
            jobs[f"{role}/{method}"] = (
                m,
                lambda m=m, method=method, opts=opts: explain.explain(m, x, method, **opts).raw,
            )
        jobs[f"{role}/pgd"] = (m, lambda m=m: attacks.attack(m, x, 1, steps=2, eps=8, seed=3).images.numpy())
        jobs[f"{role}/fgsm-l2"] = (
            m,
            lambda m=m: attacks.attack(m, x, 2, method="fgsm", norm="l2", eps=64).images.numpy(),
        )
    jobs["corrupt/gaussian_noise"] = (None, lambda: corruptions.corrupt(image, "gaussian_noise", 3, seed=5))
    jobs["corrupt/shot_noise"] = (None, lambda: corruptions.corrupt(image, "shot_noise", 2, seed=6))
    return jobs


# -- many sessions, one model --------------------------------------------------------------------------------
@pytest.mark.slow
def test_concurrent_sessions_get_their_solo_results_and_leave_models_untouched(models):
    """8 sessions at once: analyses, seven Captum methods, attacks and corruptions on two shared models.

    Every result must be bit-identical to the same call made alone, and after every operation (checked
    under the model's lock) no hook, gradient, requires_grad flag, train/eval flag, weight or BatchNorm
    buffer may have changed.
    """
    jobs = jobs_for(models, photo(1))
    snaps = {role: Snapshot(m) for role, m in models.items()}
    solo = {}
    for name, (_model, job) in jobs.items():
        solo[name] = job()
        for role, snap in snaps.items():
            assert not snap.problems(), (name, role, snap.problems())
    ok = {"mgnet/gradcam", "baseline/gradcam"}  # Grad-CAM may legitimately be all zero on random weights
    for name, value in solo.items():
        assert np.all(np.isfinite(value)), name
        assert name in ok or np.abs(value).max() > 0, name

    n_threads = 8
    barrier = threading.Barrier(n_threads)
    failures: list[str] = []
    runs = {name: 0 for name in jobs}

    def session(i):
        order = list(jobs)
        random.Random(i).shuffle(order)
        order = order[: len(order) // 3 + 1]  # each session runs about a third of the operations
        try:
            barrier.wait(timeout=60)
            for name in order:
                model, job = jobs[name]
                got = job()
                runs[name] += 1
                if not np.array_equal(got, solo[name]):
                    diff = float(np.abs(got.astype(np.float64) - solo[name].astype(np.float64)).max())
                    failures.append(f"session {i}: {name} differs from its solo result (max |diff| {diff:.3g})")
                for role, m in models.items():
                    with model_lock(m):
                        for problem in snaps[role].problems():
                            failures.append(f"session {i}: after {name}, {role}: {problem}")
        except Exception as exc:  # reported below; a crash in a thread must fail the test
            failures.append(f"session {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=session, args=(i,)) for i in range(n_threads)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a session hung (deadlock?)"
    assert not failures, "\n".join(sorted(set(failures)))
    assert sum(runs.values()) == n_threads * (len(jobs) // 3 + 1)


def _while_inside(first, second, wait=0.6):
    """Run ``first(progress)`` in a thread; when it reports progress the first time after starting, run
    ``second()`` in this thread while ``first`` is held up inside its computation. Returns both results."""
    inside = threading.Event()
    release = threading.Event()
    out = {}

    def progress(done, total):
        if done > 0 and not inside.is_set():
            inside.set()
            release.wait(wait)

    def run():
        try:
            out["first"] = first(progress)
        except Exception as exc:  # pragma: no cover - reported below
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    assert inside.wait(60), "first operation never reported progress"
    try:
        out["second"] = second()
    finally:
        release.set()
        t.join(120)
    assert "error" not in out, out.get("error")
    return out["first"], out["second"]


def test_attack_and_analysis_while_another_session_holds_guided_backprop_hooks(models):
    """Guided Backprop puts hooks on every ReLU of the shared model's fast copy (the one attacks differentiate
    too). A session that starts an attack and an input gradient in the middle of it sees the hooks in place,
    but every attack takes the model's lock
    (``mgnet.attacks`` runs under ``utils.eval_mode``, in the app and in scripts alike), so it waits until the
    explanation has removed them and then follows true gradients: the same result as alone."""
    m = models["mgnet"]
    image = photo(2)
    x = to_model_input(image, SIZE)
    solo_attack = attacks.attack(m, x, 0, steps=2, eps=8, seed=1).images
    solo_grad = attacks.input_gradient(m, x, 0, s_grad=1.0)
    seen_hooks = []

    def during():
        seen_hooks.append(model_state_fingerprint(inference_model(m))["hooks"])
        return (attacks.attack(m, x, 0, steps=2, eps=8, seed=1).images, attacks.input_gradient(m, x, 0, s_grad=1.0))

    _, (adv, grad) = _while_inside(lambda p: explain.explain(m, x, "guided_backprop", progress=p), during)
    assert seen_hooks[0] > 0, "the interleaving did not happen: no hooks were registered at that moment"
    torch.testing.assert_close(adv, solo_attack, rtol=0, atol=0)
    torch.testing.assert_close(grad, solo_grad, rtol=0, atol=0)
    assert model_state_fingerprint(m)["hooks"] == 0 and model_state_fingerprint(inference_model(m))["hooks"] == 0


def _interleave(first, second, wait=3.0):
    """Run ``first(progress)`` and ``second(progress)`` in two threads, interleaved: ``first`` stops at its
    first progress report until ``second`` has reported progress too (or ``wait`` seconds passed, e.g.
    because ``second`` is waiting for a lock ``first`` holds); ``second`` then stops at its first report
    until ``first`` has finished. So ``first`` finishes while ``second`` is half-way, unless a lock keeps
    them apart. Returns both results."""
    a_in, b_in, a_done = threading.Event(), threading.Event(), threading.Event()
    out, errors = {}, []

    def progress_a(done, total):
        if done > 0 and not a_in.is_set():
            a_in.set()
            b_in.wait(wait)

    def progress_b(done, total):
        if done > 0 and not b_in.is_set():
            b_in.set()
            a_done.wait(wait)

    def run_a():
        try:
            out["a"] = first(progress_a)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            a_done.set()

    def run_b():
        try:
            assert a_in.wait(60), "first operation never reported progress"
            out["b"] = second(progress_b)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run_a), threading.Thread(target=run_b)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors, errors
    return out["a"], out["b"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["smoothgrad", "gradient_shap"])
def test_seeded_explanations_of_two_models_at_once_keep_their_own_noise(models, method):
    """SmoothGrad and GradientSHAP draw their noise from torch's and NumPy's global generators, seeded per
    call. Each model has its own lock, so two sessions can explain MGNet and the baseline at the same time;
    interleaved half-way, each must still get exactly its solo result."""
    mg, base = models["mgnet"], models["baseline"]
    x = to_model_input(photo(3), SIZE)
    opts = dict(LIGHT[method])
    solo_a = explain.explain(mg, x, method, seed=11, **opts).raw
    solo_b = explain.explain(base, x, method, seed=11, **opts).raw
    a, b = _interleave(
        lambda p: explain.explain(mg, x, method, seed=11, progress=p, **opts).raw,
        lambda p: explain.explain(base, x, method, seed=11, progress=p, **opts).raw,
    )
    np.testing.assert_array_equal(a, solo_a, err_msg="MGNet's explanation changed")
    np.testing.assert_array_equal(b, solo_b, err_msg="the baseline's explanation changed")


@pytest.mark.slow
def test_a_corruption_and_an_explanation_interleaved_keep_their_own_noise(models, monkeypatch):
    """A corruption seeds NumPy's global generator and draws from it; a seeded GradientSHAP explanation in
    another session seeds and draws from the same generator. Interleaved (the corruption held up between
    two draws until the explanation is half-way, and the explanation held up until the corruption is
    done), both must equal their solo results."""
    import imagecorruptions

    image = photo(4)
    x = to_model_input(photo(3), SIZE)
    base = models["baseline"]
    opts = dict(LIGHT["gradient_shap"])
    original = imagecorruptions.corruption_dict["gaussian_noise"]
    c_in, e_in, c_done = threading.Event(), threading.Event(), threading.Event()

    def two_step_noise(img, severity=1, **kw):
        np.random.uniform(size=8)  # a first draw, a pause in which the other session runs, then the rest
        if threading.current_thread().name == "corrupting" and not c_in.is_set():
            c_in.set()
            e_in.wait(3.0)
        return original(img, severity, **kw)

    def progress(done, total):
        if done > 0 and not e_in.is_set():
            e_in.set()
            c_done.wait(3.0)

    monkeypatch.setitem(imagecorruptions.corruption_dict, "gaussian_noise", two_step_noise)
    solo_c = corruptions.corrupt(image, "gaussian_noise", 4, seed=9)
    solo_e = explain.explain(base, x, "gradient_shap", seed=11, **opts).raw
    out = {}

    def corrupting():
        try:
            out["c"] = corruptions.corrupt(image, "gaussian_noise", 4, seed=9)
        finally:
            c_done.set()

    def explaining():
        assert c_in.wait(60)
        out["e"] = explain.explain(base, x, "gradient_shap", seed=11, progress=progress, **opts).raw

    threads = [threading.Thread(target=corrupting, name="corrupting"), threading.Thread(target=explaining)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    np.testing.assert_array_equal(out["c"], solo_c, err_msg="the corruption changed")
    np.testing.assert_array_equal(out["e"], solo_e, err_msg="the explanation changed")


@pytest.mark.slow
def test_every_operation_and_every_failure_leaves_the_shared_model_as_it_was(models):
    """After each library operation, and after each one interrupted by an error (an out-of-memory error
    raised from inside the computation, as a huge Integrated Gradients request would), the model is as
    it was, the caller's input tensor is untouched, the lock is free for other sessions, and the next
    call gives the normal result."""
    mg, base = models["mgnet"], models["baseline"]
    image = photo(5)
    x = to_model_input(image, SIZE)
    x_copy = x.clone()
    snaps = [Snapshot(mg), Snapshot(base)]
    att = explain.explain(mg, x, "saliency")
    ops = {
        "analyze": lambda p: analyze(mg, image),
        "analyze baseline": lambda p: analyze(base, image),
        "deletion": lambda p: explanation_metrics.deletion_insertion(mg, x, att.map, att.target, steps=4, progress=p),
        "insertion on baseline": lambda p: explanation_metrics.deletion_insertion(
            base, x, att.map, att.target, steps=4, mode="insertion", progress=p
        ),
        "infidelity": lambda p: explanation_metrics.infidelity(mg, x, "saliency", attribution=att, n_perturb_samples=2),
        "paper pgd": lambda p: attacks.attack(mg, x, 0, "paper-pgd", steps=2, progress=p).images,
        "transfer": lambda p: attacks.attack(mg, x, 0, source=base, steps=2, progress=p).images,
        "pgd true gradients": lambda p: attacks.attack(mg, x, 0, steps=2, true_gradients=True, progress=p).images,
        "apgd-dlr": lambda p: attacks.attack(mg, x, 0, "apgd-dlr", steps=2, progress=p).images,
        "square": lambda p: attacks.attack(mg, x, 0, "square", queries=4, progress=p).images,
    }
    for method, opts in LIGHT.items():
        ops[f"explain {method}"] = lambda p, method=method, opts=opts: explain.explain(
            mg, x, method, progress=p, **opts
        )

    def oom(done, total):
        if done > 0:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    for name, op in ops.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            first = op(None)
            failed = False
            try:
                op(oom)
            except torch.OutOfMemoryError:
                failed = True
            second = op(None)
        for snap in snaps:
            assert not snap.problems(), (name, snap.problems())
        assert torch.equal(x, x_copy) and not x.requires_grad and x.grad is None, name
        assert all(p.grad is None for p in mg.parameters()) and all(p.grad is None for p in base.parameters())
        for m in (mg, base):  # another session can take the lock at once
            got = []
            t = threading.Thread(
                target=lambda m=m, got=got: got.append(model_lock(m).acquire(timeout=5)) or model_lock(m).release()
            )
            t.start()
            t.join(10)
            assert got == [True], f"{name}: the model's lock was not released"
        if name.startswith(("explain", "paper", "pgd", "transfer", "deletion", "insertion", "apgd", "square")):
            assert failed, f"{name}: the simulated failure was not raised from inside the computation"
        a, b = (first, second)
        for field in ("probs", "map", "raw", "auc"):
            if hasattr(a, field):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=name)
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), name
        if isinstance(a, tuple):
            assert all(torch.equal(u, v) for u, v in zip(a, b)), name
    assert torch.is_grad_enabled()


# -- checkpoints that try to run code ------------------------------------------------------------------------
class _Payload:
    """Unpickling this calls ``func(*args)``: what a hostile checkpoint does to run code on the server."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def hostile_checkpoints(folder: Path, marker: Path) -> dict[str, Path]:
    """Checkpoint files whose unpickling would create ``marker``, in every form a loader might meet."""
    import argparse
    import builtins
    import subprocess as sp

    touch = f"touch {marker}"
    write = f"open({str(marker)!r}, 'w').close()"
    good_state = build_model("mgnet", "resnet18", num_classes=3, image_size=32, n_glimpses=2).state_dict()
    files = {}

    def save(name, obj, **kw):
        path = folder / name
        torch.save(obj, path, **kw)
        files[name] = path

    # our own format, the payload hidden in the configuration; zip and legacy (pre-1.6) serialisation
    ours = {
        "format": "mgnet-explorer-checkpoint",
        "format_version": 1,
        "classes": CLASSES,
        "config": {"backbone": _Payload(os.system, touch)},
        "state_dict": good_state,
    }
    save("ours-config-system.pt", ours)
    save("ours-legacy-format.pt", ours, _use_new_zipfile_serialization=False)
    # a weights entry that is not a tensor but a call to exec / eval
    save("ours-state-exec.pt", dict(ours, config={}, state_dict={"x": _Payload(builtins.exec, write)}))
    save(
        "authors-eval.ckpt",
        {"state_dict": {"model.a": _Payload(builtins.eval, write)}, "hyper_parameters": {"model": "resnet18"}},
    )
    # argparse.Namespace is the one class allowed besides containers and tensors: smuggle a payload in it
    save(
        "authors-namespace.ckpt",
        {
            "state_dict": {},
            "hyper_parameters": argparse.Namespace(
                model="resnet18", trans_method=_Payload(sp.Popen, ["touch", str(marker)])
            ),
        },
    )
    # not a torch file at all: a bare pickle, protocols 0 and 5
    for proto in (0, 5):
        path = folder / f"bare-pickle-p{proto}.pth"
        path.write_bytes(pickle.dumps(_Payload(os.system, touch), protocol=proto))
        files[path.name] = path
    return files


def _pickle_calls(data: bytes) -> tuple[set, list]:
    """Read a pickle's opcodes (never executing them): the globals it calls via REDUCE, and its strings."""
    import pickletools

    strings, called, pending = [], set(), None
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            pending = arg.replace(" ", ".")
        elif op.name == "STACK_GLOBAL":
            pending = ".".join(strings[-2:])
        elif op.name == "REDUCE" and pending:
            called.add(pending)
        elif isinstance(arg, str) and ("UNICODE" in op.name or "STRING" in op.name):
            strings.append(arg)
    return called, strings


def test_checkpoints_that_try_to_run_code_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    files = hostile_checkpoints(tmp_path, marker)
    # make sure the payloads are real, without running them: plain pickle.load would call os.system(touch)
    for proto in (0, 5):
        called, args = _pickle_calls(files[f"bare-pickle-p{proto}.pth"].read_bytes())
        assert called & {"os.system", "posix.system"} and f"touch {marker}" in args, (proto, called, args)
    for name, path in files.items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path, device="cpu")
        message = str(info.value)
        assert name in message and len(message) < 600, message
        assert "Traceback" not in message
        assert not marker.exists(), f"{name}: its code ran"


@pytest.fixture
def app_folder(tmp_path, ckpts):
    """A checkpoint folder as a lab might have it: one good MGNet and a pile of hostile files."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.manual_seed(0)
    save_checkpoint(
        build_model("mgnet", "resnet18", num_classes=3, image_size=32, n_glimpses=3),
        folder / "good-mgnet.pt",
        classes=CLASSES,
    )
    marker = tmp_path / "pwned"
    hostile = hostile_checkpoints(folder, marker)
    return folder, marker, hostile


def test_app_checkpoint_listing_refuses_code_and_keeps_the_good_model(app_folder, monkeypatch):
    pytest.importorskip("streamlit")
    monkeypatch.setenv("MGNET_DEVICE", "cpu")
    from app import services

    folder, marker, hostile = app_folder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cat = services.catalog(folder)
    assert [m.name for m in cat.models] == ["good-mgnet.pt"]
    errors = dict(cat.errors)
    assert set(errors) == set(hostile)
    for name in ("ours-config-system.pt", "ours-legacy-format.pt", "authors-namespace.ckpt", "bare-pickle-p0.pth"):
        assert "refused" in errors[name] and "run code" in errors[name], errors[name]
    assert not marker.exists()
    assert all(not p.requires_grad for p in cat.models[0].model.parameters())


def test_app_page_shows_refusals_and_still_works(app_folder, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    folder, marker, hostile = app_folder
    monkeypatch.setenv("MGNET_CHECKPOINTS", str(folder))
    monkeypatch.setenv("MGNET_DEVICE", "cpu")
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    shown = "\n".join(e.value for e in at.error)
    for name in hostile:
        assert name in shown, f"{name} is not reported in the page"
    assert "refused" in shown
    assert "after 3 glimpses" in "\n".join(m.value for m in at.markdown)
    assert not marker.exists()


# -- no temporary files, no half-written outputs ---------------------------------------------------------------
def _listing(*folders: Path) -> dict[str, set[str]]:
    return {str(f): {str(p.relative_to(f)) for p in f.rglob("*")} if f.exists() else set() for f in folders}


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """A fresh, empty temporary directory for this process (tempfile and $TMPDIR)."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def hostile_image_files(folder: Path) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    good = io.BytesIO()
    Image.fromarray(photo(7, 40, 50)).save(good, "PNG")
    good = good.getvalue()
    bomb = io.BytesIO()
    Image.new("L", (1, 1)).save(bomb, "PNG")
    bomb = bytearray(bomb.getvalue())
    bomb[16:24] = (30000).to_bytes(4, "big") * 2  # IHDR claims 30000 x 30000 (the CRC is now wrong too)
    samples = {
        "empty.png": b"",
        "truncated.png": good[: len(good) // 2],
        "random.jpg": os.urandom(3000),
        "notes.png": b"just some text\n" * 20,
        "drawing.png": b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        "page.jpg": b"<!DOCTYPE html><html><script>alert(1)</script></html>",
        "bomb.png": bytes(bomb),
    }
    paths = []
    for name, data in samples.items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    return paths


def test_failed_loads_and_saves_leave_no_files_behind(tmp_path, private_tmp, ckpts, monkeypatch):
    images = hostile_image_files(tmp_path / "images")
    for path in images:
        for source in (path, path.read_bytes(), io.BytesIO(path.read_bytes())):
            with pytest.raises(ValueError):
                load_image(source)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.pt").write_bytes(b"")
    (bad / "text.pt").write_text("not a checkpoint")
    (bad / "truncated.pt").write_bytes((ckpts / "mgnet-tiny.pt").read_bytes()[:5000])
    hostile_checkpoints(bad, tmp_path / "pwned")
    before = _listing(bad)
    for path in sorted(bad.iterdir()):
        with pytest.raises(CheckpointError):
            load_checkpoint(path, device="cpu")
    assert _listing(bad) == before
    # a save that fails half-way (disk full, killed writer thread...) leaves neither a partial checkpoint
    # nor its temporary file
    out = tmp_path / "out"
    out.mkdir()
    real_save = torch.save

    def failing_save(obj, f, *a, **kw):
        real_save({"partial": torch.zeros(10)}, f)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        save_checkpoint(
            build_model("baseline", "resnet18", num_classes=3, image_size=32), out / "model.pt", classes=CLASSES
        )
    monkeypatch.undo()
    assert _listing(out) == {str(out): set()}, "a failed save left files behind"
    assert _listing(private_tmp) == {str(private_tmp): set()}, "temporary files were left behind"
    assert not (tmp_path / "pwned").exists()


@pytest.fixture
def eval_data(tmp_path):
    return make_image_folder(tmp_path / "data", per_class=2, size=36)


def _run_evaluate(argv, capsys):
    from mgnet.evaluate import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    return code, capsys.readouterr().err


def test_evaluate_cli_refuses_bad_input_before_working_and_leaves_nothing(
    tmp_path, private_tmp, ckpts, eval_data, capsys
):
    ck = str(ckpts / "mgnet-tiny.pt")
    cache = tmp_path / "cache"
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    (out_dir / "old.json").write_text("{}")  # a previous result: must survive every failure untouched
    base = ["--checkpoint", ck, "--data", str(eval_data), "--cache-dir", str(cache), "--batch-size", "4"]
    cases = [
        (["--limit", "-1"], "--limit"),
        (["--batch-size", "0"], "--batch-size"),
        (["--attack", "pgd", "--steps", "0"], "--steps"),
        (["--json", str(out_dir)], "folder"),  # --json names an existing folder
        (["--limit", "many"], "invalid int value"),
        (["--attack", "cw"], "invalid choice"),
    ]
    for extra, message in cases:
        code, err = _run_evaluate(
            base + extra + (["--json", str(out_dir / "res.json")] if "--json" not in extra else []), capsys
        )
        assert code not in (0, None), extra
        assert message in err and "Traceback" not in err, (extra, err)
        assert _listing(out_dir) == {str(out_dir): {"old.json"}}, extra
    # a damaged image inside the data folder: the message names it; no result, no cache entry, no temp file
    victim = sorted((eval_data).rglob("*.png"))[3]
    victim.write_bytes(victim.read_bytes()[:60])
    code, err = _run_evaluate(base + ["--json", str(out_dir / "res.json")], capsys)
    assert code == 2 and victim.name in err and "damaged or truncated" in err, err
    assert _listing(out_dir) == {str(out_dir): {"old.json"}}
    assert not cache.exists() or not any(cache.iterdir()), _listing(cache)
    assert _listing(private_tmp) == {str(private_tmp): set()}
    (out_dir / "old.json").unlink()


figures_cli = pytest.importorskip("mgnet.figures", reason="the figure CLI (mgnet/figures/) is not written yet")


@pytest.mark.slow
def test_figure_cli_failures_leave_no_output(tmp_path, private_tmp, ckpts, eval_data, capsys, monkeypatch):
    ck = str(ckpts / "mgnet-tiny.pt")
    run = [
        "--mgnet",
        ck,
        "--baseline",
        "none",
        "--images",
        str(eval_data),
        "--figures",
        "strip",
        "--methods",
        "none",
        "--format",
        "html",
        "--device",
        "cpu",
        "--no-progress",
    ]
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    fresh = tmp_path / "fresh"

    def outputs_untouched():
        assert _listing(existing) == {str(existing): {"keep.txt"}}, _listing(existing)
        assert not fresh.exists(), f"{fresh} was left behind: {_listing(fresh)}"
        assert _listing(private_tmp) == {str(private_tmp): set()}

    usage = [
        (["--dpi", "5"], "--dpi"),
        (["--methods", "magic"], "unknown method"),
        (["--images", str(tmp_path / "missing")], "does not exist"),
        (["--mgnet", str(tmp_path / "missing.pt")], "not found"),
        (["--mgnet", str(ckpts / "baseline-tiny.pt")], "baseline"),
    ]
    for extra, message in usage:
        for out in (existing, fresh):
            assert figures_cli.main(run + extra + ["--out", str(out)]) == 2, extra
            err = capsys.readouterr().err
            assert "error:" in err and message in err, (extra, err)
        outputs_untouched()
    # a failure half-way, after some figures were already written: nothing of it may appear
    calls = []
    real = figures_cli.plots.glimpse_strip_figure

    def fail_second(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash while drawing the second figure")
        return real(*a, **kw)

    monkeypatch.setattr(figures_cli.plots, "glimpse_strip_figure", fail_second)
    for out in (existing, fresh):
        calls.clear()
        with pytest.raises(RuntimeError, match="simulated crash"):
            figures_cli.main(run + ["--limit", "3", "--out", str(out)])
        assert len(calls) == 2
        outputs_untouched()

    # Ctrl-C half-way: exit status 130, a message, nothing written
    def interrupt(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(figures_cli.plots, "glimpse_strip_figure", interrupt)
    assert figures_cli.main(run + ["--limit", "2", "--out", str(existing)]) == 130
    assert "nothing was written" in capsys.readouterr().err
    outputs_untouched()
    # a damaged image among the inputs: named in the message, through the real command line
    victim = sorted(eval_data.rglob("*.png"))[1]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    res = subprocess.run(
        [sys.executable, "-m", "mgnet.figures"] + run + ["--out", str(fresh)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TMPDIR=str(private_tmp)),
    )
    assert res.returncode == 2 and victim.name in res.stderr and "Traceback" not in res.stderr, res.stderr
    outputs_untouched()
