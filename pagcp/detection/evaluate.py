"""Validation of a YOLO detector on a dataset split: mAP50, mAP50-95, per-class figures, COCO json.

Rectangular letterboxed batches (pad 0.5), confidence threshold 0.001, class-aware multi-label NMS at IoU
0.6 (0.65 when a COCO json is evaluated), at most 300 detections per image; mAP50 and mAP50-95 from
:mod:`pagcp.detection.metrics`; optionally the predictions as a COCO json scored by pycocotools.

``evaluate(model, data, ...)`` is the library half of ``python -m pagcp.val``: pruning, training and the
benchmarks call it in-process; :mod:`pagcp.cli.val` wraps it in the command line.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pagcp.data.config import coco_ground_truth, is_coco_dataset, load_data_config
from pagcp.data.dataset import create_dataloader
from pagcp.detection.metrics import (
    IOU_THRESHOLDS,
    ap_per_class,
    category_ids_from_json,
    coco_evaluate,
    coco_image_id,
    detections_to_coco,
    match_detections,
    non_max_suppression,
    scale_boxes,
    summarize,
    xywh_to_xyxy,
)
from pagcp.devices import select_device
from pagcp.errors import ConfigError

LOGGER = logging.getLogger(__name__)


def detect_head(model: nn.Module) -> nn.Module:
    return model.model[-1] if hasattr(model, "model") else model


def _val_loader(model: nn.Module, data: Any, img_size: int, batch_size: int, workers: int, split: str):
    cfg = load_data_config(data)
    if cfg.get(split) is None:
        raise ConfigError(f"{cfg['yaml_file'] or 'data'}: no '{split}' split")
    stride = int(max(detect_head(model).stride.max().item(), 32))
    loader, _ = create_dataloader(
        cfg[split],
        img_size,
        batch_size,
        stride=stride,
        rect=True,
        pad=0.5,
        workers=workers,
        nc=cfg["nc"],
        prefix=f"{split}: ",
    )
    return loader, cfg


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: DataLoader | str | dict,
    img_size: int = 640,
    batch_size: int = 32,
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    max_det: int = 300,
    device: str | torch.device | None = None,
    half: bool = False,
    compute_loss: Any = None,
    names: list[str] | None = None,
    workers: int = 0,
    json_path: str | None = None,
    coco_gt: str | None = None,
    split: str = "val",
    progress: bool = True,
    match_order: str = "confidence",
) -> dict[str, Any]:
    """Validate ``model`` on a DataLoader from ``create_dataloader`` or on a data yaml/dict/``"demo"`` split.

    Returns ``map50, map50_95, precision, recall, fitness, images, instances, seconds, ms_per_image,
    per_class`` (list of dicts) and, when given ``compute_loss``, ``loss`` {box, obj, cls} (mean per batch).
    With ``json_path`` the detections are written there as COCO json (original-image pixels); when a COCO
    ground truth is known (``coco_gt``, or the data yaml's) they are scored: ``coco_map50, coco_map50_95``.
    The model's train/eval mode is restored afterwards; it is moved to ``device`` when one is given.
    ``match_order``: "confidence" (pycocotools' greedy matching) or "iou" (YOLOv5's), see ``match_detections``.
    """
    start = time.perf_counter()
    cfg: dict[str, Any] = {}
    if isinstance(data, DataLoader):
        loader = data
    else:
        loader, cfg = _val_loader(model, data, img_size, batch_size, workers, split)
        names = names or cfg["names"]
    det_head = detect_head(model)
    nc = int(det_head.nc)
    names = list(names) if names is not None else list(getattr(model, "names", [str(i) for i in range(nc)]))
    if len(names) != nc:
        raise ConfigError(f"the model predicts {nc} classes but {len(names)} class names were given")
    if device is not None:
        model.to(select_device(device))
    dev = next(model.parameters()).device
    half = half and dev.type == "cuda"
    net = copy.deepcopy(model).half() if half else model
    was_training = model.training
    net.eval()
    if coco_gt is None and cfg and json_path:
        coco_gt = coco_ground_truth(cfg)
    category_ids = None
    if json_path and coco_gt:
        category_ids = category_ids_from_json(coco_gt, nc, is_coco=bool(cfg) and is_coco_dataset(cfg))
    stats: list[tuple[torch.Tensor, ...]] = []
    predictions: list[dict[str, Any]] = []
    image_ids: list[Any] = []
    loss = torch.zeros(3, device=dev)
    seen, t_model, t_nms = 0, 0.0, 0.0
    iouv = IOU_THRESHOLDS.to(dev)
    bar = tqdm(loader, desc="validating", unit="batch", disable=None if progress else True, leave=False)
    for imgs, targets, paths, shapes in bar:
        t0 = time.perf_counter()
        imgs = imgs.to(dev, non_blocking=True)
        imgs = (imgs.half() if half else imgs.float()) / 255
        targets = targets.to(dev)
        out = net(imgs)
        decoded, raw = out if isinstance(out, (tuple, list)) else (out, None)
        if compute_loss is not None and raw is not None:
            loss += compute_loss([r.float() for r in raw], targets)[1]
        t1 = time.perf_counter()
        detections = non_max_suppression(decoded.float(), conf_thres, iou_thres, max_det)
        t2 = time.perf_counter()
        t_model, t_nms = t_model + t1 - t0, t_nms + t2 - t1
        height, width = imgs.shape[2:]
        scale = torch.tensor([width, height, width, height], device=dev, dtype=torch.float32)
        for si, det in enumerate(detections):
            labels = targets[targets[:, 0] == si, 1:]
            seen += 1
            if len(labels):
                labels = torch.cat((labels[:, :1], xywh_to_xyxy(labels[:, 1:5] * scale)), 1)
            correct = match_detections(det, labels, iouv, order=match_order)
            stats.append(
                (correct, det[:, 4].cpu(), det[:, 5].cpu(), labels[:, 0].cpu() if len(labels) else torch.zeros(0))
            )
            if json_path:
                image_id = coco_image_id(paths[si])
                image_ids.append(image_id)
                if len(det):
                    shape = shapes[si]
                    to_shape = shape[0] if shape else (height, width)
                    boxes = scale_boxes(det[:, :4], (height, width), to_shape, shape[1] if shape else None)
                    predictions += detections_to_coco(torch.cat((boxes, det[:, 4:]), 1).cpu(), image_id, category_ids)
    if was_training:
        model.train()
    tp, conf, pred_cls, target_cls = (
        (torch.cat(x, 0).numpy() for x in zip(*stats))
        if stats
        else (np.zeros((0, 10), bool), np.zeros(0), np.zeros(0), np.zeros(0))
    )
    per = ap_per_class(tp, conf, pred_cls, target_cls)
    result: dict[str, Any] = summarize(per)
    images_with = {int(c): 0 for c in per["classes"]}
    for s in stats:
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
    result.update(images=seen, instances=int(len(target_cls)))
    if compute_loss is not None:
        mean = (loss / max(len(loader), 1)).tolist()
        result["loss"] = {"box": mean[0], "obj": mean[1], "cls": mean[2]}
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(predictions, f)
        result["json"] = json_path
        if coco_gt:
            result.update(coco_evaluate(coco_gt, predictions, image_ids))
    result["seconds"] = time.perf_counter() - start
    result["ms_per_image"] = {"model": 1000 * t_model / max(seen, 1), "nms": 1000 * t_nms / max(seen, 1)}
    return result


def format_table(result: dict[str, Any]) -> str:
    """YOLOv5-style table: Class Images Instances P R mAP50 mAP50-95, the 'all' row first."""
    head = f"{'Class':>20}{'Images':>11}{'Instances':>11}{'P':>11}{'R':>11}{'mAP50':>11}{'mAP50-95':>11}"
    row = "{:>20}{:>11}{:>11}{:>11.3f}{:>11.3f}{:>11.3f}{:>11.3f}"
    lines = [
        head,
        row.format(
            "all",
            result["images"],
            result["instances"],
            result["precision"],
            result["recall"],
            result["map50"],
            result["map50_95"],
        ),
    ]
    for c in result["per_class"]:
        lines.append(
            row.format(
                c["class"][:20], c["images"], c["instances"], c["precision"], c["recall"], c["ap50"], c["ap50_95"]
            )
        )
    return "\n".join(lines)
