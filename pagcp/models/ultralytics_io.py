"""Ultralytics model files in pagcp: reading (offline, allow-listed) and writing them in Ultralytics' own format.

- :func:`build_from_yaml` builds a model from an Ultralytics model yaml (``yolov8n.yaml``, ``yolo11s.yaml``, any
  scale; offline, from the yaml files Ultralytics ships); :func:`read_checkpoint` reads an Ultralytics ``.pt``
  through the allow-listing unpickler of :mod:`pagcp.models.ultralytics_pickle`; :func:`model_of_checkpoint`
  takes the network out of it.
- :func:`save_ultralytics` writes a checkpoint in Ultralytics' own format (the pickled fp16 module in a dict
  with ``train_args``, ``date``, ``version``, ...), atomically, so that ``ultralytics.YOLO(path)`` loads, runs,
  validates and exports it with its pruned widths and without pagcp.
- :func:`pruned_trainer` makes a subclass of one of Ultralytics' trainers that fine-tunes the checkpoint's own
  network instead of rebuilding it from its yaml, which would undo the pruning.

What the network is (its head, classes, which blocks it has) is its family's business
(:mod:`pagcp.families.ultralytics_detect`); nothing here looks inside a model. The ``ultralytics`` package
is imported only when one of these is used (``pip install ultralytics``).
"""

from __future__ import annotations

import copy
import os
import pickle
import zipfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from pagcp.errors import CheckpointError, ConfigError, UnsafePickleError
from pagcp.models.checkpoint import _check_meta, check_torch_file, torch_save_atomic
from pagcp.models.ultralytics_pickle import ultralytics_pickle_module

LICENSE = "AGPL-3.0 License (https://ultralytics.com/license)"
_INSTALL = "pip install ultralytics (or pip install 'pagcp[ultralytics]')"


def require_ultralytics() -> ModuleType:
    """The ``ultralytics`` package, or a ConfigError saying how to install it."""
    os.environ.setdefault("YOLO_OFFLINE", "1")  # no online checks on import; pagcp never downloads
    try:
        import ultralytics
    except ImportError as e:
        raise ConfigError(f"Ultralytics models need the ultralytics package: {_INSTALL} ({e})") from e
    return ultralytics


def build_from_yaml(
    path: str | Path, nc: int | None = None, model_class: str = "DetectionModel", **options: Any
) -> nn.Module:
    """A network built from an Ultralytics model yaml (a file, or a name Ultralytics ships) by the
    ``ultralytics.nn.tasks`` class ``model_class`` (``options``: its other arguments, e.g. a PoseModel's
    ``data_kpt_shape``), with random weights; ConfigError naming the yaml else."""
    require_ultralytics()
    from ultralytics.nn import tasks

    try:
        model = getattr(tasks, model_class)(str(path), nc=nc, verbose=False, **options)
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such model yaml, here or among Ultralytics' own configs ({e})") from e
    except (KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ConfigError(f"{path}: not a valid Ultralytics model yaml: {type(e).__name__}: {e}") from e
    return model


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """An Ultralytics checkpoint dict, read through the allow-listing unpickler (nothing else is executed)."""
    path = check_torch_file(path)
    require_ultralytics()
    try:
        ckpt = torch.load(path, map_location="cpu", pickle_module=ultralytics_pickle_module, weights_only=False)
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not an Ultralytics checkpoint (a {type(ckpt).__name__}, expected a dict)")
    return ckpt


def pickle_strings(path: Path) -> set[str]:
    """The strings a torch file's pickle holds (global names among them), read without running anything; empty
    for anything that is not a readable torch zip file, or a malformed stream (the loader names the problem)."""
    import pickletools

    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            data = archive.read(name) if name else b""
    except (zipfile.BadZipFile, OSError):
        return set()
    strings: set[str] = set()
    try:
        for _, arg, _ in pickletools.genops(data):
            if isinstance(arg, str):
                strings.update(arg.split(" ") if " " in arg else (arg,))  # a GLOBAL opcode holds "module name"
    except (ValueError, pickle.UnpicklingError):
        return set()
    return strings


def pickle_mentions(path: Path, prefix: str) -> bool:
    """True when the torch file's pickle names a global starting with ``prefix`` (its strings are read, nothing
    is run); False for anything that is not a readable torch zip file."""
    return any(s.startswith(prefix) for s in pickle_strings(path))


def model_of_checkpoint(ckpt: dict[str, Any], path: str | Path) -> nn.Module:
    """The network of a checkpoint read by :func:`read_checkpoint` (its EMA weights when it has them), with its
    training arguments as ``model.args`` and the file as ``model.pt_path``."""
    model = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"{path}: holds no pickled model under 'model' or 'ema' (keys: {', '.join(ckpt)})")
    args = ckpt.get("train_args")
    model.args = dict(args) if isinstance(args, dict) else plain_args(model)
    model.pt_path = str(path)
    return model


