"""``python -m pagcp.export``: export a model of any registered family (YOLOv5: bundled, config, pagcp or
official ``.pt``; Ultralytics detection: yaml or ``.pt``) to ONNX.

The export itself is the model's family's (:func:`pagcp.deploy.export_onnx` for YOLOv5, Ultralytics' own for
Ultralytics models); this module parses the flags, loads the model, names the output file, and optionally
checks the file in ONNX Runtime against PyTorch and measures its CPU latency (``--json``: a JSON object on the
last line).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from pagcp.cli.common import Parser, guarded
from pagcp.deploy.latency import onnx_latency
from pagcp.deploy.onnx_export import MIN_OPSET, max_abs_diff
from pagcp.deploy.runtime import require
from pagcp.devices import select_device
from pagcp.errors import ConfigError

PROG = "python -m pagcp.export"
LOGGER = logging.getLogger(__name__)
FORMATS = ("onnx",)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Export a model (YOLOv5, Ultralytics detection) to ONNX (its prediction tensor).")
    p.add_argument(
        "--weights",
        required=True,
        help="model: bundled checkpoint (yolov5n-demo, yolov8n-demo, yolo26n-demo), config name (yolov5s), "
        "model yaml, pagcp, YOLOv5 or Ultralytics .pt",
    )
    p.add_argument("--format", default="onnx", choices=FORMATS, help="export format")
    p.add_argument(
        "--img",
        "--img-size",
        "--imgsz",
        dest="img",
        type=int,
        default=640,
        help="input image size (px), rounded up to a multiple of the model stride",
    )
    p.add_argument("--half", action="store_true", help="FP16 weights and input (needs a CUDA --device)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width axes")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset version (default: torch's exporter default)")
    p.add_argument("--output", default=None,
                   help="output file (default: beside a checkpoint file; ./<name>.onnx for a bundled or config "
                        "name)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="device the model is exported from: cpu, 0 or cuda:0")
    p.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the file once in ONNX Runtime and print its max abs difference to PyTorch",
    )
    p.add_argument("--latency", action="store_true", help="measure ONNX Runtime CPU latency (batch 1, 20 runs)")
    p.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    return p


def default_output(weights: str) -> Path:
    """Beside a checkpoint file (``runs/prune/exp/finetuned.pt`` -> ``runs/prune/exp/finetuned.onnx``), in the
    current folder for a bundled or config name (``yolov5n-demo`` -> ``./yolov5n-demo.onnx``)."""
    path = Path(str(weights))
    return path.with_suffix(".onnx") if path.is_file() else Path(path.stem + ".onnx")


def _check_args(args: argparse.Namespace) -> None:
    if args.img < 32:
        raise ConfigError(f"--img {args.img}: must be at least 32")
    if args.opset is not None and args.opset < MIN_OPSET:
        raise ConfigError(f"--opset {args.opset}: must be at least {MIN_OPSET}")
    if args.output is not None and Path(args.output).is_dir():
        raise ConfigError(f"--output {args.output}: is a folder; give a file name such as model.onnx")
    require("onnx")
    if args.check or args.latency:
        require("onnxruntime")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The CLI's work: load the model, export it, check and time the file; returns the result dict."""
    from pagcp.families import family_for_weights

    _check_args(args)
    device = select_device(args.device)
    if args.half and device.type != "cuda":
        raise ConfigError(f"--half: FP16 export needs a CUDA device (--device 0); this is --device {args.device}")
    family = family_for_weights(args.weights)
    model = family.load(args.weights, device=device)
    img = family.image_size(model, args.img)
    output = Path(args.output) if args.output else default_output(args.weights)
    path = family.export_onnx(model, output, img, half=args.half, dynamic=args.dynamic, opset=args.opset)
    result: dict[str, Any] = {
        "path": str(path),
        "weights": str(args.weights),
        "format": args.format,
        "img": img,
        "half": args.half,
        "dynamic": args.dynamic,
        "size_mb": round(path.stat().st_size / 1e6, 3),
        "max_abs_diff": None,
    }
    if args.check:
        try:
            result["max_abs_diff"] = max_abs_diff(path, model, img)
        except ConfigError as e:
            raise ConfigError(f"--check: {e} (the file is written; --no-check skips this step)") from e
    if args.latency:
        result["latency"] = onnx_latency(path, img)
    return result


def _summary_lines(result: dict[str, Any]) -> list[str]:
    lines = [f"exported {result['weights']} -> {result['path']} ({result['size_mb']:.1f} MB, {result['img']} px)"]
    if result["max_abs_diff"] is not None:
        lines.append(f"check: ONNX Runtime vs PyTorch max abs difference {result['max_abs_diff']:.3g}")
    if "latency" in result:
        lat = result["latency"]
        lines.append(
            f"latency (ONNX Runtime CPU, batch 1, {lat['threads']} threads): median {lat['median_ms']:.2f} ms, "
            f"p90 {lat['p90_ms']:.2f} ms over {lat['runs']} runs"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    code, result = guarded(PROG, lambda: run(args))
    if code:
        return code
    print("\n".join(_summary_lines(result)))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
