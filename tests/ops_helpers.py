"""Helpers shared by the op tests: input layouts, backend availability, registered-op cases, and
subprocesses that run as a pure-Python install (the compiled extension blocked)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from pagcp.ops.registry import availability

# Run first in a subprocess: every `from pagcp import _C` made by pagcp.ops raises, as in a pure-Python install.
BLOCK_EXTENSION = (
    "import sys, builtins\n"
    "real = builtins.__import__\n"
    "def fake(name, globals=None, locals=None, fromlist=(), level=0):\n"
    "    if fromlist and '_C' in fromlist and globals and globals.get('__package__') == 'pagcp.ops':\n"
    "        raise ImportError('simulated missing extension')\n"
    "    return real(name, globals, locals, fromlist, level)\n"
    "builtins.__import__ = fake\n"
)


def strided(x: torch.Tensor) -> torch.Tensor:
    """A copy of x that is non-contiguous in any memory format (every other element of a wider buffer)."""
    view = x.new_zeros(*x.shape[:3], 2 * x.shape[3])[..., ::2]
    return view.copy_(x)


def require_backend(backend: str, device: str = "cpu") -> None:
    """Skip the test when the backend cannot run here, saying why."""
    ok, why = availability(backend, torch.device(device))
    if not ok:
        pytest.skip(f"{backend} backend unavailable: {why}")


def layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """x as NCHW, channels_last and non-contiguous."""
    return {
        "nchw": x,
        "channels_last": x.to(memory_format=torch.channels_last),
        "strided": strided(x),
    }


def op_cases(device: str = "cpu") -> list[tuple[str, tuple]]:
    """(op name, schema arguments) covering every torch.ops.pagcp op, both layouts and every activation."""
    weights = [torch.randn(3, 2, 3, 3, device=device), torch.randn(4, 1, 1, 1, device=device)]
    keep_flat = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0], device=device)
    cases = [("filter_saliency", (weights, keep_flat, [0, 2], [1, 4], p, mean)) for p, mean in ((1, False), (2, True))]
    x = torch.randn(2, 3, 4, 5, device=device)
    scale, shift = torch.rand(3, device=device), torch.randn(3, device=device)
    keep = torch.tensor([[1.0, 0.0, 1.0], [0.5, 1.0, 0.0]], device=device)
    for xv in (x, x.to(memory_format=torch.channels_last)):
        cases.append(("masked_bn_act", (xv, scale, shift, keep, "silu", True)))
        cases.append(("masked_bn_act", (xv, scale, shift, keep, "relu", False)))
        out = torch.empty(4, 3, 4, 5, device=device)
        cases.append(("masked_bn_act_out", (xv, scale, shift, keep, "identity", True, out)))
        cases.append(("channel_activation_stats", (xv,)))
    return cases


def run_without_extension(code: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with the extension blocked and this folder importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(__file__), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-c", BLOCK_EXTENSION + code]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
