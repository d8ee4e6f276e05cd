"""YOLOv5 models (both generations), safe checkpoint I/O and model statistics."""

from pagcp.models.blocks import C3, SPP, SPPF, Bottleneck, Concat, Conv, Focus
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
]
