"""``python -m pagcp.prune``: PAGCP on a YOLOv5 checkpoint, then (optionally) fine-tuning, validation, report.

With no arguments it prunes the bundled demo checkpoint (``yolov5n-demo``) on the demo dataset (generated on
first use) on the CPU. The search writes its state after every unit; ``--resume`` continues it exactly.
The search itself is :func:`pagcp.engine.api.prune` (the Python API) over the YOLO oracle of
:func:`pagcp.engine.yolo.yolo_problem`; this module checks the flags, keeps the run folder and reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from pagcp.cli.common import Parser, guarded, image_size
from pagcp.engine.oracle import ORACLE_DTYPES
from pagcp.engine.replay import REPLAY_MODES, resolve_mode
from pagcp.engine.settings import COMPAT_MODES, COMPRESSIONS, SALIENCIES, PruneSettings
from pagcp.errors import ConfigError

log = logging.getLogger("pagcp.prune")
PROG = "python -m pagcp.prune"
LATENCY_RUNS = 30
ORACLE_SPLITS = ("train", "val")
DEFAULT_SUBSET = 64


def _subset(text: str) -> int | None:
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid --subset {text!r}: a number of images or 'all'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid --subset {value}: must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description=__doc__.split("\n")[0],
    )
    _model_flags(p.add_argument_group("model and data (YOLOv5's names)"))
    _rule_flags(p.add_argument_group("the decision rule (the reference's names; underscore spellings work too)"))
    _output_flags(p.add_argument_group("fine-tuning and output"))
    return p


def _model_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--weights", default="yolov5n-demo", help="checkpoint: bundled name, official .pt or pagcp .pt")
    g.add_argument("--data", default="demo", help="data yaml, or 'demo'")
    g.add_argument("--img", "--img-size", "--imgsz", dest="img", type=int, default=320, help="image size (px)")
    g.add_argument("--batch", "--batch-size", dest="batch", type=int, default=16,
                   help="oracle batch (the reference's loader uses 2 x batch, see --compat)")  # fmt: skip
    g.add_argument("--subset", type=_subset, default=DEFAULT_SUBSET,
                   help="oracle images drawn (seeded) from --oracle-split, or 'all'")  # fmt: skip
    g.add_argument("--oracle-split", "--oracle_split", dest="oracle_split", choices=ORACLE_SPLITS, default=None,
                   help="split the oracle's images come from (default: train; val with --compat reference); "
                        "mAP is always measured on val")  # fmt: skip
    g.add_argument(
        "--device", default="", help="cpu, 0, cuda:0 (default: the first CUDA device when there is one, else cpu)"
    )
    g.add_argument("--workers", type=int, default=0, help="dataloader workers")
    g.add_argument("--seed", type=int, default=0, help="seed of the oracle subset")


def _rule_flags(r: argparse._ArgumentGroup) -> None:
    r.add_argument("--initial-rate", "--initial_rate", dest="initial_rate", type=float, default=0.06,
                   help="loss-rise threshold of the first unit (a task trips past base x (1 + rate))")  # fmt: skip
    r.add_argument("--initial-thres", "--initial_thres", dest="initial_thres", type=float, default=6.0,
                   help="product of all (1 + threshold) factors of a round; with --exp it fixes lambda")  # fmt: skip
    r.add_argument("--exp", action=argparse.BooleanOptionalAction, default=True,
                   help="decay the threshold by lambda after each accepted unit")  # fmt: skip
    r.add_argument("--topk", type=float, default=0.8, help="fraction of units kept pruned (most loss-efficient)")
    r.add_argument("--compression", choices=COMPRESSIONS, default="global",
                   help="units searched: global (every prunable unit) or backbone (the first 10 layers)")  # fmt: skip
    saliency_help = "channel scores: l1/l2 of the filter weights, or act: mean |activation| on the oracle images"
    r.add_argument("--saliency", choices=SALIENCIES, default="l1", help=saliency_help)
    r.add_argument("--round", type=int, default=0, help="index of the (first) round: rate and thres follow the slopes")
    r.add_argument("--rate-slope", "--rate_slope", dest="rate_slope", type=float, default=0.0,
                   help="added to --initial-rate per round")  # fmt: skip
    r.add_argument("--thres-slope", "--thres_slope", dest="thres_slope", type=float, default=0.0,
                   help="added to --initial-thres per round")  # fmt: skip
    r.add_argument("--target-gflops", "--target_gflops", dest="target_gflops", type=float, default=None,
                   help="end at this fraction of the original GFLOPs (within +2 %%), running rounds or cycles "
                        "until it is reached (default: one round, as far as the rule allows)")  # fmt: skip
    r.add_argument("--max-rounds", "--max_rounds", dest="max_rounds", type=int, default=8,
                   help="most rounds back to back (without fine-tuning) that --target-gflops may run")  # fmt: skip
    r.add_argument("--cycles", type=int, default=1,
                   help="prune -> fine-tune cycles: each searches one round (index --round + cycle) on the "
                        "previous cycle's fine-tuned model; with --target-gflops, at most this many")  # fmt: skip
    r.add_argument("--cycle-epochs", "--cycle_epochs", dest="cycle_epochs", type=int, default=1,
                   help="fine-tuning epochs after each cycle's search (with --cycles > 1)")  # fmt: skip
    r.add_argument("--compat", choices=COMPAT_MODES, default="default",
                   help="'reference' reproduces the reference implementation, quirks included")  # fmt: skip
    r.add_argument("--chunk", type=int, default=0,
                   help="candidates per oracle pass (0: 1 on the CPU, from free memory on a GPU)")  # fmt: skip
    r.add_argument("--oracle-dtype", "--oracle_dtype", dest="oracle_dtype", choices=tuple(ORACLE_DTYPES),
                   default="fp32", help="precision of the oracle's forward passes (sums stay float64)")  # fmt: skip
    r.add_argument("--suffix-replay", "--suffix_replay", dest="suffix_replay", choices=REPLAY_MODES, default="auto",
                   help="how a unit's candidate passes run after its first: auto (graph on CUDA, off elsewhere), "
                        "off (walk the graph), graph (CUDA graphs), trace (one traced graph), compile "
                        "(torch.compile of it; slow to compile, values equal to rounding)")  # fmt: skip


def _output_flags(f: argparse._ArgumentGroup) -> None:
    f.add_argument("--finetune-epochs", "--finetune_epochs", dest="finetune_epochs", type=int, default=1,
                   help="epochs of the final fine-tune of the pruned model (0: none)")  # fmt: skip
    f.add_argument("--finetune-batch", "--finetune_batch", dest="finetune_batch", type=int, default=16,
                   help="fine-tuning batch size")  # fmt: skip
    hyp_help = "fine-tuning hyp: finetune (short runs), scratch (the paper's long runs) or a yaml"
    f.add_argument("--hyp", default="finetune", help=hyp_help)
    f.add_argument("--project", default="runs/prune", help="folder of the run folders")
    f.add_argument("--name", default="exp", help="run folder name (exp, exp2, ... when taken)")
    f.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue an interrupted run: its folder, or none for the latest in --project")  # fmt: skip
    f.add_argument("--latency", action=argparse.BooleanOptionalAction, default=True,
                   help="export the original and final models to ONNX and measure their ONNX Runtime CPU latency "
                        "(needs pagcp[export]; skipped with a note without it)")  # fmt: skip
    f.add_argument("--json", action="store_true", help="print the report as a JSON object on the last line")


def settings_from_args(args: argparse.Namespace) -> PruneSettings:
    return PruneSettings(
        initial_rate=args.initial_rate, initial_thres=args.initial_thres, exp=args.exp, topk=args.topk,
        round=args.round, rate_slope=args.rate_slope, thres_slope=args.thres_slope, compression=args.compression,
        saliency=args.saliency, compat=args.compat, target_gflops=args.target_gflops, max_rounds=args.max_rounds,
        chunk=args.chunk,
    )  # fmt: skip


def _check_args(args: argparse.Namespace) -> None:
    checks = (("--img", args.img, 32), ("--batch", args.batch, 1), ("--workers", args.workers, 0),
              ("--finetune-epochs", args.finetune_epochs, 0), ("--finetune-batch", args.finetune_batch, 1),
              ("--cycles", args.cycles, 1), ("--cycle-epochs", args.cycle_epochs, 0))  # fmt: skip
    for flag, value, low in checks:
        if value < low:
            raise ConfigError(f"{flag} {value}: must be >= {low}")
    if args.compat == "reference" and args.oracle_split == "train":
        raise ConfigError("--oracle-split train: --compat reference prunes on the val split, as the reference does")
    args.oracle_split = oracle_split(args)


def oracle_split(args: argparse.Namespace) -> str:
    """``--oracle-split``, or its default: train, and val under ``--compat reference``."""
    return args.oracle_split or ("val" if args.compat == "reference" else "train")


def _latest_run(project: Path) -> Path:
    runs = sorted((p for p in project.glob("*") if (p / "state.json").is_file()), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise ConfigError(f"--resume: no run with a state.json under {project}")
    return runs[-1]


def _resumed_run(args: argparse.Namespace) -> Path:
    """The folder of the run to continue; its saved flags replace the command line's (but --json)."""
    run_dir = _latest_run(Path(args.project)) if args.resume == "latest" else Path(args.resume)
    opt = run_dir / "opt.yaml"
    if not opt.is_file():
        raise ConfigError(f"--resume {run_dir}: no opt.yaml there; is it a pagcp.prune run folder?")
    json_flag = args.json
    for key, value in yaml.safe_load(opt.read_text()).items():
        setattr(args, key, value)
    args.json, args.resume = json_flag, str(run_dir)
    return run_dir


