"""The model card's bookkeeping: which checkpoint is which, when earlier measurements may be taken over, and
how issue 11's goals are judged."""

import argparse

import pytest

from mgnet.checkpoints import training_recipe
from mgnet.modelcard import _reusable, glimpse_goals


def test_training_recipe_follows_the_init_from_chain():
    assert training_recipe({"format": "authors-lightning"}) == "authors' checkpoint"
    assert training_recipe({"provenance": {"saved": "today"}}) == "recipe not recorded"
    paper = {"command": "python -m mgnet.train --kind mgnet --lr 0.08", "args": {"lr": 0.08}}
    assert training_recipe({"provenance": paper}) == "paper recipe"
    located = {"args": {"location_weight": 0.05, "off_centre": 0.4}, "init_from": paper}
    assert training_recipe({"provenance": located}) == "location stage"
    # a later stage without the option still comes from a located model (earlier stages keep only the command)
    later = {"args": {"location_weight": 0.0}, "init_from": {"command": "x --location-weight 0.05 --lr 1"}}
    assert training_recipe({"provenance": later}) == "location stage"
    assert training_recipe({"provenance": {"args": {"off_centre": 0.4}, "init_from": paper}}) == "off-centre data"


def _args(**kw):
    base = dict(data="val", seed=0, attack_limit=300, corruption_limit=300)
    return argparse.Namespace(**{**base, **kw})


def _card(mgnet_sha="a", baseline_sha="b"):
    pair = {
        "checkpoints": {"mgnet": {"sha256": mgnet_sha}, "baseline": {"sha256": baseline_sha}},
        "clean": {"mgnet": 1},
        "sample_check": {},
        "attacks": {"images": 300},
        "corruptions": {"images": 300},
    }
    return {"data": "val", "seed": 0, "date": "2026-11-25", "git_commit": "c0ffee", **pair}


def test_earlier_measurements_are_taken_over_only_for_the_same_weights_and_settings():
    card = _card()
    got = _reusable(card, {"mgnet": "a", "baseline": "b"}, _args())
    assert got["clean"] == {"mgnet": 1} and got["measured"] == {"date": "2026-11-25", "git_commit": "c0ffee"}
    assert _reusable(card, {"mgnet": "a", "baseline": "other"}, _args()) is None
    assert _reusable(card, {"mgnet": "a", "baseline": "b"}, _args(seed=1)) is None
    assert _reusable(card, {"mgnet": "a", "baseline": "b"}, _args(attack_limit=500)) is None
    assert _reusable(None, {"mgnet": "a", "baseline": "b"}, _args()) is None
    # a pair kept under "paper_recipe" is found too
    nested = {**_card("x", "y"), "paper_recipe": _card()}
    assert _reusable(nested, {"mgnet": "a", "baseline": "b"}, _args())["clean"] == {"mgnet": 1}


def _report(gain, offset=0.15, iou=0.5):
    gains = {f"{m}@{t}": [gain, gain - 0.01, gain + 0.01] for m in ("centre", "shuffled") for t in (2, 4)}
    return {"accuracy": {"learned": [0.8] * 4}, "gain_ci95": gains, "glimpse2_offset": offset, "overlap_iou": iou}


def _goal_card(val_gain, off_gain, final=0.86, offset=0.15, iou=0.5, beats_baseline=0.05):
    cfg = {"mgnet": {"gflops_per_glimpse": [0.1, 0.2, 0.3, 0.4]}, "baseline": {"gflops_per_glimpse": [0.6]}}
    return {
        "checkpoints": cfg,
        "locations": _report(val_gain),
        "locations_off_centre": _report(off_gain, offset, iou),
        "clean": {
            "mgnet": {"accuracy_per_glimpse": [0.7, 0.8, 0.85, final]},
            "baseline": {"accuracy_per_glimpse": [0.87]},
        },
        "off_centre": {
            "mgnet": [0.7],
            "baseline": [0.6],
            "mgnet_minus_baseline_ci95": [beats_baseline, beats_baseline - 0.02, beats_baseline + 0.02],
        },
        "corruptions": {"table": {"fog": {str(s): {"mgnet": [0.5] * 4, "baseline": [0.5]} for s in range(1, 6)}}},
    }


