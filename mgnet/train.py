"""Train MGNet or its baseline on an ImageFolder directory.

    python -m mgnet.train --data DATA/train --val DATA/val --kind mgnet --out runs/mgnet \
        --export checkpoints/mgnet-resnet18-imagenette.pt

Images are decoded once into a cached uint8 tensor. The run directory holds ``last.pt``; running the
same command again resumes from it exactly (mid-epoch included). Multi-process: launch with
``torchrun --nproc_per_node N -m mgnet.train ...`` (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torchvision.ops import roi_align

from .checkpoints import (
    CheckpointError,
    atomic_save,
    load_checkpoint,
    parent_record,
    read_checkpoint_file,
    save_checkpoint,
)
from .data import cached_folder
from . import location
from .imagenet100 import IMAGENETTE
from .model import build_model
from .utils import command_line, device_label, git_commit, hardware, pick_device, seed_everything


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m mgnet.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", required=True, help="training ImageFolder: DIR/<class>/<image>")
    p.add_argument("--val", help="validation ImageFolder, evaluated after every epoch")
    p.add_argument("--kind", choices=["mgnet", "baseline"], default="mgnet")
    p.add_argument("--backbone", choices=["resnet18", "resnet34", "resnet50"], default="resnet18")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--glimpses", type=int, default=4, help="T for MGNet (the baseline always uses 1)")
    p.add_argument("--scale", type=float, default=2.33, help="glimpse downsampling factor for MGNet")
    p.add_argument("--alpha", type=float, default=0.6, help="weight of the auxiliary glimpse loss")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=128, help="per process")
    p.add_argument("--lr", type=float, default=0.1, help="peak of the one-cycle schedule")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--min-crop", type=float, default=0.35, help="smallest RandomResizedCrop area fraction")
    p.add_argument(
        "--s-grad",
        type=float,
        default=0.02,
        help="MGNet: backward-only factor on the location gradient through glimpse sampling (paper: 0.02)",
    )
    p.add_argument("--scale-min", type=float, default=0.2, help="MGNet: smallest glimpse scale s (paper: 0.2)")
    p.add_argument("--scale-max", type=float, default=0.5, help="MGNet: largest glimpse scale s (paper: 0.5)")
    p.add_argument(
        "--off-centre",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="replace this share of every batch by off-centre composites (each photo shrunk to "
        "40-60%% of the side, pasted at a random spot on a blurred other photo); 0 = off",
    )
    g = p.add_argument_group("location stage (MGNet; see mgnet/location.py)")
    g.add_argument(
        "--location-weight",
        type=float,
        default=0.0,
        help="weight of the location-target loss; 0 trains with the paper's loss alone",
    )
    g.add_argument(
        "--location-grid",
        type=int,
        default=3,
        help="candidate positions per side; with 3 scales, 3 gives 27 candidates per step",
    )
    g.add_argument("--location-width", type=float, default=0.02, help="kernel width of the candidate scores")
    g.add_argument(
        "--location-temperature",
        type=float,
        default=0.1,
        help="softmax temperature over candidate losses for the target",
    )
    g.add_argument(
        "--location-overlap",
        type=float,
        default=0.0,
        help="add this times a candidate's largest IoU with the model's own earlier glimpses (2..t-1) to its "
        "loss, so later glimpses look somewhere new; 0 = off",
    )
    g.add_argument(
        "--location-objective",
        choices=["match", "cost"],
        default="match",
        help="match: pull the output towards the best candidates (soft classification); cost: lower the "
        "expected candidate loss under the kernel scores (moves to the nearest good candidate, not between them)",
    )
    g.add_argument(
        "--location-lr-scale",
        type=float,
        default=1.0,
        help="the location network's learning rate is this multiple of --lr, without weight decay; 1 = as the rest",
    )
    g.add_argument(
        "--location-detach",
        action="store_true",
        help="the location loss trains only the location network, not the features it reads",
    )
    g.add_argument(
        "--location-mirror",
        action="store_true",
        help="average each candidate's loss with its mirror image's (less luck in the targets; twice the cost)",
    )
    g.add_argument(
        "--location-reward",
        choices=list(location.REWARDS),
        default="log-prob",
        help="how a candidate is scored: log-prob = its cross-entropy; prob = minus the true class's probability "
        "(GFNet's reward; with --location-objective cost, the exact policy gradient over the candidates)",
    )
    g.add_argument(
        "--location-only",
        action="store_true",
        help="train only the location network: every other weight and the BatchNorm statistics stay frozen, so "
        "accuracy can change only through where the glimpses go",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run directory (resume state and history)")
    p.add_argument("--export", help="write the final model in this project's checkpoint format here")
    p.add_argument(
        "--init-from",
        help="start from this checkpoint's weights (this project's format, same "
        "configuration and classes); the optimiser and the schedule start fresh",
    )
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT/last.pt exists")
    p.add_argument("--save-every", type=int, default=50, help="save resume state every N steps")
    p.add_argument(
        "--amp",
        choices=["auto", "on", "off"],
        default="auto",
        help="mixed precision: auto = fp16 on CUDA, bf16 on CPUs that support it",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    p.add_argument(
        "--limit", type=int, default=0, help="use only N training images, spread over the classes (pilots, smoke tests)"
    )
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many optimiser steps (tests)")
    p.add_argument("--cache-dir", help="where decoded images are cached (default ~/.cache/mgnet)")
    return p.parse_args(argv)


def amp_dtype(device: torch.device, mode: str):
    if mode == "off":
        return None
    if device.type == "cuda":
        return torch.float16
    if mode == "on" or (
        mode == "auto" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    ):
        return torch.bfloat16
    return None


def augment(images_u8: torch.Tensor, size: int, gen: torch.Generator, min_crop: float) -> torch.Tensor:
    """RandomResizedCrop(size, scale=(min_crop, 1), ratio=(3/4, 4/3)) + horizontal flip, batched."""
    b, _, h, w = images_u8.shape
    x = images_u8.float().div_(255.0)
    area = torch.empty(b).uniform_(min_crop, 1.0, generator=gen) * h * w
    log_ratio = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)
    ratio = log_ratio.exp()
    cw = (area * ratio).sqrt().clamp(8, w)
    ch = (area / ratio).sqrt().clamp(8, h)
    x0 = torch.rand(b, generator=gen) * (w - cw)
    y0 = torch.rand(b, generator=gen) * (h - ch)
    boxes = torch.stack([torch.arange(b, dtype=torch.float), x0, y0, x0 + cw, y0 + ch], 1)
    out = roi_align(x, boxes, (size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    flip = torch.rand(b, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


@dataclass
class LocationStage:
    """The location-target loss of ``mgnet.location`` and its settings (see the --location-* options)."""

    weight: float
    positions: int = 3
    width: float = 0.02
    temperature: float = 0.1
    detach: bool = False
    overlap: float = 0.0
    objective: str = "match"
    mirror: bool = False
    reward: str = "log-prob"

    def __post_init__(self):
        self.grid = location.candidate_grid(self.positions)


def training_loss(model, net, x, y, criterion, stage: LocationStage | None = None):
    """The paper's loss on batch (x, y): (1 - alpha) mean_t CE(global) + alpha mean_t CE(glimpse head), with
    ``criterion`` as CE; plus ``stage.weight`` times the location-target loss when a stage is given.
    Returns (loss, location loss or None). ``net`` is the model or its DDP wrapper."""
    targets = (
        location.candidate_losses(model, x, y, stage.grid, stage.overlap, mirror=stage.mirror, reward=stage.reward)
        if stage
        else None
    )
    out = net(x, return_states=stage is not None)
    loss = model.loss(out, y, criterion)
    if stage is None:
        return loss, None
    states = out.states[:-1].float()
    loc = location.location_loss(
        model,
        states.detach() if stage.detach else states,
        targets.float(),
        stage.grid,
        stage.width,
        stage.temperature,
        stage.objective,
    )
    return loss + stage.weight * loc, loc.detach()


def parameter_groups(model, args) -> tuple[list[dict], list[float]]:
    """Optimiser groups and their peak learning rates: with --location-lr-scale, the location network
    gets that multiple of --lr and no weight decay (decay pulls it towards one box for every photo)."""
    scale = getattr(args, "location_lr_scale", 1.0)
    if getattr(args, "location_only", False):
        return [{"params": list(model.loc_network.parameters()), "weight_decay": 0.0}], [args.lr * scale]
    if scale == 1.0 or model.is_baseline:
        return [{"params": list(model.parameters())}], [args.lr]
    loc = list(model.loc_network.parameters())
    ids = {id(p) for p in loc}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": rest}, {"params": loc, "weight_decay": 0.0}], [args.lr, args.lr * scale]


def freeze_for_location_only(model, args) -> None:
    """--location-only: only the location network keeps requires_grad."""
    if getattr(args, "location_only", False):
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("loc_network."))


def set_train_mode(model, args) -> None:
    """Training mode; with --location-only everything but the location network stays in eval mode, so
    BatchNorm neither uses batch statistics nor updates its running ones."""
    model.train()
    if getattr(args, "location_only", False):
        model.eval()
        model.loc_network.train()


def _setup_distributed(device_arg):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and device_arg in ("auto", "cuda")
        dist.init_process_group("nccl" if use_cuda else "gloo")
        device = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(device)
        return rank, world, device
    return 0, 1, pick_device(device_arg)


def init_weights(model, path, class_ids) -> dict:
    """Copy the weights of checkpoint ``path`` into ``model``; return what provenance should record."""
    try:
        source = load_checkpoint(path, device="cpu")
    except (CheckpointError, OSError) as exc:
        raise SystemExit(f"error: --init-from: {exc}") from exc
    mine, theirs = model.config(), source.config()
    # The weights fit any input size, glimpse scale, scale range and s_grad, so a stage may change them.
    free = ("s_grad", "scale_min", "scale_max", "image_size", "scale")
    differ = sorted(k for k in mine if mine[k] != theirs.get(k) and k not in free)
    if differ:
        raise SystemExit(
            f"error: --init-from {path} was trained with a different configuration ("
            + ", ".join(f"{k}: {theirs.get(k)} here {mine[k]}" for k in differ)
            + "); pass the same --kind, --backbone and --glimpses."
        )
    if list(source.checkpoint_info.get("class_ids") or []) != list(class_ids):
        raise SystemExit(f"error: --init-from {path} has different classes from --data.")
    model.load_state_dict(source.state_dict())
    return parent_record(path, source)


def load_training_data(args, world: int, main_proc: bool):
    """(classes, images, labels, val) from the cached folders; rank 0 decodes first under torchrun."""
    train_size = int(round(args.image_size * 1.14))
    try:
        if world > 1 and not main_proc:
            dist.barrier()  # rank 0 decodes and writes the cache first; the others then read it
        classes, images, labels = cached_folder(args.data, train_size, args.cache_dir, progress=main_proc)
        val = cached_folder(args.val, args.image_size, args.cache_dir, progress=main_proc) if args.val else None
        if world > 1 and main_proc:
            dist.barrier()
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc
    if val is not None and val[0] != classes:
        raise SystemExit("error: --val has different class folders from --data.")
    if args.limit:  # spread over the sorted list, so every class is present
        from .evaluate import spread_indices

        keep = torch.from_numpy(spread_indices(len(images), args.limit))
        images, labels = images[keep], labels[keep]
    return classes, images, labels, val


def build_training_model(args, classes, device):
    """(model, location stage or None, provenance of --init-from or None)."""
    mgnet_options = {"s_grad": args.s_grad, "scale_min": args.scale_min, "scale_max": args.scale_max}
    model = build_model(
        args.kind,
        args.backbone,
        num_classes=len(classes),
        image_size=args.image_size,
        n_glimpses=args.glimpses,
        scale=args.scale,
        alpha=args.alpha,
        **({} if args.kind == "baseline" else mgnet_options),
    ).to(device)
    stage = None
    if args.location_weight > 0:
        stage = LocationStage(
            args.location_weight,
            args.location_grid,
            args.location_width,
            args.location_temperature,
            args.location_detach,
            args.location_overlap,
            args.location_objective,
            getattr(args, "location_mirror", False),
            getattr(args, "location_reward", "log-prob"),
        )
        if model.n_glimpses < 2:
            raise SystemExit("error: --location-weight needs MGNet with at least 2 glimpses.")
    if getattr(args, "location_only", False) and (args.kind != "mgnet" or model.n_glimpses < 2):
        raise SystemExit("error: --location-only needs MGNet with at least 2 glimpses.")
    parent = init_weights(model, args.init_from, classes) if args.init_from else None
    freeze_for_location_only(model, args)
    return model.to(memory_format=torch.channels_last), stage, parent


@dataclass
class Run:
    """Everything one training process holds: settings, data, model, optimiser and resumable state."""

    args: argparse.Namespace
    rank: int
    world: int
    device: torch.device
    images: torch.Tensor
    labels: torch.Tensor
    val: tuple | None
    model: torch.nn.Module
    stage: LocationStage | None
    steps_per_epoch: int
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    state: dict
    resume_file: Path
    net: torch.nn.Module = None
    dtype: torch.dtype | None = None

    @property
    def main_proc(self) -> bool:
        return self.rank == 0

    def save(self):
        if self.main_proc:
            blob = {
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "state": self.state,
                "args": vars(self.args),
                "world": self.world,
            }
            atomic_save(blob, self.resume_file)

    def resume(self):
        """Continue from OUT/last.pt when it exists (and --no-resume is not given)."""
        if not self.resume_file.exists() or self.args.no_resume:
            return
        saved = read_checkpoint_file(self.resume_file)
        if saved.get("args", {}).get("kind") != self.args.kind or saved.get("world") != self.world:
            raise SystemExit(
                f"error: {self.resume_file} belongs to a different run (kind or process count differs); "
                "use another --out or --no-resume."
            )
        self.model.load_state_dict(saved["model"])
        self.opt.load_state_dict(saved["optimizer"])
        self.sched.load_state_dict(saved["scheduler"])
        self.state = saved["state"]
        if self.main_proc:
            print(
                f"resuming from {self.resume_file}: epoch {self.state['epoch'] + 1}, step "
                f"{self.state['step_in_epoch']}",
                flush=True,
            )


def train_steps(run: Run, epoch: int, scaler, criterion) -> tuple[float, int, bool]:
    """The rest of epoch ``epoch``: (summed loss, steps, stopped by --max-steps). Saves every --save-every."""
    from tqdm import tqdm

    args, state = run.args, run.state
    order = torch.randperm(len(run.images), generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
    aug_gen = torch.Generator().manual_seed(args.seed * 1000 + epoch + 10_000_000 + run.rank)
    # Skip the augmentation draws of steps already done so a resumed epoch is identical.
    for _ in range(state["step_in_epoch"]):
        skipped = augment(run.images[:1].expand(args.batch_size, -1, -1, -1), 8, aug_gen, args.min_crop)
        location.mix_off_centre(skipped, args.off_centre, aug_gen)
    set_train_mode(run.model, args)
    bar = tqdm(
        total=run.steps_per_epoch,
        initial=state["step_in_epoch"],
        desc=f"epoch {epoch + 1}/{args.epochs}",
        disable=not run.main_proc,
        unit="step",
        dynamic_ncols=True,
    )
    started = time.time()
    loss_sum, loss_n, loc_sum, stop = 0.0, 0, 0.0, False
    while state["step_in_epoch"] < run.steps_per_epoch and not stop:
        first = (state["step_in_epoch"] * run.world + run.rank) * args.batch_size
        idx = order[first : first + args.batch_size]
        x = augment(run.images[idx], args.image_size, aug_gen, args.min_crop)
        x = location.mix_off_centre(x, args.off_centre, aug_gen).to(run.device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last)
        y = run.labels[idx].to(run.device)
        with torch.autocast(run.device.type, dtype=run.dtype or torch.float32, enabled=run.dtype is not None):
            loss, loc = training_loss(run.model, run.net, x, y, criterion, run.stage)
        loc_sum += float(loc) if loc is not None else 0.0
        run.opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(run.opt)
        scaler.update()
        run.sched.step()
        state["step_in_epoch"] += 1
        state["global_step"] += 1
        loss_sum += float(loss.detach())
        loss_n += 1
        bar.update(1)
        shown = {"location": f"{loc_sum / loss_n:.2f}"} if run.stage else {}
        bar.set_postfix(loss=f"{loss_sum / loss_n:.3f}", lr=f"{run.sched.get_last_lr()[0]:.4f}", **shown)
        if state["global_step"] % args.save_every == 0:
            state["train_seconds"] += time.time() - started
            started = time.time()
            run.save()
        stop = bool(args.max_steps and state["global_step"] >= args.max_steps)
    bar.close()
    state["train_seconds"] += time.time() - started
    return loss_sum, loss_n, stop


def end_epoch(run: Run, epoch: int, loss_sum: float, loss_n: int, out_dir: Path):
    """Record the epoch (with validation accuracy on rank 0), save, and write history.json."""
    from .evaluate import accuracy_per_glimpse

    state = run.state
    record = {
        "epoch": epoch + 1,
        "train_loss": loss_sum / max(loss_n, 1),
        "train_seconds": round(state["train_seconds"], 1),
    }
    if run.val is not None and run.main_proc:
        acc = accuracy_per_glimpse(
            run.model, run.val[1], run.val[2], device=run.device, dtype=run.dtype, progress=False
        )
        record["val_accuracy_per_glimpse"] = acc
        print(
            f"epoch {epoch + 1}: loss {record['train_loss']:.3f}, val accuracy per glimpse "
            + ", ".join(f"{a:.3f}" for a in acc),
            flush=True,
        )
    state["history"].append(record)
    state["epoch"] += 1
    state["step_in_epoch"] = 0
    run.save()
    if run.main_proc:
        (out_dir / "history.json").write_text(json.dumps(state["history"], indent=1))


def export(run: Run, classes, parent: dict | None, code_version: str):
    """Write the trained model in this project's checkpoint format, with its provenance."""
    args, state = run.args, run.state
    last = state["history"][-1] if state["history"] else {}
    provenance = {
        "data": str(Path(args.data).resolve()),
        "val_data": str(Path(args.val).resolve()) if args.val else None,
        "command": command_line(),
        "git_commit": code_version,
        "hardware": hardware(),
        "processes": run.world,
        "epochs": args.epochs,
        "train_seconds": round(state["train_seconds"], 1),
        "args": vars(args),
        "metrics": {"val_accuracy_per_glimpse": last.get("val_accuracy_per_glimpse")},
    }
    if parent is not None:
        provenance["init_from"] = parent
        provenance["total_epochs"] = args.epochs + parent.get("total_epochs", parent.get("epochs") or 0)
        provenance["total_train_seconds"] = round(
            state["train_seconds"] + parent.get("total_train_seconds", parent.get("train_seconds") or 0), 1
        )
    names = [IMAGENETTE.get(c, c) for c in classes]
    save_checkpoint(run.model, args.export, classes=names, class_ids=classes, provenance=provenance)
    print(f"wrote {args.export}", flush=True)


