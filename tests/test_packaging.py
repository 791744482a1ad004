"""Packaging: pyproject.toml is the one source of dependencies, and a built wheel works outside the checkout."""

import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "checkpoints" / "mgnet-resnet18-imagenette.pt"
SCRIPTS = ["mgnet-train", "mgnet-evaluate", "mgnet-figures", "mgnet-modelcard"]


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement_lines(name):
    lines = (ROOT / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_requirements_files_only_install_the_project_with_its_extras():
    # Any package named in a requirements file would be a second list that can drift from pyproject.toml.
    assert _requirement_lines("requirements.txt") == ["-e .[app]"]
    assert _requirement_lines("requirements-dev.txt") == ["-e .[dev]"]


def test_pyproject_declares_what_the_issue_asks_for():
    project = _pyproject()["project"]
    assert "torch==2.14.1" in project["dependencies"] and "torchvision==0.29.1" in project["dependencies"]
    names = [dep.split(">")[0].split("=")[0] for dep in project["dependencies"]]
    assert "streamlit" not in names, "the model and attacks must not need Streamlit"
    extras = project["optional-dependencies"]
    assert {"streamlit>=1.67", "plotly>=6.0", "kaleido>=1.0"} <= set(extras["app"])
    assert "mgnet[app]" in extras["dev"]
    assert {"pytest", "playwright", "ruff"} <= {dep.split(">")[0] for dep in extras["dev"]}
    assert sorted(project["scripts"]) == sorted(SCRIPTS)
    for target in project["scripts"].values():
        module, func = target.split(":")
        assert callable(getattr(__import__(module, fromlist=[func]), func))


def test_version_is_exposed():
    import mgnet

    parts = mgnet.__version__.split(".")
    assert len(parts) == 3 and all(p.isdigit() for p in parts), mgnet.__version__


@pytest.mark.timeout(900)
def test_built_wheel_works_from_another_directory(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("mgnet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mgnet/model.py" in names
    # every module of the library, subpackages included (mgnet.figures is one)
    for source in (ROOT / "mgnet").rglob("*.py"):
        assert source.relative_to(ROOT).as_posix() in names, source
    assert not [n for n in names if n.endswith((".pt", ".ckpt")) or n.startswith(("app/", "tests/"))], names

    # A fresh venv that sees this environment's third-party packages (torch is not downloaded again) but not
    # the checkout: the .pth line adds the site-packages folder without running its .pth files (so an editable
    # mgnet installed there stays invisible).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = (
        "import importlib.metadata, mgnet, sys\n"
        "model = mgnet.load_checkpoint(sys.argv[1], device='cpu')\n"
        "print(mgnet.__file__, mgnet.__version__, importlib.metadata.version('mgnet'), type(model).__name__)\n"
    )
    out = subprocess.run(
        [str(python), "-c", code, str(CHECKPOINT)], cwd=elsewhere, env=env, check=True, capture_output=True, text=True
    ).stdout.split()
    assert Path(out[0]).is_relative_to(venv), out[0]
    assert out[1] == out[2] and out[3] == "MGNet", out
    for script in SCRIPTS:
        done = subprocess.run(
            [str(venv / "bin" / script), "--help"], cwd=elsewhere, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0 and "usage" in done.stdout.lower(), (script, done.stderr[-2000:])
