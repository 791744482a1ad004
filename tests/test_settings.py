"""The figure tool's typed settings (mgnet.figures.settings.FigureSettings): what the app exports is what
the command line reads and runs, for every choice the app offers."""

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_CLASSES, make_image_folder

from mgnet import figures
from mgnet.figures import inputs, runs
from mgnet.figures.settings import Attack, CheckpointRef, Corruption, FigureSettings, UsageError

pytest.importorskip("streamlit")
from app import compare  # noqa: E402
from app.export import figure_settings  # noqa: E402
from app.robustness import AttackRequest  # noqa: E402


def app_settings(
    view="Robustness",
    target=compare.PREDICTED,
    random_start=True,
    corruption_seed=5,
    attack_seed=7,
    method="pgd",
    paths=("m.pt", "b.pt"),
):
    """Settings the way the app builds them (app.export.figure_settings) from its requests."""
    request = compare.CompareRequest(["saliency", "occlusion"], ["b.pt"], target, True, True, {"occlusion.window": 6})
    attack = AttackRequest(method=method, eps=3.0, steps=5, random_start=random_start, seed=attack_seed)
    return figure_settings(
        view,
        "photo/x.jpg",
        CheckpointRef(str(paths[0]), "a" * 64),
        CheckpointRef(str(paths[1]), "b" * 64),
        3,
        compare=request if view == "Compare" else None,
        corruption=SimpleNamespace(name="fog", severity=2, seed=corruption_seed) if view == "Robustness" else None,
        attack=Attack(
            method=attack.method,
            eps=attack.eps,
            steps=attack.steps,
            source="mgnet",
            random_start=attack.random_start,
            seed=attack.seed,
        )
        if view == "Robustness"
        else None,
    )


def through_json(settings: FigureSettings) -> FigureSettings:
    return FigureSettings.from_json(json.loads(json.dumps(settings.to_json())))


@pytest.mark.parametrize("choice", compare.target_options(SimpleNamespace(classes=TINY_CLASSES)))
def test_every_target_the_app_offers_round_trips_and_resolves(choice, tiny_checkpoints):
    from mgnet import load_checkpoint

    settings = app_settings("Compare", target=choice)
    again = through_json(settings)
    assert again == settings
    model = load_checkpoint(tiny_checkpoints[1], "cpu")
    fake = SimpleNamespace(predicted=lambda: 2)  # MGNet's prediction in the app; 2 passed to the CLI below
    want = compare.resolve_target(choice, fake, SimpleNamespace(model=model))
    assert inputs.resolve_target(again.target, model, mgnet_prediction=2) == want


def test_method_options_and_true_gradients_round_trip():
    again = through_json(app_settings("Compare"))
    assert again.methods == ["saliency", "occlusion"]
    assert again.method_options == {"occlusion": {"window": 6, "stride": 3}}
    assert again.s_grad == 1.0


@pytest.mark.parametrize("random_start", [True, False])
@pytest.mark.parametrize("method", ["pgd", "fgsm", "paper-pgd", "apgd-ce", "square"])
def test_attack_and_corruption_round_trip_with_their_own_seeds(random_start, method):
    settings = app_settings(random_start=random_start, method=method)
    again = through_json(settings)
    assert again == settings
    assert again.attacks[0].random_start is (random_start and method == "pgd")
    assert again.attack_seed(again.attacks[0]) == 7
    assert again.corruption_seed(again.corruptions[0]) == 5
    assert again.figures == ["robustness"] and again.seed == 0


def test_a_spec_without_its_own_seed_takes_the_run_seed():
    settings = FigureSettings.from_json(
        {"images": ["x.jpg"], "seed": 11, "corruptions": ["fog:2"], "attacks": [{"eps": 1}]}
    )
    assert settings.corruption_seed(settings.corruptions[0]) == 11
    assert settings.attack_seed(settings.attacks[0]) == 11
    assert settings.attacks[0].random_start is True


@pytest.mark.parametrize(
    "change, message",
    [
        ({"methods": ["nope"]}, "unknown method"),
        ({"corruptions": [Corruption("rain", 3)]}, "unknown corruption"),
        ({"attacks": [Attack(norm="l3")]}, "norm"),
        ({"n_glimpses": 0}, "--n-glimpses"),
        ({"images": []}, "no images"),
        ({"method_options": {"saliency": {"n_steps": 4}}}, "method_options"),
    ],
)
def test_validate_refuses_what_the_tool_cannot_run(change, message):
    settings = FigureSettings(images=["x.jpg"])
    settings.validate()
    for key, value in change.items():
        setattr(settings, key, value)
    with pytest.raises(UsageError, match=message):
        settings.validate()


def test_the_cli_runs_the_app_settings_with_their_seeds_and_random_start(tiny_checkpoints, tmp_path, monkeypatch):
    """An exported robustness view: the attack runs without a random start and with the attack's seed, the
    corruption with its own seed."""
    data = make_image_folder(tmp_path / "data", per_class=1, size=40)
    doc = app_settings(random_start=False, paths=tiny_checkpoints).to_json()
    doc.update(
        images=[str(data)],
        limit=1,
        checkpoints={"mgnet": {"path": str(tiny_checkpoints[0])}, "baseline": {"path": str(tiny_checkpoints[1])}},
    )
    (tmp_path / "settings.json").write_text(json.dumps(doc))
    attacked, corrupted = [], []
    real_attack, real_corrupt = runs.attack, runs.corruptions.corrupt
    monkeypatch.setattr(runs, "attack", lambda *a, **k: attacked.append(k) or real_attack(*a, **k))
    monkeypatch.setattr(runs.corruptions, "corrupt", lambda *a, **k: corrupted.append(k) or real_corrupt(*a, **k))
    torch.set_num_threads(1)
    assert (
        figures.main(
            [
                "--settings",
                str(tmp_path / "settings.json"),
                "--out",
                str(tmp_path / "out"),
                "--format",
                "html",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    assert attacked and all(k["random_start"] is False and k["seed"] == 7 for k in attacked)
    assert corrupted and all(k["seed"] == 5 for k in corrupted)
    sidecar = json.loads(next((tmp_path / "out").glob("robustness-*.json")).read_text())
    conditions = [row["condition"] for row in sidecar["data"]["rows"]]
    assert [c.get("seed") for c in conditions] == [None, 5, 7]
