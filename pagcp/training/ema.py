"""Exponential moving average of a model's weights, the network that is validated and saved during training.

The decay ramps up as ``decay * (1 - exp(-updates / tau))`` so the average follows the fast-moving weights of
the first iterations closely and becomes a long average later (YOLOv5's choice: decay 0.9999, tau 2000).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel / DataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


class ModelEMA:
    """A frozen copy of a model whose floating-point state follows the model's as an EMA."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0):
        self.module = copy.deepcopy(unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, int(updates)

    def current_decay(self) -> float:
        """Decay used by the next ``update`` (after incrementing the update count)."""
        return self.decay * (1.0 - math.exp(-(self.updates + 1) / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the model's current state into the average; integer buffers are copied."""
        d = self.current_decay()
        self.updates += 1
        source = unwrap(model).state_dict()
        for name, value in self.module.state_dict().items():
            new = source[name].detach()
            if value.dtype.is_floating_point:
                value.mul_(d).add_(new.to(value.dtype), alpha=1.0 - d)
            else:
                value.copy_(new)

    def state(self) -> dict:
        """Everything needed to continue the average exactly (for checkpoints)."""
        return {
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()},
            "updates": self.updates,
            "decay": self.decay,
            "tau": self.tau,
        }

    def load_state(self, state: dict) -> None:
        """Restore what ``state`` returned."""
        self.module.load_state_dict(state["state_dict"])
        self.updates = int(state["updates"])
        self.decay, self.tau = float(state["decay"]), float(state["tau"])