def test_glimpse_goals_are_met_only_when_every_number_clears_its_bar():
    met = [ok for _, ok, _ in glimpse_goals(_goal_card(0.05, 0.20))]
    assert all(met) and len(met) == 11
    small = dict(
        (label, ok)
        for label, ok, _ in glimpse_goals(_goal_card(0.02, 0.10, final=0.84, offset=0.1, iou=0.8, beats_baseline=-0.01))
    )
    assert not any(ok for label, ok in small.items() if not label.startswith("3. Compute"))


@pytest.mark.parametrize("field", ["offset", "iou"])
def test_glimpse_spread_goal_fails_on_its_own(field):
    card = _goal_card(0.05, 0.20, **({"offset": 0.11} if field == "offset" else {"iou": 0.71}))
    failed = [label for label, ok, _ in glimpse_goals(card) if not ok]
    assert len(failed) == 1 and failed[0].startswith("4.")


def _worst_entry(n, clean, members, broke):
    return {
        "images": n,
        "clean": clean,
        "accuracy": list(members.values())[-1],
        "members": members,
        "broke_first": broke,
    }


def _worst_card(tmp_path, mgnet_worst: float, baseline_worst: float, square_broke: int = 0):
    import json

    from mgnet.modelcard import WORST_FILE

    names = ["pgd", "apgd-ce", "apgd-dlr", "square", "transfer", "pgd-true", "apgd-ce-true", "apgd-dlr-true"]
    mg = dict(zip(names, [0.5, 0.45, 0.45, 0.4, 0.4, 0.4, 0.4, mgnet_worst]))
    base = dict(zip(names[:4], [0.2, 0.2, 0.2, baseline_worst]))
    res = {
        "date": "2026-12-04",
        "git_commit": "abc",
        "hardware": "cpu",
        "threads": 1,
        "images": 100,
        "settings": {"pgd_steps": 10, "apgd_steps": 20, "apgd_restarts": 1, "queries": 300},
        "eps": {
            "4": {
                "mgnet": _worst_entry(100, 0.9, mg, {"square": square_broke}),
                "baseline": _worst_entry(100, 0.88, base, {"square": 0}),
            }
        },
    }
    (tmp_path / WORST_FILE).write_text(json.dumps(res))
    return tmp_path


def test_worst_case_section_says_plainly_whether_the_advantage_survives(tmp_path):
    from mgnet.modelcard import _worst_case_section

    text = "\n".join(_worst_case_section(_worst_card(tmp_path, 0.1, 0.2, square_broke=3)))
    assert "accuracy under" in text and "robust" not in text.replace("robustness guarantees", "")
    assert "100 images instead of 500" in text and "APGD 20 iterations" in text and "Square 300 queries" in text
    assert "MGNet's advantage does not survive the worst case" in text
    assert "Square broke 3 image(s) that PGD and APGD had not — a sign" in text
    assert "| **worst case, MGNet as deployed** | **40.0%** | **20.0%** |" in text  # the deployed block's minimum
    text = "\n".join(_worst_case_section(_worst_card(tmp_path, 0.4, 0.05)))
    assert "MGNet's advantage survives the worst case" in text  # 40% vs 5% of 100: the intervals are apart
    text = "\n".join(_worst_case_section(_worst_card(tmp_path, 0.25, 0.2)))
    assert "the intervals overlap" in text
    assert _worst_case_section(tmp_path / "nothing-here") == []


def test_worst_case_section_words_square_by_its_budget(tmp_path):
    import json

    from mgnet.modelcard import WORST_FILE, _worst_case_section

    reduced = "\n".join(_worst_case_section(_worst_card(tmp_path, 0.4, 0.05)))
    assert "Square ran with 300 queries, not 5,000" in reduced and "weak evidence" in reduced
    path = tmp_path / WORST_FILE
    res = json.loads(path.read_text())
    res["settings"].update(apgd_steps=100, queries=5000)
    res["images"] = 500
    path.write_text(json.dumps(res))
    full = "\n".join(_worst_case_section(tmp_path))
    assert "The full evaluation" in full and "its full 5,000 queries" in full
    assert "weak evidence" not in full and "not proof" in full


def test_worst_case_budget_names_only_what_was_cut():
    from mgnet.modelcard import _worst_case_budget

    full = {"apgd_steps": 100, "queries": 5000}
    assert _worst_case_budget(500, full).startswith("The full evaluation")
    text = _worst_case_budget(500, {"apgd_steps": 10, "queries": 200})
    assert "images instead" not in text and "intervals" not in text
    assert "APGD 10 iterations instead of 100" in text and "Square 200 queries instead of 5,000" in text
    assert "upper estimates" in text
    text = _worst_case_budget(40, full)
    assert "40 images instead of 500" in text and "upper estimates" not in text and "Fewer images widen" in text


