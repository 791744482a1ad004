import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from mgnet import load_checkpoint
from mgnet.checkpoints import read_checkpoint_file
from conftest import ROOT, make_image_folder

TRAIN = [sys.executable, "-m", "mgnet.train"]


def train_args(data, out, export, **extra):
    args = [
        "--data",
        str(data),
        "--val",
        str(data),
        "--image-size",
        "64",
        "--epochs",
        "2",
        "--batch-size",
        "6",
        "--glimpses",
        "3",
        "--scale",
        "2.0",
        "--threads",
        "1",
        "--out",
        str(out),
        "--export",
        str(export),
        "--save-every",
        "1",
        "--amp",
        "off",
    ]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def run(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture
def folder(tmp_path):
    return make_image_folder(tmp_path / "data", per_class=8, size=48)


@pytest.mark.slow
def test_training_exports_a_loadable_checkpoint_with_provenance(folder, tmp_path):
    res = run(TRAIN + train_args(folder, tmp_path / "run", tmp_path / "m.pt", kind="baseline", epochs=1))
    assert res.returncode == 0, res.stderr[-2000:]
    model = load_checkpoint(tmp_path / "m.pt", device="cpu")
    assert model.is_baseline and model.image_size == 64
    assert model.classes == ["tench", "English springer", "cassette player"]
    prov = model.checkpoint_info["provenance"]
    assert prov["epochs"] == 1 and "mgnet.train" in prov["command"] and prov["git_commit"]
    assert len(prov["metrics"]["val_accuracy_per_glimpse"]) == 1
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history[0]["epoch"] == 1


@pytest.mark.slow
def test_killed_mid_epoch_training_resumes_to_the_same_weights(folder, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    straight = run(TRAIN + train_args(folder, tmp_path / "a", tmp_path / "a.pt"))
    assert straight.returncode == 0, straight.stderr[-2000:]

    args = TRAIN + train_args(folder, tmp_path / "b", tmp_path / "b.pt")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = tmp_path / "b" / "last.pt"
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if state_file.exists():
            try:
                state = read_checkpoint_file(state_file)["state"]
            except ValueError:
                state = None
            if state and state["step_in_epoch"] >= 1:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed_at = state
                break
        time.sleep(0.02)
    assert killed_at is not None, "training finished before it could be killed"
    saved = read_checkpoint_file(state_file)["state"]
    assert saved["step_in_epoch"] >= 1 and saved["global_step"] < 8  # really interrupted mid-run
    assert not (tmp_path / "b.pt").exists()

    resumed = run(args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    a = torch.load(tmp_path / "a.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b.pt", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(folder, tmp_path):
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "-m",
        "mgnet.train",
    ] + train_args(folder, tmp_path / "ddp", tmp_path / "ddp.pt", epochs=1)
    res = run(args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 process(es)" in res.stdout
    model = load_checkpoint(tmp_path / "ddp.pt", device="cpu")
    assert model.checkpoint_info["provenance"]["processes"] == 2
    # Two ranks share the epoch: 24 images / (6 per process x 2 processes) = 2 steps.
    assert read_checkpoint_file(tmp_path / "ddp" / "last.pt")["state"]["global_step"] == 2


@pytest.mark.slow
def test_bad_data_folder_exits_with_a_message(tmp_path):
    res = run(TRAIN + ["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert res.returncode != 0 and "does not exist" in res.stderr


@pytest.mark.slow
def test_init_from_starts_from_the_given_weights_and_records_the_chain(folder, tmp_path):
    first = run(TRAIN + train_args(folder, tmp_path / "s1", tmp_path / "s1.pt", epochs=1))
    assert first.returncode == 0, first.stderr[-2000:]
    parent = load_checkpoint(tmp_path / "s1.pt", device="cpu")

    # With a zero learning rate, the second stage must export exactly the first stage's weights
    # (BatchNorm running statistics aside, which still update in train mode).
    second = run(
        TRAIN + train_args(folder, tmp_path / "s2", tmp_path / "s2.pt", epochs=1, lr=0.0, init_from=tmp_path / "s1.pt")
    )
    assert second.returncode == 0, second.stderr[-2000:]
    child = load_checkpoint(tmp_path / "s2.pt", device="cpu")
    weights = {k: v for k, v in parent.state_dict().items() if "running" not in k and "num_batches" not in k}
    for k, v in weights.items():
        assert torch.equal(child.state_dict()[k], v), k
    fresh = run(TRAIN + train_args(folder, tmp_path / "s3", tmp_path / "s3.pt", epochs=1, lr=0.0, seed=1))
    assert fresh.returncode == 0
    other = load_checkpoint(tmp_path / "s3.pt", device="cpu")
    assert not torch.equal(other.state_dict()["global_fc.fc.weight"], parent.state_dict()["global_fc.fc.weight"])

    prov = child.checkpoint_info["provenance"]
    assert prov["init_from"]["sha256"] == parent.checkpoint_info["sha256"]
    assert prov["init_from"]["command"] == parent.checkpoint_info["provenance"]["command"]
    assert prov["total_epochs"] == 2

    from mgnet.modelcard import training_stages

    stages = training_stages(prov)
    assert [st["epochs"] for st in stages] == [1, 1]
    assert "--init-from" not in stages[0]["command"] and "--init-from" in stages[1]["command"]
    assert stages[1]["lr"] == 0.0


@pytest.mark.slow
def test_location_only_stage_changes_the_location_network_and_nothing_else(folder, tmp_path):
    first = run(TRAIN + train_args(folder, tmp_path / "s1", tmp_path / "s1.pt", epochs=1))
    assert first.returncode == 0, first.stderr[-2000:]
    stage = train_args(folder, tmp_path / "s2", tmp_path / "s2.pt", epochs=1, lr=0.05, location_weight=0.5)
    second = run(TRAIN + stage + ["--init-from", str(tmp_path / "s1.pt"), "--location-only"])
    assert second.returncode == 0, second.stderr[-2000:]
    parent = load_checkpoint(tmp_path / "s1.pt", device="cpu").state_dict()
    child = load_checkpoint(tmp_path / "s2.pt", device="cpu").state_dict()
    moved = [k for k in parent if not torch.equal(parent[k], child[k])]
    # Every other weight and every BatchNorm statistic is exactly the parent's; the location layer moved.
    assert moved and all(k.startswith("loc_network.") for k in moved), moved
    baseline = run(TRAIN + train_args(folder, tmp_path / "b", tmp_path / "b.pt", kind="baseline") + ["--location-only"])
    assert baseline.returncode != 0 and "--location-only needs MGNet" in baseline.stderr


@pytest.mark.slow
def test_init_from_refuses_a_different_configuration_but_allows_another_input_size(folder, tmp_path):
    first = run(TRAIN + train_args(folder, tmp_path / "s1", tmp_path / "s1.pt", kind="baseline", epochs=1))
    assert first.returncode == 0, first.stderr[-2000:]
    res = run(TRAIN + train_args(folder, tmp_path / "s2", tmp_path / "s2.pt", epochs=1, init_from=tmp_path / "s1.pt"))
    assert res.returncode != 0 and "different configuration" in res.stderr and "--kind" in res.stderr
    assert not (tmp_path / "s2.pt").exists()
    res = run(TRAIN + train_args(folder, tmp_path / "s4", tmp_path / "s4.pt", init_from=tmp_path / "nope.pt"))
    assert res.returncode != 0 and "--init-from" in res.stderr
    # the weights fit any input size: a stage may change it (with lr 0 the weights stay)
    res = run(
        TRAIN
        + train_args(folder, tmp_path / "s5", tmp_path / "s5.pt", kind="baseline", epochs=1, lr=0.0)
        + ["--image-size", "40", "--init-from", str(tmp_path / "s1.pt")]
    )
    assert res.returncode == 0, res.stderr[-2000:]
    parent, child = (load_checkpoint(tmp_path / n, device="cpu") for n in ("s1.pt", "s5.pt"))
    assert (parent.image_size, child.image_size) == (64, 40)
    weights = {k: v for k, v in parent.state_dict().items() if "running" not in k and "num_batches" not in k}
    assert all(torch.equal(child.state_dict()[k], v) for k, v in weights.items())  # BatchNorm statistics aside


def test_model_card_training_curves_follow_the_stages(tmp_path):
    from mgnet.modelcard import training_curves

    records = [
        {"epoch": 1, "stage": 1, "val_accuracy_per_glimpse": [0.3, 0.4]},
        {"epoch": 2, "stage": 1, "val_accuracy_per_glimpse": [0.5, 0.6]},
        {"epoch": 1, "stage": 2, "val_accuracy_per_glimpse": [0.55, 0.65]},
        {"epoch": 2, "stage": 2},
    ]  # an epoch without validation is skipped, not plotted as 0
    (tmp_path / "history-mgnet.json").write_text(json.dumps(records))
    curves = training_curves(tmp_path)
    assert list(curves) == ["mgnet"]
    assert [r["x"] for r in curves["mgnet"]] == [1, 2, 3]
    assert [r["first_of_stage"] for r in curves["mgnet"]] == [True, False, True]
    assert curves["mgnet"][2]["acc"] == [0.55, 0.65]

    from mgnet.modelcard import stage_ends

    records = [
        {"stage": 1, "val_accuracy_per_glimpse": [0.7]},
        {"stage": 2, "val_accuracy_per_glimpse": [0.8]},
        {"stage": 2, "val_accuracy_per_glimpse": [0.85]},
    ]
    (tmp_path / "history-baseline.json").write_text(json.dumps(records))
    ends = stage_ends(training_curves(tmp_path))
    assert ends == [
        {"stage": 1, "epochs": 2, "mgnet": [0.5, 0.6], "baseline": [0.7]},
        {"stage": 2, "epochs": 3, "mgnet": [0.55, 0.65], "baseline": [0.85]},
    ]


def test_git_commit_marks_uncommitted_changes(tmp_path):
    from mgnet.utils import git_commit

    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(git + ["init", "-q"], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run(git + ["add", "a.py"], check=True)
    subprocess.run(git + ["commit", "-qm", "one"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_commit(mark_dirty=True, repo=tmp_path) == head
    (tmp_path / "new.py").write_text("untracked files do not count\n")
    assert git_commit(mark_dirty=True, repo=tmp_path) == head
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_commit(mark_dirty=True, repo=tmp_path) == head + "-dirty"
    assert git_commit(repo=tmp_path) == head


def test_location_options_reach_the_stage():
    from mgnet.train import build_training_model, parse_args

    argv = ["--data", "d", "--out", "o", "--location-weight", "0.3", "--location-overlap", "0.5"]
    argv += ["--location-objective", "cost", "--glimpses", "2"]
    _, stage, _ = build_training_model(parse_args(argv), ["a", "b"], "cpu")
    assert (stage.weight, stage.overlap, stage.objective, stage.mirror) == (0.3, 0.5, "cost", False)
    _, stage, _ = build_training_model(parse_args(argv + ["--location-mirror"]), ["a", "b"], "cpu")
    assert stage.mirror is True
