"""The Ultralytics detection family: YOLOv8, YOLO11, YOLO12 (a one-to-many Detect head) and YOLO26, YOLOv10 (an
end-to-end head: a one-to-one branch beside the one-to-many one). Needs ``pip install "pagcp[ultralytics]"``;
the ``ultralytics`` package is imported when used.

- Recognised: the bundled ``yolov8n-demo``; a model yaml with ``scales`` or Ultralytics-only blocks, or a yaml
  name Ultralytics ships (``yolov8n.yaml``, ``yolo11s.yaml``, ``yolo26n.yaml``, any scale); a ``.pt`` whose
  pickle names ``ultralytics.`` classes (read through the allow-listing unpickler of
  :mod:`pagcp.models.ultralytics_pickle`); a loaded model of ``ultralytics.nn.tasks`` whose last layer is exactly
  ``Detect`` or ``v10Detect``.
- The head is Detect: input i feeds the first conv of ``cv2[i]`` (box branch) and ``cv3[i]`` (class branch), and
  of ``one2one_cv2[i]`` and ``one2one_cv3[i]`` on an end-to-end head; every branch reads the same input, so its
  channels are kept or dropped for all of them at once. The class branch of YOLO11, YOLO26 and YOLOv10 starts
  with a depthwise conv; the engine runs a leaf with input-sliced weights only, which cannot change a depthwise
  conv's group count, so an input read that way stays whole (the trace says so).
- Tasks: the components of Ultralytics' own training loss, per branch of an end-to-end head
  (:mod:`pagcp.families.ultralytics_loss`), on Detect's raw training-mode output dict.
- Checkpoints are Ultralytics' own (``YOLO("pruned.pt")`` loads them without pagcp, with their widths);
  fine-tuning is Ultralytics' trainer with the network kept as it is and an interrupted run continued exactly
  (:data:`PrunedDetectionTrainer`; under torchrun the main process fine-tunes while the others wait); export is
  Ultralytics' ONNX export; box mAP is pagcp's validation of the predictions presented YOLOv5-style: those of
  the one-to-many branch with NMS, as Ultralytics validates and exports by default (``nms=None``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from pagcp.data import load_data_config
from pagcp.engine.oracle import TaskLoss
from pagcp.errors import CheckpointError, ConfigError
from pagcp.families.base import FinetuneJob
from pagcp.families.ultralytics_loss import detection_tasks, ultralytics_task_loss
from pagcp.families.ultralytics_resume import resumable_trainer
from pagcp.families.yolo_format import YoloFormatFamily
from pagcp.graph import HeadReads
from pagcp.graph.heads import first_conv
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

#: bundled Ultralytics checkpoints (in pagcp/models/weights), by name
BUNDLED = ("yolov8n-demo", "yolo26n-demo")
#: the task losses of a one-to-many head of reg_max > 1 (YOLOv8, YOLO11), in v8DetectionLoss's order; a model's
#: own are :func:`pagcp.families.ultralytics_loss.detection_tasks`
ULTRALYTICS_TASKS = ("box", "cls", "dfl")
#: Detect's per-input branches (one nn.Sequential per input in each); an end-to-end head has all four
BRANCHES = ("cv2", "cv3", "one2one_cv2", "one2one_cv3")
#: modules only Ultralytics' model yamls use (YOLOv5's use C3, SPPF, Detect and the like)
_ULTRALYTICS_MODULES = {"C2f", "C3k2", "C2PSA", "C2fAttn", "A2C2f", "SCDown", "PSA", "C2fCIB", "ELAN1", "RepNCSPELAN4"}
_SHIPPED_PREFIXES = ("yolov8", "yolov9", "yolov10", "yolo11", "yolo12", "yolo26")


def _detect_classes() -> tuple[type, ...]:
    """The detection heads of this family, matched exactly (Segment, Pose and OBB subclass Detect)."""
    require_ultralytics()
    from ultralytics.nn.modules.head import Detect, v10Detect

    return Detect, v10Detect


def detect_head(model: nn.Module) -> nn.Module:
    """The Detect head (the last layer) of an Ultralytics detection model; ConfigError naming what it is else."""
    layers = getattr(model, "model", None)
    head = layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None
    if type(head) not in _detect_classes():
        found = type(head).__name__ if head is not None else f"no layer list ({type(model).__name__})"
        raise ConfigError(f"pagcp prunes Ultralytics detection models (a Detect head); this model has {found}")
    return head


def is_ultralytics_spec(spec: str | Path) -> bool:
    """Whether a ``--weights`` value names an Ultralytics model (see the module docstring), without unpickling."""
    text = str(spec)
    if text in BUNDLED:
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


def detect_reads(name: str, module: nn.Module, inputs: list[torch.Tensor]) -> HeadReads | None:
    """Ultralytics' Detect: input i feeds the first conv of ``cv2[i]`` and ``cv3[i]`` (and of ``one2one_cv2[i]``,
    ``one2one_cv3[i]``); a depthwise first conv pins its input (see the module docstring). None for any other
    leaf."""
    if type(module) not in _detect_classes():
        return None
    reads = HeadReads()
    for attr in BRANCHES:
        branch = getattr(module, attr, None)
        if branch is None and attr.startswith("one2one_"):
            continue
        if not isinstance(branch, nn.ModuleList) or len(branch) != len(inputs):
            return None
        for i, seq in enumerate(branch):
            found = first_conv(seq)
            if found is None or found[1].in_channels != len(inputs[i]):
                return None
            path, conv = found
            full = f"{name}.{attr}.{i}.{path}"
            if conv.groups == 1:
                reads.convs.append((full, conv, i))
            elif i not in reads.pinned:
                reads.pinned[i] = f"input {i} of leaf head {name}, read by its depthwise conv {full}"
    return reads


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


class YoloV5Outputs(nn.Module):
    """An Ultralytics detector whose eval-mode output is YOLOv5's, for :func:`pagcp.detection.evaluate.evaluate`.

    Ultralytics predicts (batch, 4 + nc, anchors): xywh pixels and class scores, no objectness. This returns
    ((batch, anchors, 5 + nc) with objectness 1, None), so pagcp's NMS scores each box by its class score as
    Ultralytics' NMS does. An end-to-end head switched to its NMS-free output (``end2end`` True) is read through
    its one-to-many branch all the same, as Ultralytics validates it by default.
    """

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector
        names = getattr(detector, "names", None)
        self.names = [names[k] for k in sorted(names)] if isinstance(names, dict) else names

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        head = self.detector.model[-1]
        switched = bool(getattr(head, "end2end", False))
        if switched:
            if head.cv2 is None:
                raise ConfigError("an end-to-end model fused down to its one-to-one branch: pagcp validates (and "
                                  "prunes) models that still have their one-to-many branch, as trained")  # fmt: skip
            head.end2end = False  # Ultralytics' own one-to-many decoding, for this call
        try:
            y = self.detector(x)
        finally:
            if switched:
                head.end2end = True
        y = (y[0] if isinstance(y, (tuple, list)) else y).transpose(1, 2)
        return torch.cat([y[..., :4], torch.ones_like(y[..., :1]), y[..., 4:]], -1), None


def _prepare_for_training(weights: nn.Module, trainer: Any) -> nn.Module:
    nc = int(detect_head(weights).nc)
    if nc != int(trainer.data["nc"]):
        raise ConfigError(
            f"data {trainer.args.data}: has nc={trainer.data['nc']} classes but the pruned model has nc={nc}; "
            "pruning keeps the head, so fine-tune on data with the same classes"
        )
    return fix_pruned_attributes(weights)


def _trainer_class() -> type:
    require_ultralytics()
    from ultralytics.models.yolo.detect import DetectionTrainer

    trainer = resumable_trainer(pruned_trainer(DetectionTrainer, _prepare_for_training))
    # importable by this name (a fine-tune's child process, Ultralytics' DDP workers): see __getattr__ below
    trainer.__module__ = __name__
    trainer.__name__ = trainer.__qualname__ = "PrunedDetectionTrainer"
    return trainer


class UltralyticsDetectFamily(YoloFormatFamily):
    """Ultralytics detection models (see the module docstring)."""

    name = "ultralytics-detect"
    title = "Ultralytics detection"
    checkpoint_format = "Ultralytics checkpoint (YOLO('pruned.pt') loads it without pagcp)"
    tasks = ULTRALYTICS_TASKS
    distills = True

    def bundled(self) -> list[str]:
        return list(BUNDLED)

    def recognises_weights(self, spec: str) -> bool:
        return is_ultralytics_spec(spec)

    def recognises_model(self, model: nn.Module) -> bool:
        if not type(model).__module__.startswith("ultralytics."):
            return False
        layers = getattr(model, "model", None)
        return isinstance(layers, nn.Sequential) and len(layers) > 0 and type(layers[-1]) in _detect_classes()

    def load(self, spec: str | Path, nc: int | None = None, device: str | torch.device = "cpu") -> nn.Module:
        """A model yaml, an Ultralytics ``.pt`` (allow-listed: a file naming any other global raises
        UnsafePickleError before anything runs) or a bundled name; ``nc`` sets a yaml's class count."""
        text = str(spec)
        path = Path(text)
        if path.suffix in (".yaml", ".yml"):
            model = build_from_yaml(path, nc)
        elif path.exists() or path.suffix in (".pt", ".pth") or os.sep in text:
            model = model_of_checkpoint(read_checkpoint(path), path)
        elif text in BUNDLED:
            path = bundled_file(text)
            model = model_of_checkpoint(read_checkpoint(path), path)
        else:
            raise CheckpointError(
                f"{text}: no such file, and not a bundled Ultralytics model ({', '.join(BUNDLED)}); pass a model "
                "yaml (e.g. yolov8n.yaml, yolo11s.yaml) or an Ultralytics .pt checkpoint"
            )
        file_nc = self.class_count(model)
        if path.suffix not in (".yaml", ".yml") and nc is not None and nc != file_nc:
            raise CheckpointError(
                f"{path}: the checkpoint was trained for nc={file_nc} classes but nc={nc} was requested; "
                "load it without nc (or with the data yaml that matches it)"
            )
        return model.to(device).float().eval()

    def save(self, model: nn.Module, path: Path, **meta: Any) -> Path:
        detect_head(model)
        return save_ultralytics_file(fix_pruned_attributes(model), path, task="detect", **meta)

    def head(self, model: nn.Module) -> nn.Module:
        return detect_head(model)

    def strides(self, model: nn.Module) -> list[float]:
        return [float(s) for s in self.head(model).stride.tolist()]

    def class_count(self, model: nn.Module) -> int:
        return int(self.head(model).nc)

    def leaf_modules(self, model: nn.Module) -> tuple:
        return _detect_classes()

    def train_mode_leaves(self, model: nn.Module) -> tuple[type, ...]:
        return _detect_classes()

    def head_reads(self, name: str, module: nn.Module, inputs: list[torch.Tensor]) -> HeadReads | None:
        return detect_reads(name, module, inputs)

    def sliced(self, model: nn.Module) -> nn.Module:
        return fix_pruned_attributes(model)

    def backbone_layers(self, model: nn.Module) -> int:
        """Layers of the model's backbone (YOLOv8: 10, YOLO11: 11), from its yaml."""
        return len(getattr(model, "yaml", {}).get("backbone", [])) or 10

    def task_names(self, model: nn.Module) -> tuple[str, ...]:
        return detection_tasks(self.head(model))

    def task_loss(self, model: nn.Module, img_size: int) -> TaskLoss:
        return ultralytics_task_loss(model)

    def for_validation(self, model: nn.Module) -> nn.Module:
        return YoloV5Outputs(model)

    def finetune(self, model: nn.Module, job: FinetuneJob) -> nn.Module:
        """``job.epochs`` with Ultralytics' trainer (pruned widths kept) into ``job.folder``/finetune, continued
        exactly from its ``last.pt`` when a run was interrupted; under torchrun the main process fine-tunes (in a
        child process, on its device) while the others wait (:mod:`pagcp.families.ultralytics_train`)."""
        from pagcp.families.ultralytics_train import finetune_last

        device = next(model.parameters()).device
        last = finetune_last(job, pruned_detection_trainer(), _data_yaml(job.data), device)
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


