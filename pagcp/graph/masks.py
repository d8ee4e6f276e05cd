"""Masked execution: the traced model's own modules run as if the masked channels were removed.

Inside ``with graph.masked(keep):`` every pruned channel is zeroed where it is made and where it
is read, in place, on the model's own parameters:

- producers (convs, depthwise convs) get their pruned filters and biases zeroed, and every BatchNorm
  over the unit gets its scale and shift zeroed, so a pruned channel is exactly 0 after its norm, and
  after any activation with act(0) = 0 (ReLU, SiLU, Hardswish, ...);
- consumers (convs, linears, the convs inside Detect-like heads) get the weights that read a pruned
  channel zeroed, so what a consumer computes never depends on a pruned channel, whatever it holds
  (e.g. sigmoid(0) = 0.5 after an activation with act(0) != 0). Element-wise ops never mix channels,
  so the kept channels are exactly those of the sliced model (up to floating-point summation order).

A BatchNorm without affine parameters cannot be zeroed this way; its pruned channels then hold
-mean/std, which, again, no consumer reads. Only the touched slices are saved (not a copy of the
model) and written back bit-exactly on exit, also when the body raises. Train-mode forwards still
update BatchNorm running statistics as usual; call ``backward()`` inside the block (the restore is an
in-place write that autograd would refuse afterwards).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from pagcp.graph.channels import ModuleChannels
from pagcp.graph.keep import PrunePlan


class _Saved:
    """Slices of tensors overwritten in place, restorable in reverse order."""

    def __init__(self) -> None:
        self.entries: list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]] = []

    def zero(self, tensor: torch.Tensor | None, dim: int, keep: torch.Tensor) -> None:
        if tensor is None:
            return
        index = torch.nonzero(~keep).flatten().to(tensor.device)
        self.entries.append((tensor, dim, index, tensor.index_select(dim, index)))
        tensor.index_fill_(dim, index, 0)

    def restore(self) -> None:
        while self.entries:
            tensor, dim, index, values = self.entries.pop()
            tensor.index_copy_(dim, index, values)


def zero_pruned(modules: Mapping[str, ModuleChannels], plan: PrunePlan, saved: _Saved) -> None:
    """Zero the producer filters, norm affines and consumer weights of every pruned channel."""
    for name, (out_keep, in_keep) in plan.items():
        module: nn.Module = modules[name].module
        kind = modules[name].kind
        if out_keep is not None:  # conv and depthwise filters, BatchNorm scale and shift
            saved.zero(module.weight, 0, out_keep)
            saved.zero(module.bias, 0, out_keep)
        if in_keep is not None and kind in ("conv", "linear"):
            saved.zero(module.weight, 1, in_keep)


@contextmanager
def masked(model: nn.Module, modules: Mapping[str, ModuleChannels], plan: PrunePlan) -> Iterator[nn.Module]:
    """Run ``model`` as if pruned by ``plan`` (see ``ChannelGraph.pruned_modules``); restores it on exit."""
    saved = _Saved()
    try:
        with torch.no_grad():
            zero_pruned(modules, plan, saved)
        yield model
    finally:
        with torch.no_grad():
            saved.restore()
