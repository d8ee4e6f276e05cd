"""masked_bn_act: batch-norm affine + activation + candidate channel masks, in one pass over x.

Two forms share one kernel:

- :func:`masked_bn_act` expands N conv outputs into R*N candidate outputs (candidate-major):
  ``y[r*N + n, c] = act(x[n, c] * scale[c] + shift[c]) * keep[r, c]``;
- :func:`masked_bn_act_rows` takes x that already holds R*N rows (candidate-major):
  ``y[r*N + n, c] = act(x[r*N + n, c] * scale[c] + shift[c]) * keep[r, c]``.

Both compute in float32 and store x's dtype; they are inference ops (no gradients). This module owns the
argument checks; the backends behind :func:`pagcp.ops.registry.implementation` compute the op, and the
activation travels to them by name (a key of :data:`pagcp.ops.reference.ACTIVATIONS`).
"""

from __future__ import annotations

import torch

from pagcp.errors import ConfigError
from pagcp.ops.reference import ACTIVATIONS
from pagcp.ops.registry import implementation


def _prepare(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, keep: torch.Tensor, act: str, expand: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int, int, int]]:
    if act not in ACTIVATIONS:
        raise ConfigError(f"masked_bn_act: act={act!r}; use one of {', '.join(ACTIVATIONS)}")
    if x.dim() != 4 or x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ConfigError(
            f"masked_bn_act: x must be a float32/16/bf16 N x C x H x W tensor, got {tuple(x.shape)} {x.dtype}"
        )
    C = x.shape[1]
    if scale.numel() != C or shift.numel() != C:
        raise ConfigError(f"masked_bn_act: scale and shift need {C} elements, got {scale.numel()}, {shift.numel()}")
    if keep.dim() == 1:
        keep = keep.unsqueeze(0)
    if keep.dim() != 2 or keep.shape[1] != C:
        raise ConfigError(f"masked_bn_act: keep must be R x {C} (bool or float), got {tuple(keep.shape)}")
    R = keep.shape[0]
    if not expand and (R == 0 or x.shape[0] % R):
        raise ConfigError(f"masked_bn_act_rows: x has {x.shape[0]} rows, not a multiple of R={R}")
    rows = R * x.shape[0] if expand else x.shape[0]
    f32 = {"dtype": torch.float32, "device": x.device}
    return (
        scale.detach().reshape(C).to(**f32).contiguous(),
        shift.detach().reshape(C).to(**f32).contiguous(),
        keep.detach().to(**f32).contiguous(),
        (rows, C, x.shape[2], x.shape[3]),
    )


def _check_out(out: torch.Tensor, shape: tuple[int, int, int, int], x: torch.Tensor) -> None:
    if tuple(out.shape) != shape or out.dtype != x.dtype or out.device != x.device:
        raise ConfigError(
            f"masked_bn_act: out is {tuple(out.shape)} {out.dtype} on {out.device}; expected {shape} "
            f"{x.dtype} on {x.device}"
        )
    if out.data_ptr() == x.data_ptr() and out.numel():
        raise ConfigError("masked_bn_act: out must not alias x")


def _run(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    keep: torch.Tensor,
    act: str,
    expand: bool,
    out: torch.Tensor | None,
    backend: str | None,
) -> torch.Tensor:
    x = x.detach()  # an inference op: no autograd formula
    scale, shift, keep, shape = _prepare(x, scale, shift, keep, act, expand)
    if out is not None:
        _check_out(out, shape, x)
    return implementation("masked_bn_act", backend, x.device)(x, scale, shift, keep, act, expand, out)


def masked_bn_act(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    keep: torch.Tensor,
    act: str = "silu",
    out: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """R*N candidate outputs ``act(x[n]*scale + shift) * keep[r]`` at row r*N+n, from N rows of x.

    Args:
        x: conv output N x C x H x W (float32/16/bf16; NCHW, channels_last or any strides).
        scale, shift: per-channel (C,) affine of the folded batch norm (gamma/sqrt(var+eps), beta - mean*scale).
        keep: R x C candidate masks, bool or float (a (C,) mask means R = 1).
        act: "silu", "relu" or "identity".
        out: optional preallocated (R*N, C, H, W) result of x's dtype and device (any memory format).
        backend: None (``PAGCP_BACKEND`` or auto), "torch", "cpp", "cuda" or "triton".

    Returns:
        ``out`` if given, else a new tensor in x's memory format (channels_last in, channels_last out).
    """
    return _run(x, scale, shift, keep, act, True, out, backend)


def masked_bn_act_rows(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    keep: torch.Tensor,
    act: str = "silu",
    out: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Non-expanding form: x holds R*N rows already; row r*N+n is masked with keep[r]. Same arguments."""
    return _run(x, scale, shift, keep, act, False, out, backend)
