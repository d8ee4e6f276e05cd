"""channel_activation_stats: per-channel mean |x| and mean x^2 of a feature map, in one pass.

This module owns the argument checks; the backends behind :func:`pagcp.ops.registry.implementation`
compute it.
"""

from __future__ import annotations

import torch

from pagcp.errors import ConfigError
from pagcp.ops.registry import implementation


def channel_activation_stats(x: torch.Tensor, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean |x|, mean x^2) over N, H and W as float32 (C,) tensors; zeros when N*H*W == 0.

    x: N x C x H x W, float32/16/bf16, any memory layout. backend: as for the other ops.
    """
    if x.dim() != 4 or x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ConfigError(
            f"channel_activation_stats: x must be a float N x C x H x W tensor, got {tuple(x.shape)} {x.dtype}"
        )
    x = x.detach()
    mean_abs, mean_sq = implementation("channel_activation_stats", backend, x.device)(x)
    return mean_abs, mean_sq
