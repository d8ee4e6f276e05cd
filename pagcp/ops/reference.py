"""Pure-PyTorch references of the pagcp ops: the truth in tests and the ``torch`` backend.

This module owns the semantics every backend reproduces: the table of supported activations
(:data:`ACTIVATIONS`, the only list of them; the compiled kernels receive the name), the memory format of
masked_bn_act results, and each op in two forms: the user form (per-layer masks) and the packed form of
the ``torch.ops.pagcp`` schemas (see :mod:`pagcp.ops.library`). They compute in float32 and cast results
to the input dtype, exactly like the compiled kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda y: y,
    "relu": F.relu,
    "silu": F.silu,
}


def alive_inputs(weight: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """(Cout, Cin/groups) bool: input channel j of filter o is alive (groups inferred from ``keep``)."""
    cout, cpg = weight.shape[0], weight.shape[1]
    if keep is None:
        return torch.ones(cout, cpg, dtype=torch.bool, device=weight.device)
    groups = keep.numel() // cpg if cpg else 1
    per_group = (keep.reshape(groups, cpg) != 0).to(weight.device)
    return per_group.repeat_interleave(cout // groups, dim=0)


def filter_saliency(
    weights: Sequence[torch.Tensor],
    in_keep: Sequence[torch.Tensor | None] | None = None,
    p: int = 1,
    reduce: str = "sum",
) -> list[torch.Tensor]:
    """Per-filter Lp norm (or mean |w| / mean w^2) over the alive input channels, layer by layer."""
    masks = list(in_keep) if in_keep is not None else [None] * len(weights)
    result = []
    for weight, keep in zip(weights, masks):
        cout, cpg = weight.shape[0], weight.shape[1]
        w = weight.detach().float().reshape(cout, cpg, -1)
        alive = alive_inputs(weight, keep)
        term = w.abs() if p == 1 else w * w
        total = torch.where(alive[:, :, None], term, 0.0).sum(dim=(1, 2))
        if reduce == "mean":
            count = alive.sum(dim=1).float() * w.shape[2]
            result.append(torch.where(count > 0, total / count.clamp_min(1.0), 0.0))
        else:
            result.append(total.sqrt() if p == 2 else total)
    return result


def filter_saliency_packed(
    weights: Sequence[torch.Tensor],
    keep: torch.Tensor,
    keep_offsets: Sequence[int],
    groups: Sequence[int],
    p: int,
    mean: bool,
) -> torch.Tensor:
    """The schema form: all layers' masks in one buffer (layer l at keep_offsets[l], groups[l] groups).

    Returns the flat float32 saliency of every filter, layer after layer.
    """
    masks = [keep[off : off + g * int(w.shape[1])] for w, off, g in zip(weights, keep_offsets, groups)]
    per_layer = filter_saliency(weights, masks, p, "mean" if mean else "sum")
    if not per_layer:
        return keep.new_empty((0,), dtype=torch.float32)
    return torch.cat(per_layer)


def activation(y: torch.Tensor, act: str) -> torch.Tensor:
    """``act`` (a key of :data:`ACTIVATIONS`) applied to y."""
    return ACTIVATIONS[act](y)


def bn_act_layout(x: torch.Tensor) -> torch.memory_format:
    """Memory format of masked_bn_act outputs: channels_last for channels_last inputs, else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def empty_bn_act_out(x: torch.Tensor, keep: torch.Tensor, expand: bool) -> torch.Tensor:
    """An uninitialised masked_bn_act result for x and R x C masks ``keep``, in :func:`bn_act_layout`."""
    rows = keep.shape[0] * x.shape[0] if expand else x.shape[0]
    shape = (rows, x.shape[1], x.shape[2], x.shape[3])
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=bn_act_layout(x))


def masked_bn_act(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    keep: torch.Tensor,
    act: str,
    expand: bool,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """y[r*N+n] = act(x[n]*scale+shift)*keep[r] (expand) or act(x[r*N+n]*scale+shift)*keep[r] (rows)."""
    C = x.shape[1]
    y = activation(x.float() * scale.float().view(1, C, 1, 1) + shift.float().view(1, C, 1, 1), act)
    k = keep.float().to(x.device)
    R = k.shape[0]
    if expand:
        y = y.unsqueeze(0) * k[:, None, :, None, None]
    else:
        y = y.reshape(R, -1, *y.shape[1:]) * k[:, None, :, None, None]
    y = y.reshape(-1, *x.shape[1:]).to(x.dtype).contiguous(memory_format=bn_act_layout(x))
    if out is None:
        return y
    return out.copy_(y)


def channel_activation_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean |x| and mean x^2 over N, H, W (zeros when N*H*W == 0)."""
    C = x.shape[1]
    xf = x.float().transpose(0, 1).reshape(C, -1)
    count = max(1, xf.shape[1])
    return xf.abs().sum(dim=1) / count, (xf * xf).sum(dim=1) / count
