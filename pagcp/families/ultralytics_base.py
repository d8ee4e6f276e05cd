"""What every Ultralytics family shares (detection, segmentation, pose): recognising a model of its task,
loading and saving Ultralytics checkpoints, the head matcher, the oracle's tasks from Ultralytics' own loss,
fine-tuning with Ultralytics' trainer of the task, and Ultralytics' ONNX export.

Needs ``pip install "pagcp[ultralytics]"``; the ``ultralytics`` package is imported when used.

- Recognised: a bundled checkpoint of the family; a model yaml with ``scales`` or Ultralytics-only blocks, or a
  yaml name Ultralytics ships (``yolov8n-seg.yaml``, ``yolo11s-pose.yaml``, ``yolo26n.yaml``, any scale); a
  ``.pt`` whose pickle names ``ultralytics.`` classes (read through the allow-listing unpickler of
  :mod:`pagcp.models.ultralytics_pickle`). The task (which family) is read from the yaml's last layer or name
  and from the model class a checkpoint's pickle names, without unpickling (:mod:`.ultralytics_heads`).
- The head is a leaf: its per-input branches and the convs that read its inputs are
  :func:`pagcp.families.ultralytics_heads.head_reads`.
- Tasks: the components of Ultralytics' own training loss of the model (:mod:`.ultralytics_loss`).
- Checkpoints are Ultralytics' own (``YOLO("pruned.pt")`` loads them without pagcp, with their widths);
  fine-tuning is Ultralytics' trainer of the task with the network kept as it is and an interrupted run
  continued exactly (under torchrun the main process fine-tunes while the others wait,
  :mod:`.ultralytics_train`); export is Ultralytics' ONNX export.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import torch
import yaml
from torch import nn

from pagcp.engine.oracle import TaskLoss
from pagcp.errors import CheckpointError, ConfigError
from pagcp.families.base import FinetuneJob
from pagcp.families.ultralytics_heads import (
    TASK_HEADS,
    TASK_MODELS,
    checkpoint_task,
    head_classes,
    head_reads,
    model_head,
    yaml_task,
)
from pagcp.families.ultralytics_loss import criterion_tasks, ultralytics_task_loss
from pagcp.families.ultralytics_resume import resumable_trainer
from pagcp.families.yolo_format import YoloFormatFamily
from pagcp.graph import HeadReads
from pagcp.models.checkpoint import bundled_file
from pagcp.models.ultralytics_io import (
    build_from_yaml,
    model_of_checkpoint,
    pickle_mentions,
    pruned_trainer,
    read_checkpoint,
    require_ultralytics,
    save_ultralytics_file,
)

#: bundled Ultralytics checkpoints (in pagcp/models/weights), by task
BUNDLED = {"detect": ("yolov8n-demo", "yolo26n-demo"), "segment": ("yolov8n-seg-demo",),
           "pose": ("yolo11n-pose-demo",)}  # fmt: skip
#: modules only Ultralytics' model yamls use (YOLOv5's use C3, SPPF, Detect and the like)
_ULTRALYTICS_MODULES = {"C2f", "C3k2", "C2PSA", "C2fAttn", "A2C2f", "SCDown", "PSA", "C2fCIB", "ELAN1", "RepNCSPELAN4"}
_SHIPPED_PREFIXES = ("yolov8", "yolov9", "yolov10", "yolo11", "yolo12", "yolo26")


def is_ultralytics_spec(spec: str | Path) -> bool:
    """Whether a ``--weights`` value names an Ultralytics model (see the module docstring), without unpickling."""
    text = str(spec)
    if any(text in names for names in BUNDLED.values()):
        return True
    path = Path(text)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            return path.name.startswith(_SHIPPED_PREFIXES)
        cfg = yaml.safe_load(path.read_text()) or {}
        layers = [*cfg.get("backbone", []), *cfg.get("head", [])] if isinstance(cfg, dict) else []
        names = {str(layer[2]) for layer in layers if isinstance(layer, list) and len(layer) > 2}
        return "scales" in cfg or bool(names & _ULTRALYTICS_MODULES)
    return path.is_file() and pickle_mentions(path, "ultralytics.")


def spec_task(spec: str | Path) -> str:
    """The Ultralytics task of a ``--weights`` value that :func:`is_ultralytics_spec` accepts (see the module
    docstring); ``detect`` when nothing says otherwise."""
    text = str(spec)
    for task, names in BUNDLED.items():
        if text in names:
            return task
    path = Path(text)
    return yaml_task(path) if path.suffix in (".yaml", ".yml") else checkpoint_task(path)


def task_head(model: nn.Module, task: str) -> nn.Module:
    """The head (the last layer) of an Ultralytics model of ``task``; ConfigError naming what it has else."""
    head = model_head(model)
    if type(head) not in head_classes(task):
        found = type(head).__name__ if head is not None else f"no layer list ({type(model).__name__})"
        known = ", ".join(f"{t} ({'/'.join(h)})" for t, h in TASK_HEADS.items())
        raise ConfigError(f"pagcp prunes Ultralytics {task} models (a {'/'.join(TASK_HEADS[task])} head); this "
                          f"model has {found}. Ultralytics tasks pagcp prunes: {known}")  # fmt: skip
    return head


def fix_pruned_attributes(model: nn.Module) -> nn.Module:
    """Make the width attributes of Ultralytics blocks agree with their (sliced) tensors; returns ``model``.

    C2f and its subclasses (C3k2, ...) and C2PSA split ``cv1``'s output into two halves of ``c`` channels
    (``forward_split``, used by ONNX exports, reads ``c``); pagcp keeps the halves equal, so ``c`` is half of
    ``cv1``'s output width.
    """
    from ultralytics.nn.modules.block import C2PSA, C2f

    for module in model.modules():
        if isinstance(module, (C2f, C2PSA)):
            width = module.cv1.conv.out_channels
            if width % 2:
                raise ConfigError(f"{type(module).__name__} with cv1 of {width} channels: its halves must be equal")
            module.c = width // 2
    return model


class UltralyticsFamily(YoloFormatFamily):
    """An Ultralytics task's models (see the module docstring); a subclass sets :attr:`task` and
    :attr:`trainer_module` (the module of its ``Pruned...Trainer``) and says how its models are validated."""

    task: ClassVar[str] = ""
    #: the module whose ``__getattr__`` returns this family's trainer class by its name (a child process and
    #: Ultralytics' DDP workers import it by name)
    trainer_module: ClassVar[str] = ""
    distills = True

    # -- recognising, loading, saving -----------------------------------------------------------
    def bundled(self) -> list[str]:
        return list(BUNDLED[self.task])

    def recognises_weights(self, spec: str) -> bool:
        return is_ultralytics_spec(spec) and spec_task(spec) == self.task

    def recognises_model(self, model: nn.Module) -> bool:
        if not type(model).__module__.startswith("ultralytics."):
            return False
        return type(model_head(model)) in head_classes(self.task)

    def load(self, spec: str | Path, nc: int | None = None, device: str | torch.device = "cpu",
             **options: Any) -> nn.Module:  # fmt: skip
        """A model yaml, an Ultralytics ``.pt`` (allow-listed: a file naming any other global raises
        UnsafePickleError before anything runs) or a bundled name; ``nc`` sets a yaml's class count and
        ``options`` go to its model class (:meth:`config_options`)."""
        text = str(spec)
        path = Path(text)
        if path.suffix in (".yaml", ".yml"):
            model = build_from_yaml(path, nc, TASK_MODELS[self.task], **options)
        elif path.exists() or path.suffix in (".pt", ".pth") or os.sep in text:
            model = model_of_checkpoint(read_checkpoint(path), path)
        elif text in BUNDLED[self.task]:
            path = bundled_file(text)
            model = model_of_checkpoint(read_checkpoint(path), path)
        else:
            raise CheckpointError(
                f"{text}: no such file, and not a bundled Ultralytics model ({', '.join(self.bundled())}); pass a "
                "model yaml (e.g. yolov8n.yaml, yolo11s-seg.yaml) or an Ultralytics .pt checkpoint"
            )
        file_nc = self.class_count(model)
        if path.suffix not in (".yaml", ".yml") and nc is not None and nc != file_nc:
            raise CheckpointError(
                f"{path}: the checkpoint was trained for nc={file_nc} classes but nc={nc} was requested; "
                "load it without nc (or with the data yaml that matches it)"
            )
        return model.to(device).float().eval()

    def save(self, model: nn.Module, path: Path, **meta: Any) -> Path:
        self.head(model)
        return save_ultralytics_file(fix_pruned_attributes(model), path, task=self.task, **meta)

    # -- structure -------------------------------------------------------------------------------
    def head(self, model: nn.Module) -> nn.Module:
        return task_head(model, self.task)

    def strides(self, model: nn.Module) -> list[float]:
        return [float(s) for s in self.head(model).stride.tolist()]

    def class_count(self, model: nn.Module) -> int:
        return int(self.head(model).nc)

    def leaf_modules(self, model: nn.Module) -> tuple:
        return head_classes(self.task)

    def train_mode_leaves(self, model: nn.Module) -> tuple[type, ...]:
        return head_classes(self.task)

    def head_reads(self, name: str, module: nn.Module, inputs: list[torch.Tensor]) -> HeadReads | None:
        return head_reads(name, module, inputs) if type(module) in head_classes(self.task) else None

    def sliced(self, model: nn.Module) -> nn.Module:
        return fix_pruned_attributes(model)

    def backbone_layers(self, model: nn.Module) -> int:
        """Layers of the model's backbone (YOLOv8: 10, YOLO11: 11), from its yaml."""
        return len(getattr(model, "yaml", {}).get("backbone", [])) or 10

    # -- the oracle ------------------------------------------------------------------------------
    def task_names(self, model: nn.Module) -> tuple[str, ...]:
        return criterion_tasks(model)

    def task_loss(self, model: nn.Module, img_size: int) -> TaskLoss:
        return ultralytics_task_loss(model)

    # -- fine-tuning and export ------------------------------------------------------------------
    def trainer(self) -> type:
        """Ultralytics' trainer of the task fine-tuning the loaded (pruned) network as it is, continued exactly
        after a kill (built once per task)."""
        if self.task not in _TRAINERS:
            _TRAINERS[self.task] = self._trainer_class()
        return _TRAINERS[self.task]

    def _trainer_class(self) -> type:
        require_ultralytics()
        base_name = {"detect": "DetectionTrainer", "segment": "SegmentationTrainer", "pose": "PoseTrainer"}[self.task]
        base = getattr(importlib.import_module(f"ultralytics.models.yolo.{self.task}"), base_name)
        family = self

        def prepare(weights: nn.Module, trainer: Any) -> nn.Module:
            nc = family.class_count(weights)
            if nc != int(trainer.data["nc"]):
                raise ConfigError(
                    f"data {trainer.args.data}: has nc={trainer.data['nc']} classes but the pruned model has "
                    f"nc={nc}; pruning keeps the head, so fine-tune on data with the same classes"
                )
            return fix_pruned_attributes(weights)

        trainer = resumable_trainer(pruned_trainer(base, prepare))
        trainer.__module__ = self.trainer_module  # importable by this name: see the family module's __getattr__
        trainer.__name__ = trainer.__qualname__ = f"Pruned{base_name}"
        return trainer

    def data_yaml(self, data: str) -> str:
        """A data yaml path Ultralytics reads for ``--data`` (the demo sets carry one)."""
        path = self.data_config(data).get("yaml_file")
        if not path:
            raise ConfigError(f"--data {data}: Ultralytics fine-tuning needs a data yaml file")
        return str(path)

    def finetune(self, model: nn.Module, job: FinetuneJob) -> nn.Module:
        """``job.epochs`` with Ultralytics' trainer (pruned widths kept) into ``job.folder``/finetune, continued
        exactly from its ``last.pt`` when a run was interrupted; under torchrun the main process fine-tunes (in a
        child process, on its device) while the others wait (:mod:`pagcp.families.ultralytics_train`)."""
        from pagcp.families.ultralytics_train import finetune_last

        device = next(model.parameters()).device
        last = finetune_last(job, self.trainer(), self.data_yaml(job.data), device)
        return self.load(last, device=device)

    def export_onnx(self, model: nn.Module, path: Path, img: int, **options: Any) -> Path:
        """Ultralytics' own ONNX export of the model (the file Ultralytics users deploy); ``options`` go to
        ``YOLO.export`` (half, dynamic, opset)."""
        from ultralytics import YOLO
        from ultralytics.utils import LOGGER

        level = LOGGER.level
        LOGGER.setLevel(logging.WARNING)  # its export banner would land on stdout, before a --json line
        try:
            with tempfile.TemporaryDirectory() as tmp:
                source = self.save(model, Path(tmp) / f"{Path(path).stem}.pt")
                made = YOLO(str(source)).export(format="onnx", imgsz=img, simplify=False,
                                                **{k: v for k, v in options.items() if v is not None})  # fmt: skip
                shutil.move(str(made), path)
        finally:
            LOGGER.setLevel(level)
        return Path(path)


#: the trainer class of each task, built once
_TRAINERS: dict[str, type] = {}
