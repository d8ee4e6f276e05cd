"""Ultralytics detection models (YOLOv8, YOLO11, ...) in pagcp: loading, saving, pruned widths.

- :func:`load_ultralytics` builds a model from an Ultralytics model yaml (``yolov8n.yaml``, ``yolo11s.yaml``,
  any scale; offline, from the yaml files Ultralytics ships) or reads an Ultralytics ``.pt`` checkpoint through
  the allow-listing unpickler of :mod:`pagcp.models.ultralytics_pickle`, or a bundled name (``yolov8n-demo``).
- :func:`save_ultralytics` writes a checkpoint in Ultralytics' own format (the pickled fp16 module in a dict
  with ``train_args``, ``date``, ``version``, ...), atomically, so that ``ultralytics.YOLO(path)`` loads, runs,
  validates and exports it with its pruned widths and without pagcp.
- :func:`fix_pruned_attributes` makes the attributes a sliced model's forward code reads (C2f/C3k2's and
  C2PSA's hidden width ``c``, used by ``forward_split`` in exports) agree with its tensors.
- :class:`YoloV5Outputs` presents a detector's predictions as YOLOv5's, so pagcp's own validation
  (:func:`pagcp.detection.evaluate.evaluate`) scores it.
- ``PrunedDetectionTrainer`` (built on first access; it subclasses Ultralytics' ``DetectionTrainer``) fine-tunes
  the checkpoint's own network instead of rebuilding it from its yaml, which would undo the pruning:
  ``YOLO("pruned.pt").train(trainer=PrunedDetectionTrainer, data=..., epochs=...)``.

The ``ultralytics`` package is imported only when one of these is used (``pip install ultralytics``).
"""

from __future__ import annotations

import copy
import os
import pickle
import zipfile
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from pagcp.errors import CheckpointError, ConfigError, UnsafePickleError
from pagcp.models.checkpoint import WEIGHTS_DIR, _check_meta, torch_save_atomic
from pagcp.models.ultralytics_pickle import ultralytics_pickle_module

#: bundled Ultralytics checkpoints (in pagcp/models/weights), by name
BUNDLED = ("yolov8n-demo",)
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


def detect_head(model: nn.Module) -> nn.Module:
    """The Detect head (the last layer) of an Ultralytics detection model; ConfigError naming what it is else."""
    from ultralytics.nn.modules.head import Detect

    layers = getattr(model, "model", None)
    head = layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None
    if type(head) is not Detect:
        found = type(head).__name__ if head is not None else f"no layer list ({type(model).__name__})"
        raise ConfigError(f"pagcp prunes Ultralytics detection models (a Detect head); this model has {found}")
    return head


def is_ultralytics_model(model: nn.Module) -> bool:
    """True for an ``ultralytics.nn.tasks`` model (without importing ultralytics if it is not loaded)."""
    return type(model).__module__.startswith("ultralytics.")


#: modules only Ultralytics' model yamls use (YOLOv5's use C3, SPPF, Detect and the like)
_ULTRALYTICS_MODULES = {"C2f", "C3k2", "C2PSA", "C2fAttn", "A2C2f", "SCDown", "PSA", "C2fCIB", "ELAN1", "RepNCSPELAN4"}


def is_ultralytics_spec(spec: str | Path) -> bool:
    """Whether a ``--weights`` value names an Ultralytics model, decided without unpickling anything: a bundled
    Ultralytics name; a yaml with ``scales`` or Ultralytics-only blocks, or a shipped yaml name pagcp does not
    bundle (``yolov8n.yaml``, ``yolo11s.yaml``); a ``.pt`` whose pickle names ``ultralytics.`` classes."""
    text = str(spec)
    if text in BUNDLED:
        return True
    path = Path(text)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            return path.name.startswith(("yolov8", "yolov9", "yolov10", "yolo11", "yolo12"))
        import yaml

        cfg = yaml.safe_load(path.read_text()) or {}
        layers = [*cfg.get("backbone", []), *cfg.get("head", [])] if isinstance(cfg, dict) else []
        names = {str(layer[2]) for layer in layers if isinstance(layer, list) and len(layer) > 2}
        return "scales" in cfg or bool(names & _ULTRALYTICS_MODULES)
    return path.is_file() and _pickles_ultralytics(path)