def plain_args(model: nn.Module) -> dict[str, Any]:
    """``model.args`` (Ultralytics keeps a dict or a namespace there, or nothing) as a plain dict."""
    args = getattr(model, "args", None)
    if args is None:
        return {}
    return dict(args) if isinstance(args, dict) else dict(vars(args))


def _train_args(model: nn.Module, task: str) -> dict[str, Any]:
    """The model's training arguments as a plain dict (Ultralytics' defaults overlaid) for ``task``."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    own = plain_args(model)
    args = {**DEFAULT_CFG_DICT, **{k: v for k, v in own.items() if k in DEFAULT_CFG_DICT}, "task": task}
    return {
        k: v if isinstance(v, (type(None), bool, int, float, str, list, tuple)) else str(v) for k, v in args.items()
    }


def save_ultralytics_file(model: nn.Module, path: str | Path, task: str, **meta: Any) -> Path:
    """Write ``model`` (made consistent by its family first) as an Ultralytics checkpoint of ``task`` (atomic:
    temp file + rename). Returns the path.

    The dict holds what Ultralytics' own final checkpoints hold (``model`` as an fp16 copy, ``train_args``,
    ``date``, ``version``, ``license``, ``docs``, empty training state) plus ``pagcp``: ``meta`` (plain numbers,
    strings, lists, dicts, tensors). ``ultralytics.YOLO(path)`` loads it without pagcp.
    """
    ultralytics = require_ultralytics()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    half = copy.deepcopy(model).cpu().eval()
    half.args = _train_args(model, task)
    if hasattr(half, "criterion"):
        half.criterion = None  # training-only state, as Ultralytics strips it
    half = half.half().to(memory_format=torch.contiguous_format)
    for p in half.parameters():
        p.requires_grad_(False)
    ckpt = {
        "date": datetime.now().astimezone().isoformat(),
        "version": ultralytics.__version__,
        "license": LICENSE,
        "docs": "https://docs.ultralytics.com",
        "epoch": -1,
        "best_fitness": None,
        "model": half,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": dict(half.args),
        "train_metrics": None,
        "train_results": None,
        "pagcp": {k: _check_meta(v, k) for k, v in meta.items()},
    }
    torch_save_atomic(ckpt, path)
    return path


def pruned_trainer(base: type, prepare: Callable[[nn.Module, Any], nn.Module]) -> type:
    """A subclass of the Ultralytics trainer ``base`` that fine-tunes the loaded (pruned) network as it is, not
    one rebuilt from its yaml: ``prepare(weights, trainer)`` returns the network to train (its family checks it
    against the data and makes its width attributes consistent). Use it as
    ``YOLO("pruned.pt").train(trainer=<the class>, data=..., epochs=...)``."""

    class PrunedTrainer(base):
        def get_model(self, cfg: Any = None, weights: nn.Module | None = None, verbose: bool = True) -> nn.Module:
            if not isinstance(weights, nn.Module):
                raise ConfigError(
                    f"{type(self).__name__} fine-tunes a loaded checkpoint: YOLO('pruned.pt').train("
                    f"trainer={type(self).__name__}, ...), not a model built from a yaml"
                )
            model = prepare(copy.deepcopy(weights), self).float()
            for p in model.parameters():
                p.requires_grad_(True)
            return self.set_model_names_for_load(model)

    PrunedTrainer.__name__ = PrunedTrainer.__qualname__ = f"Pruned{base.__name__}"
    return PrunedTrainer
