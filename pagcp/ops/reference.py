"""Pure-PyTorch references of the pagcp ops: the truth in tests and the fallback backend.

They compute in float32 and cast results to the input dtype, exactly like the compiled kernels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pagcp.ops.extension import bn_act_layout

ACTIVATIONS = {"identity": 0, "relu": 1, "silu": 2}


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


def activation(y: torch.Tensor, act: str) -> torch.Tensor:
    if act == "silu":
        return F.silu(y)
    if act == "relu":
        return F.relu(y)
    return y


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
