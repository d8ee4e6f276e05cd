"""YOLO-format datasets, data yaml resolution and the demo dataset generator.

Imported lazily, so that ``python -m pagcp.data.demo`` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "YoloDataset": "pagcp.data.dataset",
    "create_dataloader": "pagcp.data.dataset",
    "image_files": "pagcp.data.dataset",
    "label_path": "pagcp.data.dataset",
    "coco_ground_truth": "pagcp.data.config",
    "is_coco_dataset": "pagcp.data.config",
    "load_data_config": "pagcp.data.config",
    "ensure_demo": "pagcp.data.demo",
    "generate_demo": "pagcp.data.demo",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pagcp.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