def _pickles_ultralytics(path: Path) -> bool:
    """True when the checkpoint's pickle mentions an ``ultralytics.`` module (its strings are read, not run)."""
    import pickletools

    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            data = archive.read(name) if name else b""
    except (zipfile.BadZipFile, OSError):
        return False
    try:
        return any(isinstance(arg, str) and arg.startswith("ultralytics.") for _, arg, _ in pickletools.genops(data))
    except (ValueError, pickle.UnpicklingError):  # a malformed stream: the loader names the problem
        return False


def _from_yaml(path: Path, nc: int | None) -> nn.Module:
    require_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    try:
        model = DetectionModel(str(path), nc=nc, verbose=False)
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such model yaml, here or among Ultralytics' own configs ({e})") from e
    except (KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ConfigError(f"{path}: not a valid Ultralytics model yaml: {type(e).__name__}: {e}") from e
    detect_head(model)
    return model


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """An Ultralytics checkpoint dict, read through the allow-listing unpickler (nothing else is executed)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
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


def _from_checkpoint(path: Path, nc: int | None) -> nn.Module:
    ckpt = read_checkpoint(path)
    model = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"{path}: holds no pickled model under 'model' or 'ema' (keys: {', '.join(ckpt)})")
    file_nc = int(detect_head(model).nc)
    if nc is not None and nc != file_nc:
        raise CheckpointError(
            f"{path}: the checkpoint was trained for nc={file_nc} classes but nc={nc} was requested; "
            "load it without nc (or with the data yaml that matches it)"
        )
    args = ckpt.get("train_args")
    model.args = dict(args) if isinstance(args, dict) else plain_args(model)
    model.pt_path = str(path)
    return model


def load_ultralytics(spec: str | Path, nc: int | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """An Ultralytics detection model, eval mode, float32, on ``device``.

    ``spec``: a model yaml (a file, or a name Ultralytics ships such as ``yolov8n.yaml`` / ``yolo11s.yaml``),
    an Ultralytics ``.pt`` checkpoint (read through the allow-listing unpickler: a file naming any other global
    raises UnsafePickleError before anything runs) or a bundled checkpoint name (``yolov8n-demo``). ``nc`` sets
    a yaml's class count; for a checkpoint it must match the file's.
    """
    text = str(spec)
    path = Path(text)
    if path.suffix in (".yaml", ".yml"):
        model = _from_yaml(path, nc)
    elif path.exists() or path.suffix in (".pt", ".pth") or os.sep in text:
        model = _from_checkpoint(path, nc)
    elif text in BUNDLED:
        model = _from_checkpoint(WEIGHTS_DIR / f"{text}.pt", nc)
    else:
        raise CheckpointError(
            f"{text}: no such file, and not a bundled Ultralytics model ({', '.join(BUNDLED)}); pass a model "
            "yaml (e.g. yolov8n.yaml, yolo11s.yaml) or an Ultralytics .pt checkpoint"
        )
    return model.to(device).float().eval()


def fix_pruned_attributes(model: nn.Module) -> nn.Module:
    """Make the width attributes of Ultralytics blocks agree with their (sliced) tensors; returns ``model``.

    C2f and its subclasses (C3k2, ...) and C2PSA split ``cv1``'s output into two halves of ``c`` channels
    (``forward_split``, used by ONNX exports, reads ``c``); pagcp keeps the halves equal, so ``c`` is half of
    ``cv1``'s output width.
    """
    from ultralytics.nn.modules.block import C2PSA, C2f

    for module in model.modules():
        if isinstance(module, (C2f, C2PSA)):
            width = module.cv1.conv.out_channels
            if width % 2:
                raise ConfigError(f"{type(module).__name__} with cv1 of {width} channels: its halves must be equal")
            module.c = width // 2
    return model


class YoloV5Outputs(nn.Module):
    """An Ultralytics detector whose eval-mode output is YOLOv5's, for :func:`pagcp.detection.evaluate.evaluate`.

    Ultralytics predicts (batch, 4 + nc, anchors): xywh pixels and class scores, no objectness. This returns
    ((batch, anchors, 5 + nc) with objectness 1, None), so pagcp's NMS scores each box by its class score as
    Ultralytics' NMS does. ``model`` exposes the wrapped network's layers (``model[-1]`` is its Detect head).
    """

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector
        self.model = detector.model
        names = getattr(detector, "names", None)
        self.names = [names[k] for k in sorted(names)] if isinstance(names, dict) else names

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        y = self.detector(x)
        y = (y[0] if isinstance(y, (tuple, list)) else y).transpose(1, 2)
        return torch.cat([y[..., :4], torch.ones_like(y[..., :1]), y[..., 4:]], -1), None


def plain_args(model: nn.Module) -> dict[str, Any]:
    """``model.args`` (Ultralytics keeps a dict or a namespace there, or nothing) as a plain dict."""
    args = getattr(model, "args", None)
    if args is None:
        return {}
    return dict(args) if isinstance(args, dict) else dict(vars(args))


def _train_args(model: nn.Module) -> dict[str, Any]:
    """The model's training arguments as a plain dict (Ultralytics' defaults overlaid), task 'detect'."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    own = plain_args(model)
    args = {**DEFAULT_CFG_DICT, **{k: v for k, v in own.items() if k in DEFAULT_CFG_DICT}, "task": "detect"}
    return {
        k: v if isinstance(v, (type(None), bool, int, float, str, list, tuple)) else str(v) for k, v in args.items()
    }


