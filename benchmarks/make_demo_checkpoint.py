"""Train one of the bundled Ultralytics demo checkpoints (pagcp/models/weights/<name>.pt) on the demo dataset.

    python benchmarks/make_demo_checkpoint.py --cfg yolo26n.yaml --name yolo26n-demo --stop-at 0.55

Ultralytics' own trainer trains the model yaml from scratch on ``--data`` (default: the 2,000/500-image demo set
at 320 px of the model's task: ``demo``, ``demo-seg`` or ``demo-pose``) for at most ``--epochs`` epochs, on the
CPU; a callback stops it after the first epoch whose val mAP50-95 of the task (boxes, masks or keypoints)
reaches ``--stop-at`` (a small, quick checkpoint that still has something to lose). The result is
written in Ultralytics' format with the command, the data, the epochs trained and the mAP in its ``pagcp``
entry, xz-compressed (``<name>.pt.xz``: pagcp unpacks it once, on first use), so that ``--weights <name>`` finds
it and the report says what it is.
"""

from __future__ import annotations

import argparse
import lzma
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

from pagcp.data import load_data_config  # noqa: E402
from pagcp.models.checkpoint import PACKED, WEIGHTS_DIR  # noqa: E402
from pagcp.models.ultralytics_io import model_of_checkpoint, read_checkpoint, save_ultralytics_file  # noqa: E402

#: the demo set of each Ultralytics task, and the suffix of the task's val metrics in Ultralytics' logs
DEMO_OF_TASK = {"detect": "demo", "segment": "demo-seg", "pose": "demo-pose"}
METRIC_OF_TASK = {"detect": "B", "segment": "M", "pose": "P"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cfg", required=True, help="Ultralytics model yaml, e.g. yolo26n.yaml")
    p.add_argument("--name", required=True, help="bundled name to write, e.g. yolo26n-demo")
    p.add_argument("--data", default=None, help="data spec (default: the demo set of the model's task)")
    p.add_argument("--img", type=int, default=320)
    p.add_argument("--epochs", type=int, default=25, help="at most this many epochs")
    p.add_argument("--stop-at", type=float, default=0.55,
                   help="stop after the first epoch with the task's val mAP50-95 >= this")  # fmt: skip
    p.add_argument("--project", type=Path, default=None,
                   help="keep Ultralytics' run folder here (default: a temporary folder)")  # fmt: skip
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--out", type=Path, default=None, help=f"output file (default: {WEIGHTS_DIR}/<name>{PACKED})")
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="continue an interrupted training from its last.pt (its own arguments; --stop-at may change)",
    )
    return p


def main(argv: list[str] | None = None) -> Path:
    args = _parser().parse_args(argv)
    from ultralytics import YOLO

    yolo, start, reached = YOLO(str(args.resume or args.cfg)), time.time(), {}
    args.data = args.data or DEMO_OF_TASK[yolo.task]
    data = load_data_config(args.data)["yaml_file"]
    key = METRIC_OF_TASK[yolo.task]
    prefix = {"segment": "mask_", "pose": "pose_"}.get(yolo.task, "")  # the metric's name in pagcp's reports

    def stop_when_good(trainer) -> None:
        fitness = trainer.metrics.get(f"metrics/mAP50-95({key})", 0.0)
        if fitness >= args.stop_at and not reached:  # (its final validation runs the callback once more)
            reached.update(epoch=trainer.epoch + 1, map50_95=fitness, map50=trainer.metrics[f"metrics/mAP50({key})"])
            trainer.stop = True

    yolo.add_callback("on_fit_epoch_end", stop_when_good)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = str(args.project or scratch)
        if args.resume:
            yolo.train(resume=True)
        else:
            yolo.train(data=str(data), epochs=args.epochs, imgsz=args.img, batch=args.batch, workers=1,
                       device="cpu", plots=False, seed=0, cache="ram", close_mosaic=5, amp=False, project=tmp,
                       name="train", exist_ok=True)  # fmt: skip
        last = yolo.trainer.last
        model = model_of_checkpoint(read_checkpoint(last), last)
    if not reached:
        sys.exit(f"{args.cfg}: val mAP50-95({key}) stayed below --stop-at {args.stop_at} after {args.epochs} epochs")
    command = (f"YOLO('{args.cfg}').train(data=<{args.data} data.yaml>, epochs={args.epochs}, imgsz={args.img}, "
               f"batch={args.batch}, workers=1, device='cpu', plots=False, seed=0, cache='ram', close_mosaic=5, "
               f"amp=False), stopped by a callback once val mAP50-95({key}) >= {args.stop_at}")  # fmt: skip
    if args.resume:
        command += " (interrupted, then continued from its last.pt with resume=True)"
    out = args.out or WEIGHTS_DIR / f"{args.name}{PACKED}"
    plain = out.with_name(out.name[: -len(".xz")]) if out.name.endswith(".xz") else out
    save_ultralytics_file(model, plain, task=yolo.task, source="ultralytics", trained_on=f"pagcp {args.data} dataset "
                          f"{Path(data).parent.name} (python -m pagcp.data.demo)", command=command,
                          epochs=reached["epoch"], img_size=args.img, **{f"{prefix}map50": round(reached["map50"], 3),
                          f"{prefix}map50_95": round(reached["map50_95"], 3)}, resumed=bool(args.resume),
                          ultralytics_train_minutes=round((time.time() - start) / 60, 1))  # fmt: skip
    if plain != out:
        out.write_bytes(lzma.compress(plain.read_bytes(), preset=9 | lzma.PRESET_EXTREME))
        plain.unlink()
    print(f"{out}: {args.cfg} after {reached['epoch']} epochs, val mAP50-95 {reached['map50_95']:.3f}")
    return out


if __name__ == "__main__":
    main()
