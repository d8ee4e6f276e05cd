"""Parameter and FLOP counts of any model, pruned or not."""

from __future__ import annotations

import torch
from torch import nn


def _input_channels(model: nn.Module) -> int:
    cfg = getattr(model, "yaml", None)
    if isinstance(cfg, dict) and "ch" in cfg:
        return int(cfg["ch"])
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else 3


def conv_macs(conv: nn.Conv2d, out_hw: tuple[int, int]) -> int:
    """Multiply-adds of one Conv2d producing an output of spatial size out_hw (batch 1)."""
    kh, kw = conv.kernel_size
    return out_hw[0] * out_hw[1] * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw


def model_stats(model: nn.Module, img_size: int | tuple[int, int] = 640) -> dict[str, float]:
    """Params and GFLOPs (2 x multiply-adds of every Conv2d, as YOLOv5 reports) at img_size.

    Measured with one forward pass of a 1 x C x H x W zero image through hooks on every Conv2d.
    """
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    macs = 0

    def hook(module: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal macs
        macs += conv_macs(module, (out.shape[-2], out.shape[-1]))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, _input_channels(model), h, w, device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {"params": sum(q.numel() for q in model.parameters()), "gflops": 2 * macs / 1e9}
