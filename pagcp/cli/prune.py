"""``python -m pagcp.prune``: PAGCP on a model of any registered family, then fine-tuning, validation, report.

With no arguments it prunes the bundled demo checkpoint (``yolov5n-demo``) on the demo dataset (generated on
first use) on the CPU. This module only turns flags into :class:`pagcp.pipeline.RunSettings` and prints the
result; the run itself is :func:`pagcp.pipeline.prune_run` (the same function the benchmarks call).
``--resume`` continues a run folder with its saved settings: a flag that would change its results is refused
(naming it), an execution flag (device, chunk, replay, workers, latency) is used and said.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from pagcp.cli.common import Parser, guarded
from pagcp.engine.compat import COMPAT_MODES, DEFAULT_SUBSET
from pagcp.engine.oracle import ORACLE_DTYPES
from pagcp.engine.replay import REPLAY_MODES
from pagcp.engine.settings import COMPRESSIONS, SALIENCIES
from pagcp.pipeline.settings import ORACLE_SPLITS, RunSettings, from_flat

log = logging.getLogger("pagcp.prune")
PROG = "python -m pagcp.prune"


def _subset(text: str) -> int | str:
    if text in ("all", "auto"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid --subset {text!r}: a number of images, 'all' or 'auto'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid --subset {value}: must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description="PAGCP on a model of any registered family (YOLOv5, Ultralytics detection): search, slice, "
        "fine-tune, validate, report.",
    )
    _model_flags(p.add_argument_group("model and data (YOLOv5's names)"))
    _rule_flags(p.add_argument_group("the decision rule (the reference's names; underscore spellings work too)"))
    _output_flags(p.add_argument_group("fine-tuning and output"))
    return p


def _model_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--weights", default="yolov5n-demo",
                   help="model of any registered family: bundled checkpoint (yolov5n-demo, yolov8n-demo, "
                        "yolo26n-demo), YOLOv5 config or yaml, Ultralytics model yaml (yolov8n.yaml, yolo11s.yaml, "
                        "yolo26n.yaml), an official YOLOv5 or "
                        "Ultralytics .pt, or a pagcp checkpoint")  # fmt: skip
    g.add_argument("--data", default="demo", help="data yaml, or 'demo'")
    g.add_argument("--img", "--img-size", "--imgsz", dest="img", type=int, default=320, help="image size (px)")
    g.add_argument("--batch", "--batch-size", dest="batch", type=int, default=16,
                   help="oracle batch (the reference's loader uses 2 x batch, see --compat)")  # fmt: skip
    g.add_argument("--subset", type=_subset, default="auto",
                   help=f"oracle images drawn (seeded) from --oracle-split, 'all', or 'auto' ({DEFAULT_SUBSET}; all "
                        "with --compat reference, as the reference reads the whole split)")  # fmt: skip
    g.add_argument("--oracle-split", "--oracle_split", dest="oracle_split", choices=ORACLE_SPLITS, default=None,
                   help="split the oracle's images come from (default: train; val with --compat reference); "
                        "mAP is always measured on val")  # fmt: skip
    g.add_argument(
        "--device", default="", help="cpu, 0, cuda:0 (default: the first CUDA device when there is one, else cpu)"
    )
    g.add_argument("--workers", type=int, default=0, help="dataloader workers")
    g.add_argument("--seed", type=int, default=0, help="seed of the oracle subset and of every fine-tune's data order")


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
    r.add_argument("--round-to", "--round_to", dest="round_to", type=int, default=1,
                   help="every unit keeps a multiple of N channels or its full width (8 or 32 suit GPUs and NPUs; "
                        "default 1: any width)")  # fmt: skip
    r.add_argument("--min-width", "--min_width", dest="min_width", type=float, default=0.0,
                   help="every unit keeps at least this fraction of its original width, in every round and cycle "
                        "(default 0: down to one channel, the paper's rule)")  # fmt: skip
    r.add_argument("--cycles", type=int, default=1,
                   help="prune -> fine-tune cycles: each searches one round (index --round + cycle) on the "
                        "previous cycle's fine-tuned model; with --target-gflops, at most this many")  # fmt: skip
    r.add_argument("--cycle-epochs", "--cycle_epochs", dest="cycle_epochs", type=int, default=1,
                   help="fine-tuning epochs after each cycle's search (with --cycles > 1)")  # fmt: skip
    r.add_argument("--compat", choices=COMPAT_MODES, default="default",
                   help="'reference' reproduces the reference implementation, quirks included")  # fmt: skip
    r.add_argument("--chunk", type=int, default=0,
                   help="candidates per oracle pass (0: 1 on the CPU, from free memory on a GPU; any value decides "
                        "the same)")  # fmt: skip
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
    f.add_argument("--distill", type=float, default=0.0,
                   help="weight of a distillation loss in every fine-tune, the unpruned model as teacher (about 1 "
                        "suits the demo; default 0: none)")  # fmt: skip
    f.add_argument("--project", default="runs/prune", help="folder of the run folders")
    f.add_argument("--name", default="exp", help="run folder name (exp, exp2, ... when taken)")
    f.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue an interrupted run: its folder, or none for the latest in --project")  # fmt: skip
    f.add_argument("--latency", action=argparse.BooleanOptionalAction, default=True,
                   help="export the original and final models to ONNX and measure their ONNX Runtime CPU latency "
                        "(needs pagcp[export]; skipped with a note without it)")  # fmt: skip
    f.add_argument("--json", action="store_true", help="print the report as a JSON object on the last line")


def settings_from_args(args: argparse.Namespace) -> RunSettings:
    """The run's typed settings from the parsed flags (every flag is a setting:
    :data:`pagcp.pipeline.settings.FLAT`)."""
    return from_flat({k: v for k, v in vars(args).items() if k != "resume"})


def given_flags(argv: list[str] | None) -> set[str]:
    """The settings (flag dests) the command line names explicitly, whatever their values."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def resumed_settings(args: argparse.Namespace, argv: list[str] | None) -> RunSettings:
    """For --resume: the run's saved settings with the flags the command line gives on top (the library refuses
    those that would change the results and says which execution ones it uses)."""
    from pagcp.pipeline.resume import resolve_run_dir, saved_settings

    run_dir = resolve_run_dir(args.resume, args.project)
    flat = {**_flat(saved_settings(run_dir)), **{k: getattr(args, k) for k in given_flags(argv) - {"resume"}}}
    return from_flat(flat)


