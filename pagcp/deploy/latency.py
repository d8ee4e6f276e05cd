"""ONNX Runtime CPU latency of exported models: one model, or several measured side by side.

Latency is wall time of one ``session.run`` on a batch-1 image, after warm-up runs; the summary is the
median and 90th percentile in milliseconds. :func:`compare_latency` interleaves the models (one run of
each per round, in a rotating order), so that a change of machine load in the middle of a measurement
affects every model alike and the ratios stay meaningful on a shared machine.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from pagcp.deploy.runtime import default_threads, input_array, open_session
from pagcp.errors import ConfigError


def _check_counts(runs: int, warmup: int) -> None:
    if runs < 1:
        raise ConfigError(f"runs={runs}: need at least one timed run")
    if warmup < 0:
        raise ConfigError(f"warmup={warmup}: must be >= 0")


def _timed_run(session: Any, name: str, x: np.ndarray) -> float:
    start = time.perf_counter()
    session.run(None, {name: x})
    return (time.perf_counter() - start) * 1000.0


def _summary(times_ms: list[float], threads: int) -> dict[str, float | int]:
    return {
        "median_ms": statistics.median(times_ms),
        "p90_ms": float(np.percentile(times_ms, 90)),
        "min_ms": min(times_ms),
        "runs": len(times_ms),
        "threads": threads,
    }


def _prepare(path: str | os.PathLike, img_size: int | tuple[int, int], threads: int, warmup: int):
    """An onnxruntime session on ``path``, its input name and a fixed input, warmed up ``warmup`` times."""
    session = open_session(path, threads=threads)
    name = session.get_inputs()[0].name
    x = input_array(session, path, img_size)
    for _ in range(warmup):
        session.run(None, {name: x})
    return session, name, x


def onnx_latency(
    path: str | os.PathLike,
    img_size: int | tuple[int, int],
    runs: int = 20,
    warmup: int = 5,
    threads: int | None = None,
) -> dict[str, float | int]:
    """ONNX Runtime CPU latency of ``path`` at batch 1 and ``img_size`` (int or ``(h, w)``).

    Returns ``{"median_ms", "p90_ms", "min_ms", "runs", "threads"}``; ``threads`` intra-op threads
    (default: the cores this process may use).
    """
    return compare_latency({"model": path}, img_size, runs=runs, warmup=warmup, threads=threads)["model"]


def compare_latency(
    paths: dict[str, str | os.PathLike],
    img_size: int | tuple[int, int],
    runs: int = 20,
    warmup: int = 5,
    threads: int | None = None,
) -> dict[str, dict[str, float | int]]:
    """Latency of several ONNX files measured interleaved: ``{label: onnx_latency-style summary}``.

    Every model is warmed up first; then each of ``runs`` rounds runs every model once, starting from a
    different model each round.
    """
    _check_counts(runs, warmup)
    if not paths:
        raise ConfigError("compare_latency: no models given")
    threads = threads or default_threads()
    prepared = {label: _prepare(Path(p), img_size, threads, warmup) for label, p in paths.items()}
    labels = list(prepared)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(runs):
        shift = r % len(labels)
        for label in labels[shift:] + labels[:shift]:
            times[label].append(_timed_run(*prepared[label]))
    return {label: _summary(times[label], threads) for label in labels}
