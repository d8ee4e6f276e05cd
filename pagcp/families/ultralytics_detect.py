"""The Ultralytics detection family: YOLOv8, YOLO11, YOLO12 (a one-to-many Detect head) and YOLO26, YOLOv10 (an
end-to-end head: a one-to-one branch beside the one-to-many one). What every Ultralytics family shares (loading,
the head matcher, the loss's tasks, fine-tuning, export) is :mod:`pagcp.families.ultralytics_base`.

- Recognised: the bundled ``yolov8n-demo`` and ``yolo26n-demo``, and any Ultralytics model yaml or checkpoint
  whose task is not segmentation or pose (an OBB or classification model is then refused by name when loaded).
- The head is Detect: input i feeds the first conv of ``cv2[i]`` (box branch) and ``cv3[i]`` (class branch), and
  of ``one2one_cv2[i]`` and ``one2one_cv3[i]`` on an end-to-end head.
- Tasks: box, cls and dfl (l1 at ``reg_max`` 1) of Ultralytics' own loss, per branch of an end-to-end head.
- Box mAP is pagcp's validation of the predictions presented YOLOv5-style: those of the one-to-many branch with
  NMS, as Ultralytics validates and exports by default (``nms=None``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pagcp.errors import ConfigError
from pagcp.families.ultralytics_base import BUNDLED as _BUNDLED
from pagcp.families.ultralytics_base import (
    UltralyticsFamily,
    fix_pruned_attributes,
    is_ultralytics_spec,
    spec_task,
    task_head,
)
from pagcp.families.ultralytics_heads import TASK_HEADS

__all__ = ["BUNDLED", "ULTRALYTICS_TASKS", "UltralyticsDetectFamily", "YoloV5Outputs", "detect_head",
           "fix_pruned_attributes", "load_ultralytics", "save_ultralytics"]  # fmt: skip

#: bundled Ultralytics detection checkpoints (in pagcp/models/weights)
BUNDLED = _BUNDLED["detect"]
#: the task losses of a one-to-many head of reg_max > 1 (YOLOv8, YOLO11), in v8DetectionLoss's order; a model's
#: own are :func:`pagcp.families.ultralytics_loss.criterion_tasks`
ULTRALYTICS_TASKS = ("box", "cls", "dfl")


def detect_head(model: nn.Module) -> nn.Module:
    """The Detect head (the last layer) of an Ultralytics detection model; ConfigError naming what it is else."""
    return task_head(model, "detect")


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


class UltralyticsDetectFamily(UltralyticsFamily):
    """Ultralytics detection models (see the module docstring)."""

    name = "ultralytics-detect"
    title = "Ultralytics detection"
    checkpoint_format = "Ultralytics checkpoint (YOLO('pruned.pt') loads it without pagcp)"
    tasks = ULTRALYTICS_TASKS
    task = "detect"
    trainer_module = __name__

    def recognises_weights(self, spec: str) -> bool:
        """Any Ultralytics model whose task has no family of its own (those of other tasks are refused by name
        when loaded)."""
        if not is_ultralytics_spec(spec):
            return False
        task = spec_task(spec)
        return task == self.task or task not in TASK_HEADS

    def for_validation(self, model: nn.Module) -> nn.Module:
        return YoloV5Outputs(model)


def load_ultralytics(spec: str | Path, nc: int | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """An Ultralytics detection model, eval mode, float32, on ``device`` (:meth:`UltralyticsDetectFamily.load`)."""
    return UltralyticsDetectFamily().load(spec, nc, device)


def save_ultralytics(model: nn.Module, path: str | Path, **meta: Any) -> Path:
    """``model`` as an Ultralytics checkpoint (:meth:`UltralyticsDetectFamily.save`)."""
    return UltralyticsDetectFamily().save(model, Path(path), **meta)


def pruned_detection_trainer() -> type:
    """Ultralytics' DetectionTrainer fine-tuning the loaded (pruned) network as it is (built once)."""
    return UltralyticsDetectFamily().trainer()


def __getattr__(name: str) -> Any:
    """``PrunedDetectionTrainer`` (:func:`pruned_detection_trainer`), for
    ``YOLO("pruned.pt").train(trainer=PrunedDetectionTrainer, data=..., epochs=...)``."""
    if name == "PrunedDetectionTrainer":
        return pruned_detection_trainer()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
