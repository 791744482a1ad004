"""Small shared helpers: device choice, seeding, provenance."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import threading
import weakref
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import torch


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when present, else CPU; an explicit request is honoured or refused with a message."""
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda was asked for but no CUDA GPU is available; use --device cpu.")
    return dev


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU ({torch.cuda.get_device_name(device)})"
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def atomic_write(path, write) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``: a crash or a
    full disk never leaves a half-written file, nor the temporary one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # unique: several processes may write one path
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def git_commit(mark_dirty: bool = False, repo=None) -> str:
    """HEAD of this repository (or ``repo``); with ``mark_dirty``, "-dirty" is appended when tracked files
    differ from it."""
    here = Path(repo) if repo is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip() or "unknown"
        if mark_dirty and sha != "unknown":
            status = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=here,
                capture_output=True,
                text=True,
                timeout=10,
            )
            if status.stdout.strip():
                sha += "-dirty"
        return sha
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} CPU cores, {gpu}; torch {torch.__version__}"


def command_line() -> str:
    """The command that started this process, as a person would type it (``python -m mgnet.train ...``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = ["python", "-m", spec.name] if spec is not None else ["python", sys.argv[0]]
    return " ".join(program + sys.argv[1:])


# Process-wide lock for code that seeds and draws from the GLOBAL random generators (torch's CPU/CUDA
# generators, NumPy's np.random). Per-model locks do not keep two models' seeded work apart: a session
# explaining MGNet with SmoothGrad and another explaining the baseline would otherwise reseed each other's
# noise half-way. Lock order: a model's lock first, then this one; never the other way round.
RNG_LOCK = threading.RLock()

_LOCKS_GUARD = threading.Lock()
_LOCKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def model_lock(model) -> threading.RLock:
    """One re-entrant lock per model object.

    Models are shared between app sessions; anything that registers hooks, switches train/eval or
    computes gradients on a shared model (explanations, attacks, analyses) holds this lock.
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextmanager
def eval_mode(*models):
    """Hold each model's shared lock, put it in eval mode, restore every module's training flag afterwards."""
    with ExitStack() as stack:
        for model in sorted(set(models), key=id):  # a fixed order, so two threads cannot deadlock
            stack.enter_context(model_lock(model))
        saved = [(m, m.training) for model in models for m in model.modules()]
        try:
            for model in models:
                model.eval()
            yield
        finally:
            for m, flag in saved:
                m.training = flag


def model_state_fingerprint(model) -> dict:
    """What must be unchanged after any operation on a shared model: hooks, grads, flags, mode."""
    hooks = 0
    for m in model.modules():
        hooks += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        hooks += len(getattr(m, "_backward_pre_hooks", {}))
    return {
        "training": model.training,
        "hooks": hooks,
        "requires_grad": tuple(p.requires_grad for p in model.parameters()),
        "grads": sum(p.grad is not None for p in model.parameters()),
    }
