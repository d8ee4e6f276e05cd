"""pagcp: performance-aware global channel pruning (PAGCP) for CNNs, with compiled kernels.

Top-level API (imported lazily so that ``import pagcp`` stays cheap and never fails):

- ``load_model(spec, nc=None, device="cpu")`` / ``save_model(model, path, **meta)``: any registered model
  family (YOLOv5, Ultralytics detection; :mod:`pagcp.families`) / ``model_stats(model)``
- ``trace(model, example_input)`` -> channel graph (units, keep-masks, masked execution, slicing)
- ``prune(model, loss_fn, batches, example_input, **settings)`` -> PAGCP on any traceable CNN
- ``prune_run(RunSettings(...))`` -> a whole run (cycles, slice, fine-tune, validate, report) on a family's
  model, resumable from its folder (:mod:`pagcp.pipeline`)
- ``pagcp.ops`` (the kernels for other pruning methods), ``pagcp.families``, ``pagcp.pipeline``: reachable after a
  plain ``import pagcp``
- ``load_ultralytics(spec, nc=None)`` / ``save_ultralytics(model, path, **meta)``: Ultralytics YOLOv8 / YOLO11
  detectors (model yaml, ``.pt`` through an allow-listing unpickler; saved in Ultralytics' own format)
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

# OpenMP threads that spin while waiting make every torch op 10-100x slower as soon as another process
# competes for the cores (measured here: a yolov5n forward 11 ms passive vs 10 s spinning on a loaded 2-core
# machine). Passive waiting costs little when the cores are free. Effective only if set before torch loads;
# an explicit OMP_WAIT_POLICY wins. Imported after torch, pagcp can only say so (once, here).
if "OMP_WAIT_POLICY" not in os.environ and "torch" in sys.modules:
    logging.getLogger("pagcp").warning(
        "pagcp: torch was imported before pagcp, so its OpenMP threads spin while they wait; on a machine shared "
        "with other processes that makes pruning up to 10x slower. Import pagcp first, or set OMP_WAIT_POLICY=PASSIVE."
    )
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_LAZY = {
    "load_model": "pagcp.families",
    "save_model": "pagcp.families",
    "model_stats": "pagcp.models.stats",
    "trace": "pagcp.families",
    "prune": "pagcp.engine.api",
    "prune_run": "pagcp.pipeline",
    "RunSettings": "pagcp.pipeline",
    "load_ultralytics": "pagcp.families.ultralytics_detect",
    "save_ultralytics": "pagcp.families.ultralytics_detect",
    "PagcpError": "pagcp.errors",
}

#: subpackages reachable as attributes of ``pagcp`` without importing them first (``pagcp.ops.backends()``)
_SUBPACKAGES = ("families", "ops", "pipeline")

__all__ = sorted([*_LAZY, *_SUBPACKAGES]) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        value = importlib.import_module(f"pagcp.{name}")
        globals()[name] = value
        return value
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pagcp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
