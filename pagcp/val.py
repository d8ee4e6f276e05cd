"""Validation of a detector: ``evaluate()`` for training and pruning, ``python -m pagcp.val`` on the command line.

Rectangular letterboxed batches (pad 0.5), confidence threshold 0.001, class-aware multi-label NMS at IoU
0.6 (0.65 when a COCO json is evaluated), at most 300 detections per image; mAP50 and mAP50-95 from
``pagcp.metrics``; optionally the predictions as a COCO json scored by pycocotools.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pagcp.data.config import coco_ground_truth, is_coco_dataset, load_data_config
from pagcp.data.dataset import create_dataloader
from pagcp.errors import ConfigError, PagcpError
from pagcp.metrics import (
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
from pagcp.run_records import increment_run_dir

LOGGER = logging.getLogger(__name__)
COCO_JSON_IOU = 0.65


def select_device(device: str | torch.device | None) -> torch.device:
    """``''``/None (CUDA when available), ``'cpu'``, ``'0'``, ``'cuda:1'`` or ``'0,1'`` (first) -> device."""
    if isinstance(device, torch.device):
        return device
    text = (device or "").strip().lower()
    if text in ("", "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    index = text.removeprefix("cuda").lstrip(":").split(",")[0] or "0"
    if not index.isdigit():
        raise ConfigError(f"--device {device!r}: expected cpu, a CUDA index such as 0, or cuda:0")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device!r}: CUDA is not available on this machine; use --device cpu")
    if int(index) >= torch.cuda.device_count():
        raise ConfigError(f"--device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return torch.device(f"cuda:{index}")


def _detect_head(model: nn.Module) -> nn.Module:
    return model.model[-1] if hasattr(model, "model") else model


def _val_loader(model: nn.Module, data: Any, img_size: int, batch_size: int, workers: int, split: str):
    cfg = load_data_config(data)
    if cfg.get(split) is None:
        raise ConfigError(f"{cfg['yaml_file'] or 'data'}: no '{split}' split")
    stride = int(max(_detect_head(model).stride.max().item(), 32))
    loader, _ = create_dataloader(cfg[split], img_size, batch_size, stride=stride, rect=True, pad=0.5,
                                  workers=workers, nc=cfg["nc"], prefix=f"{split}: ")
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
    det_head = _detect_head(model)
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
            stats.append((correct, det[:, 4].cpu(), det[:, 5].cpu(), labels[:, 0].cpu() if len(labels) else
                          torch.zeros(0)))
            if json_path:
                image_id = coco_image_id(paths[si])
                image_ids.append(image_id)
                if len(det):
                    shape = shapes[si]
                    to_shape = shape[0] if shape else (height, width)
                    boxes = scale_boxes(det[:, :4], (height, width), to_shape, shape[1] if shape else None)
                    predictions += detections_to_coco(torch.cat((boxes, det[:, 4:]), 1).cpu(), image_id,
                                                      category_ids)
    if was_training:
        model.train()
    tp, conf, pred_cls, target_cls = (torch.cat(x, 0).numpy() for x in zip(*stats)) if stats else (
        np.zeros((0, 10), bool), np.zeros(0), np.zeros(0), np.zeros(0))
    per = ap_per_class(tp, conf, pred_cls, target_cls)
    result: dict[str, Any] = summarize(per)
    images_with = {int(c): 0 for c in per["classes"]}
    for s in stats:
        for c in np.unique(s[3].numpy()).astype(int):
            images_with[c] += 1
    result["per_class"] = [
        {"class": names[c], "id": int(c), "images": images_with[int(c)], "instances": int(n),
         "precision": float(p), "recall": float(r), "ap50": float(ap[0]), "ap50_95": float(ap.mean())}
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
    lines = [head, row.format("all", result["images"], result["instances"], result["precision"],
                              result["recall"], result["map50"], result["map50_95"])]
    for c in result["per_class"]:
        lines.append(row.format(c["class"][:20], c["images"], c["instances"], c["precision"], c["recall"],
                                c["ap50"], c["ap50_95"]))
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m pagcp.val", description="Validate a YOLOv5 model on a YOLO-format dataset.")
    p.add_argument("--weights", default="yolov5s", help="model: config name, bundled checkpoint, .pt or yaml")
    p.add_argument("--data", default="demo", help="data yaml, or 'demo' (generated on first use)")
    p.add_argument("--img", "--img-size", "--imgsz", dest="img", type=int, default=640, help="image size (px)")
    p.add_argument("--batch", "--batch-size", dest="batch", type=int, default=32)
    p.add_argument("--device", default="", help="cpu, 0, cuda:0 (default: CUDA when available)")
    p.add_argument("--workers", type=int, default=2, help="dataloader worker processes")
    p.add_argument("--conf-thres", "--conf_thres", dest="conf_thres", type=float, default=0.001)
    p.add_argument("--iou-thres", "--iou_thres", dest="iou_thres", type=float, default=None,
                   help=f"NMS IoU (default 0.6, or {COCO_JSON_IOU} with --coco-eval)")
    p.add_argument("--max-det", "--max_det", dest="max_det", type=int, default=300)
    p.add_argument("--task", default="val", choices=["train", "val", "test"], help="split to evaluate")
    p.add_argument("--half", action="store_true", help="FP16 inference (CUDA only)")
    p.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    p.add_argument("--coco-eval", "--coco_eval", dest="coco_eval", action="store_true",
                   help="write predictions.json and score it with pycocotools")
    p.add_argument("--save-json", "--save_json", dest="save_json", action="store_true",
                   help="write predictions.json (COCO format) into the run folder")
    p.add_argument("--project", default=os.path.join("runs", "val"))
    p.add_argument("--name", default="exp")
    p.add_argument("--exist-ok", "--exist_ok", dest="exist_ok", action="store_true")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.img < 32:
        raise ConfigError(f"--img {args.img}: must be at least 32")
    if args.batch < 1:
        raise ConfigError(f"--batch {args.batch}: must be at least 1")
    if args.workers < 0:
        raise ConfigError(f"--workers {args.workers}: must be >= 0")
    if args.max_det < 1:
        raise ConfigError(f"--max-det {args.max_det}: must be at least 1")
    for flag, value in (("--conf-thres", args.conf_thres), ("--iou-thres", args.iou_thres)):
        if value is not None and not 0 <= value <= 1:
            raise ConfigError(f"{flag} {value}: must lie in [0, 1]")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The CLI's work: load model and data, evaluate, return the result dict."""
    from pagcp import load_model

    _check_args(args)
    device = select_device(args.device)
    cfg = load_data_config(args.data)
    model = load_model(args.weights, nc=cfg["nc"], device=device)
    if int(_detect_head(model).nc) != cfg["nc"]:
        raise ConfigError(f"--weights {args.weights} predicts {_detect_head(model).nc} classes but "
                          f"--data {args.data} has nc={cfg['nc']}")
    stride = int(max(_detect_head(model).stride.max().item(), 32))
    img = -(-args.img // stride) * stride
    if img != args.img:
        LOGGER.warning("--img %d is not a multiple of the stride %d; using %d", args.img, stride, img)
    iou = args.iou_thres if args.iou_thres is not None else (COCO_JSON_IOU if args.coco_eval else 0.6)
    json_path, coco_gt = None, None
    if args.coco_eval:
        coco_gt = coco_ground_truth(cfg)
        if coco_gt is None:
            raise ConfigError(f"--coco-eval: no COCO ground truth for {args.data}; expected the yaml key coco_json "
                              f"or {os.path.join(cfg['path'], 'annotations', 'instances_val2017.json')}")
    if args.coco_eval or args.save_json:
        run_dir = increment_run_dir(args.project, args.name, args.exist_ok)
        run_dir.mkdir(parents=True, exist_ok=True)
        json_path = str(run_dir / "predictions.json")
    if not cfg.get(args.task):
        raise ConfigError(f"--task {args.task}: the data {args.data} has no '{args.task}' split")
    loader, _ = create_dataloader(cfg[args.task], img, args.batch, stride=stride, rect=True, pad=0.5,
                                  workers=args.workers, nc=cfg["nc"], prefix=f"{args.task}: ")
    result = evaluate(model, loader, img, conf_thres=args.conf_thres, iou_thres=iou, max_det=args.max_det,
                      half=args.half, names=cfg["names"], json_path=json_path, coco_gt=coco_gt if args.coco_eval
                      else None)
    if args.save_json and not args.coco_eval and "json" in result:
        LOGGER.info("predictions written to %s", result["json"])
    result.update(weights=str(args.weights), data=str(args.data), img=img, device=str(device), iou_thres=iou)
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = run(args)
    except PagcpError as e:
        print(f"python -m pagcp.val: error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    ms = result["ms_per_image"]
    print(f"Speed: {ms['model']:.1f} ms model, {ms['nms']:.1f} ms NMS per image; {result['seconds']:.1f} s total")
    if "coco_map50_95" in result:
        print(f"pycocotools: mAP50 {result['coco_map50']:.3f}, mAP50-95 {result['coco_map50_95']:.3f}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
