import json
import subprocess
import sys

import pytest
import torch

from mgnet import build_model, save_checkpoint
from mgnet.attacks import WORST_MEMBERS
from mgnet.evaluate import evaluate, main, spread_indices
from mgnet import load_checkpoint
from conftest import ROOT


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model("mgnet", num_classes=3, image_size=48, n_glimpses=3, scale=2.0)
    ids = ["n01440764", "n02102040", "n02979186"]
    return save_checkpoint(model, tmp_path / "tiny.pt", classes=["tench", "springer", "cassette"], class_ids=ids)


def test_cli_writes_table_and_json(tiny_folder, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "res.json"
    assert main(["--checkpoint", str(tiny_checkpoint), "--data", str(tiny_folder), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "glimpse" in printed and "% of baseline" in printed
    res = json.loads(out.read_text())
    assert res["images"] == 18 and len(res["accuracy_per_glimpse"]) == 3
    assert res["accuracy"] == res["accuracy_per_glimpse"][-1]
    g = res["gflops_per_glimpse"]
    assert g[0] < g[1] < g[2] == res["gflops_per_image"] and g[2] < res["baseline_gflops"]


def test_accuracy_matches_a_direct_computation(tiny_folder, tiny_checkpoint):
    from mgnet.data import list_image_folder, load_image, to_model_input

    model = load_checkpoint(tiny_checkpoint, device="cpu")
    res = evaluate(model, tiny_folder, progress=False)
    _, samples = list_image_folder(tiny_folder)
    hits = torch.zeros(3)
    with torch.no_grad():
        for path, label in samples:
            logits = model(to_model_input(load_image(path), 48)).logits[:, 0]
            hits += (logits.argmax(-1) == label).float()
    assert res["accuracy_per_glimpse"] == [round(float(h) / len(samples), 4) for h in hits]


def test_limit_spreads_over_classes():
    idx = spread_indices(100, 10)
    assert len(idx) == 10 and idx[0] == 0 and idx[-1] == 99
    assert len(spread_indices(5, 0)) == 5


def test_attack_and_corruption_options(tiny_folder, tiny_checkpoint):
    model = load_checkpoint(tiny_checkpoint, device="cpu")
    clean = evaluate(model, tiny_folder, limit=6, progress=False)
    attacked = evaluate(model, tiny_folder, limit=6, attack={"method": "pgd", "eps": 8, "steps": 3}, progress=False)
    assert attacked["images"] == 6 and attacked["attack"]["eps"] == 8
    assert attacked["accuracy"] <= clean["accuracy"]
    corrupted = evaluate(model, tiny_folder, limit=6, corruption="gaussian_noise", severity=5, progress=False)
    assert corrupted["corruption"] == {"name": "gaussian_noise", "severity": 5}
    transfer = evaluate(
        model, tiny_folder, limit=6, attack={"method": "fgsm", "eps": 4}, transfer_from=model, progress=False
    )
    assert transfer["transfer_from"] == str(tiny_checkpoint)


def test_cli_worst_case_reports_each_member_and_the_worst(tiny_folder, tiny_checkpoint, tmp_path, capsys):
    base = tmp_path / "base.pt"
    torch.manual_seed(1)
    ids = ["n01440764", "n02102040", "n02979186"]
    save_checkpoint(build_model("baseline", num_classes=3, image_size=48), base, classes=list("abc"), class_ids=ids)
    out = tmp_path / "worst.json"
    args = ["--checkpoint", str(tiny_checkpoint), "--data", str(tiny_folder), "--limit", "4", "--json", str(out)]
    args += ["--attack", "worst", "--eps", "2", "--steps", "2", "--queries", "5", "--transfer-from", str(base)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    members = res["worst_case_members"]
    assert list(members) == list(WORST_MEMBERS)  # MGNet with a baseline to transfer from: every member
    assert members["apgd-dlr-true"] == res["accuracy"]  # the last member's tally is the worst case
    assert list(members.values()) == sorted(members.values(), reverse=True)  # each member can only add
    assert res["attack"]["member_options"]["apgd-ce"] == {"steps": 2} and "under square or any attack" in printed
    assert "accuracy under Worst case" in printed


def test_cli_refuses_an_option_the_attack_ignores(tiny_folder, tiny_checkpoint, capsys):
    args = ["--checkpoint", str(tiny_checkpoint), "--data", str(tiny_folder), "--attack", "paper-pgd"]
    assert main(args + ["--norm", "l2"]) == 2
    assert "paper-pgd takes no option norm" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--corruption", "rain"], "unknown corruption"),
        (["--corruption", "fog", "--severity", "9"], "between 1 and 5"),
        (["--attack", "pgd", "--eps", "-1"], "non-negative"),
    ],
)
@pytest.mark.slow
def test_bad_arguments_exit_nonzero_without_output(tiny_folder, tiny_checkpoint, tmp_path, extra, message):
    out = tmp_path / "res.json"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mgnet.evaluate",
            "--checkpoint",
            str(tiny_checkpoint),
            "--data",
            str(tiny_folder),
            "--json",
            str(out),
        ]
        + extra,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and message in res.stderr
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_missing_data_and_bad_checkpoint(tiny_checkpoint, tmp_path, capsys):
    assert main(["--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "nope")]) == 2
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["--checkpoint", str(bad), "--data", str(tmp_path)]) == 2
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err


def test_location_ablation_moves_only_the_later_glimpses(tiny_folder, tiny_checkpoint):
    from mgnet.evaluate import _predict_correct, location_ablation, load_eval_images, random_donors

    model = load_checkpoint(tiny_checkpoint, device="cpu")
    _, images, labels = load_eval_images(tiny_folder, 48, progress=False)
    res = location_ablation(model, images, labels, batch_size=5, seed=3)
    correct, params = res["correct"], res["params"]
    assert set(correct) == {"learned", "centre", "shuffled"} and params.shape == (3, len(images), 3)
    assert torch.equal(correct["learned"], _predict_correct(model, images, labels))

    donors = random_donors(len(images), seed=3)
    assert sorted(donors.tolist()) == list(range(len(images)))
    assert not (donors == torch.arange(len(images))).any()  # nobody gets its own glimpses
    x = images.float() / 255
    centred = params[1:].clone()
    centred[..., 1:] = 0
    with torch.no_grad():
        for mode, override in (("centre", centred), ("shuffled", params[1:, donors])):
            direct = model(x, glimpse_params=override).logits.argmax(-1) == labels
            assert torch.equal(correct[mode], direct), mode
            assert torch.equal(correct[mode][0], correct["learned"][0])  # glimpse 1 is the same whole image


def test_glimpse_statistics_of_known_glimpses():
    from mgnet.evaluate import glimpse_statistics

    params = torch.tensor([[[1.0, 0.0, 0.0]] * 2, [[0.5, 0.5, -0.5], [0.3, 0.0, 0.0]]])  # [T=2, N=2, 3]
    (g,) = glimpse_statistics(params, bins=16)
    assert g["glimpse"] == 2 and g["mean_scale"] == 0.4
    assert g["mean_offset"] == round((0.5**0.5 / 2) / 2, 4)  # one centred, one at (0.5, -0.5)
    assert g["covers_centre"] == 1.0  # |0.5| <= 0.5: the first box just reaches the centre
    hist = torch.tensor(g["centre_histogram"])
    assert hist.sum() == 2 and hist[4, 12] == 1 and hist[8, 8] == 1  # row = y (top first), column = x


def test_mirrored_candidates_swap_left_and_right():
    from mgnet.location import mirrored_candidates
    from mgnet.location import candidate_grid

    grid = candidate_grid(3)
    mirror = mirrored_candidates(grid)
    assert torch.allclose(grid[mirror][:, 1], 1 - grid[:, 1]) and torch.equal(grid[mirror][:, ::2], grid[:, ::2])
    assert torch.equal(mirror[mirror], torch.arange(len(grid)))
    with pytest.raises(ValueError, match="not symmetric"):
        mirrored_candidates(torch.tensor([[0.5, 0.2, 0.5], [0.5, 0.5, 0.5]]))


def test_candidate_selection_matches_a_direct_computation(tiny_folder, tiny_checkpoint, tmp_path, capsys):
    """Each candidate's accuracy after glimpse 2, the best fixed one, and the per-image selections (with the
    label; most confident without it), recomputed one image and one candidate at a time."""
    from mgnet.data import list_image_folder, load_image, to_model_input
    from mgnet.evaluate import candidate_selection, load_eval_images
    from mgnet.location import candidate_grid

    model = load_checkpoint(tiny_checkpoint, device="cpu").eval()
    _, images, labels = load_eval_images(str(tiny_folder), 48, 0, progress=False)
    res = candidate_selection(model, images, labels, batch_size=5)
    grid = candidate_grid(3)
    _, samples = list_image_folder(tiny_folder)
    hit = torch.zeros(len(grid), len(samples))
    conf = torch.zeros(len(grid), len(samples))
    truth = torch.zeros(len(grid), len(samples))
    truth_mirror = torch.zeros(len(grid), len(samples))
    own = centred = 0
    with torch.no_grad():
        for i, (path, label) in enumerate(samples):
            x = to_model_input(load_image(path), 48)
            out = model(x, n_glimpses=2)
            own += int(out.logits[1, 0].argmax() == label)
            params = out.glimpses[1].clone()
            params[:, 1:] = 0
            centred += int(model(x, n_glimpses=2, glimpse_params=params[None]).logits[1, 0].argmax() == label)
            for k, u in enumerate(grid):
                p = model(x, n_glimpses=2, glimpse_params=model.place(u[None])[None]).logits[1, 0].softmax(-1)
                hit[k, i], conf[k, i], truth[k, i] = float(p.argmax() == label), p.max(), p[label]
                mirrored = torch.tensor([[u[0], 1 - u[1], u[2]]])
                flipped = model(x.flip(-1), n_glimpses=2, glimpse_params=model.place(mirrored)[None])
                truth_mirror[k, i] = flipped.logits[1, 0].softmax(-1)[label]
    n = len(samples)
    assert res["images"] == n and res["candidate_u"] == grid.tolist()
    assert res["own"] == pytest.approx(own / n) and res["centred"] == pytest.approx(centred / n)
    assert res["candidates"] == pytest.approx(hit.mean(1).tolist(), abs=1e-4)
    assert res["best_fixed"] == pytest.approx(float(hit.mean(1).max()))
    assert res["label_oracle"] == pytest.approx(float(hit.max(0).values.mean()))
    assert res["most_confident"] == pytest.approx(float(hit[conf.argmax(0), torch.arange(n)].mean()))
    assert res["label_oracle"] >= res["best_fixed"] and res["label_oracle"] >= res["most_confident"]
    # the label's pick by true-class probability, on the photo and on its mirror image (mirrored back)
    photos = torch.arange(n)
    assert res["label_pick_same"] == pytest.approx(float(hit[truth.argmax(0), photos].mean()))
    assert res["label_pick_mirrored"] == pytest.approx(float(hit[truth_mirror.argmax(0), photos].mean()))
    # the command line reports it
    out = tmp_path / "res.json"
    args = ["--checkpoint", str(tiny_checkpoint), "--data", str(tiny_folder), "--candidates", "--json", str(out)]
    assert main(args) == 0
    assert "most confident candidate" in capsys.readouterr().out
    assert json.loads(out.read_text())["candidates"]["label_oracle"] == pytest.approx(res["label_oracle"])
