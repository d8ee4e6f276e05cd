"""The Ultralytics segmentation family: YOLOv8-seg, YOLO11-seg (a Segment head) and YOLO26-seg (Segment26, an
end-to-end head). Shared with the other Ultralytics families: :mod:`pagcp.families.ultralytics_base`.

- Recognised: the bundled ``yolov8n-seg-demo``, a segmentation yaml (``yolov8n-seg.yaml``, ``yolo11s-seg.yaml``,
  ``yolo26n-seg.yaml``, any scale) and an Ultralytics ``.pt`` whose pickle names ``SegmentationModel``.
- The head: box, class and mask-coefficient branches per input, coupled on each input's channels, and the
  prototype branch (reads input 0; Segment26's reads every input and keeps input 0 whole), see
  :mod:`pagcp.families.ultralytics_heads`.
- Tasks: box, seg, cls, dfl (and sem on Segment26, and the one-to-one branch's on an end-to-end head) of
  Ultralytics' own segmentation loss on the oracle's images, masks included; Segment26's prototype module
  runs its training branch too (its semantic-mask output), its norms in eval mode as everywhere.
- Metrics: box and mask mAP50 / mAP50-95 by Ultralytics' SegmentationValidator; the cycle table shows mask
  mAP50-95. ``--data demo`` reads ``demo-seg``, the demo images with their objects' outlines.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pagcp.families.ultralytics_data import UltralyticsDataFamily, task_metric_names
from pagcp.families.ultralytics_heads import head_classes


class UltralyticsSegmentFamily(UltralyticsDataFamily):
    """Ultralytics segmentation models (see the module docstring)."""

    name = "ultralytics-segment"
    title = "Ultralytics segmentation"
    checkpoint_format = "Ultralytics checkpoint (YOLO('pruned.pt') loads it without pagcp)"
    tasks = ("box", "seg", "cls", "dfl")
    metrics = task_metric_names("segment")
    primary_metric = "mask_map50_95"
    task = "segment"
    demo = "demo-seg"
    trainer_module = __name__

    def train_mode_leaves(self, model: nn.Module) -> tuple[type, ...]:
        """The head, and Segment26's Proto26 inside it (its semantic branch runs in training only: the sem task)."""
        from ultralytics.nn.modules.block import Proto26

        return (*head_classes(self.task), Proto26)


def __getattr__(name: str) -> Any:
    """``PrunedSegmentationTrainer``, for ``YOLO("pruned.pt").train(trainer=PrunedSegmentationTrainer, ...)``."""
    if name == "PrunedSegmentationTrainer":
        return UltralyticsSegmentFamily().trainer()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
