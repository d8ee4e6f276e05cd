"""YOLOv5 models (both generations), safe checkpoint I/O and model statistics; Ultralytics YOLOv8 / YOLO11
detectors loaded and saved safely (:mod:`pagcp.models.ultralytics_io`, which imports ultralytics only when used)."""

from pagcp.models.blocks import C3, SPP, SPPF, Bottleneck, Concat, Conv, Focus
from pagcp.models.ultralytics_io import load_ultralytics, save_ultralytics
from pagcp.models.yolo import Detect, Model, bundled_configs, parse_model

__all__ = [
    "C3",
    "SPP",
    "SPPF",
    "Bottleneck",
    "Concat",
    "Conv",
    "Focus",
    "Detect",
    "Model",
    "bundled_configs",
    "parse_model",
    "load_ultralytics",
    "save_ultralytics",
]
