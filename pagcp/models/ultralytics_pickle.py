"""An allow-listing unpickler for Ultralytics ``.pt`` checkpoints (YOLOv8, YOLO11, ...).

Ultralytics checkpoints pickle a whole ``DetectionModel`` (its real classes, which pruned models need: the
widths live in the pickled modules) in a dict with the training arguments and metrics. Plain ``pickle``
would import and call whatever the file names; :class:`UltralyticsUnpickler` resolves only:

- ``torch.nn.Module`` subclasses of Ultralytics' network code (``ultralytics.nn.modules.*``,
  ``ultralytics.nn.tasks``) and of ``torch.nn.modules.*``;
- the few other classes checkpoints hold: ``ultralytics.utils.IterableSimpleNamespace`` (training arguments),
  the loss and assigner classes of ``ultralytics.utils.loss`` / ``ultralytics.utils.tal`` (a pickled
  ``model.criterion``), ``pathlib`` paths;
- what YOLOv5's allow-list already holds (:mod:`pagcp.models.safe_pickle`): tensor rebuilding, dtypes,
  ``collections.OrderedDict``, numpy scalars;
- ``getattr`` only as checkpoints use it: a module instance's ``forward`` / ``forward_fuse`` / ``forward_split``.

Anything else raises :class:`~pagcp.errors.UnsafePickleError` naming the global (``posix.system``, ...) before
it is called. Instantiating an allowed class through pickle runs no ``__init__`` (pickle restores state).
"""

from __future__ import annotations

import importlib
import pathlib
import pickle
import types
from typing import Any

from torch import nn

from pagcp.errors import UnsafePickleError
from pagcp.models.safe_pickle import _OTHER, _numpy_globals

#: modules whose nn.Module subclasses may be resolved (these, and any submodule of the prefixes)
MODULES = ("ultralytics.nn.tasks", "ultralytics.nn.modules")
MODULE_PREFIXES = ("ultralytics.nn.modules.", "torch.nn.modules.")
#: modules whose own classes (any class defined there) may be resolved: a pickled model.criterion
CLASS_MODULES = ("ultralytics.utils.loss", "ultralytics.utils.tal")
#: the methods a checkpoint may look up with getattr on a module instance
ALLOWED_METHODS = {"forward", "forward_fuse", "forward_split"}
#: (module, name) -> (module, name) for names older Ultralytics versions pickled
_RENAMED = {
    ("ultralytics.yolo.utils", "IterableSimpleNamespace"): ("ultralytics.utils", "IterableSimpleNamespace"),
    ("ultralytics.nn.tasks", "YOLOv10DetectionModel"): ("ultralytics.nn.tasks", "DetectionModel"),
}
_PATHS = {(m, c): pathlib.Path for m in ("pathlib", "pathlib._local") for c in ("PosixPath", "WindowsPath")}


def _refuse(module: str, name: str, why: str) -> UnsafePickleError:
    return UnsafePickleError(
        f"refusing to unpickle global '{module}.{name}': {why}; pagcp loads only the torch, numpy and "
        "Ultralytics classes that Ultralytics checkpoints hold, since loading anything else could run arbitrary code"
    )


def _safe_getattr(obj: Any, name: str) -> Any:
    """``getattr`` restricted to what checkpoints pickle: a module instance's forward methods."""
    if isinstance(obj, nn.Module) and name in ALLOWED_METHODS:
        return getattr(type(obj), name).__get__(obj)
    raise UnsafePickleError(
        f"refusing to unpickle getattr({type(obj).__name__}, {name!r}): only a module's "
        f"{', '.join(sorted(ALLOWED_METHODS))} may be looked up"
    )


def _resolve_class(module: str, name: str) -> type:
    """An allowed class of an allowed module (imported only after the module name passed the allow-list)."""
    if "." in name or name.startswith("_"):
        raise _refuse(module, name, "nested and private names are not allowed")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise _refuse(module, name, f"it does not exist in this environment ({type(e).__name__}: {e})") from None
    if not isinstance(obj, type):
        raise _refuse(module, name, f"it is a {type(obj).__name__}, not a class")
    if (module in MODULES or module.startswith(MODULE_PREFIXES)) and issubclass(obj, nn.Module):
        return obj
    if module in CLASS_MODULES and obj.__module__ == module:
        return obj
    raise _refuse(module, name, "it is not a torch.nn.Module subclass of Ultralytics' or torch's network code")


class UltralyticsUnpickler(pickle.Unpickler):
    """Unpickler whose find_class allows exactly the globals of Ultralytics detection checkpoints."""

    _allowed = {**_OTHER, **_numpy_globals(), **_PATHS, ("builtins", "getattr"): _safe_getattr}

    def find_class(self, module: str, name: str) -> Any:
        module, name = _RENAMED.get((module, name), (module, name))
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        if (module, name) == ("ultralytics.utils", "IterableSimpleNamespace"):
            return _resolve_namespace()
        if module in MODULES or module.startswith(MODULE_PREFIXES) or module in CLASS_MODULES:
            return _resolve_class(module, name)
        raise _refuse(module, name, "it is not on the allow-list")


def _resolve_namespace() -> type:
    from ultralytics.utils import IterableSimpleNamespace

    return IterableSimpleNamespace


def _load(file, **kwargs):
    return UltralyticsUnpickler(file, **kwargs).load()


#: A module object for ``torch.load(..., pickle_module=ultralytics_pickle_module, weights_only=False)``.
ultralytics_pickle_module = types.SimpleNamespace(
    __name__="pagcp.models.ultralytics_pickle",
    Unpickler=UltralyticsUnpickler,
    load=_load,
    UnpicklingError=pickle.UnpicklingError,
)
