"""Triton kernel and launcher of masked_bn_act: y[r*N+n, c] = act(x[n, c]*scale[c] + shift[c]) * keep[r, c].

One program owns a tile of (pixels of one input row) x (channels); with ``EXPAND`` it computes the
activation once and stores it for every candidate mask r. The activation arrives by name, as the string
constexpr ``ACT`` (a key of ``pagcp.ops.reference.ACTIVATIONS``), so each one compiles to its own kernel.
Addressing uses the four strides of x and of the output, so NCHW, channels_last and other strided layouts
need no copy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def masked_bn_act_kernel(
    x_ptr,
    scale_ptr,
    shift_ptr,
    keep_ptr,
    out_ptr,
    N,
    C,
    W,
    HW,
    R,
    sxn,
    sxc,
    sxh,
    sxw,
    son,
    soc,
    soh,
    sow,
    ACT: tl.constexpr,
    EXPAND: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    tiles = tl.cdiv(HW, BLOCK_P)
    row = (pid_p // tiles).to(tl.int64)
    pix = (pid_p % tiles) * BLOCK_P + tl.arange(0, BLOCK_P)
    ch = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    pix_in = pix < HW
    ch_in = ch < C
    mask = pix_in[:, None] & ch_in[None, :]
    h = (pix // W).to(tl.int64)
    w = (pix % W).to(tl.int64)
    x_off = (h * sxh + w * sxw)[:, None] + (ch.to(tl.int64) * sxc)[None, :]
    o_off = (h * soh + w * sow)[:, None] + (ch.to(tl.int64) * soc)[None, :]
    scale = tl.load(scale_ptr + ch, mask=ch_in, other=0.0)[None, :]
    shift = tl.load(shift_ptr + ch, mask=ch_in, other=0.0)[None, :]
    x = tl.load(x_ptr + row * sxn + x_off, mask=mask, other=0.0).to(tl.float32)
    y = x * scale + shift
    if ACT == "relu":
        y = tl.maximum(y, 0.0)
    elif ACT == "silu":
        y = y * tl.sigmoid(y)
    else:
        tl.static_assert(ACT == "identity", "masked_bn_act_kernel: unsupported activation")
    if EXPAND:
        for r in range(0, R):
            k = tl.load(keep_ptr + r * C + ch, mask=ch_in, other=0.0)[None, :]
            dst = out_ptr + (r * N + row) * son + o_off
            tl.store(dst, (y * k).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        k = tl.load(keep_ptr + (row // N) * C + ch, mask=ch_in, other=0.0)[None, :]
        tl.store(out_ptr + row * son + o_off, (y * k).to(out_ptr.dtype.element_ty), mask=mask)


def masked_bn_act(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    keep: torch.Tensor,
    act: str,
    expand: bool,
    out: torch.Tensor,
) -> torch.Tensor:
    """Launch the kernel writing into ``out`` (R*N rows); scale, shift, keep are float32 on x's device.

    ``act`` is the activation's name (a key of ``pagcp.ops.reference.ACTIVATIONS``), the constexpr ``ACT``.
    """
    N_in, C, H, W = x.shape
    R = keep.shape[0]
    N = N_in if expand else N_in // max(1, R)
    HW = H * W
    if out.numel() == 0:
        return out
    block_c = min(64, triton.next_power_of_2(C))
    block_p = max(16, min(256, triton.next_power_of_2(HW), 4096 // block_c))
    grid = (N_in * triton.cdiv(HW, block_p), triton.cdiv(C, block_c))
    masked_bn_act_kernel[grid](
        x,
        scale,
        shift,
        keep,
        out,
        N,
        C,
        W,
        HW,
        R,
        *x.stride(),
        *out.stride(),
        ACT=act,
        EXPAND=bool(expand),
        BLOCK_P=block_p,
        BLOCK_C=block_c,
        num_warps=4,
    )
    return out
