"""Detection metrics: NMS, IoU matching, per-class AP and mAP, COCO json export and pycocotools evaluation.

Conventions (those of YOLOv5's validation): confidence = objectness x class score, multi-label NMS with
class offsets, matching at the ten IoU thresholds 0.50:0.05:0.95 (each detection and each label used at
most once; detections in confidence order take their best free label, as pycocotools does; YOLOv5's
highest-IoU-first order is available), AP by 101-point interpolation of the precision envelope integrated
with the trapezoid rule. Precision and recall are reported at the confidence that maximises the mean F1
over classes.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchvision
from torch import Tensor

from pagcp.errors import DataError

LOGGER = logging.getLogger(__name__)

IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 names it trapz
MAX_NMS_INPUT = 30000  # boxes passed to torchvision NMS per image at most (highest confidence first)

# COCO's 80 training classes -> its 91 category ids
COCO80_TO_91 = (
    list(range(1, 12))
    + list(range(13, 26))
    + [27, 28]
    + list(range(31, 45))
    + list(range(46, 66))
    + [67, 70]
    + list(range(72, 83))
    + list(range(84, 91))
)


def xywh_to_xyxy(x: Tensor) -> Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2)."""
    cxy, wh = x[..., :2], x[..., 2:4]
    return torch.cat((cxy - wh / 2, cxy + wh / 2), -1)


