"""filter_saliency: per-filter Lp norm over the alive input channels of many conv weights at once.

This module owns the argument checks and the packing of the per-layer masks into the schema form; the
backends behind :func:`pagcp.ops.registry.implementation` compute it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pagcp.errors import ConfigError
from pagcp.ops.registry import implementation


def _pack_keep(
    weights: Sequence[torch.Tensor], in_keep: Sequence[torch.Tensor | None]
) -> tuple[torch.Tensor, list[int], list[int]]:
    """All layers' input keep masks as one float32 0/1 buffer, with per-layer offsets and groups."""
    device = weights[0].device
    pieces, offsets, groups = [], [], []
    offset = 0
    for i, (w, keep) in enumerate(zip(weights, in_keep)):
        cout, cpg = int(w.shape[0]), int(w.shape[1])
        if keep is None:
            g, piece = 1, torch.ones(cpg, dtype=torch.float32, device=device)
        else:
            if keep.dim() != 1 or cpg == 0 or keep.numel() % cpg:
                raise ConfigError(
                    f"filter_saliency: in_keep[{i}] has shape {tuple(keep.shape)}; it must be a 1-D mask over "
                    f"the conv's input channels, a multiple of weight.shape[1]={cpg}"
                )
            g = keep.numel() // cpg
            if cout % g:
                raise ConfigError(
                    f"filter_saliency: in_keep[{i}] implies groups={g}, which does not divide the {cout} filters"
                )
            piece = (keep.to(device) != 0).to(torch.float32)
        pieces.append(piece)
        offsets.append(offset)
        groups.append(g)
        offset += piece.numel()
    return torch.cat(pieces), offsets, groups


def filter_saliency(
    weights: Sequence[torch.Tensor],
    in_keep: Sequence[torch.Tensor | None] | None = None,
    p: int = 1,
    reduce: str = "sum",
    backend: str | None = None,
) -> list[torch.Tensor]:
    """Saliency of every output filter of every conv weight, computed in one (segmented) launch.

    Args:
        weights: conv weights (Cout, Cin/groups, kh, kw), any kernel size; float32/float16/bfloat16.
        in_keep: per weight, a mask over the conv's *full* input channels (Cin = groups * weight.shape[1],
            so grouped and depthwise convs are inferred from its length; the input channel of weight[o, j]
            is g*(Cin/groups)+j for the group g of filter o), or None when all inputs are alive.
        p: 1 (sum |w|) or 2 (sqrt(sum w^2)).
        reduce: "sum" gives the Lp norm above; "mean" gives the mean |w| (p=1) or mean w^2 (p=2, no root)
            over the alive input elements, i.e. divided by alive_in_channels * kh * kw; 0 when none is alive.
        backend: None (``PAGCP_BACKEND`` or auto), "torch", "cpp", "cuda" or "triton".

    Returns:
        One 1-D float32 tensor of length Cout per weight.
    """
    weights = list(weights)
    if not weights:
        return []
    if p not in (1, 2):
        raise ConfigError(f"filter_saliency: p={p!r}; use 1 or 2")
    if reduce not in ("sum", "mean"):
        raise ConfigError(f"filter_saliency: reduce={reduce!r}; use 'sum' or 'mean'")
    masks = list(in_keep) if in_keep is not None else [None] * len(weights)
    if len(masks) != len(weights):
        raise ConfigError(f"filter_saliency: {len(masks)} masks for {len(weights)} weights")
    device = weights[0].device
    for i, w in enumerate(weights):
        if w.dim() < 2 or not w.is_floating_point() or w.device != device:
            raise ConfigError(
                f"filter_saliency: weights[{i}] must be a floating conv weight (Cout, Cin/groups, ...) on "
                f"{device}; got shape {tuple(w.shape)}, {w.dtype}, {w.device}"
            )
    keep, offsets, groups = _pack_keep(weights, masks)  # also validates the masks
    run = implementation("filter_saliency", backend, device)
    flat = run([w.detach() for w in weights], keep, offsets, groups, p, reduce == "mean")
    return list(flat.split([int(w.shape[0]) for w in weights]))
