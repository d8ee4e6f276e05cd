"""Training and fine-tuning of YOLOv5 models, single process or torchrun DDP, resumable exactly.

Modules: :mod:`.loop` (``train``: epochs and steps), :mod:`.settings` (``TrainSettings`` and their checks),
:mod:`.loaders` (train/val loaders, per-epoch reseeding), :mod:`.components` (model, DDP wrapper, optimizer,
grad scaler, EMA, loss), :mod:`.optim` (parameter groups, lr schedule), :mod:`.ema` (weight averaging),
:mod:`.state` (the resumable training state in ``last.pt``), :mod:`.records` (run folder, per-epoch
checkpoints and results row), :mod:`.results` (``results.csv`` / ``results.png``).

``pagcp.training.train(model, data, TrainSettings(...))`` is the entry point (imported lazily).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"train": "pagcp.training.loop", "TrainSettings": "pagcp.training.settings"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pagcp.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
