"""Command line: train or fine-tune a YOLOv5 model, ``python -m pagcp.train`` (also under torchrun for DDP).

The training itself is the model's family's ``train`` (pagcp's loop, :func:`pagcp.training.loop.train`, for
YOLOv5); a family trained with its own tools (Ultralytics) is refused with where to go instead.


python -m pagcp.train --cfg yolov5n --data demo --epochs 30 --img 320 --batch 32 --device cpu
python -m pagcp.train --weights runs/prune/exp/pruned.pt --data data.yaml --hyp finetune --epochs 50
torchrun --nproc_per_node 2 -m pagcp.train --cfg yolov5s --data coco.yaml --batch 64 --device 0,1
python -m pagcp.train --resume runs/train/exp3/weights/last.pt
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import torch.distributed as dist

from pagcp.cli.common import Parser, guarded
from pagcp.data import load_data_config
from pagcp.devices import distributed_env, init_distributed, select_device
from pagcp.errors import ConfigError
from pagcp.families import family_for_weights, family_of
from pagcp.training.settings import TrainSettings
from pagcp.training.state import latest_run_checkpoint, read_train_state, seed_everything

PROG = "python -m pagcp.train"
LOGGER = logging.getLogger("pagcp.train")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Train or fine-tune a YOLOv5 model (pagcp).")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", help="initial weights: a pagcp/YOLOv5 checkpoint or a bundled name (fine-tuning)")
    src.add_argument("--cfg", help="model config to train from scratch: a bundled name (yolov5n) or a yaml")
    p.add_argument("--data", default="demo", help="data yaml, or 'demo' (default) / 'demo:train=N,val=M,img=S'")
    p.add_argument("--epochs", type=int, default=100, help="training epochs")
    p.add_argument("--img", "--img-size", dest="img", type=int, default=640, help="train/val image size (pixels)")
    p.add_argument("--batch", "--batch-size", dest="batch", type=int, default=16, help="total batch size")
    p.add_argument(
        "--device",
        default=None,
        help="cpu, 0 or 0,1 (default: the first CUDA device when there is one, else cpu; under torchrun the local GPU)",
    )
    p.add_argument(
        "--hyp", default=None, help="scratch (default with --cfg), finetune (default with --weights) or a yaml file"
    )
    p.add_argument("--workers", type=int, default=None, help="dataloader workers per process (default 2)")
    p.add_argument("--project", default="runs/train", help="folder of the run folders")
    p.add_argument("--name", default="exp", help="run folder name (exp, exp2, ... when taken)")
    p.add_argument(
        "--exist-ok",
        "--exist_ok",
        dest="exist_ok",
        action="store_true",
        help="reuse project/name instead of incrementing",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="continue an interrupted run (its last.pt or folder; default: the latest run)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of weights init, shuffling and augmentation")
    p.add_argument("--teacher", help="weights of a teacher model for --distill (e.g. the unpruned model)")
    p.add_argument("--distill", type=float, default=0.0,
                   help="weight of the distillation loss toward --teacher's outputs (default 0: none)")  # fmt: skip
    p.add_argument("--sync-bn", "--sync_bn", dest="sync_bn", action="store_true", help="SyncBatchNorm under DDP")
    p.add_argument("--cache", action="store_true", help="keep decoded images in RAM")
    p.add_argument("--json", action="store_true", help="print the final results as a JSON object (last line)")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.resume is None and not (args.weights or args.cfg):
        raise ConfigError("pass --weights (fine-tune a checkpoint) or --cfg (train from scratch), or --resume")
    if args.resume is not None and (args.weights or args.cfg):
        raise ConfigError("--resume continues a run with its own model; do not combine it with --weights/--cfg")
    for flag, value in (("--epochs", args.epochs), ("--img", args.img), ("--batch", args.batch)):
        if value < 1:
            raise ConfigError(f"{flag} {value}: must be a positive integer")
    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers {args.workers}: must be >= 0")


def _prepare(args: argparse.Namespace) -> tuple[Any, str, TrainSettings, dict | None]:
    """Model, data spec, settings and resume state from the parsed flags."""
    model, data, settings, state = _prepared(args)
    family_of(model).check_data(model, load_data_config(data), settings.weights, data)
    return model, data, settings, state


def _prepared(args: argparse.Namespace) -> tuple[Any, str, TrainSettings, dict | None]:
    """Model, data spec, settings and resume state from the parsed flags."""
    if args.resume is not None:
        path = args.resume or latest_run_checkpoint(args.project)
        model, state = read_train_state(path)
        settings = TrainSettings(**state["settings"])
        if args.device is not None:
            settings.device = args.device
        if args.workers is not None:
            settings.workers = args.workers
        return model, settings.data, settings, state
    settings = TrainSettings(
        epochs=args.epochs,
        img_size=args.img,
        batch_size=args.batch,
        device=args.device or "",
        hyp=args.hyp or ("finetune" if args.weights else "scratch"),
        workers=2 if args.workers is None else args.workers,
        seed=args.seed,
        project=args.project,
        name=args.name,
        exist_ok=args.exist_ok,
        sync_bn=args.sync_bn,
        cache=args.cache,
        weights=args.weights or args.cfg,
        data=args.data,
        distill=args.distill,
        teacher=args.teacher,
    )
    seed_everything(settings.seed)  # a model built from a config starts from the same weights everywhere
    if args.weights:
        model = family_for_weights(args.weights).load(args.weights)
    else:
        model = family_for_weights(args.cfg).load(args.cfg, nc=load_data_config(args.data)["nc"])
    return model, args.data, settings, None


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train as the flags say; returns the results of ``pagcp.training.loop.train`` (without the model)."""
    _check_args(args)
    rank, world, local_rank = distributed_env()
    own_group = init_distributed(select_device(args.device or "", local_rank, world))
    try:
        if world > 1 and rank != 0:
            dist.barrier()  # rank 0 first: it may generate the demo dataset
        model, data, settings, state = _prepare(args)
        if world > 1 and rank == 0:
            dist.barrier()
        results = family_of(model).train(model, data, settings, resume_state=state)
    finally:
        if own_group and dist.is_initialized():
            dist.destroy_process_group()
    results.pop("model", None)
    return results


def format_results(results: dict[str, Any]) -> str:
    """A small final table of the run."""
    rows = [
        ("epochs", results["epochs"]),
        ("best fitness", f"{results['best_fitness']:.4f}"),
        ("mAP50", f"{results['map50']:.4f}"),
        ("mAP50-95", f"{results['map50_95']:.4f}"),
        ("precision", f"{results['precision']:.4f}"),
        ("recall", f"{results['recall']:.4f}"),
        ("seconds", results["seconds"]),
        ("last", results["last"]),
        ("best", results["best"]),
    ]
    return "\n".join(f"{k:<14}{v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank = distributed_env()[0]
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s")
    code, results = guarded(PROG, lambda: run(args))
    if code == 0 and rank == 0:
        print(format_results(results))
        if args.json:
            print(json.dumps(results))
    return code


if __name__ == "__main__":
    sys.exit(main())
