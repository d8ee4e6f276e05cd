"""What the YOLO detection families share: YOLO-format datasets (a data yaml or ``demo``), the oracle's images
letterboxed as validation batches them, and box mAP from pagcp's validation of a YOLOv5-style prediction.

:class:`YoloFormatFamily` is a :class:`~pagcp.families.base.Family` base; YOLOv5 and Ultralytics detection
subclass it and add their models, heads, losses, trainers and exporters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagcp.data import image_files, load_data_config
from pagcp.detection.evaluate import evaluate
from pagcp.engine.oracle import Batch
from pagcp.engine.oracle_data import letterbox_batches
from pagcp.errors import ConfigError
from pagcp.families.base import Family

#: validation batch of a prune run
VAL_BATCH = 32


class YoloFormatFamily(Family):
    """A detector on YOLO-format data, scored by box mAP50-95 and mAP50 (see the module docstring)."""

    metrics = ("map50", "map50_95")
    primary_metric = "map50_95"

    def data_config(self, spec: str) -> dict[str, Any]:
        return load_data_config(spec)

    def split_items(self, cfg: dict[str, Any], split: str) -> list[str]:
        if not cfg.get(split):
            raise ConfigError(f"--data {cfg.get('yaml_file') or 'data'}: no '{split}' split")
        return image_files(cfg[split])

    def oracle_batches(self, model: nn.Module, items: list[str], img: int, batch: int, device: torch.device,
                       workers: int) -> list[Batch]:  # fmt: skip
        return letterbox_batches(items, img, batch, self.stride(model), self.class_count(model), device, workers)

    def for_validation(self, model: nn.Module) -> nn.Module:
        """The model with a YOLOv5-style eval output ((batch, anchors, 5 + nc), ...), as pagcp's validation and
        ONNX check read it."""
        return model

    def validate(self, model: nn.Module, cfg: dict[str, Any], img: int, device: torch.device, workers: int = 0,
                 progress: bool = True) -> dict[str, float]:  # fmt: skip
        r = evaluate(self.for_validation(model), cfg, img_size=img, batch_size=VAL_BATCH, device=device,
                     workers=workers, progress=progress, stride=self.stride(model))  # fmt: skip
        return {"map50": r["map50"], "map50_95": r["map50_95"]}

    def commands(self, weights: str, data: str, img: int) -> list[str]:
        """pagcp's val and export commands (both read any YOLO family's checkpoint)."""
        return [f"python -m pagcp.val --weights {weights} --data {data} --img {img}",
                f"python -m pagcp.export --weights {weights} --img {img}"]  # fmt: skip
