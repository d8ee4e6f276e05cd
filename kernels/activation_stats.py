"""Triton kernel and launcher of channel_activation_stats: per-channel mean |x| and mean x^2.

Rows are the N*H*W pixels; each program sums a chunk of rows for a block of channels into a partial
buffer (deterministic, no atomics), which the launcher reduces.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def channel_stats_kernel(
    x_ptr,
    part_abs_ptr,
    part_sq_ptr,
    rows,
    C,
    W,
    HW,
    sxn,
    sxc,
    sxh,
    sxw,
    rows_per_program,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_c = tl.program_id(0)
    chunk = tl.program_id(1)
    ch = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    ch_in = ch < C
    acc_abs = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    acc_sq = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    first = chunk.to(tl.int64) * rows_per_program
    for start in range(0, rows_per_program, BLOCK_P):
        r = first + start + tl.arange(0, BLOCK_P)
        r_in = (r < rows) & (start + tl.arange(0, BLOCK_P) < rows_per_program)
        n = r // HW
        pix = r % HW
        off = (n * sxn + (pix // W) * sxh + (pix % W) * sxw)[:, None] + (ch.to(tl.int64) * sxc)[None, :]
        x = tl.load(x_ptr + off, mask=r_in[:, None] & ch_in[None, :], other=0.0).to(tl.float32)
        acc_abs += tl.abs(x)
        acc_sq += x * x
    tl.store(part_abs_ptr + chunk * C + ch, tl.sum(acc_abs, axis=0), mask=ch_in)
    tl.store(part_sq_ptr + chunk * C + ch, tl.sum(acc_sq, axis=0), mask=ch_in)


def channel_activation_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the kernel; returns float32 (mean_abs, mean_sq) of shape (C,)."""
    N, C, H, W = x.shape
    rows = N * H * W
    block_c = min(64, triton.next_power_of_2(max(1, C)))
    block_p = max(16, 2048 // block_c)
    rows_per_program = block_p * 16
    chunks = max(1, triton.cdiv(rows, rows_per_program))
    part_abs = torch.zeros(chunks, C, dtype=torch.float32, device=x.device)
    part_sq = torch.zeros_like(part_abs)
    if rows and C:
        grid = (triton.cdiv(C, block_c), chunks)
        channel_stats_kernel[grid](
            x,
            part_abs,
            part_sq,
            rows,
            C,
            W,
            H * W,
            *x.stride(),
            rows_per_program,
            BLOCK_P=block_p,
            BLOCK_C=block_c,
            num_warps=4,
        )
    count = max(1, rows)
    return part_abs.sum(dim=0) / count, part_sq.sum(dim=0) / count
