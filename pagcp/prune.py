"""``python -m pagcp.prune``: the pruning command (implemented in :mod:`pagcp.cli.prune`).

This module is also the Python API function: ``pagcp.prune(model, loss_fn, batches, example_input, ...)``
(see :func:`pagcp.engine.api.prune`). Python binds ``pagcp.prune`` to this module as soon as anything
imports it, so the module is made callable and forwards calls to the function: ``pagcp.prune(...)`` works
whatever has been imported.
"""

from __future__ import annotations

import inspect
import sys
import types
from typing import Any

from pagcp.cli.prune import main


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from pagcp.engine.api import prune

        return prune(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        from pagcp.engine.api import prune

        return inspect.signature(prune)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
