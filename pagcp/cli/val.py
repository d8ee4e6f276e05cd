"""``python -m pagcp.val``: validate a detector (any YOLO-format family: YOLOv5, Ultralytics detection) on a
dataset split and print YOLOv5's per-class table.

The validation itself is :func:`pagcp.detection.evaluate.evaluate`; this module parses the flags, loads
the model and data, asks the model's family for its stride, classes and YOLOv5-style predictions, and prints
the table (``--json``: a JSON object on the last line).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from pagcp.cli.common import Parser, guarded
from pagcp.data.config import coco_ground_truth, load_data_config
from pagcp.data.dataset import create_dataloader
from pagcp.detection.evaluate import evaluate, format_table
from pagcp.devices import select_device
from pagcp.errors import ConfigError
from pagcp.runs import increment_run_dir

PROG = "python -m pagcp.val"
LOGGER = logging.getLogger(__name__)
COCO_JSON_IOU = 0.65


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Validate a detector (YOLOv5, Ultralytics detection) on a YOLO-format dataset.")
    p.add_argument("--weights", default="yolov5n-demo",
                   help="model: bundled checkpoint (yolov5n-demo, yolov8n-demo, yolo26n-demo), config name, "
                        "model yaml, pagcp, YOLOv5 or Ultralytics .pt")  # fmt: skip
    p.add_argument("--data", default="demo", help="data yaml, or 'demo' (generated on first use)")
    p.add_argument("--img", "--img-size", "--imgsz", dest="img", type=int, default=320,
                   help="image size (px; 640 for COCO-trained models)")  # fmt: skip
    p.add_argument("--batch", "--batch-size", dest="batch", type=int, default=32, help="batch size")
    p.add_argument("--device", default="", help="cpu, 0, cuda:0 (default: CUDA when available)")
    p.add_argument("--workers", type=int, default=2, help="dataloader worker processes")
    p.add_argument(
        "--conf-thres", "--conf_thres", dest="conf_thres", type=float, default=0.001, help="NMS confidence threshold"
    )
    p.add_argument(
        "--iou-thres",
        "--iou_thres",
        dest="iou_thres",
        type=float,
        default=None,
        help=f"NMS IoU (default 0.6, or {COCO_JSON_IOU} with --coco-eval)",
    )
    p.add_argument(
        "--max-det", "--max_det", dest="max_det", type=int, default=300, help="most detections kept per image"
    )
    p.add_argument("--task", default="val", choices=["train", "val", "test"], help="split to evaluate")
    p.add_argument("--half", action="store_true", help="FP16 inference (CUDA only)")
    p.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    p.add_argument(
        "--coco-eval",
        "--coco_eval",
        dest="coco_eval",
        action="store_true",
        help="write predictions.json and score it with pycocotools",
    )
    p.add_argument(
        "--save-json",
        "--save_json",
        dest="save_json",
        action="store_true",
        help="write predictions.json (COCO format) into the run folder",
    )
    p.add_argument("--project", default=os.path.join("runs", "val"), help="folder of the run folders")
    p.add_argument("--name", default="exp", help="run folder name (exp, exp2, ... when taken)")
    p.add_argument("--exist-ok", "--exist_ok", dest="exist_ok", action="store_true", help="reuse project/name")
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
    from pagcp.families import family_for_weights

    _check_args(args)
    device = select_device(args.device)
    cfg = load_data_config(args.data)
    family = family_for_weights(args.weights)
    new = family.is_config(args.weights)  # a new network: the data's classes (and what else it takes from them)
    model = family.load(args.weights, nc=cfg["nc"] if new else None, device=device,
                        **(family.config_options(cfg) if new else {}))  # fmt: skip
    family.check_data(model, cfg, args.weights, args.data)
    if not hasattr(family, "for_validation"):
        raise ConfigError(f"--weights {args.weights}: {family.title} models are not YOLO detectors pagcp.val scores")
    scored = family.for_validation(model)  # before any data is read: refuses what pagcp.val cannot score
    stride = family.stride(model)
    img = family.image_size(model, args.img)
    iou = args.iou_thres if args.iou_thres is not None else (COCO_JSON_IOU if args.coco_eval else 0.6)
    json_path, coco_gt = None, None
    if args.coco_eval:
        coco_gt = coco_ground_truth(cfg)
        if coco_gt is None:
            raise ConfigError(
                f"--coco-eval: no COCO ground truth for {args.data}; expected the yaml key coco_json "
                f"or {os.path.join(cfg['path'], 'annotations', 'instances_val2017.json')}"
            )
    if args.coco_eval or args.save_json:
        run_dir = increment_run_dir(args.project, args.name, args.exist_ok)
        run_dir.mkdir(parents=True, exist_ok=True)
        json_path = str(run_dir / "predictions.json")
    if not cfg.get(args.task):
        raise ConfigError(f"--task {args.task}: the data {args.data} has no '{args.task}' split")
    loader, _ = create_dataloader(
        cfg[args.task],
        img,
        args.batch,
        stride=stride,
        rect=True,
        pad=0.5,
        workers=args.workers,
        nc=cfg["nc"],
        prefix=f"{args.task}: ",
    )
    result = evaluate(
        scored,
        loader,
        img,
        conf_thres=args.conf_thres,
        iou_thres=iou,
        max_det=args.max_det,
        half=args.half,
        names=cfg["names"],
        json_path=json_path,
        coco_gt=coco_gt if args.coco_eval else None,
    )
    if args.save_json and not args.coco_eval and "json" in result:
        LOGGER.info("predictions written to %s", result["json"])
    result.update(weights=str(args.weights), data=str(args.data), img=img, device=str(device), iou_thres=iou)
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    code, result = guarded(PROG, lambda: run(args))
    if code:
        return code
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
