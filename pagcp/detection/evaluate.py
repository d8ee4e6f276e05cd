"""Validation of a YOLO detector on a dataset split: mAP50, mAP50-95, per-class figures, COCO json.

Rectangular letterboxed batches (pad 0.5), confidence threshold 0.001, class-aware multi-label NMS at IoU
0.6 (0.65 when a COCO json is evaluated), at most 300 detections per image; mAP50 and mAP50-95 from
:mod:`pagcp.detection.metrics`; optionally the predictions as a COCO json scored by pycocotools.
This module owns the pass itself (loader, model preparation, forward, NMS, timing); what it accumulates per
image and the figures it ends with are :mod:`pagcp.detection.val_stats`.

``evaluate(model, data, ...)`` is the library half of ``python -m pagcp.val``: pruning, training and the
benchmarks call it in-process; :mod:`pagcp.cli.val` wraps it in the command line.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pagcp.data.config import coco_ground_truth, is_coco_dataset, load_data_config
from pagcp.data.dataset import create_dataloader
from pagcp.detection.metrics import IOU_THRESHOLDS, category_ids_from_json, non_max_suppression
from pagcp.detection.val_stats import ValidationStats
from pagcp.devices import select_device
from pagcp.errors import ConfigError

LOGGER = logging.getLogger(__name__)


def _val_loader(data: Any, img_size: int, batch_size: int, workers: int, split: str, stride: int):
    """(rectangular validation loader of ``split`` at the model's ``stride``, data config) for a data yaml, dict
    or ``"demo"``."""
    cfg = load_data_config(data)
    if cfg.get(split) is None:
        raise ConfigError(f"{cfg['yaml_file'] or 'data'}: no '{split}' split")
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


def _prepare_model(model: nn.Module, device: str | torch.device | None, half: bool) -> tuple[nn.Module, bool]:
    """The network to run (an fp16 copy with ``half`` on CUDA, else ``model`` itself) in eval mode, and
    whether it is fp16; ``model`` is moved to ``device`` first when one is given."""
    if device is not None:
        model.to(select_device(device))
    half = half and next(model.parameters()).device.type == "cuda"
    net = copy.deepcopy(model).half() if half else model
    return net, half


def _check_names(model: nn.Module, names: Sequence[str] | None) -> list[str]:
    """Class names: those given, else the model's (the caller checks that their count is the model's; the
    model's family knows it)."""
    names = names if names is not None else getattr(model, "names", None)
    if names is None:
        raise ConfigError("evaluate(): pass the class names (names=...) of a model that carries none")
    return list(names.values()) if isinstance(names, dict) else list(names)


def _coco_setup(json_path: str | None, coco_gt: str | None, cfg: dict, nc: int) -> tuple[str | None, list | None]:
    """The COCO ground truth json (given, or the data config's when a json is written) and the class index ->
    category id map (None without both a json path and a ground truth)."""
    if coco_gt is None and cfg and json_path:
        coco_gt = coco_ground_truth(cfg)
    category_ids = None
    if json_path and coco_gt:
        category_ids = category_ids_from_json(coco_gt, nc, is_coco=bool(cfg) and is_coco_dataset(cfg))
    return coco_gt, category_ids


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
    stride: int = 32,
) -> dict[str, Any]:
    """Validate ``model`` on a DataLoader from ``create_dataloader`` or on a data yaml/dict/``"demo"`` split.

    Returns ``map50, map50_95, precision, recall, fitness, images, instances, seconds, ms_per_image,
    per_class`` (list of dicts) and, when given ``compute_loss``, ``loss`` {box, obj, cls} (mean per batch).
    With ``json_path`` the detections are written there as COCO json (original-image pixels); when a COCO
    ground truth is known (``coco_gt``, or the data yaml's) they are scored: ``coco_map50, coco_map50_95``.
    The model's train/eval mode is restored afterwards; it is moved to ``device`` when one is given.
    ``match_order``: "confidence" (pycocotools' greedy matching) or "iou" (YOLOv5's), see ``match_detections``.
    ``stride``: the multiple the model's input sizes must be (its family's ``stride(model)``), for the loader
    built from a data spec. ``model`` predicts YOLOv5-style ((batch, anchors, 5 + nc), ...) with as many classes
    as ``names`` (the callers' families check it).
    """
    start = time.perf_counter()
    cfg: dict[str, Any] = {}
    if isinstance(data, DataLoader):
        loader = data
    else:
        loader, cfg = _val_loader(data, img_size, batch_size, workers, split, stride)
        names = names or cfg["names"]
    names = _check_names(model, names)
    net, half = _prepare_model(model, device, half)
    was_training = model.training
    net.eval()
    coco_gt, category_ids = _coco_setup(json_path, coco_gt, cfg, len(names))
    dev = next(model.parameters()).device
    stats = ValidationStats(IOU_THRESHOLDS.to(dev), match_order, bool(json_path), category_ids)
    nms = (conf_thres, iou_thres, max_det)
    loss, t_model, t_nms = _run_batches(net, loader, dev, half, nms, stats, compute_loss, progress)
    if was_training:
        model.train()
    result = stats.summary(names)
    if compute_loss is not None:
        mean = (loss / max(len(loader), 1)).tolist()
        result["loss"] = {"box": mean[0], "obj": mean[1], "cls": mean[2]}
    if json_path:
        result.update(stats.write_coco(json_path, coco_gt))
    result["seconds"] = time.perf_counter() - start
    seen = max(stats.seen, 1)
    result["ms_per_image"] = {"model": 1000 * t_model / seen, "nms": 1000 * t_nms / seen}
    return result


def _run_batches(
    net: nn.Module,
    loader: DataLoader,
    dev: torch.device,
    half: bool,
    nms: tuple[float, float, int],
    stats: ValidationStats,
    compute_loss: Any,
    progress: bool,
) -> tuple[torch.Tensor, float, float]:
    """Forward and NMS (``nms``: conf_thres, iou_thres, max_det) over every batch into ``stats``.

    Returns the summed (box, obj, cls) loss (zeros without ``compute_loss``) and the seconds spent in the
    model (with the loss) and in NMS.
    """
    loss = torch.zeros(3, device=dev)
    t_model, t_nms = 0.0, 0.0
    bar = tqdm(loader, desc="validating", unit="batch", disable=None if progress else True, leave=False)
    for imgs, targets, paths, shapes in bar:
        t0 = time.perf_counter()
        imgs = imgs.to(dev, non_blocking=True)
        imgs = (imgs.half() if half else imgs.float()) / 255
        targets = targets.to(dev)
        decoded, raw = _split_output(net(imgs))
        if compute_loss is not None and raw is not None:
            loss += compute_loss([r.float() for r in raw], targets)[1]
        t1 = time.perf_counter()
        detections = non_max_suppression(decoded.float(), *nms)
        t2 = time.perf_counter()
        t_model, t_nms = t_model + t1 - t0, t_nms + t2 - t1
        stats.add_batch(detections, targets, paths, shapes, tuple(imgs.shape[2:]))
    return loss, t_model, t_nms


def _split_output(out: Any) -> tuple[torch.Tensor, Any]:
    """(decoded predictions, raw head outputs or None) of a detector's forward in eval mode."""
    return out if isinstance(out, (tuple, list)) else (out, None)


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
