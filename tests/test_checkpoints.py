import argparse
import os
import pickle

import pytest
import torch

from mgnet import CheckpointError, build_model, load_checkpoint, save_checkpoint
from test_model import authors_checkpoint


def test_own_format_round_trip_is_fp16_and_carries_metadata(tmp_path):
    model = build_model("mgnet", num_classes=3, image_size=64, n_glimpses=3, scale=2.5).eval()
    path = save_checkpoint(
        model, tmp_path / "m.pt", classes=["a", "b", "c"], class_ids=["n1", "n2", "n3"], provenance={"command": "test"}
    )
    raw = torch.load(path, weights_only=True)
    assert raw["state_dict"]["global_fc.fc.weight"].dtype == torch.float16
    loaded = load_checkpoint(path, device="cpu")
    assert loaded.classes == ["a", "b", "c"] and loaded.image_size == 64 and loaded.n_glimpses == 3
    assert loaded.scale == 2.5 and loaded.checkpoint_info["class_ids"] == ["n1", "n2", "n3"]
    assert loaded.checkpoint_info["provenance"]["command"] == "test"
    assert len(loaded.checkpoint_info["sha256"]) == 64
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model.half().float()(x).logits, atol=1e-2, rtol=1e-2)


class Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned_marker",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": Boom()}, path)
    with pytest.raises(CheckpointError, match=r"refused: it holds a Python object \((posix|os|nt)\.system\)"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned_marker").exists()
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(CheckpointError):
        load_checkpoint(plain)
    assert not (tmp_path / "pwned_marker").exists()


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "empty"),
        (b"this is a text file\n", "not a readable"),
        (os.urandom(4096), "not a readable"),
    ],
)
def test_non_checkpoints(tmp_path, content, match):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_truncated_checkpoint(tmp_path):
    authors_checkpoint(tmp_path / "a.ckpt", baseline=True)
    data = (tmp_path / "a.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|not a readable"):
        load_checkpoint(tmp_path / "cut.ckpt")


def test_missing_file_and_wrong_kind_of_dict(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an MGNet checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint dictionary"):
        load_checkpoint(tmp_path / "tensor.pt")


def test_mismatched_backbone_and_keys(tmp_path):
    state = authors_checkpoint(tmp_path / "a.ckpt")
    hp = argparse.Namespace(
        n_iter=4,
        scale=2.33,
        scale_min=0.2,
        scale_max=0.5,
        trans_method="tight-crop",
        num_class=100,
        model="resnet50",
        alpha=0.6,
        s=0.02,
    )
    torch.save({"state_dict": state, "hyper_parameters": hp}, tmp_path / "wrong.ckpt")
    with pytest.raises(CheckpointError, match="resnet50"):
        load_checkpoint(tmp_path / "wrong.ckpt")
    partial = {k: v for k, v in state.items() if "loc_network" not in k}
    partial["model.extra.weight"] = torch.zeros(2)
    hp.model = "resnet18"
    torch.save({"state_dict": partial, "hyper_parameters": hp}, tmp_path / "partial.ckpt")
    with pytest.raises(CheckpointError, match=r"missing keys \(2\): loc_network.fc.bias.*unexpected keys \(1\)"):
        load_checkpoint(tmp_path / "partial.ckpt")
    hp.trans_method = "free"
    torch.save({"state_dict": state, "hyper_parameters": hp}, tmp_path / "trans.ckpt")
    with pytest.raises(CheckpointError, match="tight-crop"):
        load_checkpoint(tmp_path / "trans.ckpt")


def test_hyper_parameters_as_plain_dict_also_load(tmp_path):
    state = authors_checkpoint(tmp_path / "a.ckpt", baseline=True)
    hp = {"n_iter": 1, "scale": 1.0, "num_class": 100, "model": "resnet18", "alpha": 0.0, "s": 0.02}
    torch.save({"state_dict": state, "hyper_parameters": hp}, tmp_path / "d.ckpt")
    assert load_checkpoint(tmp_path / "d.ckpt", device="cpu").is_baseline
