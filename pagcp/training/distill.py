"""Knowledge distillation in fine-tuning: the unpruned model teaches the pruned one (``--distill W``).

A pruned network keeps its head: its raw outputs have exactly the teacher's layout, one tensor per detection
layer, (batch, anchors, ny, nx, 5 + classes) for YOLOv5. The distillation loss is the mean squared difference of
their sigmoids (box offsets, objectness and class scores: the values the detector reads), averaged over each
layer and summed over the layers, times the batch size (like the detection loss, a per-batch sum) and the weight
W. Added to the detection loss of every training batch, it pulls the student toward what the teacher predicts
everywhere, on background as on objects, which is where a pruned network differs most from the network it was
cut from. The teacher runs in eval mode without gradients (its BatchNorm statistics never change).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from pagcp.errors import ConfigError


def raw_outputs(output) -> list[torch.Tensor]:
    """The per-layer raw head tensors of a YOLOv5 forward pass: the list itself in training mode, the second
    element of (decoded, raw) in eval mode."""
    if isinstance(output, (list, tuple)) and len(output) == 2 and isinstance(output[1], (list, tuple)):
        output = output[1]
    if not isinstance(output, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in output):
        raise ConfigError("--distill: the model's head gives no per-layer raw outputs to distil")
    return list(output)


def distillation_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ over layers of mean((σ(student) − σ(teacher))²), times the batch size (float32)."""
    if len(student) != len(teacher) or any(s.shape != t.shape for s, t in zip(student, teacher)):
        shapes = [tuple(s.shape) for s in student], [tuple(t.shape) for t in teacher]
        raise ConfigError(f"--distill: the student's head outputs {shapes[0]} differ from the teacher's {shapes[1]}")
    total = sum(((s.float().sigmoid() - t.float().sigmoid()) ** 2).mean() for s, t in zip(student, teacher))
    return total * student[0].shape[0]


class Distiller:
    """The teacher (a frozen eval-mode copy) and the weight of its loss; ``loss(imgs, preds)`` is what a training
    batch adds."""

    def __init__(self, teacher: nn.Module, weight: float, device: torch.device):
        if weight <= 0:
            raise ConfigError(f"--distill {weight}: the weight of the distillation loss must be > 0")
        self.teacher = copy.deepcopy(teacher).float().to(device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.weight = float(weight)

    def loss(self, imgs: torch.Tensor, preds) -> torch.Tensor:
        with torch.no_grad():
            target = raw_outputs(self.teacher(imgs))
        return self.weight * distillation_loss(raw_outputs(preds), target)
