"""The training loop of YOLOv5 models (single process or torchrun DDP), resumable exactly: epochs and steps.

``train(model, data, settings)`` runs the YOLOv5 recipe (``pagcp.training.optim``, ``pagcp.training.ema``):
SGD nesterov with three parameter groups, gradient accumulation to the nominal batch 64, warmup, one-cycle
cosine lr, EMA of the weights, AMP on CUDA, validation of the EMA model every epoch, and ``last.pt`` / ``best.pt``
pagcp checkpoints (EMA weights; a pruned model keeps its pruned widths). ``last.pt`` also carries the training
state under ``meta["train_state"]`` (raw weights, optimizer, EMA, RNG states, settings) until the run ends.

The pieces live beside this module: the settings (:mod:`.settings`), the loaders and per-epoch reseeding
(:mod:`.loaders`), the model, optimizer, scaler and EMA (:mod:`.components`), the resumable state
(:mod:`.state`) and what each epoch writes (:mod:`.records`).

Determinism: the data order and augmentation of an epoch are functions of (seed, rank, epoch) only, the lr
schedule is a function of (epoch, iteration), and gradient accumulation never spans an epoch boundary (the
last batch of an epoch always steps), so a run resumed from any epoch's ``last.pt`` ends with exactly the
weights of an uninterrupted run on the same device and thread count.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pagcp.data import load_data_config
from pagcp.detection.evaluate import evaluate
from pagcp.devices import distributed_env, init_distributed, select_device
from pagcp.errors import CheckpointError, ConfigError
from pagcp.hyps import load_hyp
from pagcp.training.components import TrainComponents, build_components
from pagcp.training.ema import unwrap
from pagcp.training.loaders import TrainLoaders, build_loaders
from pagcp.training.optim import Schedule
from pagcp.training.records import LOSS_NAMES, RESULT_COLUMNS, EpochRecorder, open_run_dir
from pagcp.training.settings import TrainSettings, check_settings
from pagcp.training.state import (
    latest_run_checkpoint,
    read_train_state,
    restore_train_state,
    rng_states,
    seed_everything,
    set_rng_states,
    write_half_checkpoint,
)

__all__ = [
    "GRAD_CLIP_NORM",
    "LOSS_NAMES",
    "RESULT_COLUMNS",
    "TrainSettings",
    "latest_run_checkpoint",
    "read_train_state",
    "rng_states",
    "seed_everything",
    "set_rng_states",
    "train",
    "write_half_checkpoint",
]

LOGGER = logging.getLogger(__name__)

GRAD_CLIP_NORM = 10.0
#: logging steps per epoch written to ``steps.csv`` (at most one per batch)
STEPS_PER_EPOCH = 20

EpochCallback = Callable[[int, dict], bool | None]


@dataclasses.dataclass
class _Run:
    """What every epoch of one process's run needs."""

    s: TrainSettings
    rank: int
    world: int
    device: torch.device
    loaders: TrainLoaders
    parts: TrainComponents
    schedule: Schedule

    @property
    def main(self) -> bool:
        return self.rank == 0


