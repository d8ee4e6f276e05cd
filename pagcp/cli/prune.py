"""``python -m pagcp.prune``: PAGCP on a YOLOv5 checkpoint, then (optionally) fine-tuning, validation, report.

With no arguments it prunes the bundled demo checkpoint (``yolov5n-demo``) on the demo dataset (generated on
first use) on the CPU. The search writes its state after every unit; ``--resume`` continues it exactly.
The search itself is :func:`pagcp.engine.api.prune` (the Python API) over the YOLO oracle of
:func:`pagcp.engine.yolo.yolo_problem`; this module checks the flags, keeps the run folder and reports.
"""

from __future__ import annotations

import argparse
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
from pagcp.engine.settings import COMPAT_MODES, COMPRESSIONS, SALIENCIES, PruneSettings
from pagcp.errors import ConfigError

log = logging.getLogger("pagcp.prune")
PROG = "python -m pagcp.prune"
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
    g = p.add_argument_group("model and data (YOLOv5's names)")
    g.add_argument("--weights", default="yolov5n-demo", help="checkpoint: bundled name, official .pt or pagcp .pt")
    g.add_argument("--data", default="demo", help="data yaml, or 'demo'")
    g.add_argument("--img", "--img-size", "--imgsz", dest="img", type=int, default=320, help="image size (px)")
    g.add_argument("--batch", "--batch-size", dest="batch", type=int, default=16,
                   help="oracle batch (the reference's loader uses 2 x batch, see --compat)")  # fmt: skip
    g.add_argument("--subset", type=_subset, default=DEFAULT_SUBSET,
                   help="oracle images drawn (seeded) from the val split, or 'all'")  # fmt: skip
    g.add_argument(
        "--device", default="", help="cpu, 0, cuda:0 (default: the first CUDA device when there is one, else cpu)"
    )
    g.add_argument("--workers", type=int, default=0, help="dataloader workers")
    g.add_argument("--seed", type=int, default=0, help="seed of the oracle subset")
    r = p.add_argument_group("the decision rule (the reference's names; underscore spellings work too)")
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
                   help="run rounds until GFLOPs <= this fraction of the original (default: one round)")  # fmt: skip
    r.add_argument("--max-rounds", "--max_rounds", dest="max_rounds", type=int, default=8,
                   help="most rounds --target-gflops may run")  # fmt: skip
    r.add_argument("--compat", choices=COMPAT_MODES, default="default",
                   help="'reference' reproduces the reference implementation, quirks included")  # fmt: skip
    r.add_argument("--chunk", type=int, default=0, help="candidates per oracle pass (0: 1 on CPU, 4 on GPU)")
    f = p.add_argument_group("fine-tuning and output")
    f.add_argument("--finetune-epochs", "--finetune_epochs", dest="finetune_epochs", type=int, default=1,
                   help="fine-tuning epochs of the pruned model (0: search only)")  # fmt: skip
    f.add_argument("--finetune-batch", "--finetune_batch", dest="finetune_batch", type=int, default=16,
                   help="fine-tuning batch size")  # fmt: skip
    hyp_help = "fine-tuning hyp: finetune (short runs), scratch (the paper's long runs) or a yaml"
    f.add_argument("--hyp", default="finetune", help=hyp_help)
    f.add_argument("--project", default="runs/prune", help="folder of the run folders")
    f.add_argument("--name", default="exp", help="run folder name (exp, exp2, ... when taken)")
    f.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue an interrupted run: its folder, or none for the latest in --project")  # fmt: skip
    f.add_argument("--json", action="store_true", help="print the report as a JSON object on the last line")
    return p


def settings_from_args(args: argparse.Namespace) -> PruneSettings:
    return PruneSettings(
        initial_rate=args.initial_rate, initial_thres=args.initial_thres, exp=args.exp, topk=args.topk,
        round=args.round, rate_slope=args.rate_slope, thres_slope=args.thres_slope, compression=args.compression,
        saliency=args.saliency, compat=args.compat, target_gflops=args.target_gflops, max_rounds=args.max_rounds,
        chunk=args.chunk,
    )  # fmt: skip


def _check_args(args: argparse.Namespace) -> None:
    checks = (("--img", args.img, 32), ("--batch", args.batch, 1), ("--workers", args.workers, 0),
              ("--finetune-epochs", args.finetune_epochs, 0), ("--finetune-batch", args.finetune_batch, 1))  # fmt: skip
    for flag, value, low in checks:
        if value < low:
            raise ConfigError(f"{flag} {value}: must be >= {low}")


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


