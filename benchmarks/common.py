"""Pieces the app benchmarks share: the checkpoints they serve and what they record about the machine."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CKPTS = ("mgnet-resnet18-imagenette.pt", "baseline-resnet18-imagenette.pt")


def describe() -> str:
    """Architecture, cores, RAM, GPU and library versions, on one line."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    mem = "? GiB RAM"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, {mem}, {gpu}; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def busy_processes(ignore: tuple[str, ...] = ()) -> list[str]:
    """Other processes using at least 20% of a core (e.g. model training), which skew timings."""
    out = subprocess.run(["ps", "-eo", "pcpu,args", "--sort=-pcpu"], capture_output=True, text=True).stdout
    busy = []
    for line in out.splitlines()[1:]:
        cpu, _, args = line.strip().partition(" ")
        try:
            if float(cpu) >= 20 and not any(word in args for word in ignore):
                busy.append(f"{cpu}% {args.strip()[:120]}")
        except ValueError:
            continue
    return busy[:5]


def tiny_checkpoints(work: Path) -> Path:
    """WORK/checkpoints with a random-weight 64 px MGNet and baseline over the example photos' classes."""
    import torch

    from mgnet import build_model, save_checkpoint

    classes = [p.stem.rsplit("_", 1)[0].replace("_", " ") for p in sorted((ROOT / "app/examples").glob("*_1.jpg"))]
    ckpts = work / "checkpoints"
    ckpts.mkdir()
    torch.manual_seed(0)
    save_checkpoint(
        build_model("mgnet", num_classes=len(classes), image_size=64), ckpts / "mgnet-tiny.pt", classes=classes
    )
    save_checkpoint(
        build_model("baseline", num_classes=len(classes), image_size=64), ckpts / "baseline-tiny.pt", classes=classes
    )
    return ckpts


def checkpoint_folder(chosen: str | None) -> Path | None:
    """The folder given, or checkpoints/ if it holds the defaults; None (after a message) if they are missing."""
    if chosen:
        if not Path(chosen).is_dir():
            print(f"error: --checkpoints {chosen} is not a folder", file=sys.stderr)
            return None
        return Path(chosen)
    ckpts = ROOT / "checkpoints"
    missing = [n for n in DEFAULT_CKPTS if not (ckpts / n).is_file()]
    if missing:
        print(f"error: {', '.join(missing)} not in {ckpts}; train them or pass --tiny", file=sys.stderr)
        return None
    return ckpts
