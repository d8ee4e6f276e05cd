"""Optimizer and learning-rate schedule of YOLOv5 training (its published hyper-parameters).

- Three SGD (nesterov) parameter groups, named in ``param_group["name"]``: ``bn_weights`` (no weight decay),
  ``weights`` (decay ``weight_decay * batch_size * accumulate / nominal_batch``) and ``biases`` (no decay).
- One-cycle cosine factor from 1 at epoch 0 to ``lrf`` at the last epoch, applied per epoch.
- Warmup over ``max(round(warmup_epochs * batches_per_epoch), min_iters)`` iterations (YOLOv5: 100): the
  bias lr falls linearly from ``warmup_bias_lr``, the other lrs rise from 0, both to the epoch's scheduled
  lr; momentum rises from ``warmup_momentum`` to ``momentum``; the accumulation count rises from 1 to
  ``nominal_batch / batch_size``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

NOMINAL_BATCH = 64
WARMUP_MIN_ITERS = 100
GROUP_NAMES = ("bn_weights", "weights", "biases")


def accumulate_steps(batch_size: int, nominal_batch: int = NOMINAL_BATCH) -> int:
    """Batches whose gradients are summed before one optimizer step (nominal batch / batch, at least 1)."""
    return max(round(nominal_batch / batch_size), 1)


def split_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by group: BatchNorm weights, other weights, biases (every parameter exactly once)."""
    groups: dict[str, list[nn.Parameter]] = {name: [] for name in GROUP_NAMES}
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if pname == "bias":
                groups["biases"].append(p)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                groups["bn_weights"].append(p)
            else:
                groups["weights"].append(p)
    return groups


def build_optimizer(
    model: nn.Module, hyp: dict, batch_size: int, nominal_batch: int = NOMINAL_BATCH
) -> torch.optim.SGD:
    """SGD nesterov over the three named groups; the decay is scaled to the effective batch."""
    decay = hyp["weight_decay"] * batch_size * accumulate_steps(batch_size, nominal_batch) / nominal_batch
    groups = split_parameters(model)
    param_groups = [
        {"params": groups[name], "name": name, "weight_decay": decay if name == "weights" else 0.0}
        for name in GROUP_NAMES
    ]
    return torch.optim.SGD(param_groups, lr=hyp["lr0"], momentum=hyp["momentum"], nesterov=True)


def one_cycle(lrf: float, epochs: int) -> Callable[[float], float]:
    """Cosine factor 1 -> ``lrf`` over ``epochs``: f(e) = 1 + (lrf - 1) * (1 - cos(pi * e / epochs)) / 2."""
    return lambda e: 1.0 + (lrf - 1.0) * (1.0 - math.cos(math.pi * e / epochs)) / 2.0


def warmup_iterations(hyp: dict, batches_per_epoch: int, min_iters: int = WARMUP_MIN_ITERS) -> int:
    """Length of the warmup in iterations (batches): max(round(warmup_epochs * nb), min_iters)."""
    if hyp["warmup_epochs"] <= 0:
        return 0
    return max(round(hyp["warmup_epochs"] * batches_per_epoch), min_iters)


class Schedule:
    """Learning rate, momentum and accumulation at every (epoch, global iteration) of a run.

    Pure function of its inputs, so a resumed run sets exactly the values of an uninterrupted one.
    """

    def __init__(
        self,
        hyp: dict,
        epochs: int,
        batches_per_epoch: int,
        batch_size: int,
        nominal_batch: int = NOMINAL_BATCH,
        warmup_min_iters: int = WARMUP_MIN_ITERS,
    ):
        self.hyp = hyp
        self.factor = one_cycle(hyp["lrf"], epochs)
        self.warmup = warmup_iterations(hyp, batches_per_epoch, warmup_min_iters)
        self.accumulate = accumulate_steps(batch_size, nominal_batch)
        self.nominal_ratio = nominal_batch / batch_size

    def epoch_lr(self, epoch: int) -> float:
        """Scheduled lr of an epoch after warmup: lr0 * f(epoch)."""
        return self.hyp["lr0"] * self.factor(epoch)

    def accumulation(self, iteration: int) -> int:
        """Batches per optimizer step at a global iteration (ramps from 1 during warmup)."""
        if iteration < self.warmup:
            return max(1, int(np.interp(iteration, [0, self.warmup], [1, self.nominal_ratio]).round()))
        return self.accumulate

    def values(self, epoch: int, iteration: int, group: str) -> tuple[float, float]:
        """(lr, momentum) of a parameter group at a global iteration inside ``epoch``."""
        target = self.epoch_lr(epoch)
        if iteration >= self.warmup:
            return target, self.hyp["momentum"]
        start = self.hyp["warmup_bias_lr"] if group == "biases" else 0.0
        xp = [0, self.warmup]
        lr = float(np.interp(iteration, xp, [start, target]))
        momentum = float(np.interp(iteration, xp, [self.hyp["warmup_momentum"], self.hyp["momentum"]]))
        return lr, momentum

    def apply(self, optimizer: torch.optim.Optimizer, epoch: int, iteration: int) -> None:
        """Set every group's lr and momentum for this iteration."""
        for group in optimizer.param_groups:
            group["lr"], group["momentum"] = self.values(epoch, iteration, group["name"])