def save_ultralytics(model: nn.Module, path: str | Path, **meta: Any) -> Path:
    """Write ``model`` as an Ultralytics checkpoint (atomic: temp file + rename). Returns the path.

    The dict holds what Ultralytics' own final checkpoints hold (``model`` as an fp16 copy, ``train_args``,
    ``date``, ``version``, ``license``, ``docs``, empty training state) plus ``pagcp``: ``meta`` (plain numbers,
    strings, lists, dicts, tensors). ``ultralytics.YOLO(path)`` loads it without pagcp.
    """
    ultralytics = require_ultralytics()
    detect_head(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    half = fix_pruned_attributes(copy.deepcopy(model)).cpu().eval()
    half.args = _train_args(model)
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


def _trainer_class() -> type:
    require_ultralytics()
    from ultralytics.models.yolo.detect import DetectionTrainer

    class PrunedDetectionTrainer(DetectionTrainer):
        """Ultralytics' DetectionTrainer fine-tuning the loaded (pruned) network as it is, not one rebuilt from
        its yaml: ``YOLO("pruned.pt").train(trainer=PrunedDetectionTrainer, data=..., epochs=...)``."""

        def get_model(self, cfg: Any = None, weights: nn.Module | None = None, verbose: bool = True) -> nn.Module:
            if not isinstance(weights, nn.Module):
                raise ConfigError(
                    "PrunedDetectionTrainer fine-tunes a loaded checkpoint: YOLO('pruned.pt').train("
                    "trainer=PrunedDetectionTrainer, ...), not a model built from a yaml"
                )
            nc = int(detect_head(weights).nc)
            if nc != int(self.data["nc"]):
                raise ConfigError(
                    f"data {self.args.data}: has nc={self.data['nc']} classes but the pruned model has nc={nc}; "
                    "pruning keeps the head, so fine-tune on data with the same classes"
                )
            model = fix_pruned_attributes(copy.deepcopy(weights)).float()
            for p in model.parameters():
                p.requires_grad_(True)
            return self.set_model_names_for_load(model)

    return PrunedDetectionTrainer


_LAZY_CLASSES: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    if name == "PrunedDetectionTrainer":
        if name not in _LAZY_CLASSES:
            _LAZY_CLASSES[name] = _trainer_class()
        return _LAZY_CLASSES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
