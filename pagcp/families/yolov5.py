"""The YOLOv5 family: pagcp's YOLOv5 models (v5.0 to v7.0 layouts), official ``.pt`` files and pagcp checkpoints.

- Recognised: bundled config and checkpoint names (``yolov5s``, ``yolov5n-demo``), model yamls, checkpoint paths
  (official ones load through pagcp's allow-listing unpickler, :mod:`pagcp.models.safe_pickle`); a loaded
  :class:`pagcp.models.yolo.Model`.
- The head is Detect: a 1x1 conv ``m[i]`` per input level, so input i is pruned on the input side of ``m[i]``;
  its strides are the levels' (8, 16, 32).
- Tasks: box, obj, cls of YOLOv5's loss (:class:`pagcp.detection.loss.ComputeLoss`), targets matched to anchors
  once per oracle batch (the straightforward check re-matches them at every call, as the reference does).
- Validation: box mAP by pagcp's validation; fine-tuning: pagcp's training loop (single process or DDP,
  resumable exactly); export: pagcp's ONNX export; checkpoints: pagcp's plain-dict format.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pagcp.detection.loss import ComputeLoss
from pagcp.engine.oracle import Batch, TaskLoss
from pagcp.engine.problem import Problem
from pagcp.errors import CheckpointError, ConfigError
from pagcp.families.base import FinetuneJob
from pagcp.families.yolo_format import YoloFormatFamily
from pagcp.graph import HeadReads
from pagcp.models.checkpoint import WEIGHTS_DIR, bundled_weights, load_checkpoint_file, save_model
from pagcp.models.yolo import CONFIG_DIR, Detect, Model, bundled_configs

log = logging.getLogger("pagcp.prune")

#: the three task losses of YOLOv5's detection loss, in ComputeLoss's order
YOLO_TASKS = ("box", "obj", "cls")


def yolo_task_loss(head: nn.Module, img_size: int, cache_targets: bool = True) -> TaskLoss:
    """box, obj, cls of YOLOv5's loss for a Detect ``head`` (raw outputs; an eval-mode (decoded, raw) pair works
    too). ``cache_targets`` matches each batch's targets to anchors once (the oracle's data never changes);
    False re-matches them at every call, as the reference does."""
    compute_loss = ComputeLoss(head, img_size=img_size, cache_targets=cache_targets)

    def loss_fn(out: Any, targets: torch.Tensor) -> torch.Tensor:
        raw = out[1] if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], list) else out
        return compute_loss(raw, targets)[1]

    return loss_fn


def detect_reads(name: str, module: nn.Module, inputs: list[torch.Tensor]) -> HeadReads | None:
    """YOLOv5's Detect: input i feeds the 1x1 Conv2d ``m[i]``; None for any other leaf."""
    if not isinstance(module, Detect) or len(module.m) != len(inputs):
        return None
    if any(c.groups != 1 or c.in_channels != len(ids) for c, ids in zip(module.m, inputs)):
        return None
    return HeadReads([(f"{name}.m.{i}", c, i) for i, c in enumerate(module.m)])


