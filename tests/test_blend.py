"""Weight averages of two checkpoints (python -m mgnet.blend): the arithmetic, the kept modules, provenance."""

import torch

from conftest import save_tiny_checkpoints
from mgnet import load_checkpoint
from mgnet.blend import main


def test_blend_averages_every_weight_except_the_kept_modules_and_records_both_parents(tmp_path):
    a_path, base_a = save_tiny_checkpoints(tmp_path / "a", seed=0)
    b_path, base_b = save_tiny_checkpoints(tmp_path / "b", seed=1)
    out = tmp_path / "c.pt"
    assert (
        main(
            [
                "--first",
                str(a_path),
                "--second",
                str(b_path),
                "--weight",
                "0.25",
                "--keep-first",
                "loc_network",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    a, b, c = (load_checkpoint(p, "cpu") for p in (a_path, b_path, out))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    for k, v in sc.items():
        if k.startswith("loc_network."):
            assert torch.equal(v, sa[k]), k
        elif v.is_floating_point():  # stored in fp16, so equal to the fp16 rounding of the average
            assert torch.equal(v, (0.75 * sa[k].float() + 0.25 * sb[k].float()).half().float()), k
        else:
            assert torch.equal(v, sa[k]), k
    assert not torch.equal(sc["global_fc.fc.weight"], sa["global_fc.fc.weight"])
    blend = c.checkpoint_info["provenance"]["blend"]
    assert blend["first"]["sha256"] == a.checkpoint_info["sha256"]
    assert blend["second"]["sha256"] == b.checkpoint_info["sha256"]
    assert blend["weight"] == 0.25 and blend["kept_from_first"] == ["loc_network"]
    assert "mgnet.blend" in c.checkpoint_info["provenance"]["command"]


def test_blend_refuses_what_it_cannot_average(tmp_path, capsys):
    a_path, base = save_tiny_checkpoints(tmp_path / "a", seed=0)
    out = tmp_path / "c.pt"
    assert main(["--first", str(a_path), "--second", str(base), "--weight", "0.5", "--out", str(out)]) == 2
    assert "configuration" in capsys.readouterr().err
    assert main(["--first", str(a_path), "--second", str(a_path), "--weight", "1.5", "--out", str(out)]) == 2
    assert "weight" in capsys.readouterr().err
    assert (
        main(
            [
                "--first",
                str(a_path),
                "--second",
                str(a_path),
                "--weight",
                "0.5",
                "--keep-first",
                "nope",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "nope" in capsys.readouterr().err
    assert not out.exists()
