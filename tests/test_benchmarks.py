"""The benchmarks' own logic, on the CPU: the GPU parity check's arithmetic and the cold-weights probe's calls."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import cold_weights  # noqa: E402
import gpu_parity  # noqa: E402

from mgnet import build_model  # noqa: E402
from mgnet.model import prepare_for_inference  # noqa: E402


def test_compare_counts_agreement_per_glimpse():
    probs = torch.tensor([[[0.4, 0.25, 0.15, 0.1, 0.06, 0.04, 0.0], [0.05, 0.5, 0.2, 0.1, 0.08, 0.07, 0.0]]])
    params = torch.zeros(1, 2, 3)
    same = gpu_parity.compare((probs, params), (probs.clone(), params.clone()))
    assert same == [{"glimpse": 1, "top1_agree": 1.0, "top5_agree": 1.0, "max_prob_diff": 0.0, "max_glimpse_diff": 0.0}]
    other = probs.clone()
    other[0, 1] = torch.tensor([0.3, 0.11, 0.2, 0.15, 0.12, 0.02, 0.1])  # photo 2: new top-1, top 5 swaps 5 for 0
    moved = params.clone()
    moved[0, 0, 1] = 0.25
    row = gpu_parity.compare((probs, params), (other, moved))[0]
    assert row["top1_agree"] == 0.5 and row["top5_agree"] == 0.5
    assert row["max_prob_diff"] == pytest.approx(0.39) and row["max_glimpse_diff"] == pytest.approx(0.25)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpu_parity_says_it_needs_cuda(capsys):
    with pytest.raises(SystemExit) as stop:
        gpu_parity.main(["--data", "nowhere"])
    assert stop.value.code == 2 and "needs a CUDA device" in capsys.readouterr().err


def test_cold_weights_times_every_call_of_the_fused_backbone():
    # "compute only" sums the fused calls one by one: they must be exactly the calls the backbone makes
    fast = prepare_for_inference(build_model("mgnet", num_classes=3, image_size=64).eval())
    backbone = fast.backbone
    assert hasattr(backbone, "plan"), "this torch has oneDNN, so the inference copy's backbone is fused"
    x = torch.rand(1, 3, 48, 48).contiguous(memory_format=torch.channels_last)
    calls = cold_weights.fused_calls(backbone, x)
    assert len(calls) == 1 + 2 * 8 + 3  # stem, two convolutions per block, three downsampling convolutions
    with torch.inference_mode():
        assert torch.equal(calls[-1]().mean((2, 3)), backbone(x))


def test_cold_weights_evicts_with_a_buffer_twice_the_last_level_cache(monkeypatch):
    monkeypatch.setattr(cold_weights, "last_level_cache_bytes", lambda: 300 * 2**20)
    assert cold_weights.eviction_floats() * 4 == 600 * 2**20
    monkeypatch.setattr(cold_weights, "last_level_cache_bytes", lambda: 32 * 2**20)
    assert cold_weights.eviction_floats() * 4 == 256 * 2**20  # never under 256 MB
    monkeypatch.undo()
    found = cold_weights.last_level_cache_bytes()
    assert found >= 0 and cold_weights.eviction_floats() * 4 >= 2 * found
