"""Helpers shared by the op tests: input layouts and backend availability."""

from __future__ import annotations

import pytest
import torch

from pagcp.ops.dispatch import availability


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
