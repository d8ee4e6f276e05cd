"""What a validation pass accumulates image by image, and the figures it ends with.

Per image: the detections matched to the labels at the ten IoU thresholds 0.5:0.95 (true-positive flags,
confidences, predicted and labelled classes) and, when a COCO json is wanted, the detections in original-image
pixels as COCO results. At the end: mAP50, mAP50-95, P, R, fitness and the per-class rows
(:func:`pagcp.detection.metrics.ap_per_class`), the json file and its pycocotools score.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pagcp.detection.metrics import (
    ap_per_class,
    coco_evaluate,
    coco_image_id,
    detections_to_coco,
    match_detections,
    scale_boxes,
    summarize,
    xywh_to_xyxy,
)


class ValidationStats:
    """Matching statistics (and optionally COCO predictions) of every image seen so far."""

    def __init__(
        self,
        iou_thresholds: torch.Tensor,
        match_order: str = "confidence",
        coco_results: bool = False,
        category_ids: Sequence[int] | None = None,
    ):
        self.iou_thresholds = iou_thresholds
        self.match_order = match_order
        self.coco_results = coco_results
        self.category_ids = category_ids
        self.stats: list[tuple[torch.Tensor, ...]] = []  # (correct, conf, pred class, label classes) per image
        self.predictions: list[dict[str, Any]] = []
        self.image_ids: list[Any] = []
        self.seen = 0

    def add_batch(
        self,
        detections: list[torch.Tensor],
        targets: torch.Tensor,
        paths: Sequence[str],
        shapes: Sequence[Any],
        input_hw: tuple[int, int],
    ) -> None:
        """One batch after NMS: ``detections`` per image (n, 6) xyxy/conf/cls in input pixels, ``targets``
        (image index, class, normalised cx cy w h), the batch's (height, width) ``input_hw``."""
        height, width = input_hw
        scale = torch.tensor([width, height, width, height], device=targets.device, dtype=torch.float32)
        for si, det in enumerate(detections):
            labels = targets[targets[:, 0] == si, 1:]
            self.seen += 1
            if len(labels):
                labels = torch.cat((labels[:, :1], xywh_to_xyxy(labels[:, 1:5] * scale)), 1)
            correct = match_detections(det, labels, self.iou_thresholds, order=self.match_order)
            label_cls = labels[:, 0].cpu() if len(labels) else torch.zeros(0)
            self.stats.append((correct, det[:, 4].cpu(), det[:, 5].cpu(), label_cls))
            if self.coco_results:
                self._add_coco(det, paths[si], shapes[si], input_hw)

    def _add_coco(self, det: torch.Tensor, path: str, shape: Any, input_hw: tuple[int, int]) -> None:
        image_id = coco_image_id(path)
        self.image_ids.append(image_id)
        if len(det):
            to_shape = shape[0] if shape else input_hw
            boxes = scale_boxes(det[:, :4], input_hw, to_shape, shape[1] if shape else None)
            self.predictions += detections_to_coco(torch.cat((boxes, det[:, 4:]), 1).cpu(), image_id, self.category_ids)

    def summary(self, names: Sequence[str]) -> dict[str, Any]:
        """map50, map50_95, precision, recall, fitness, per_class (dicts), images, instances."""
        if self.stats:
            tp, conf, pred_cls, target_cls = (torch.cat(x, 0).numpy() for x in zip(*self.stats))
        else:
            tp, conf, pred_cls, target_cls = np.zeros((0, 10), bool), np.zeros(0), np.zeros(0), np.zeros(0)
        per = ap_per_class(tp, conf, pred_cls, target_cls)
        result: dict[str, Any] = summarize(per)
        images_with = {int(c): 0 for c in per["classes"]}
        for s in self.stats:
            for c in np.unique(s[3].numpy()).astype(int):
                images_with[c] += 1
        result["per_class"] = [
            {
                "class": names[c],
                "id": int(c),
                "images": images_with[int(c)],
                "instances": int(n),
                "precision": float(p),
                "recall": float(r),
                "ap50": float(ap[0]),
                "ap50_95": float(ap.mean()),
            }
            for c, n, p, r, ap in zip(per["classes"], per["n_labels"], per["p"], per["r"], per["ap"])
        ]
        result.update(images=self.seen, instances=int(len(target_cls)))
        return result

    def write_coco(self, json_path: str, coco_gt: str | None) -> dict[str, Any]:
        """Write the COCO predictions to ``json_path``; score them when a ground truth json is known."""
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(self.predictions, f)
        result: dict[str, Any] = {"json": json_path}
        if coco_gt:
            result.update(coco_evaluate(coco_gt, self.predictions, self.image_ids))
        return result
