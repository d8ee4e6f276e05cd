"""Loading of the compiled extension ``pagcp._C``, after the op definitions of :mod:`pagcp.ops.library`.

The extension holds no schemas: it only registers CPU (OpenMP) and, where built, CUDA kernels for the ops
that :mod:`pagcp.ops.library` defined. Importing this module never fails: when the extension is absent,
broken or registers no kernels, :data:`EXTENSION` is None, :data:`LOAD_ERROR` says why, the ``cpp`` and
``cuda`` backends report themselves unavailable and ``torch.ops.pagcp.*`` run on the references.
"""

from __future__ import annotations

from types import ModuleType

from pagcp.ops import library

BUILD_HINT = "build it with `pip install --no-build-isolation -e .` (see setup.py for the switches)"


def _import_extension() -> tuple[ModuleType | None, str]:
    try:
        from pagcp import _C
    except (ImportError, OSError, RuntimeError) as exc:  # absent, built against another torch, or rejected
        return None, f"pagcp._C is not importable ({exc}); {BUILD_HINT}"
    missing = [name for name in library.SCHEMAS if not library.has_kernel(name, "CPU")]
    if missing:
        return None, f"pagcp._C registers no CPU kernel for {', '.join(missing)} (a stale build?); {BUILD_HINT}"
    return _C, ""


EXTENSION, LOAD_ERROR = _import_extension()


def with_cuda() -> bool:
    """Whether the loaded extension was compiled with its CUDA implementations."""
    return EXTENSION is not None and bool(getattr(EXTENSION, "WITH_CUDA", 0))
