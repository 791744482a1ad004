"""What the benchmarks record about the machine they ran on."""
from __future__ import annotations

import os
import platform
import subprocess


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
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, {mem}, {gpu}; "
            f"Python {platform.python_version()}, torch {torch.__version__}")


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
