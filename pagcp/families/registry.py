"""The one table of model families, and the lookups every command, the prune run and the benchmarks use.

:data:`FAMILIES` maps a family's name to the ``module:Class`` that implements it; a family module is imported
only when a lookup reaches it, so ``import pagcp`` never needs a family's optional packages. Lookups ask the
families registered with :func:`register` first (newest first), then the table in its order: Ultralytics
segmentation and pose before Ultralytics detection (which takes any other Ultralytics model, to refuse the
tasks pagcp does not prune by name), then YOLOv5, whose loader also takes any other checkpoint path (it gives
the clearest error for a file that is neither).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pagcp.engine.oracle_data import choose_items, shard_batches
from pagcp.engine.problem import Problem
from pagcp.errors import CheckpointError, ConfigError
from pagcp.families.base import Family

#: name -> "module:Class" of every family shipped with pagcp, in the order lookups ask them
FAMILIES: dict[str, str] = {
    "ultralytics-segment": "pagcp.families.ultralytics_segment:UltralyticsSegmentFamily",
    "ultralytics-pose": "pagcp.families.ultralytics_pose:UltralyticsPoseFamily",
    "ultralytics-detect": "pagcp.families.ultralytics_detect:UltralyticsDetectFamily",
    "yolov5": "pagcp.families.yolov5:YoloV5Family",
}

_registered: dict[str, Family] = {}
_loaded: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family (an instance of a :class:`Family` subclass with a ``name``); it is asked before the shipped
    ones. Registering a name again replaces that family. Returns it."""
    if not isinstance(family, Family) or not family.name:
        raise ConfigError(f"register(): {family!r} is not a Family with a name")
    _registered.pop(family.name, None)
    _registered[family.name] = family
    return family


def unregister(name: str) -> None:
    """Remove a family added by :func:`register` (the shipped ones stay)."""
    _registered.pop(name, None)


def family_named(name: str) -> Family:
    """The family registered or shipped under ``name``."""
    if name in _registered:
        return _registered[name]
    if name not in FAMILIES:
        raise ConfigError(f"no model family named {name!r}; known: {', '.join(names())}")
    if name not in _loaded:
        module, cls = FAMILIES[name].split(":")
        _loaded[name] = getattr(importlib.import_module(module), cls)()
    return _loaded[name]


def names() -> list[str]:
    """Every family's name, in the order lookups ask them."""
    return [*reversed(_registered), *(n for n in FAMILIES if n not in _registered)]


def families() -> list[Family]:
    """Every family, in the order lookups ask them."""
    return [family_named(n) for n in names()]


def family_of(model: nn.Module) -> Family:
    """The family of a loaded model; ConfigError naming the model's class (and its last layer's) otherwise."""
    for family in families():
        if family.recognises_model(model):
            return family
    layers = getattr(model, "model", None)
    last = f" (last layer {type(layers[-1]).__name__})" if isinstance(layers, nn.Sequential) and len(layers) else ""
    raise ConfigError(
        f"no model family handles a {type(model).__module__}.{type(model).__name__}{last}; families: "
        f"{', '.join(names())} (pagcp.families.register adds one)"
    )


def family_for_weights(spec: str | Path) -> Family:
    """The family of a ``--weights`` value (bundled name, yaml, checkpoint), decided without unpickling."""
    for family in families():
        if family.recognises_weights(str(spec)):
            return family
    bundled = sorted({n for f in families() for n in f.bundled()})
    raise CheckpointError(f"{spec}: no such file, and not a bundled model; bundled: {', '.join(bundled)}")


def load_model(
    spec: str | Path, nc: int | None = None, device: str | torch.device = "cpu", **options: Any
) -> nn.Module:
    """The model a ``--weights`` value names, by its family: eval mode, float32, on ``device``.

    ``spec``: a bundled config name ('yolov5s'), a bundled checkpoint name ('yolov5n-demo', 'yolov8n-demo',
    'yolov8n-seg-demo', 'yolo11n-pose-demo'), a model yaml (pagcp's YOLOv5 configs, any Ultralytics detection,
    segmentation or pose yaml), an official YOLOv5 ``.pt``, an Ultralytics ``.pt`` or a pagcp checkpoint
    (official checkpoints through allow-listing unpicklers). ``nc`` sets a config's class count; for a checkpoint
    it must match the file's; ``options`` are what else a config takes from the data
    (:meth:`~pagcp.families.base.Family.config_options`, e.g. a pose yaml's ``data_kpt_shape``).
    """
    return family_for_weights(spec).load(spec, nc=nc, device=device, **options)


def save_model(model: nn.Module, path: str | Path, **meta: object) -> Path:
    """Write ``model`` in its family's checkpoint format (atomically); returns the path."""
    return family_of(model).save(model, Path(path), **meta)


def problem_of(
    model: nn.Module,
    items: Sequence[str],
    img: int,
    batch: int,
    subset: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    workers: int = 0,
    shard: tuple[int, int] | None = None,
    **options: Any,
) -> Problem:
    """The oracle :class:`~pagcp.engine.problem.Problem` of ``model`` by its family: ``subset`` items drawn (seeded)
    from ``items`` (all when None), batched at ``img`` px in batches of ``batch`` on ``device`` (default: the
    model's); ``shard=(rank, world)`` keeps this process's share (a torchrun-sharded search). ``options`` go to
    the family's ``problem`` (``dtype``, ``replay``; YOLOv5's ``cache_targets``)."""
    family = family_of(model)
    chosen = choose_items(items, subset, seed)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    batches = family.oracle_batches(model, chosen, img, batch, device, workers)
    batches, split = shard_batches(batches, shard, len(chosen))
    return family.problem(model, batches, img, chosen, shard=split, **options)
