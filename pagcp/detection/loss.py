"""The YOLOv5 detection loss, returned with its three task components (box, objectness, classification).

PAGCP measures every task's loss separately, so ``ComputeLoss.__call__`` returns the detached components
beside the total. YOLOv5's rules: targets are matched to anchors whose shape ratio is below
``anchor_t``, each match also claims up to two neighbouring cells, boxes are scored by CIoU, objectness
targets are the detached IoU, and the hyp gains are scaled by the number of levels, classes and image size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from pagcp.hyps import load_hyp

# objectness weight per level, P3 (small objects) first
_BALANCE = {3: [4.0, 1.0, 0.4]}
_BALANCE_OTHER = [4.0, 1.0, 0.25, 0.06, 0.02]
NEIGHBOUR_G = 0.5  # a target also claims the adjacent cell when it lies within 0.5 of that cell's border


def bbox_ciou(box1: Tensor, box2: Tensor, eps: float = 1e-7) -> Tensor:
    """Complete IoU of paired boxes in (cx, cy, w, h), shape (n, 4) each -> (n,).

    The aspect-ratio weight ``alpha`` carries no gradient.
    """
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
    ax1, ax2, ay1, ay2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    bx1, bx2, by1, by2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = (torch.min(ax2, bx2) - torch.max(ax1, bx1)).clamp(0) * (torch.min(ay2, by2) - torch.max(ay1, by1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    enclose_w = torch.max(ax2, bx2) - torch.min(ax1, bx1)
    enclose_h = torch.max(ay2, by2) - torch.min(ay1, by1)
    diag2 = enclose_w**2 + enclose_h**2 + eps
    centre2 = (x2 - x1) ** 2 + (y2 - y1) ** 2
    v = (4 / math.pi**2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (centre2 / diag2 + v * alpha)


class FocalLoss(nn.Module):
    """Focal modulation of a BCE-with-logits criterion (used only when hyp fl_gamma > 0)."""

    def __init__(self, bce: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25):
        super().__init__()
        self.bce, self.gamma, self.alpha = bce, gamma, alpha
        self.reduction = bce.reduction
        self.bce.reduction = "none"

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        loss = self.bce(logits, target)
        prob = torch.sigmoid(logits)
        p_true = target * prob + (1 - target) * (1 - prob)
        weight = (target * self.alpha + (1 - target) * (1 - self.alpha)) * (1.0 - p_true) ** self.gamma
        loss = loss * weight
        return loss.mean() if self.reduction == "mean" else loss.sum() if self.reduction == "sum" else loss


def _detect_head(model: Any) -> Any:
    head = getattr(model, "head", model)  # a YOLOv5 Model names its Detect head
    if hasattr(head, "anchors") and hasattr(head, "nl"):
        return head
    raise TypeError("ComputeLoss needs a YOLOv5 Detect head (or a pagcp YOLOv5 Model, whose .head it is)")


class ComputeLoss:
    """YOLOv5 loss for a Detect head (or a YOLOv5 Model: its ``head``); reads nc, nl, na, anchors in grid units
    and stride from it.

    ``hyp`` holds the unscaled gains (see ``pagcp.hyps``); the box gain is multiplied by 3/nl, the class
    gain by nc/80 * 3/nl and the objectness gain by (img_size/640)^2 * 3/nl here, so callers must not scale.
    ``label_smoothing`` (or hyp["label_smoothing"]) eps gives class targets 1 - eps/2 and eps/2.
    """

    def __init__(
        self,
        model: Any,
        hyp: dict | str | None = None,
        img_size: int = 640,
        label_smoothing: float | None = None,
        cache_targets: bool = False,
    ):
        det = _detect_head(model)
        self.hyp = load_hyp(hyp) if not isinstance(hyp, dict) else {**load_hyp(None), **hyp}
        self.nc, self.nl, self.na = int(det.nc), int(det.nl), int(det.na)
        self.anchors = det.anchors.detach().float()  # (nl, na, 2) grid units
        self.stride = det.stride
        level = 3.0 / self.nl
        self.box_gain = self.hyp["box"] * level
        self.cls_gain = self.hyp["cls"] * self.nc / 80.0 * level
        self.obj_gain = self.hyp["obj"] * (img_size / 640.0) ** 2 * level
        self.balance = _BALANCE.get(self.nl, _BALANCE_OTHER[: self.nl])
        self.anchor_t = self.hyp["anchor_t"]
        self.gr = 1.0  # objectness target = (1 - gr) + gr * IoU
        eps = self.hyp.get("label_smoothing", 0.0) if label_smoothing is None else label_smoothing
        # fixed data (the pruning oracle): the matching depends only on the targets and the grid shapes
        self._built: dict[tuple, tuple[Tensor, list]] | None = {} if cache_targets else None
        self.cls_pos, self.cls_neg = 1.0 - 0.5 * eps, 0.5 * eps
        device = self.anchors.device
        self.bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([self.hyp["cls_pw"]], device=device))
        self.bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([self.hyp["obj_pw"]], device=device))
        if self.hyp["fl_gamma"] > 0:
            self.bce_cls = FocalLoss(self.bce_cls, self.hyp["fl_gamma"])
            self.bce_obj = FocalLoss(self.bce_obj, self.hyp["fl_gamma"])

    def _to(self, device: torch.device) -> None:
        if self.anchors.device != device:
            self.anchors = self.anchors.to(device)
            for crit in (self.bce_cls, self.bce_obj):
                bce = crit.bce if isinstance(crit, FocalLoss) else crit
                bce.pos_weight = bce.pos_weight.to(device)

    def __call__(self, preds: Sequence[Tensor], targets: Tensor) -> tuple[Tensor, Tensor]:
        """``preds``: per level raw (bs, na, ny, nx, no); ``targets``: (n, 6) [image, class, cx, cy, w, h]
        normalised. Returns ``(total * batch_size, detached tensor([box, obj, cls]))``."""
        device = preds[0].device
        self._to(device)
        targets = targets.to(device=device, dtype=torch.float32)
        zero = torch.zeros((), device=device)
        loss_box, loss_obj, loss_cls = zero, zero, zero
        for level, (pred, (img, anc, gy, gx, tbox, tcls, anchors)) in enumerate(
            zip(preds, self._matched(preds, targets))
        ):
            tobj = torch.zeros(pred.shape[:4], dtype=pred.dtype, device=device)
            if img.numel():
                ps = pred[img, anc, gy, gx].float()
                pxy = ps[:, :2].sigmoid() * 2 - 0.5
                pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * anchors
                iou = bbox_ciou(torch.cat((pxy, pwh), 1), tbox)
                loss_box = loss_box + (1.0 - iou).mean()
                score = iou.detach().clamp(0).to(tobj.dtype)
                tobj[img, anc, gy, gx] = (1.0 - self.gr) + self.gr * score
                if self.nc > 1:
                    tc = torch.full_like(ps[:, 5:], self.cls_neg)
                    tc[torch.arange(len(tcls), device=device), tcls] = self.cls_pos
                    loss_cls = loss_cls + self.bce_cls(ps[:, 5:], tc)
            loss_obj = loss_obj + self.bce_obj(pred[..., 4].float(), tobj.float()) * self.balance[level]
        loss_box = loss_box * self.box_gain
        loss_obj = loss_obj * self.obj_gain
        loss_cls = loss_cls * self.cls_gain
        batch_size = preds[0].shape[0]
        total = loss_box + loss_obj + loss_cls
        return total * batch_size, torch.stack((loss_box, loss_obj, loss_cls)).detach()

    def _matched(self, preds: Sequence[Tensor], targets: Tensor) -> list[tuple[Tensor, ...]]:
        if self._built is None:
            return self.build_targets(preds, targets)
        key = (id(targets), tuple(tuple(p.shape[2:4]) for p in preds))
        hit = self._built.get(key)
        if hit is None or hit[0] is not targets:  # the tensor is kept, so its id cannot be reused meanwhile
            hit = (targets, self.build_targets(preds, targets))
            self._built[key] = hit
        return hit[1]

    def build_targets(self, preds: Sequence[Tensor], targets: Tensor) -> list[tuple[Tensor, ...]]:
        """Per level: (image idx, anchor idx, cell y, cell x, box target (gx-cell, gy-cell, gw, gh), class,
        anchor wh) of every positive (target, anchor, cell) triple."""
        device = targets.device
        nt = targets.shape[0]
        anchor_idx = torch.arange(self.na, device=device, dtype=torch.float32).view(self.na, 1).expand(-1, nt)
        # (na, nt, 7): image, class, cx, cy, w, h, anchor
        paired = torch.cat((targets[None].expand(self.na, -1, -1), anchor_idx[..., None]), 2)
        shifts = (
            torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=device, dtype=torch.float32) * NEIGHBOUR_G
        )
        out = []
        for level in range(self.nl):
            ny, nx = preds[level].shape[2:4]
            anchors = self.anchors[level]
            scale = torch.tensor([1, 1, nx, ny, nx, ny, 1], device=device, dtype=torch.float32)
            t = paired * scale
            if nt:
                ratio = t[..., 4:6] / anchors[:, None]
                keep = torch.max(ratio, 1.0 / ratio).max(2).values < self.anchor_t
                t = t[keep]
                gxy = t[:, 2:4]
                gxy_inv = scale[[2, 3]] - gxy
                left, up = ((gxy % 1 < NEIGHBOUR_G) & (gxy > 1)).T
                right, down = ((gxy_inv % 1 < NEIGHBOUR_G) & (gxy_inv > 1)).T
                chosen = torch.stack((torch.ones_like(left), left, up, right, down))
                offsets = shifts[:, None].expand(-1, len(t), -1)[chosen]
                t = t[None].expand(5, -1, -1)[chosen]
            else:
                t = paired[0]
                offsets = torch.zeros((0, 2), device=device)
            img, cls = t[:, 0].long(), t[:, 1].long()
            gxy, gwh, anc = t[:, 2:4], t[:, 4:6], t[:, 6].long()
            cell = torch.floor(gxy - offsets).long()
            gx = cell[:, 0].clamp(0, nx - 1)
            gy = cell[:, 1].clamp(0, ny - 1)
            cell = torch.stack((gx, gy), 1)
            tbox = torch.cat((gxy - cell, gwh), 1)
            out.append((img, anc, gy, gx, tbox, cls, anchors[anc]))
        return out
