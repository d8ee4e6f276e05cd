"""``--distill`` for Ultralytics fine-tunes: the unpruned model teaches the pruned one through Ultralytics' trainer.

Detect's raw output is a dict per branch (one, or ``one2many`` and ``one2one`` on an end-to-end head) of
``scores`` (batch, classes, anchors) and ``boxes`` (batch, 4 × reg_max, anchors), which a pruned network shares
with the network it was cut from. The distillation loss compares them branch by branch: class scores by the mean
squared difference of their sigmoids; boxes by the mean squared difference of each side's softmax over its
reg_max bins (YOLOv8, YOLO11) or, with reg_max 1 (YOLO26), by the smooth-L1 difference of the distances
themselves; a segmentation head's mask coefficients and a pose head's raw keypoints by their mean squared
difference; the terms are summed, multiplied by the batch size (Ultralytics' losses are per-batch sums) and by
the weight W. The head inputs (``feats``) have pruned widths and are not compared, and neither are the prototype
masks (the head's own widths, but a function of the pruned input 0 the coefficients already answer for).

:func:`distilling_trainer` subclasses a trainer class so that its training model's criterion adds that loss: it
is installed at the first batch, after the EMA copy and the checkpoints' model were made, so no checkpoint ever
holds the teacher or a pagcp class (``YOLO("pruned.pt")`` still loads without pagcp). The teacher runs in eval
mode without gradients.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagcp.errors import ConfigError
from pagcp.families.ultralytics_loss import raw_outputs

#: the raw outputs of segmentation and pose heads that a pruned network shares with its teacher
_TASK_OUTPUTS = ("mask_coefficient", "kpts")


def _branches(out: Any) -> list[dict[str, torch.Tensor]]:
    """The raw dict of each branch of a head's output (training mode, or an eval-mode (prediction, raw) pair)."""
    raw = raw_outputs(out)
    return [raw["one2many"], raw["one2one"]] if "one2many" in raw else [raw]


def _score_term(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return ((student.float().sigmoid() - teacher.float().sigmoid()) ** 2).mean()


def _box_term(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    sides = student.shape[1] // 4
    if sides > 1:  # distributions over reg_max bins, per side
        s = student.float().view(student.shape[0], 4, sides, -1).softmax(2)
        t = teacher.float().view(teacher.shape[0], 4, sides, -1).softmax(2)
        return ((s - t) ** 2).mean()
    return F.smooth_l1_loss(student.float(), teacher.float())


def head_distillation(student: Any, teacher: Any) -> torch.Tensor:
    """Σ over branches of the scores' and boxes' terms (module docstring), times the batch size."""
    ours, theirs = _branches(student), _branches(teacher)
    pairs = list(zip(ours, theirs))
    if len(ours) != len(theirs) or any(s[k].shape != t[k].shape for s, t in pairs for k in ("scores", "boxes")):
        raise ConfigError("--distill: the student's head outputs differ from the teacher's")
    total = sum(_score_term(s["scores"], t["scores"]) + _box_term(s["boxes"], t["boxes"]) for s, t in pairs)
    for key in _TASK_OUTPUTS:
        total = total + sum(((s[key].float() - t[key].float()) ** 2).mean() for s, t in pairs if key in s and key in t)
    return total * pairs[0][0]["scores"].shape[0]


class DistillingCriterion:
    """Ultralytics' criterion plus the weighted distillation loss toward ``teacher`` on the batch's images."""

    def __init__(self, criterion: Any, teacher: nn.Module, weight: float):
        self.criterion, self.teacher, self.weight = criterion, teacher, float(weight)

    def __call__(self, preds: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        loss, items = self.criterion(preds, batch)
        with torch.no_grad():
            target = self.teacher(batch["img"])
        return loss.sum() + self.weight * head_distillation(preds, target), items


def distilling_trainer(base: type, teacher: nn.Module, weight: float) -> type:
    """A subclass of the Ultralytics trainer ``base`` whose training loss adds the distillation toward
    ``teacher`` with ``weight`` (module docstring)."""
    if weight <= 0:
        raise ConfigError(f"--distill {weight}: the weight of the distillation loss must be > 0")

    class DistillingTrainer(base):
        def preprocess_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
            batch = super().preprocess_batch(batch)
            model = self.model.module if hasattr(self.model, "module") else self.model
            if not isinstance(getattr(model, "criterion", None), DistillingCriterion):
                frozen = copy.deepcopy(teacher).float().to(batch["img"].device).eval()
                for p in frozen.parameters():
                    p.requires_grad_(False)
                model.criterion = DistillingCriterion(model.init_criterion(), frozen, weight)
            return batch

    DistillingTrainer.__name__ = DistillingTrainer.__qualname__ = base.__name__
    return DistillingTrainer
