"""Triton kernel and launcher of filter_saliency: every output filter of many conv weights, one launch.

The weights are flattened into one buffer; per-filter tables give each filter's start in that buffer,
the start of its group's slice of the concatenated input-channel keep mask, its input channels per
group and its kernel area.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl


@triton.jit
def filter_saliency_kernel(
    w_ptr,
    keep_ptr,
    w_start_ptr,
    keep_start_ptr,
    length_ptr,
    kk_ptr,
    out_ptr,
    P: tl.constexpr,
    MEAN: tl.constexpr,
    BLOCK: tl.constexpr,
):
    f = tl.program_id(0)
    w_start = tl.load(w_start_ptr + f)
    keep_start = tl.load(keep_start_ptr + f)
    length = tl.load(length_ptr + f)
    kk = tl.load(kk_ptr + f)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    alive = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, length, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        inside = idx < length
        on = tl.load(keep_ptr + keep_start + idx // kk, mask=inside, other=0.0) != 0.0
        w = tl.load(w_ptr + w_start + idx, mask=inside & on, other=0.0).to(tl.float32)
        if P == 1:
            term = tl.abs(w)
        else:
            term = w * w
        acc += tl.where(on, term, 0.0)
        alive += tl.where(on, 1.0, 0.0)
    total = tl.sum(acc, axis=0)
    count = tl.sum(alive, axis=0)
    if MEAN:
        result = tl.where(count > 0.0, total / tl.maximum(count, 1.0), 0.0)
    elif P == 2:
        result = tl.sqrt(total)
    else:
        result = total
    tl.store(out_ptr + f, result)


def _filter_tables(
    weights: Sequence[torch.Tensor], keep_offsets: Sequence[int], groups: Sequence[int], device: torch.device
) -> tuple[torch.Tensor, ...]:
    """Per-filter int64 tables: weight start, keep-mask start, elements per filter, kernel area."""
    w_start, keep_start, length, kk = [], [], [], []
    base = 0
    for w, k_off, g in zip(weights, keep_offsets, groups):
        cout, cpg = int(w.shape[0]), int(w.shape[1])
        area = w.numel() // max(1, cout * cpg) if cout * cpg else 1
        o = torch.arange(cout, dtype=torch.int64)
        w_start.append(base + o * (cpg * area))
        keep_start.append(k_off + (o // max(1, cout // g)) * cpg)
        length.append(torch.full((cout,), cpg * area, dtype=torch.int64))
        kk.append(torch.full((cout,), area, dtype=torch.int64))
        base += w.numel()
    return tuple(torch.cat(t).to(device) for t in (w_start, keep_start, length, kk))


def filter_saliency(
    weights: Sequence[torch.Tensor],
    keep: torch.Tensor,
    keep_offsets: Sequence[int],
    groups: Sequence[int],
    p: int,
    mean: bool,
) -> torch.Tensor:
    """Launch the segmented kernel; returns the flat float32 saliency of all filters, layer after layer."""
    device = keep.device
    dtype = weights[0].dtype if all(w.dtype == weights[0].dtype for w in weights) else torch.float32
    flat = torch.cat([w.detach().reshape(-1).to(dtype) for w in weights])
    tables = _filter_tables(weights, keep_offsets, groups, device)
    out = torch.empty(tables[0].numel(), dtype=torch.float32, device=device)
    if out.numel():
        keep_f = keep.to(device=device, dtype=torch.float32).contiguous()
        filter_saliency_kernel[(out.numel(),)](
            flat, keep_f, *tables, out, P=int(p), MEAN=bool(mean), BLOCK=256, num_warps=4
        )
    return out