@dataclass
class Job:
    """The checked inputs of a run: the model, the data config, the oracle's split and the image size."""

    model: torch.nn.Module
    cfg: dict[str, Any]
    files: list[str]
    img: int
    device: torch.device
    family: Any  # pagcp.cli.families.YoloV5Family or UltralyticsFamily


def _load_job(args: argparse.Namespace) -> Job:
    """Load and check model and data; every error here comes before any run folder exists."""
    from pagcp import load_model
    from pagcp.cli.families import family_of
    from pagcp.data import image_files, load_data_config
    from pagcp.devices import distributed_env, select_device
    from pagcp.engine.yolo import model_stride
    from pagcp.models.yolo import bundled_configs

    _, world, local_rank = distributed_env()
    device = select_device(args.device, local_rank, world)
    resolve_mode(args.suffix_replay, device)
    cfg = load_data_config(args.data)
    is_config = str(args.weights).endswith((".yaml", ".yml")) or str(args.weights) in bundled_configs()
    torch.manual_seed(args.seed)  # a config name gets random weights: the same ones on every (resumed) run
    model = load_model(args.weights, nc=int(cfg["nc"]) if is_config else None, device=device)
    if int(model.model[-1].nc) != int(cfg["nc"]):
        raise ConfigError(
            f"--data {args.data} has nc={cfg['nc']} but --weights {args.weights} predicts "
            f"{model.model[-1].nc} classes; use the data yaml the model was trained on"
        )
    if not cfg.get("val"):
        raise ConfigError(f"--data {args.data}: no 'val' split to measure mAP on")
    split = oracle_split(args)
    if not cfg.get(split):
        raise ConfigError(f"--oracle-split {split}: --data {args.data} has no such split")
    files = image_files(cfg[split])
    if args.subset is not None and args.subset > len(files):
        raise ConfigError(
            f"--subset {args.subset} is larger than the {split} split of {args.data} ({len(files)}"
            f" images); use --subset all or at most {len(files)}"
        )
    family = family_of(model=model)
    family.check(args, world)
    stride = model_stride(model)
    return Job(model, cfg, files, image_size(args.img, stride), device, family)


