"""What a training run leaves in its folder (rank 0 writes, every process agrees on the folder).

``runs/train/exp*/``: ``opt.yaml`` (settings and hyper-parameters), ``results.csv`` (one row per epoch),
``steps.csv`` (losses per logging step) and ``results.png`` (:mod:`pagcp.training.results`),
``weights/last.pt`` (EMA weights of the latest epoch plus the training state of :mod:`pagcp.training.state`
until the run ends) and ``weights/best.pt`` (EMA weights of the fittest epoch; without a val split it follows
``last.pt``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch import nn

from pagcp.models.checkpoint import save_model
from pagcp.runs import increment_run_dir, save_yaml
from pagcp.training.components import TrainComponents
from pagcp.training.results import ResultsLog
from pagcp.training.settings import TrainSettings
from pagcp.training.state import capture_train_state, meta_without_train_state

LOGGER = logging.getLogger(__name__)

LOSS_NAMES = ("box", "obj", "cls")
RESULT_COLUMNS = (
    "epoch",
    "train/box_loss",
    "train/obj_loss",
    "train/cls_loss",
    "metrics/precision",
    "metrics/recall",
    "metrics/mAP_0.5",
    "metrics/mAP_0.5:0.95",
    "fitness",
    "lr/bn_weights",
    "lr/weights",
    "lr/biases",
    "seconds",
)


def open_run_dir(s: TrainSettings, hyp: dict, world: int, resuming: bool, main: bool) -> Path:
    """The run folder: a new ``project/name*`` (rank 0 picks it; ``s.save_dir`` is set) or the resumed one.

    Rank 0 creates ``weights/``, writes ``opt.yaml`` and logs the settings.
    """
    if not resuming:
        save_dir = increment_run_dir(s.project, s.name, s.exist_ok)
        if world > 1:  # every process must agree on the folder rank 0 picked
            box = [str(save_dir)]
            dist.broadcast_object_list(box, 0)
            save_dir = Path(box[0])
        s.save_dir = str(save_dir)
    save_dir = Path(s.save_dir)
    if main:
        (save_dir / "weights").mkdir(parents=True, exist_ok=True)
        save_yaml(save_dir / "opt.yaml", {**dataclasses.asdict(s), "hyp": hyp, "world_size": world})
        LOGGER.info(
            "training in %s: %s",
            save_dir,
            ", ".join(f"{k}={v if v != '' else 'auto'}" for k, v in dataclasses.asdict(s).items() if k != "hyp"),
        )
    return save_dir


class EpochRecorder:
    """Writes each finished epoch's ``results.csv`` row, ``last.pt`` and ``best.pt`` and its summary line."""

    def __init__(self, save_dir: Path, settings: TrainSettings, hyp: dict):
        self.settings, self.hyp = settings, hyp
        self.log = ResultsLog(save_dir, RESULT_COLUMNS, [f"train/{n}_loss" for n in LOSS_NAMES])
        self.last = save_dir / "weights" / "last.pt"
        self.best = save_dir / "weights" / "best.pt"

    def begin(self, start_epoch: int) -> None:
        """Drop the ``results.csv`` rows a resumed run is about to write again."""
        self.log.truncate(start_epoch)

    def record(
        self,
        epoch: int,
        mean_loss: list[float],
        metrics: dict[str, float],
        best_fitness: float,
        epoch_start: float,
        parts: TrainComponents,
        steps: list[dict[str, float]] = (),
    ) -> float:
        """Record ``epoch`` (validation ``metrics``, {} without a val split, and the losses of its logging
        ``steps``); returns the new best fitness."""
        fitness = metrics.get("fitness", 0.0)
        row = {
            "epoch": epoch,
            **{f"train/{n}_loss": v for n, v in zip(LOSS_NAMES, mean_loss)},
            "metrics/precision": metrics.get("precision", 0.0),
            "metrics/recall": metrics.get("recall", 0.0),
            "metrics/mAP_0.5": metrics.get("map50", 0.0),
            "metrics/mAP_0.5:0.95": metrics.get("map50_95", 0.0),
            "fitness": fitness,
            **{f"lr/{g['name']}": g["lr"] for g in parts.optimizer.param_groups},
            "seconds": time.time() - epoch_start,
        }
        self.log.append(row, steps)
        improved = fitness > best_fitness or not metrics  # without a val split best.pt follows last.pt
        best_fitness = max(best_fitness, fitness)
        meta = self._epoch_meta(epoch, fitness, best_fitness, metrics)
        s, hyp = self.settings, self.hyp
        state = capture_train_state(parts.model, parts.optimizer, parts.ema, parts.scaler, epoch, best_fitness, s, hyp)
        save_model(parts.ema.module, self.last, **meta, train_state=state)
        if improved:
            save_model(parts.ema.module, self.best, **meta)
        self._log_epoch(epoch, mean_loss, metrics, row["seconds"])
        return best_fitness

    def _epoch_meta(self, epoch: int, fitness: float, best_fitness: float, metrics: dict) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "epochs": self.settings.epochs,
            "fitness": fitness,
            "best_fitness": best_fitness,
            "metrics": metrics,
            "settings": dataclasses.asdict(self.settings),
            "hyp": self.hyp,
        }

    def _log_epoch(self, epoch: int, mean_loss: list[float], metrics: dict, seconds: float) -> None:
        LOGGER.info(
            "epoch %d/%d: loss box %.4f obj %.4f cls %.4f | P %.3f R %.3f mAP50 %.4f mAP50-95 %.4f | %.0fs",
            epoch + 1,
            self.settings.epochs,
            *mean_loss,
            metrics.get("precision", 0.0),
            metrics.get("recall", 0.0),
            metrics.get("map50", 0.0),
            metrics.get("map50_95", 0.0),
            seconds,
        )

    def finish(self, ema_model: nn.Module, finished: bool) -> None:
        """Plot ``results.png``; a finished run's ``last.pt`` drops its training state."""
        try:
            self.log.plot()
        except (ImportError, RuntimeError, ValueError) as e:
            LOGGER.warning("results.png not written: %s", e)
        if finished:
            save_model(ema_model, self.last, **meta_without_train_state(self.last))
