"""Training and fine-tuning: the loop (single process or torchrun DDP, exact resume), the optimizer and lr
schedule, EMA of the weights, the resumable training state, the per-epoch results log.

``pagcp.training.train(model, data, TrainSettings(...))`` is the entry point (imported lazily).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"train": "pagcp.training.loop", "TrainSettings": "pagcp.training.loop"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pagcp.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