def _data_yaml(data: str) -> str:
    """A data yaml path Ultralytics reads for ``--data`` (the demo sets carry one)."""
    path = load_data_config(data).get("yaml_file")
    if not path:
        raise ConfigError(f"--data {data}: Ultralytics fine-tuning needs a data yaml file")
    return str(path)


def load_ultralytics(spec: str | Path, nc: int | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """An Ultralytics detection model, eval mode, float32, on ``device`` (:meth:`UltralyticsDetectFamily.load`)."""
    return UltralyticsDetectFamily().load(spec, nc, device)


def save_ultralytics(model: nn.Module, path: str | Path, **meta: Any) -> Path:
    """``model`` as an Ultralytics checkpoint (:meth:`UltralyticsDetectFamily.save`)."""
    return UltralyticsDetectFamily().save(model, Path(path), **meta)


_TRAINERS: dict[str, type] = {}


def pruned_detection_trainer() -> type:
    """Ultralytics' DetectionTrainer fine-tuning the loaded (pruned) network as it is (built once)."""
    if "detect" not in _TRAINERS:
        _TRAINERS["detect"] = _trainer_class()
    return _TRAINERS["detect"]


def __getattr__(name: str) -> Any:
    """``PrunedDetectionTrainer`` (:func:`pruned_detection_trainer`), for
    ``YOLO("pruned.pt").train(trainer=PrunedDetectionTrainer, data=..., epochs=...)``."""
    if name == "PrunedDetectionTrainer":
        return pruned_detection_trainer()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
