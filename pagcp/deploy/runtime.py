"""The optional deployment dependencies (onnx, onnxruntime) and ONNX Runtime sessions on them.

Nothing here imports onnx or onnxruntime at module level: :func:`require` imports them when a function
needs them and turns their absence into a :class:`~pagcp.errors.ConfigError` that says how to install them.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from pagcp.errors import ConfigError

INSTALL_HINT = 'pip install "pagcp[export]"'
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def require(name: str) -> ModuleType:
    """Import the optional package ``name`` (onnx, onnxruntime), or raise ConfigError naming the install command."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ConfigError(f"ONNX export needs the '{name}' package, which is not installed: {INSTALL_HINT}") from e


def default_threads() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def open_session(path: str | Path, threads: int | None = None, providers: list[str] | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on ``path``: ``threads`` intra-op threads, one inter-op, sequential.

    ``providers`` defaults to the CPU provider alone. Raises ConfigError naming the file when it is missing
    or onnxruntime cannot load it.
    """
    ort = require("onnxruntime")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: ONNX file not found")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only: onnxruntime's warnings go to stderr, not through logging
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own pybind exception types (InvalidProtobuf, Fail, ...)
        raise ConfigError(f"{path}: onnxruntime cannot load it: {e}") from e


def _hw(img_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(img_size, int):
        return img_size, img_size
    h, w = img_size
    return int(h), int(w)


def input_array(session: Any, path: str | Path, img_size: int | tuple[int, int], batch: int = 1, seed: int = 0):
    """A seeded uniform [0, 1) image batch of the session input's dtype, shape ``(batch, 3, h, w)``.

    Raises ConfigError when the file was exported with fixed axes that differ from the requested shape.
    """
    meta = session.get_inputs()[0]
    h, w = _hw(img_size)
    shape = (batch, 3, h, w)
    fixed = [(got, want) for got, want in zip(meta.shape, shape) if isinstance(got, int)]
    if len(meta.shape) != 4 or any(got != want for got, want in fixed):
        raise ConfigError(
            f"{path}: exported for input shape {list(meta.shape)}, cannot run {list(shape)}; "
            "export with --dynamic (dynamic=True) or use the exported size"
        )
    dtype = _DTYPES.get(meta.type)
    if dtype is None:
        raise ConfigError(f"{path}: input '{meta.name}' has type {meta.type}; expected a float or float16 image")
    return np.random.default_rng(seed).random(shape, dtype=np.float32).astype(dtype)