def train(
    model: nn.Module,
    data: str | dict,
    settings: TrainSettings,
    resume_state: dict | None = None,
    on_epoch_end: EpochCallback | None = None,
    *,
    stride: int,
    teacher: nn.Module | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``data`` (a data yaml, ``"demo"`` or a config dict) and return the final results.

    ``stride`` is the multiple the model's image sizes must be (its family's ``stride(model)``; the YOLOv5
    family's ``train`` passes it).
    ``settings.save_dir`` (and ``settings.data`` when unset) are filled in. ``resume_state`` is the training
    state from ``read_train_state`` (``model`` must then be its model). ``teacher``: the model that
    ``settings.distill`` > 0 distils from (the caller loads ``settings.teacher``; pagcp.training.distill).
    ``on_epoch_end(epoch, results)`` runs on every process after each epoch; returning True stops the run
    there (the checkpoints of that epoch are written, ``last.pt`` keeps its training state).
    Returns epochs, best_fitness, map50, map50_95, precision, recall (last epoch), seconds, save_dir, last,
    best (paths) and ``model`` (the final EMA model, eval mode).
    """
    start_time = time.time()
    rank, world, local_rank = distributed_env()
    device = select_device(settings.device, local_rank, world)
    own_group = init_distributed(device)
    try:
        if settings.distill > 0 and teacher is None:
            raise ConfigError(f"--distill {settings.distill}: no teacher model was given (--teacher)")
        return _run(model, data, settings, resume_state, on_epoch_end, rank, world, device, start_time, stride,
                    teacher)  # fmt: skip
    finally:
        if own_group and dist.is_initialized():
            dist.destroy_process_group()


def _run(model, data, s: TrainSettings, resume_state, on_epoch_end, rank, world, device, start_time, stride, teacher):
    main = rank == 0
    cfg = load_data_config(data)
    hyp = load_hyp(s.hyp)
    check_settings(cfg, s, world, stride)
    s.data = s.data or (data if isinstance(data, str) else cfg.get("yaml_file"))
    unwrap(model).names = list(cfg["names"])
    save_dir = open_run_dir(s, hyp, world, resuming=resume_state is not None, main=main)
    loaders = build_loaders(cfg, s, hyp, stride, rank, world)
    parts = build_components(model, hyp, s, device, world, teacher)
    start_epoch, best_fitness = 0, -1.0
    if resume_state is not None:
        start_epoch, best_fitness = restore_train_state(resume_state, parts.optimizer, parts.ema, parts.scaler, device)
        if start_epoch >= s.epochs:
            raise CheckpointError(f"--resume {save_dir}: all {s.epochs} epochs are already done")
        LOGGER.info("resuming %s from epoch %d of %d", save_dir, start_epoch, s.epochs)
    nb = len(loaders.train)
    schedule = Schedule(hyp, s.epochs, nb, s.batch_size, s.nominal_batch, s.warmup_min_iters)
    recorder = EpochRecorder(save_dir, s, hyp)
    if main:
        recorder.begin(start_epoch)
        LOGGER.info(
            "%d batches of %d per epoch and process, accumulate %d, warmup %d iterations, %d process(es)",
            nb,
            s.batch_size // world,
            schedule.accumulate,
            schedule.warmup,
            world,
        )
    run = _Run(s, rank, world, device, loaders, parts, schedule)
    epoch, metrics, best_fitness = _epochs(run, recorder, start_epoch, best_fitness, on_epoch_end)
    finished = epoch == s.epochs - 1
    if main:
        recorder.finish(parts.ema.module, finished)
    if world > 1:
        dist.barrier()
    return _results(epoch, finished, best_fitness, metrics, start_time, save_dir, recorder, parts)


def _epochs(
    run: _Run, recorder: EpochRecorder, start_epoch: int, best_fitness: float, on_epoch_end: EpochCallback | None
) -> tuple[int, dict[str, float], float]:
    """Train, validate and record epochs until the last one or a stop; (last epoch run, metrics, best)."""
    metrics: dict[str, float] = {}
    epoch = start_epoch - 1
    for epoch in range(start_epoch, run.s.epochs):
        epoch_start = time.time()
        mean_loss, steps = _train_epoch(run, epoch, epoch_start)
        if run.main:
            metrics = _validate(run.parts.ema.module, run.loaders.val, run.parts.amp)
            best_fitness = recorder.record(epoch, mean_loss, metrics, best_fitness, epoch_start, run.parts, steps)
        if _stop_requested(run, on_epoch_end, epoch, metrics):
            break
    return epoch, metrics, best_fitness


def _train_epoch(run: _Run, epoch: int, epoch_start: float) -> tuple[list[float], list[dict[str, float]]]:
    """One pass over this process's shard of the train split; returns the mean (box, obj, cls) loss and, per
    logging step (about ``STEPS_PER_EPOCH`` of them), the mean losses of the batches since the previous one."""
    s, parts, schedule = run.s, run.parts, run.schedule
    run.loaders.start_epoch(s.seed, run.rank, epoch)
    parts.model.train()
    nb = len(run.loaders.train)
    mean_loss = torch.zeros(3, device=run.device)
    window, in_window, steps, step_every = torch.zeros(3, device=run.device), 0, [], max(nb // STEPS_PER_EPOCH, 1)
    since_step = 0
    parts.optimizer.zero_grad(set_to_none=True)
    bar = tqdm(run.loaders.train, total=nb, desc=f"epoch {epoch + 1}/{s.epochs}", disable=not run.main or None,
               leave=False)  # fmt: skip
    log_every = max(nb // 5, 1) if run.main and bar.disable else 0  # no terminal: a few log lines instead
    for i, (imgs, targets, _, _) in enumerate(bar):
        iteration = i + nb * epoch
        schedule.apply(parts.optimizer, epoch, iteration)
        items = _forward_backward(run, imgs, targets)
        since_step += 1
        if since_step >= schedule.accumulation(iteration) or i == nb - 1:
            _optimizer_step(parts, run.world)
            since_step = 0
        mean_loss = (mean_loss * i + items) / (i + 1)
        window, in_window = window + items, in_window + 1
        if (i + 1) % step_every == 0 or i == nb - 1:
            values = (window / in_window).tolist()
            steps.append({"epoch": epoch + (i + 1) / nb, **{f"train/{k}_loss": v for k, v in zip(LOSS_NAMES, values)}})
            window, in_window = torch.zeros_like(window), 0
        if run.main:
            bar.set_postfix({n: f"{v:.4f}" for n, v in zip(LOSS_NAMES, mean_loss.tolist())}, refresh=False)
            if log_every and (i + 1) % log_every == 0:
                LOGGER.info("epoch %d/%d batch %d/%d: loss box %.4f obj %.4f cls %.4f (%.0fs)", epoch + 1, s.epochs,
                            i + 1, nb, *mean_loss.tolist(), time.time() - epoch_start)  # fmt: skip
    bar.close()
    return mean_loss.tolist(), steps


def _forward_backward(run: _Run, imgs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Loss of one batch, backpropagated (scaled for AMP); returns the detached (box, obj, cls) items."""
    parts = run.parts
    imgs = imgs.to(run.device, non_blocking=True).float() / 255.0
    with torch.autocast(run.device.type, enabled=parts.amp):
        preds = parts.train_model(imgs)
        loss, items = parts.compute_loss(preds, targets.to(run.device))
        if parts.distiller is not None:
            loss = loss + parts.distiller.loss(imgs, preds)
    if run.world > 1:
        loss = loss * run.world  # DDP averages gradients over processes; the loss is a per-batch sum
    parts.scaler.scale(loss).backward()
    return items


def _optimizer_step(parts: TrainComponents, world: int) -> None:
    """Clip, step and clear the accumulated gradients, then update the EMA."""
    parts.scaler.unscale_(parts.optimizer)
    nn.utils.clip_grad_norm_(parts.model.parameters(), max_norm=GRAD_CLIP_NORM)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.optimizer.zero_grad(set_to_none=True)
    if world > 1:
        _sync_buffers(parts.model)
    parts.ema.update(parts.model)


def _sync_buffers(model: nn.Module) -> None:
    """Give every process rank 0's BatchNorm statistics (DDP only broadcasts them before each forward)."""
    for buffer in model.buffers():
        dist.broadcast(buffer, 0)


def _validate(model: nn.Module, loader: DataLoader | None, half: bool) -> dict[str, float]:
    """Scalar validation figures (map50, map50_95, precision, recall, fitness); {} without a val split."""
    if loader is None:
        return {}
    result = evaluate(model, loader, half=half)
    return {k: float(result[k]) for k in ("precision", "recall", "map50", "map50_95", "fitness")}


def _stop_requested(run: _Run, on_epoch_end: EpochCallback | None, epoch: int, metrics: dict) -> bool:
    """``on_epoch_end``'s answer (rank 0's under DDP, so every process stops at the same epoch)."""
    stop = False
    if on_epoch_end is not None:
        stop = bool(on_epoch_end(epoch, dict(metrics)))
    if run.world > 1:
        flag = torch.tensor([int(stop)], device=run.device)
        dist.broadcast(flag, 0)
        stop = bool(flag.item())
    return stop


def _results(
    epoch: int,
    finished: bool,
    best_fitness: float,
    metrics: dict[str, float],
    start_time: float,
    save_dir: Path,
    recorder: EpochRecorder,
    parts: TrainComponents,
) -> dict[str, Any]:
    return {
        "epochs": epoch + 1,
        "finished": finished,
        "best_fitness": best_fitness,
        "map50": metrics.get("map50", float("nan")),
        "map50_95": metrics.get("map50_95", float("nan")),
        "precision": metrics.get("precision", float("nan")),
        "recall": metrics.get("recall", float("nan")),
        "seconds": round(time.time() - start_time, 1),
        "save_dir": str(save_dir),
        "last": str(recorder.last),
        "best": str(recorder.best) if recorder.best.exists() else None,
        "model": parts.ema.module.eval(),
    }
