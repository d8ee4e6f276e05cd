"""The (op, backend) -> implementation table of the pagcp ops, and the choice of backend per call.

Backends:

- ``torch``: the pure-PyTorch references of :mod:`pagcp.ops.reference` (always available);
- ``cpp``: the compiled extension ``pagcp._C`` on the tensor's device (CPU with OpenMP, CUDA where built),
  called through ``torch.ops.pagcp.*``;
- ``cuda``: the extension's CUDA kernels only (CUDA tensors);
- ``triton``: the Triton kernels in ``pagcp.kernels`` (CUDA tensors, or CPU tensors under
  ``TRITON_INTERPRET=1``).

Resolution: explicit argument > ``PAGCP_BACKEND`` > auto. Auto picks Triton, then the CUDA extension, for
CUDA tensors and the C++ extension for CPU tensors, falling back to the reference with one warning per
process. A backend named explicitly (argument or environment) that cannot run raises
:class:`pagcp.errors.BackendUnavailableError` saying why; an unknown name raises
:class:`pagcp.errors.ConfigError` naming the argument or variable.

Every implementation of an op takes the op's packed (schema) arguments, listed in :data:`OPS`; the op
modules validate and pack the user's arguments, then call :func:`implementation`.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch

from pagcp.errors import BackendUnavailableError, ConfigError
from pagcp.ops import extension, reference

BACKENDS = ("torch", "cpp", "cuda", "triton")
OPS = {
    "filter_saliency": "(weights, keep, keep_offsets, groups, p, mean) -> flat float32 saliency",
    "masked_bn_act": "(x, scale, shift, keep, act, expand, out or None) -> out or a new result",
    "channel_activation_stats": "(x) -> (mean_abs, mean_sq)",
}
ENV_VAR = "PAGCP_BACKEND"

_warned = False


# ------------------------------------------------------------------------------- implementations


def _extension_masked_bn_act(x, scale, shift, keep, act, expand, out):
    if out is None:
        return torch.ops.pagcp.masked_bn_act(x, scale, shift, keep, act, expand)
    torch.ops.pagcp.masked_bn_act_out(x, scale, shift, keep, act, expand, out)
    return out


def _triton_filter_saliency(weights, keep, keep_offsets, groups, p, mean):
    from pagcp import kernels  # imported on first use: Triton is optional and slow to import

    return kernels.filter_saliency(weights, keep, keep_offsets, groups, p, mean)


def _triton_masked_bn_act(x, scale, shift, keep, act, expand, out):
    from pagcp import kernels

    if out is None:
        out = reference.empty_bn_act_out(x, keep, expand)
    return kernels.masked_bn_act(x, scale, shift, keep, act, expand, out)


def _triton_channel_activation_stats(x):
    from pagcp import kernels

    return kernels.channel_activation_stats(x)


IMPLEMENTATIONS: dict[tuple[str, str], Callable[..., Any]] = {
    ("filter_saliency", "torch"): reference.filter_saliency_packed,
    ("filter_saliency", "cpp"): torch.ops.pagcp.filter_saliency,
    ("filter_saliency", "cuda"): torch.ops.pagcp.filter_saliency,
    ("filter_saliency", "triton"): _triton_filter_saliency,
    ("masked_bn_act", "torch"): reference.masked_bn_act,
    ("masked_bn_act", "cpp"): _extension_masked_bn_act,
    ("masked_bn_act", "cuda"): _extension_masked_bn_act,
    ("masked_bn_act", "triton"): _triton_masked_bn_act,
    ("channel_activation_stats", "torch"): reference.channel_activation_stats,
    ("channel_activation_stats", "cpp"): torch.ops.pagcp.channel_activation_stats,
    ("channel_activation_stats", "cuda"): torch.ops.pagcp.channel_activation_stats,
    ("channel_activation_stats", "triton"): _triton_channel_activation_stats,
}


def implementation(op: str, backend: str | None, device: torch.device) -> Callable[..., Any]:
    """The implementation of ``op`` to run for tensors on ``device``, ``backend`` resolved as described above."""
    return IMPLEMENTATIONS[(op, resolve_backend(backend, device))]


# ---------------------------------------------------------------------------------- availability


def triton_interpreted() -> bool:
    """Whether Triton kernels run under the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _triton_import_error() -> str:
    if importlib.util.find_spec("triton") is None:
        return "the triton package is not installed (pip install 'triton>=3.6')"
    try:
        from pagcp import kernels  # noqa: F401  (pagcp.kernels, installed from kernels/)
    except ImportError as exc:
        return f"pagcp.kernels failed to import ({exc})"
    return ""