class YoloV5Family(YoloFormatFamily):
    """YOLOv5 models as pagcp builds and stores them (see the module docstring)."""

    name = "yolov5"
    title = "YOLOv5"
    checkpoint_format = "pagcp checkpoint (plain dict: yaml, widths, state_dict; torch.load(weights_only=True))"
    tasks = YOLO_TASKS

    # -- recognising, loading, saving -----------------------------------------------------------
    def bundled(self) -> list[str]:
        return [*bundled_configs(), *bundled_weights()]

    def recognises_weights(self, spec: str) -> bool:
        text = str(spec)
        path = Path(text)
        known = (CONFIG_DIR / f"{text}.yaml").exists() or text in bundled_weights()
        return known or path.suffix in (".yaml", ".yml", ".pt", ".pth") or path.exists() or os.sep in text

    def is_config(self, spec: str) -> bool:
        return super().is_config(spec) or str(spec) in bundled_configs()

    def recognises_model(self, model: nn.Module) -> bool:
        return isinstance(model, Model)

    distills = True

    def load(self, spec: str | Path, nc: int | None = None, device: str | torch.device = "cpu") -> Model:
        """A bundled config ('yolov5s', 'yolov5m-v5') or checkpoint ('yolov5n-demo') name, a model yaml, an
        official YOLOv5 ``.pt`` (v5.0 to v7.0) or a pagcp checkpoint; ``nc`` sets a config's class count."""
        text = str(spec)
        path = Path(text)
        if path.suffix in (".yaml", ".yml") or (not path.exists() and (CONFIG_DIR / f"{text}.yaml").exists()):
            if path.suffix and not path.exists():
                raise ConfigError(f"{path}: model yaml not found")
            model = Model(path if path.exists() else text, nc=nc)
        elif path.exists() or path.suffix in (".pt", ".pth") or os.sep in text:
            model = load_checkpoint_file(path, nc)
        elif text in bundled_weights():
            model = load_checkpoint_file(WEIGHTS_DIR / f"{text}.pt", nc)
        else:
            raise CheckpointError(
                f"{text}: no such file, and not a bundled model; bundled configs: {', '.join(bundled_configs())}; "
                f"bundled checkpoints: {', '.join(bundled_weights()) or 'none'}"
            )
        return model.to(device).float().eval()

    def save(self, model: nn.Module, path: Path, **meta: Any) -> Path:
        return save_model(model, path, **meta)

    # -- structure -------------------------------------------------------------------------------
    def head(self, model: nn.Module) -> Detect:
        return model.head

    def strides(self, model: nn.Module) -> list[float]:
        return [float(s) for s in self.head(model).stride.tolist()]

    def class_count(self, model: nn.Module) -> int:
        return int(self.head(model).nc)

    def leaf_modules(self, model: nn.Module) -> tuple:
        return (Detect,)

    def train_mode_leaves(self, model: nn.Module) -> tuple[type, ...]:
        return (Detect,)

    def head_reads(self, name: str, module: nn.Module, inputs: list[torch.Tensor]) -> HeadReads | None:
        return detect_reads(name, module, inputs)

    # -- the oracle ------------------------------------------------------------------------------
    def task_loss(self, model: nn.Module, img_size: int) -> TaskLoss:
        return yolo_task_loss(self.head(model), img_size)

    def problem(self, model: nn.Module, batches: list[Batch], img: int, items: list[str] | None = None,
                cache_targets: bool = True, **options: Any) -> Problem:  # fmt: skip
        """The YOLOv5 problem; ``cache_targets=False`` re-matches targets at every call in the engine too."""
        problem = super().problem(model, batches, img, items, **options)
        problem.loss_fn = yolo_task_loss(self.head(model), img, cache_targets)
        problem.naive_loss_fn = yolo_task_loss(self.head(model), img, cache_targets=False)
        return problem

    # -- fine-tuning, training, export -------------------------------------------------------------
    def train(self, model: nn.Module, data: str, settings: Any, resume_state: dict | None = None) -> dict[str, Any]:
        """pagcp's training loop (:func:`pagcp.training.loop.train`) at this model's stride; with
        ``settings.distill`` > 0, the model ``settings.teacher`` names is the teacher."""
        from pagcp.training.loop import train

        teacher = self.load(settings.teacher) if settings.distill > 0 and settings.teacher else None
        return train(model, data, settings, resume_state=resume_state, stride=self.stride(model), teacher=teacher)

    def finetune(self, model: nn.Module, job: FinetuneJob) -> nn.Module:
        """``job.epochs`` of pagcp's training loop into ``job.folder``/finetune, continued from its ``last.pt``
        when a run was interrupted (the loop resumes exactly); returns the fine-tuned model."""
        from pagcp.training.settings import TrainSettings
        from pagcp.training.state import read_train_state

        last = job.folder / "finetune" / "weights" / "last.pt"
        state = load_checkpoint_file(last).meta.get("train_state") if last.is_file() else None
        if state and state["epoch"] + 1 < state["settings"]["epochs"]:
            tuned, state = read_train_state(last)
            log.info("continuing %s from %s (epoch %d of %d done)", job.what, last, state["epoch"] + 1,
                     state["settings"]["epochs"])  # fmt: skip
            result = self.train(tuned, job.data, TrainSettings(**state["settings"]), resume_state=state)
            return result["model"].float().eval()
        if last.is_file():  # every epoch had finished (last.pt holds their EMA weights); only later files had not
            return self.load(last, device=next(model.parameters()).device)
        s = TrainSettings(epochs=job.epochs, img_size=job.img, batch_size=job.batch, device=job.device, hyp=job.hyp,
                          workers=job.workers, project=str(job.folder), name="finetune", exist_ok=True,
                          weights=str(job.source), data=str(job.data), distill=job.distill,
                          teacher=job.teacher, seed=job.seed)  # fmt: skip
        return self.train(model.train(), job.data, s)["model"].float().eval()

    def commands(self, weights: str, data: str, img: int) -> list[str]:
        """Validate, fine-tune further with pagcp's training loop, export."""
        val, export = super().commands(weights, data, img)
        return [val, f"python -m pagcp.train --weights {weights} --data {data} --img {img} --epochs 100", export]

    def export_onnx(self, model: nn.Module, path: Path, img: int, **options: Any) -> Path:
        """pagcp's ONNX export (:func:`pagcp.deploy.export_onnx`; ``options``: half, dynamic, opset)."""
        from pagcp.deploy import export_onnx

        return export_onnx(model, path, img_size=img, **options)