def test_worst_case_keeps_the_columns_of_a_model_whose_weights_did_not_change(tmp_path, monkeypatch):
    import json

    from conftest import make_image_folder, save_tiny_checkpoints
    from mgnet import modelcard

    calls = []

    def fake_attack(model, images, y, method, eps, **kw):
        calls.append((model.checkpoint_info["path"], eps))
        return {"images": len(y), "clean": 0.5, "accuracy": 0.25, "members": {"pgd": 0.25}, "broke_first": {}}

    monkeypatch.setattr(modelcard, "robust_accuracy", fake_attack)
    data = make_image_folder(tmp_path / "val", per_class=2, size=64)
    ids = ["n01440764", "n02102040", "n02979186"]
    mg, base = save_tiny_checkpoints(tmp_path / "ck", class_ids=ids)
    args = argparse.Namespace(
        data=str(data),
        mgnet=str(mg),
        baseline=str(base),
        worst_limit=0,
        worst_eps=[1.0, 2.0],
        apgd_steps=10,
        square_queries=200,
        worst_batch=8,
        seed=0,
        cache_dir=str(tmp_path / "cache"),
    )
    modelcard.measure_worst_case(args, tmp_path)
    assert len(calls) == 4
    calls.clear()
    other_mg = save_tiny_checkpoints(tmp_path / "ck3", class_ids=ids, seed=7)[
        0
    ]  # another MGNet; the baseline is unchanged
    res = modelcard.measure_worst_case(argparse.Namespace(**{**vars(args), "mgnet": str(other_mg)}), tmp_path)
    assert [p for p, _ in calls] == [str(other_mg)] * 2  # only MGNet is measured again
    assert all(res["eps"][e]["baseline"]["kept_from"] for e in ("1", "2"))
    assert not any("kept_from" in res["eps"][e]["mgnet"] for e in ("1", "2"))
    written = json.loads((tmp_path / modelcard.WORST_FILE).read_text())
    assert written["eps"] == res["eps"]  # kept columns are written too, the last one included
    text = "\n".join(modelcard._worst_case_section(tmp_path))
    assert "The baseline columns were measured by the run at commit" in text and "MGNet columns" not in text
    calls.clear()
    other_base = save_tiny_checkpoints(tmp_path / "ck4", class_ids=ids, seed=9)[
        1
    ]  # a new baseline: MGNet's transfer changes too
    modelcard.measure_worst_case(
        argparse.Namespace(**{**vars(args), "mgnet": str(other_mg), "baseline": str(other_base)}), tmp_path
    )
    assert len(calls) == 4


def test_candidate_check_says_when_it_was_measured_on_another_checkpoint(tmp_path):
    import json
    import shutil

    from mgnet.modelcard import CANDIDATES_FILE, _candidates_section
    from conftest import ROOT

    shutil.copy(ROOT / "checkpoints" / CANDIDATES_FILE, tmp_path / CANDIDATES_FILE)
    sha = json.loads((tmp_path / CANDIDATES_FILE).read_text())["sha256"]
    assert not any("earlier default" in line for line in _candidates_section(tmp_path, sha))
    assert any("Measured on an earlier default MGNet" in line for line in _candidates_section(tmp_path, "other"))


def test_candidate_check_reports_the_mirrored_pick_when_measured(tmp_path):
    import json

    from mgnet.modelcard import CANDIDATES_FILE, _candidates_section

    grid = [[s, x, y] for s in (0.17, 0.5, 1.0) for y in (0.1, 0.5, 0.9) for x in (0.1, 0.5, 0.9)]
    entry = {"images": 10, "own": 0.8, "centred": 0.8, "candidates": [0.7] * 27, "candidate_u": grid}
    entry.update(best_fixed=0.8, label_oracle=0.95, most_confident=0.78)
    doc = {"checkpoint": "m.pt", "sha256": "x", "command": "c", "date": "2026-12-04", "val": entry}
    doc["off_centre"] = dict(entry)
    (tmp_path / CANDIDATES_FILE).write_text(json.dumps(doc))
    assert not any("mirror image" in line for line in _candidates_section(tmp_path))  # not measured: not said
    doc["val"] = dict(entry, label_pick_same=0.9, label_pick_mirrored=0.82)
    doc["off_centre"] = dict(entry, label_pick_same=0.9, label_pick_mirrored=0.88)
    (tmp_path / CANDIDATES_FILE).write_text(json.dumps(doc))
    text = "\n".join(_candidates_section(tmp_path))
    assert "+10.0 points over MGNet's own glimpse when it picks on the photo, +2.0 when it picks on the mirror" in text
    assert "off-centre it gains +10.0 points over MGNet's own glimpse when it picks on the photo, +8.0" in text
    assert "+2.0 points above centred glimpses" in text and "rules goal 1 out" in text
    doc["val"]["label_pick_mirrored"] = 0.85
    (tmp_path / CANDIDATES_FILE).write_text(json.dumps(doc))
    assert "does not rule goal 1 out" in "\n".join(_candidates_section(tmp_path))