def _extension_availability(name: str, device: torch.device | None) -> tuple[bool, str]:
    cuda_device = device is not None and device.type == "cuda"
    if extension.EXTENSION is None:
        return False, extension.LOAD_ERROR
    wants_cuda = name == "cuda" or cuda_device
    if wants_cuda and not extension.with_cuda():
        return False, "pagcp._C was built without CUDA (no CUDA toolkit, or PAGCP_SKIP_CUDA_BUILD=1)"
    if wants_cuda and not torch.cuda.is_available():
        return False, "pagcp._C has CUDA kernels but no CUDA device is visible"
    if name == "cuda" and device is not None and not cuda_device:
        return False, f"the cuda backend needs CUDA tensors, got tensors on {device}"
    if device is not None and device.type not in ("cpu", "cuda"):
        return False, f"pagcp._C has no kernels for {device.type} tensors"
    return True, "pagcp._C (CUDA)" if wants_cuda else "pagcp._C (CPU, OpenMP)"


def _triton_availability(device: torch.device | None) -> tuple[bool, str]:
    error = _triton_import_error()
    if error:
        return False, error
    if (device is not None and device.type == "cuda") or (device is None and torch.cuda.is_available()):
        return True, "Triton kernels on the GPU"
    if triton_interpreted():
        return True, "Triton kernels under the CPU interpreter (TRITON_INTERPRET=1)"
    return False, "Triton needs a CUDA device (or TRITON_INTERPRET=1 for CPU tensors)"


def availability(name: str, device: torch.device | None) -> tuple[bool, str]:
    """(available, reason) of one backend for tensors on ``device`` (None: any device)."""
    if name == "torch":
        return True, "pure-PyTorch reference"
    if name in ("cpp", "cuda"):
        return _extension_availability(name, device)
    if name == "triton":
        return _triton_availability(device)
    raise ConfigError(f"unknown op backend {name!r}; choose one of {', '.join(BACKENDS)} (or leave it unset)")


def backends() -> dict[str, tuple[bool, str]]:
    """Which backends can run here: name -> (available, reason). Devices default to CUDA when visible."""
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    result = {name: availability(name, device) for name in BACKENDS}
    if device.type == "cuda":  # the cpp backend also serves CPU tensors
        cpu_ok, cpu_reason = availability("cpp", torch.device("cpu"))
        if cpu_ok and not result["cpp"][0]:
            result["cpp"] = (True, f"{cpu_reason}; CUDA: {result['cpp'][1]}")
    return result


# ------------------------------------------------------------------------------------ resolution


def _fallback_warning(device: torch.device, reasons: list[str]) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    warnings.warn(
        f"pagcp ops: no compiled backend for {device.type} tensors ({'; '.join(reasons)}); using the slower "
        f"pure-PyTorch reference. Set {ENV_VAR}=torch to silence this warning.",
        RuntimeWarning,
        stacklevel=5,  # past resolve_backend and implementation: the public op or its caller
    )


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """The backend to run for tensors on ``device``: one of :data:`BACKENDS`, a key of the table."""
    source = "argument backend"
    if backend is None:
        backend = os.environ.get(ENV_VAR) or None
        source = f"environment variable {ENV_VAR}"
    if backend is not None and backend != "auto":
        name = backend.lower()
        if name not in BACKENDS:
            raise ConfigError(f"{source}={backend!r} is not a backend; choose one of {', '.join(BACKENDS)}")
        ok, reason = availability(name, device)
        if not ok:
            raise BackendUnavailableError(f"backend {name!r} ({source}) is unavailable: {reason}")
        return name
    order = ("triton", "cuda") if device.type == "cuda" else ("cpp",)
    reasons = []
    for name in order:
        ok, reason = availability(name, device)
        if ok:
            return name
        reasons.append(f"{name}: {reason}")
    _fallback_warning(device, reasons)
    return "torch"
