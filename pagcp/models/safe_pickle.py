"""An allow-listing unpickler for official YOLOv5 checkpoints.

Official ``.pt`` files pickle whole ``nn.Module`` objects (``models.yolo.Model`` and friends). Plain
``pickle`` would import and run whatever the file names; this unpickler resolves exactly the globals such
files need, maps YOLOv5's own classes to inert stand-ins (plain ``nn.Module`` containers that cannot run),
and refuses everything else with :class:`~pagcp.errors.UnsafePickleError` before anything executes.
"""

from __future__ import annotations

import collections
import pickle
import types
from typing import Any

import torch
from torch import nn

from pagcp.errors import UnsafePickleError

#: YOLOv5 classes found in official files, by their upstream module (any of these prefixes).
_YOLO_MODULES = ("models.yolo", "models.common", "models.experimental")
_YOLO_PREFIXES = ("", "yolov5.")
_YOLO_CLASSES = {
    "Model",
    "DetectionModel",
    "BaseModel",
    "Detect",
    "Conv",
    "C3",
    "Bottleneck",
    "SPPF",
    "SPP",
    "Focus",
    "Concat",
    "BottleneckCSP",
    "DWConv",
    "Contract",
    "Expand",
    "C3TR",
    "C3SPP",
    "C3Ghost",
    "GhostConv",
    "GhostBottleneck",
}

#: torch.nn classes allowed by (module, name); instances get nn.Module's harmless __setstate__.
_TORCH_NN = {
    ("torch.nn.modules.conv", "Conv2d"),
    ("torch.nn.modules.batchnorm", "BatchNorm2d"),
    ("torch.nn.modules.activation", "SiLU"),
    ("torch.nn.modules.activation", "LeakyReLU"),
    ("torch.nn.modules.activation", "Hardswish"),
    ("torch.nn.modules.activation", "ReLU"),
    ("torch.nn.modules.activation", "Sigmoid"),
    ("torch.nn.modules.linear", "Identity"),
    ("torch.nn.modules.container", "Sequential"),
    ("torch.nn.modules.container", "ModuleList"),
    ("torch.nn.modules.container", "ModuleDict"),
    ("torch.nn.modules.pooling", "MaxPool2d"),
    ("torch.nn.modules.upsampling", "Upsample"),
}

_OTHER: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.nn.parameter", "Parameter"): nn.Parameter,
}
for _dtype in (
    torch.float16,
    torch.float32,
    torch.float64,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.uint8,
    torch.int8,
    torch.bool,
):
    _OTHER[("torch", str(_dtype).split(".")[1])] = _dtype


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:
        import numpy as np
    except ImportError:
        return {}
    scalar = None
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            scalar = __import__(mod, fromlist=["scalar"]).scalar
            break
        except (ImportError, AttributeError):
            continue
    found: dict[tuple[str, str], Any] = {("numpy", "dtype"): np.dtype, ("numpy", "ndarray"): np.ndarray}
    if scalar is not None:
        found[("numpy.core.multiarray", "scalar")] = scalar
        found[("numpy._core.multiarray", "scalar")] = scalar
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        cls = getattr(getattr(np, "dtypes", None), name, None)
        if cls is not None:
            found[("numpy.dtypes", name)] = cls
    return found


class InertModule(nn.Module):
    """Stand-in for a pickled YOLOv5 class: holds its state, cannot run."""

    upstream = "?"

    def forward(self, *args, **kwargs):  # pragma: no cover - never called by pagcp
        raise RuntimeError(f"{self.upstream} was loaded as an inert stand-in and cannot run")


_STANDINS: dict[str, type[InertModule]] = {}


def _standin(module: str, name: str) -> type[InertModule]:
    key = f"{module}.{name}"
    if key not in _STANDINS:
        _STANDINS[key] = type(name, (InertModule,), {"upstream": key, "__module__": __name__})
    return _STANDINS[key]


class SafeUnpickler(pickle.Unpickler):
    """Unpickler whose find_class allows exactly the globals of official YOLOv5 checkpoints."""

    _allowed = {**_OTHER, **_numpy_globals()}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        if (module, name) in _TORCH_NN:
            return getattr(nn, name)
        for prefix in _YOLO_PREFIXES:
            if module in {prefix + m for m in _YOLO_MODULES} and name in _YOLO_CLASSES:
                return _standin(module, name)
        raise UnsafePickleError(
            f"refusing to unpickle global '{module}.{name}': it is not on pagcp's allow-list of names that "
            "official YOLOv5 checkpoints use, and loading it could run arbitrary code"
        )


def _load(file, **kwargs):
    return SafeUnpickler(file, **kwargs).load()


#: A module object for ``torch.load(..., pickle_module=safe_pickle_module, weights_only=False)``.
safe_pickle_module = types.SimpleNamespace(
    __name__="pagcp.models.safe_pickle", Unpickler=SafeUnpickler, load=_load, UnpicklingError=pickle.UnpicklingError
)