def test_training_stages_follow_a_weight_average_through_its_first_parent():
    from mgnet.modelcard import _stage_line, training_stages

    paper = {"command": "python -m mgnet.train --lr 0.08", "epochs": 18, "train_seconds": 60}
    located = {"command": "python -m mgnet.train --lr 0.02 --location-weight 0.05", "epochs": 5, "init_from": paper}
    side = {"command": "python -m mgnet.train --lr 0.02 --location-objective cost", "epochs": 5, "train_seconds": 120}
    blend = {
        "command": "python -m mgnet.blend ...",
        "blend": {"first": located, "second": side, "weight": 0.3, "kept_from_first": ["loc_network"]},
    }
    final = {"command": "python -m mgnet.train --lr 0.02 --location-only", "epochs": 2, "init_from": blend}
    stages = training_stages(final)
    assert [st["command"].split()[-1] for st in stages] == ["0.08", "0.05", "...", "--location-only"]
    assert stages[2]["blend"]["second_command"] == side["command"] and stages[2]["train_seconds"] == 120
    line = _stage_line(3, stages[2])
    assert "weight average of stage 2's weights (0.7)" in line and "`loc_network` kept from stage 2" in line
    assert training_recipe({"provenance": final}) == "location stage"


def _probe_doc(val_gains, oc_gains, sha="s"):
    def part(gains):
        rows = [
            {"view": view, "readout": "linear", "accuracy": 0.8, "vs_centred": list(g), "vs_best_fixed": list(g)}
            for view, g in zip(("z1", "layer3", "layer4", "whole_photo"), gains)
        ]
        return {
            "images": 100,
            "fitted_on": "cross-fitted, 2 folds",
            "own": 0.8,
            "own_vs_centred": [0, -0.01, 0.01],
            "readouts": rows,
        }

    return {
        "sha256": sha,
        "command": "python -m mgnet.modelcard --stage probe",
        "date": "2026-12-04",
        "val": part(val_gains),
        "off_centre": part(oc_gains),
    }


def test_probe_section_says_whether_any_read_out_finds_a_better_glimpse_on_plain_photos(tmp_path):
    import json

    from mgnet.modelcard import PROBE_FILE, _probe_section

    assert _probe_section(tmp_path) == []  # not measured: no section
    none = [(-0.01, -0.02, 0.0), (0.001, -0.01, 0.012), (-0.02, -0.03, -0.01), (0.0, -0.01, 0.01)]
    found = [(-0.01, -0.02, 0.0), (0.04, 0.02, 0.06), (-0.02, -0.03, -0.01), (0.0, -0.01, 0.01)]
    off = [(0.08, 0.06, 0.1)] * 4
    (tmp_path / PROBE_FILE).write_text(json.dumps(_probe_doc(none, off)))
    text = "\n".join(_probe_section(tmp_path, "s"))
    assert "no read-out beats centred glimpses with an interval above zero" in text and "evidence that goal 1" in text
    assert "+8.0 points (95% CI +6.0 to +10.0)" in text and "earlier default" not in text
    assert text.count("| linear |") == 4
    (tmp_path / PROBE_FILE).write_text(json.dumps(_probe_doc(found, off)))
    text = "\n".join(_probe_section(tmp_path, "other"))
    assert "the signal is there for a policy that can read it" in text and "+4.0 points" in text
    assert "Measured on an earlier default MGNet" in text
    failed = [(0.01, -0.01, 0.03)] * 4  # off-centre, where a signal is known to be, the probe finds none
    (tmp_path / PROBE_FILE).write_text(json.dumps(_probe_doc(none, failed)))
    text = "\n".join(_probe_section(tmp_path, "s"))
    assert "fails its own check" in text and "evidence that goal 1" not in text