def _load_job(args: argparse.Namespace) -> Job:
    """Load and check model and data; every error here comes before any run folder exists."""
    from pagcp import load_model
    from pagcp.data import image_files, load_data_config
    from pagcp.devices import select_device
    from pagcp.engine.yolo import model_stride
    from pagcp.models.yolo import bundled_configs

    device = select_device(args.device)
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
        raise ConfigError(f"--data {args.data}: no 'val' split for the oracle")
    files = image_files(cfg["val"])
    if args.subset is not None and args.subset > len(files):
        raise ConfigError(
            f"--subset {args.subset} is larger than the val split of {args.data} ({len(files)} images);"
            f" use --subset all or at most {len(files)}"
        )
    stride = model_stride(model)
    return Job(model, cfg, files, image_size(args.img, stride), device)


def _new_run(args: argparse.Namespace) -> Path:
    """``project/nameN`` with the flags saved as opt.yaml (made only once every check has passed)."""
    from pagcp.runs import increment_run_dir

    run_dir = increment_run_dir(args.project, args.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = {k: v for k, v in vars(args).items() if k not in ("resume", "json")}
    (run_dir / "opt.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    return run_dir


def _progress_bar():
    """A tqdm bar over units, or one log line per unit when stdout is not a terminal."""
    from tqdm import tqdm

    bar = tqdm(desc="pruning", unit="unit", disable=None)

    def progress(p: dict[str, Any]) -> None:
        text = f"{p['unit']} ratio {p['ratio']:.2f} -> {p['gflops']:.3f} GFLOPs"
        if bar.disable:
            tripped = f" (tripped: {p['tripped']})" if p["tripped"] else ""
            log.info("unit %d/%d %s%s", p["position"], p["total"], text, tripped)
            return
        bar.total, bar.n = p["total"], p["position"]
        bar.set_postfix_str(text)

    return bar, progress


def _search(args: argparse.Namespace, job: Job, settings: PruneSettings, run_dir: Path, resuming: bool):
    """PAGCP through the Python API on the YOLO oracle; a Ctrl-C says how to resume."""
    from pagcp.engine.yolo import yolo_problem

    oracle_batch = 2 * args.batch if settings.compat == "reference" else args.batch
    subset_text = "all" if args.subset is None else args.subset
    log.info("run folder %s; oracle: %s val images at %d px, batch %d, on %s",
             run_dir, subset_text, job.img, oracle_batch, job.device)  # fmt: skip
    problem = yolo_problem(
        job.model, job.files, job.img, oracle_batch, args.subset, args.seed, job.device, args.workers
    )
    checksum = float(sum(p.detach().double().abs().sum() for p in job.model.parameters()))
    fingerprint = {"weights": str(args.weights), "data": str(args.data), "img": job.img, "subset": args.subset,
                   "batch": oracle_batch, "seed": args.seed, "weights_checksum": checksum}  # fmt: skip
    state_path = run_dir / "state.json"
    bar, progress = _progress_bar()
    try:
        return problem.prune(settings, state_path=state_path, resume=resuming and state_path.is_file(),
                             progress=progress, fingerprint=fingerprint)  # fmt: skip
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: python -m pagcp.prune --resume {run_dir}", file=sys.stderr)
        raise
    finally:
        bar.close()


def _finetune(model, args: argparse.Namespace, run_dir: Path, img: int):
    """Fine-tune the pruned model; a resumed run reuses ``finetuned.pt`` or continues the interrupted fine-tune."""
    from pagcp import load_model
    from pagcp.training.loop import train
    from pagcp.training.settings import TrainSettings
    from pagcp.training.state import read_train_state

    if args.resume and (run_dir / "finetuned.pt").is_file():
        log.info("fine-tuning had finished: using %s", run_dir / "finetuned.pt")
        return load_model(run_dir / "finetuned.pt", device=next(model.parameters()).device)
    last = run_dir / "finetune" / "weights" / "last.pt"
    if args.resume and last.is_file():
        tuned, state = read_train_state(last)
        log.info("continuing the interrupted fine-tune from %s (epoch %d of %d done)", last, state["epoch"] + 1,
                 state["settings"]["epochs"])  # fmt: skip
        result = train(tuned, args.data, TrainSettings(**state["settings"]), resume_state=state)
        return result["model"].float().eval()
    s = TrainSettings(epochs=args.finetune_epochs, img_size=img, batch_size=args.finetune_batch, device=args.device,
                      hyp=args.hyp, workers=args.workers, project=str(run_dir), name="finetune", exist_ok=True,
                      weights=str(run_dir / "pruned.pt"), data=str(args.data))  # fmt: skip
    result = train(model.train(), args.data, s)
    return result["model"].float().eval()


def _validate(args: argparse.Namespace, job: Job, result, run_dir: Path, settings: PruneSettings) -> dict[str, Any]:
    """Save the pruned (and fine-tuned) checkpoint; mAP before, after pruning and after fine-tuning."""
    from pagcp import model_stats, save_model
    from pagcp.detection.evaluate import evaluate
    from pagcp.runs import write_json_atomic

    pruned = result.model.eval()
    stats_before, stats_after = model_stats(job.model, job.img), model_stats(pruned, job.img)
    meta = {"source": str(args.weights), "img_size": job.img, "gflops": stats_after["gflops"],
            "pagcp": settings.to_dict()}  # fmt: skip
    save_model(pruned, run_dir / "pruned.pt", **meta)

    done_path = run_dir / "validation.json"  # figures already measured, kept for a resumed run
    done = json.loads(done_path.read_text()) if args.resume and done_path.is_file() else {}

    def val(m, which: str) -> dict[str, Any]:
        if which not in done:
            log.info("validating the %s model (%s split of %s, %d px)", which, "val", args.data, job.img)
            r = evaluate(m, job.cfg, img_size=job.img, batch_size=32, device=job.device, workers=args.workers,
                         progress=True)  # fmt: skip
            done[which] = {"map50": r["map50"], "map50_95": r["map50_95"]}
            write_json_atomic(done_path, done)
        return done[which]

    before, after, tuned = val(job.model, "original"), val(pruned, "pruned"), None
    if args.finetune_epochs > 0:
        tuned_model = _finetune(pruned, args, run_dir, job.img)
        save_model(tuned_model, run_dir / "finetuned.pt", **meta)
        tuned = val(tuned_model, "fine-tuned")
    return {
        "params_before": stats_before["params"], "params_after": stats_after["params"],
        "gflops_before": stats_before["gflops"], "gflops_after": stats_after["gflops"],
        "map50_before": before["map50"], "map50_95_before": before["map50_95"],
        "map50_after": after["map50"], "map50_95_after": after["map50_95"],
        "map50_finetuned": tuned["map50"] if tuned else None,
        "map50_95_finetuned": tuned["map50_95"] if tuned else None,
    }  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole job; returns the report dict."""
    from pagcp.cli.report import UNIT_FIELDS, write_report

    _check_args(args)
    resuming = args.resume is not None
    run_dir = _resumed_run(args) if resuming else None
    if run_dir is not None and (run_dir / "report.json").is_file():
        log.info("%s has finished (its report.json is written); nothing to redo. Results: %s", run_dir,
                 run_dir / "report.md")  # fmt: skip
        return json.loads((run_dir / "report.json").read_text())
    settings = settings_from_args(args)
    job = _load_job(args)
    run_dir = run_dir or _new_run(args)
    result = _search(args, job, settings, run_dir, resuming)
    figures = _validate(args, job, result, run_dir, settings)
    tuned = figures["map50_finetuned"] is not None
    report = {
        "weights": str(args.weights), "data": str(args.data), "run_dir": str(run_dir), **figures,
        "img_size": job.img, "subset": args.subset if args.subset is not None else len(job.files),
        "evaluations": result.evaluations, "search_seconds": result.seconds, "lambda": result.lam,
        "settings": settings.to_dict(), "rounds": len(result.history),
        "units": [{k: d[k] for k in UNIT_FIELDS} for d in result.decisions],
        "pruned": str(run_dir / "pruned.pt"), "finetuned": str(run_dir / "finetuned.pt") if tuned else None,
    }  # fmt: skip
    write_report(run_dir, report)
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    code, report = guarded(PROG, lambda: run(args))
    if code:
        return code
    from pagcp.cli.report import summary_table

    print(summary_table(report))
    print(
        f"search: {report['evaluations']} evaluations in {report['search_seconds']:.1f} s; "
        f"total {time.perf_counter() - started:.1f} s; results in {report['run_dir']}"
    )
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