def xyxy_to_xywh(x: Tensor) -> Tensor:
    """(x1, y1, x2, y2) -> (cx, cy, w, h)."""
    return torch.cat(((x[..., :2] + x[..., 2:4]) / 2, x[..., 2:4] - x[..., :2]), -1)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of xyxy boxes: (n, 4) x (m, 4) -> (n, m)."""
    return torchvision.ops.box_iou(a.float(), b.float())


def non_max_suppression(
    prediction: Tensor,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    max_det: int = 300,
    multi_label: bool = True,
    agnostic: bool = False,
    classes: Sequence[int] | None = None,
) -> list[Tensor]:
    """Decoded predictions (bs, rows, 5 + nc) in xywh pixels -> per image (n, 6) [x1, y1, x2, y2, conf, cls].

    Confidence is objectness x class score; with ``multi_label`` every class whose confidence passes
    ``conf_thres`` yields a row, else only the best class. Class-aware unless ``agnostic``.
    """
    if isinstance(prediction, (list, tuple)):  # eval output (decoded, raw)
        prediction = prediction[0]
    if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
        raise ValueError(f"conf_thres {conf_thres} and iou_thres {iou_thres} must lie in [0, 1]")
    nc = prediction.shape[2] - 5
    multi_label = multi_label and nc > 1
    out: list[Tensor] = []
    for x in prediction:
        x = x[x[:, 4] > conf_thres].float()
        if not len(x):
            out.append(torch.zeros((0, 6), device=prediction.device))
            continue
        scores = x[:, 5:] * x[:, 4:5] if nc else x[:, 4:5]
        boxes = xywh_to_xyxy(x[:, :4])
        if multi_label:
            row, col = (scores > conf_thres).nonzero(as_tuple=True)
            det = torch.cat((boxes[row], scores[row, col, None], col[:, None].float()), 1)
        else:
            conf, col = scores.max(1, keepdim=True)
            det = torch.cat((boxes, conf, col.float()), 1)[conf.view(-1) > conf_thres]
        if classes is not None:
            det = det[(det[:, 5:6] == torch.tensor(classes, device=det.device)).any(1)]
        if not len(det):
            out.append(torch.zeros((0, 6), device=prediction.device))
            continue
        if len(det) > MAX_NMS_INPUT:
            det = det[det[:, 4].argsort(descending=True)[:MAX_NMS_INPUT]]
        groups = torch.zeros_like(det[:, 5]) if agnostic else det[:, 5]
        keep = torchvision.ops.batched_nms(det[:, :4], det[:, 4], groups, iou_thres)[:max_det]
        out.append(det[keep])
    return out


def match_detections(
    detections: Tensor, labels: Tensor, iou_thresholds: Tensor = IOU_THRESHOLDS, order: str = "confidence"
) -> Tensor:
    """True positives per IoU threshold: detections (n, 6) xyxy/conf/cls, labels (m, 5) cls/xyxy -> (n, t) bool.

    Each detection and each label is used at most once per threshold, and only within a class.
    ``order="confidence"`` (default, as pycocotools): detections in descending confidence each take the
    still-free label of highest IoU. ``order="iou"`` (YOLOv5's val): pairs are taken by descending IoU
    regardless of confidence, so a low-confidence box can take a label from a confident one.
    """
    if order not in ("confidence", "iou"):
        raise ValueError(f"order must be 'confidence' or 'iou', got {order!r}")
    thresholds = iou_thresholds.cpu().numpy()
    correct = np.zeros((detections.shape[0], len(thresholds)), dtype=bool)
    if not len(detections) or not len(labels):
        return torch.from_numpy(correct)
    iou = box_iou(labels[:, 1:], detections[:, :4]).cpu().numpy()
    iou[(labels[:, 0:1] != detections[:, 5]).cpu().numpy()] = 0.0  # other classes never match
    if order == "iou":
        _match_by_iou(iou, thresholds, correct)
        return torch.from_numpy(correct)
    taken = np.zeros((iou.shape[0], len(thresholds)), dtype=bool)
    conf = detections[:, 4].cpu().numpy()
    candidates = np.nonzero(iou.max(0) >= thresholds.min())[0]
    for d in candidates[np.argsort(-conf[candidates], kind="stable")]:
        free = np.where(taken, -1.0, iou[:, d : d + 1])  # (m, t)
        best = free.argmax(0)
        hit = free[best, np.arange(len(thresholds))] >= thresholds
        correct[d] = hit
        taken[best[hit], np.nonzero(hit)[0]] = True
    return torch.from_numpy(correct)


def _match_by_iou(iou: np.ndarray, thresholds: np.ndarray, correct: np.ndarray) -> None:
    for k, thr in enumerate(thresholds):
        lab, det = np.nonzero(iou >= thr)
        if not len(lab):
            continue
        order = np.argsort(-iou[lab, det], kind="stable")
        lab, det = lab[order], det[order]
        _, first = np.unique(det, return_index=True)  # best label per detection
        keep = np.sort(first)  # back to descending-IoU order
        lab, det = lab[keep], det[keep]
        _, first = np.unique(lab, return_index=True)  # best detection per label
        correct[det[first], k] = True


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """AP of one PR curve (recall ascending): precision envelope sampled at 101 recall points, trapezoid."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    return float(_trapezoid(np.interp(x, mrec, mpre), x))


def ap_per_class(
    tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray, eps: float = 1e-16
) -> dict[str, np.ndarray]:
    """Per-class AP at every IoU threshold plus P, R, F1 at the max-mean-F1 confidence.

    ``tp`` (n, t) bool, ``conf`` (n,), ``pred_cls`` (n,), ``target_cls`` (m,). Classes are those present in
    the labels. Returns ``classes, ap (c, t), p (c,), r (c,), f1 (c,), n_labels (c,)``.
    """
    tp = np.asarray(tp, dtype=np.float64)
    if len(conf):
        tp = tp.reshape(len(conf), -1)
    else:  # no detection at all: zero rows, one column per IoU threshold
        tp = np.zeros((0, tp.shape[-1] if tp.ndim == 2 else len(IOU_THRESHOLDS)))
    order = np.argsort(-conf, kind="stable")
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, n_labels = np.unique(target_cls, return_counts=True)
    n_thr = tp.shape[1]
    grid = np.linspace(0, 1, 1000)
    ap = np.zeros((len(classes), n_thr))
    p_curve, r_curve = np.zeros((len(classes), len(grid))), np.zeros((len(classes), len(grid)))
    for ci, c in enumerate(classes):
        sel = pred_cls == c
        if not sel.any():
            continue
        tpc = tp[sel].cumsum(0)
        fpc = (1 - tp[sel]).cumsum(0)
        recall = tpc / (n_labels[ci] + eps)
        precision = tpc / (tpc + fpc)
        # curves at IoU 0.5 against confidence (conf is descending, interp needs ascending x)
        r_curve[ci] = np.interp(-grid, -conf[sel], recall[:, 0], left=0)
        p_curve[ci] = np.interp(-grid, -conf[sel], precision[:, 0], left=1)
        for k in range(n_thr):
            ap[ci, k] = compute_ap(recall[:, k], precision[:, k])
    f1_curve = 2 * p_curve * r_curve / (p_curve + r_curve + eps)
    best = int(f1_curve.mean(0).argmax()) if len(classes) else 0
    return {
        "classes": classes.astype(int),
        "ap": ap,
        "p": p_curve[:, best] if len(classes) else np.zeros(0),
        "r": r_curve[:, best] if len(classes) else np.zeros(0),
        "f1": f1_curve[:, best] if len(classes) else np.zeros(0),
        "n_labels": n_labels,
    }


def summarize(stats: dict[str, np.ndarray]) -> dict[str, float]:
    """mAP50, mAP50-95, mean P and R and fitness (0.1 mAP50 + 0.9 mAP50-95) from ``ap_per_class``."""
    ap = stats["ap"]
    if not len(ap):
        return {"precision": 0.0, "recall": 0.0, "map50": 0.0, "map50_95": 0.0, "fitness": 0.0}
    map50, map50_95 = float(ap[:, 0].mean()), float(ap.mean())
    return {
        "precision": float(stats["p"].mean()),
        "recall": float(stats["r"].mean()),
        "map50": map50,
        "map50_95": map50_95,
        "fitness": 0.1 * map50 + 0.9 * map50_95,
    }


def scale_boxes(boxes: Tensor, from_shape: Sequence[int], to_shape: Sequence[int], ratio_pad=None) -> Tensor:
    """Map xyxy boxes from a letterboxed (h, w) input back to the original (h0, w0) image, clipped."""
    boxes = boxes.clone()
    if ratio_pad is None:
        gain = min(from_shape[0] / to_shape[0], from_shape[1] / to_shape[1])
        pad = ((from_shape[1] - to_shape[1] * gain) / 2, (from_shape[0] - to_shape[0] * gain) / 2)
        gain_x = gain_y = gain
    else:
        (gain_y, gain_x), pad = ratio_pad
    boxes[:, [0, 2]] = (boxes[:, [0, 2]] - pad[0]) / gain_x
    boxes[:, [1, 3]] = (boxes[:, [1, 3]] - pad[1]) / gain_y
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clamp(0, to_shape[1])
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clamp(0, to_shape[0])
    return boxes


def detections_to_coco(
    detections: Tensor, image_id: int | str, category_ids: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """(n, 6) xyxy/conf/cls in original pixels -> COCO result dicts (bbox = top-left x, y, w, h)."""
    rows = []
    for x1, y1, x2, y2, conf, cls in detections.tolist():
        c = int(cls)
        rows.append(
            {
                "image_id": image_id,
                "category_id": category_ids[c] if category_ids is not None else c,
                "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                "score": round(conf, 5),
            }
        )
    return rows


def coco_image_id(path: str) -> int | str:
    """COCO image id of an image file: its stem as an int when numeric (e.g. 000000139.jpg -> 139)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return int(stem) if stem.isnumeric() else stem


def category_ids_from_json(gt_json: str, nc: int, is_coco: bool = False) -> list[int]:
    """Class index -> category id: COCO's 80->91 map for COCO, else the json's sorted category ids."""
    if is_coco:
        return list(COCO80_TO_91)
    with open(gt_json, encoding="utf-8") as f:
        ids = sorted(int(c["id"]) for c in json.load(f).get("categories", []))
    if len(ids) != nc:
        raise DataError(f"{gt_json}: {len(ids)} categories but the dataset has nc={nc}")
    return ids


def coco_evaluate(
    gt_json: str, predictions: str | list[dict[str, Any]], image_ids: Sequence[int | str] | None = None
) -> dict[str, float]:
    """pycocotools bbox evaluation -> {"coco_map50_95", "coco_map50"}; restricted to ``image_ids``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not os.path.isfile(gt_json):
        raise DataError(f"COCO ground truth {gt_json} not found")
    if isinstance(predictions, str):
        with open(predictions, encoding="utf-8") as f:
            predictions = json.load(f)
    text = io.StringIO()
    with contextlib.redirect_stdout(text):  # pycocotools prints its progress
        gt = COCO(gt_json)
        if not predictions:
            LOGGER.warning("COCO evaluation: no detections, mAP 0")
            return {"coco_map50_95": 0.0, "coco_map50": 0.0}
        dt = gt.loadRes(list(predictions))
        ev = COCOeval(gt, dt, "bbox")
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    LOGGER.debug("pycocotools:\n%s", text.getvalue())
    return {"coco_map50_95": float(ev.stats[0]), "coco_map50": float(ev.stats[1])}
