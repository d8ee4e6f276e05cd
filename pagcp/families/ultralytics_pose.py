"""The Ultralytics pose family: YOLOv8-pose, YOLO11-pose (a Pose head) and YOLO26-pose (Pose26, an end-to-end
head with a residual log-likelihood flow). Shared with the other Ultralytics families:
:mod:`pagcp.families.ultralytics_base`.

- Recognised: the bundled ``yolo11n-pose-demo``, a pose yaml (``yolov8n-pose.yaml``, ``yolo11s-pose.yaml``,
  ``yolo26n-pose.yaml``, any scale) and an Ultralytics ``.pt`` whose pickle names ``PoseModel``.
- The head: box, class and keypoint branches per input, coupled on each input's channels (Pose26's keypoint
  branch ends in ``cv4_kpts`` and ``cv4_sigma``, inside the head), see :mod:`pagcp.families.ultralytics_heads`.
- Tasks: box, pose (keypoint locations), kobj (keypoint visibility), cls, dfl (and rle on Pose26, and the
  one-to-one branch's on an end-to-end head) of Ultralytics' own pose loss on the oracle's images.
- Metrics: box and pose (OKS) mAP50 / mAP50-95 by Ultralytics' PoseValidator; the cycle table shows pose
  mAP50-95. ``--data demo`` reads ``demo-pose``, the demo images with four keypoints per object. The data's
  ``kpt_shape`` must be the model's.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pagcp.errors import ConfigError
from pagcp.families.ultralytics_data import UltralyticsDataFamily, task_metric_names


class UltralyticsPoseFamily(UltralyticsDataFamily):
    """Ultralytics pose models (see the module docstring)."""

    name = "ultralytics-pose"
    title = "Ultralytics pose"
    checkpoint_format = "Ultralytics checkpoint (YOLO('pruned.pt') loads it without pagcp)"
    tasks = ("box", "pose", "kobj", "cls", "dfl")
    metrics = task_metric_names("pose")
    primary_metric = "pose_map50_95"
    task = "pose"
    demo = "demo-pose"
    trainer_module = __name__

    def config_options(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """A pose yaml's network takes the data's keypoint shape (as Ultralytics' trainer builds it)."""
        shape = cfg.get("kpt_shape")
        return {"data_kpt_shape": tuple(int(v) for v in shape)} if shape else {}

    def check_data(self, model: nn.Module, cfg: dict[str, Any], weights: str, data: str) -> None:
        super().check_data(model, cfg, weights, data)
        shape = [int(v) for v in self.head(model).kpt_shape]
        if [int(v) for v in cfg.get("kpt_shape") or []] != shape:
            raise ConfigError(
                f"--data {data}: its kpt_shape is {cfg.get('kpt_shape')} but --weights {weights} predicts keypoints "
                f"of shape {shape}; use the data the model was trained on"
            )


def __getattr__(name: str) -> Any:
    """``PrunedPoseTrainer``, for ``YOLO("pruned.pt").train(trainer=PrunedPoseTrainer, ...)``."""
    if name == "PrunedPoseTrainer":
        return UltralyticsPoseFamily().trainer()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
