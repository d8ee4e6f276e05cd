"""YOLOv5 models (both generations), safe checkpoint I/O and model statistics; Ultralytics model files read
and written safely (:mod:`pagcp.models.ultralytics_io`, which imports ultralytics only when used). Which model
is which, and what a family does with it, is :mod:`pagcp.families`."""

from pagcp.models.blocks import C3, SPP, SPPF, Bottleneck, Concat, Conv, Focus
from pagcp.models.yolo import Detect, Model, bundled_configs, parse_model

__all__ = ["C3", "SPP", "SPPF", "Bottleneck", "Concat", "Conv", "Focus", "Detect", "Model", "bundled_configs",
           "parse_model"]  # fmt: skip