def _flat(settings: RunSettings) -> dict[str, Any]:
    from pagcp.pipeline.settings import FLAT

    d = settings.to_dict()
    return {key: (d[name] if not section else d[section][name]) for key, (section, name) in FLAT.items()}


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict[str, Any]:
    """The whole job (:func:`pagcp.pipeline.prune_run`); returns the report dict. Under torchrun every process
    runs it: the oracle's batches are split over the processes, fine-tuning runs DDP, and the main process writes
    the files."""
    from pagcp.pipeline import prune_run

    if args.resume is None:
        return prune_run(settings_from_args(args))
    return prune_run(resumed_settings(args, argv), resume=args.resume)


def main(argv: list[str] | None = None) -> int:
    from pagcp.devices import distributed_env

    args = build_parser().parse_args(argv)
    rank = distributed_env()[0]
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s")
    started = time.perf_counter()
    code, report = guarded(PROG, lambda: run(args, argv))
    if code or rank != 0:
        return code
    from pagcp.pipeline.report import cycles_table, latency_lines, summary_table

    print(summary_table(report))
    if len(report["cycles"]) > 1:
        print(cycles_table(report["cycles"], report["primary_metric"]))
    print(f"ended by: {report['stop_rule']}")
    for line in latency_lines(report.get("latency")):
        print(line.removeprefix("- "))
    print(
        f"search: {report['evaluations']} evaluations in {report['search_seconds']:.1f} s (all sessions); "
        f"this {'resumed ' if args.resume is not None else ''}session {time.perf_counter() - started:.1f} s; "
        f"results in {report['run_dir']}"
    )
    if args.json or report["run_settings"]["execution"].get("json"):  # --json, or a resumed run started with it
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