def _new_run(args: argparse.Namespace) -> Path:
    """``project/nameN`` with the flags saved as opt.yaml (made only once every check has passed)."""
    from pagcp.runs import increment_run_dir

    run_dir = increment_run_dir(args.project, args.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = {k: v for k, v in vars(args).items() if k not in ("resume", "json")}
    (run_dir / "opt.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    return run_dir


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole job; returns the report dict. Under torchrun every process runs it: the oracle's batches are
    split over the processes, fine-tuning runs DDP, and the main process writes the files."""
    from pagcp.devices import distributed_env, init_distributed, select_device

    _check_args(args)
    _, world, local_rank = distributed_env()
    own_group = world > 1 and init_distributed(select_device(args.device, local_rank, world))
    try:
        return _run(args)
    finally:
        if own_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from pagcp import model_stats
    from pagcp.cli.pipeline import PruneRun
    from pagcp.cli.report import UNIT_FIELDS, write_report
    from pagcp.devices import broadcast_object, describe_device, is_main_process

    run_dir = _resumed_run(args) if args.resume is not None else None
    if run_dir is not None and (run_dir / "report.json").is_file():
        log.info("%s has finished (its report.json is written); nothing to redo. Results: %s", run_dir,
                 run_dir / "report.md")  # fmt: skip
        return json.loads((run_dir / "report.json").read_text())
    settings = settings_from_args(args)
    job = _load_job(args)
    settings = dataclasses.replace(settings, backbone_layers=job.family.backbone_layers(job.model))
    if run_dir is None:  # the main process makes the folder; every process uses it
        run_dir = Path(broadcast_object(str(_new_run(args)) if is_main_process() else None))
    subset_text = "all" if args.subset is None else args.subset
    log.info("run folder %s; device %s; oracle: %s %s images at %d px, batch %d", run_dir,
             describe_device(job.device), subset_text, args.oracle_split, job.img,
             2 * args.batch if settings.compat == "reference" else args.batch)  # fmt: skip
    figures = PruneRun(args, job, settings, run_dir).run()
    result, final_model = figures.pop("result"), figures.pop("final_model")
    before, after = model_stats(job.model, job.img), model_stats(result.model, job.img)
    report = {
        "weights": str(args.weights), "data": str(args.data), "run_dir": str(run_dir), **figures,
        "params_before": before["params"], "params_after": after["params"],
        "gflops_before": before["gflops"], "gflops_after": after["gflops"],
        "img_size": job.img, "subset": args.subset if args.subset is not None else len(job.files),
        "oracle_split": args.oracle_split, "oracle_images": str(run_dir / "oracle_images.txt"),
        "suffix_replay": resolve_mode(args.suffix_replay, job.device),
        "lambda": result.lam, "settings": settings.to_dict(), "rounds": len(result.history),
        "units": [{k: round(d[k], 4) if k == "ratio" else d[k] for k in UNIT_FIELDS} for d in result.decisions],
        "processes": _world(),
    }  # fmt: skip
    if is_main_process():
        report["latency"] = _latency(args, job, final_model, run_dir)
        write_report(run_dir, report)
    return report


def _world() -> int:
    from pagcp.devices import distributed_env

    return distributed_env()[1]


def _latency(args: argparse.Namespace, job: Job, final_model, run_dir: Path) -> dict[str, Any] | None:
    """ONNX files of the original and final models and their ONNX Runtime CPU latency, side by side."""
    if not args.latency:
        return None
    from pagcp.deploy import compare_latency

    try:
        onnx = {"original": run_dir / "original.onnx", "pruned": run_dir / "pruned.onnx"}
        for name, model in (("original", job.model), ("pruned", final_model)):
            if not onnx[name].is_file():
                job.family.export_onnx(model, onnx[name], job.img)
        log.info("measuring ONNX Runtime CPU latency (batch 1, %d px) of the original and the pruned model", job.img)
        times = compare_latency(onnx, job.img, runs=LATENCY_RUNS, warmup=5)
    except ConfigError as e:  # onnx / onnxruntime missing
        log.warning("latency not measured: %s", e)
        return {"error": str(e)}
    return {name: {**t, "onnx": str(onnx[name])} for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    from pagcp.devices import distributed_env

    args = build_parser().parse_args(argv)
    rank = distributed_env()[0]
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s")
    started = time.perf_counter()
    code, report = guarded(PROG, lambda: run(args))
    if code or rank != 0:
        return code
    from pagcp.cli.report import cycles_table, latency_lines, summary_table

    print(summary_table(report))
    if len(report["cycles"]) > 1:
        print(cycles_table(report["cycles"]))
    print(f"ended by: {report['stop_rule']}")
    for line in latency_lines(report.get("latency")):
        print(line.removeprefix("- "))
    print(
        f"search: {report['evaluations']} evaluations in {report['search_seconds']:.1f} s (all sessions); "
        f"this {'resumed ' if args.resume is not None else ''}session {time.perf_counter() - started:.1f} s; "
        f"results in {report['run_dir']}"
    )
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