def main(argv=None):
    args = parse_args(argv)
    rank, world, device = _setup_distributed(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    code_version = git_commit(mark_dirty=True)  # the code this process runs, not HEAD at export time
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(args.seed)
    classes, images, labels, val = load_training_data(args, world, rank == 0)
    model, stage, parent = build_training_model(args, classes, device)
    steps_per_epoch = max(1, len(images) // (args.batch_size * world))
    groups, peaks = parameter_groups(model, args)
    opt = torch.optim.SGD(groups, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=peaks, total_steps=steps_per_epoch * args.epochs, pct_start=0.2
    )
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "train_seconds": 0.0, "history": []}
    run = Run(
        args,
        rank,
        world,
        device,
        images,
        labels,
        val,
        model,
        stage,
        steps_per_epoch,
        opt,
        sched,
        state,
        out_dir / "last.pt",
    )
    run.resume()
    run.net = model
    if world > 1:
        run.net = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=model.n_glimpses == 1,
        )
    run.dtype = amp_dtype(device, args.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=run.dtype == torch.float16)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    if run.main_proc:
        print(
            f"training {args.kind} ({args.backbone}, {args.image_size}px, T={model.n_glimpses}, "
            f"glimpse {model.glimpse_size()}px) on {len(images)} images, {len(classes)} classes, "
            f"{device_label(device)}, precision {run.dtype or 'fp32'}, {world} process(es)",
            flush=True,
        )
    stop = False
    while run.state["epoch"] < args.epochs and not stop:
        epoch = run.state["epoch"]
        loss_sum, loss_n, stop = train_steps(run, epoch, scaler, criterion)
        if stop:
            run.save()
        else:
            end_epoch(run, epoch, loss_sum, loss_n, out_dir)
    if run.main_proc and args.export and not stop:
        export(run, classes, parent, code_version)
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
