"""Quality at matched GFLOPs and an equal fine-tuning budget: PAGCP against uniform L1, Torch-Pruning global
magnitude and random channels (each in one shot and in PAGCP's cycles), and optionally a smaller stock network
trained from scratch, over seeds and budgets.

    python benchmarks/bench_quality.py [--targets 0.7,0.5,0.35] [--epochs 3] [--seeds 0,1] [--cycles 1] [--json]
    python benchmarks/bench_quality.py --epochs 1,3,10 --smaller          # a budget axis; the scratch row
    python benchmarks/bench_quality.py --summarize benchmarks/results/quality.json   # tables and plot again

Rows, per target fraction F of the original GFLOPs, seed s and budget E (``--epochs``, a comma list):

- ``pagcp`` (schedule ``cycles``): the library's prune run (:func:`pagcp.pipeline.prune_run`: ``python -m
  pagcp.prune --target-gflops F --cycles C --cycle-epochs 1 --finetune-epochs 0 --seed s``), C = min(--cycles,
  E) so that its cycles never spend more than the budget; the oracle reads ``--subset`` images of the *train*
  split drawn with seed s, and every run folder is checked to hold no val image (:mod:`quality_checks`); the
  cycles stop at the first that meets F. The final model is then fine-tuned for the epochs left: E minus one
  per cycle run (with C = 1 the run fine-tunes nothing, so all E). Its final GFLOPs are what every other row
  of (F, s, E) is matched to, within ±2 % (the benchmark fails otherwise). ``--cycles`` defaults to 1, what
  ``python -m pagcp.prune --target-gflops F`` does (rounds back to back to F, then the whole budget on the
  final architecture): the table measures the product's default, and more cycles are a lever of their own
  (``--cycles 2`` into another ``--out``), never a setting picked by its val mAP.
- ``uniform``, ``random``, ``tp-global`` (``global`` where Torch-Pruning cannot prune the model), each with
  schedule ``oneshot`` (one step from the original model, then E epochs) and ``iterative`` (PAGCP's number
  of cycles at PAGCP's per-cycle waypoints, one epoch each, then the rest of E): :mod:`quality_methods`.
- ``smaller-stock`` (``--smaller``, schedule ``scratch``): the same YOLOv5 config at a width whose GFLOPs
  match PAGCP's, trained from scratch with ``--hyp scratch`` for ``--scratch-epochs``: :mod:`quality_smaller`.
- ``unpruned``: the original model, once.

Seed s seeds PAGCP's oracle subset and its fine-tunes (``OracleSettings(seed=s)``, which the run also passes
to its fine-tunes), every baseline's fine-tunes (``FinetuneJob(seed=s)``) and the random rule's channels.
Every fine-tune uses the whole train split, hyp ``--hyp``, batch ``--batch`` and, with ``--distill``, the
unpruned model as teacher, and yields its last epoch's model (never a checkpoint picked on val); mAP is
measured on the whole val split, which nothing steers by; latency is ONNX Runtime on the CPU at batch 1,
median and minimum of ``--latency-runs`` runs interleaved with the unpruned model's.

Budgets share what they can: a PAGCP run folder is named by target, cycles and seed, never by budget, so
every budget with the same C reads the same search and cycles, and only the final fine-tune differs. Rows
are appended to ``--out`` as they finish and a re-run skips every (method, schedule, target, seed, epochs)
already there, so an interrupted benchmark continues and a new seed or budget adds only its own rows; the
file's other settings must match (else the benchmark refuses it). :mod:`quality_stats` gives the tables:
mean and range over seeds, and PAGCP's verdict (ahead, behind, tie) against each baseline's better schedule.

Cost, measured on the 2026-12-03 rows (``benchmarks/RESULTS.md``; yolov5n-demo, 320 px, 3-epoch budget, 2 shared
CPU cores): a PAGCP row 995-1145 s (search 258-593 s of it; 0.3 CPU-hour), a one-shot baseline row 328-1187 s
(mean 679 s, 0.19 CPU-hour), most of it the fine-tuning. An iterative row costs about a one-shot one plus a
re-trace, a re-match and a validation per cycle; a smaller-stock row about scratch-epochs / 3 one-shot rows
(24 epochs: 1.5 CPU-hours). The default grid (3 targets, 2 seeds, 3 baselines; one cycle, so no iterative rows)
is 6 PAGCP rows and 18 baseline rows, about 5 CPU-hours; ``--cycles 2`` adds 18 iterative rows (about 9 in
all); every further budget adds its fine-tunes (about 180 s per epoch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see pagcp/__init__.py

import pagcp  # noqa: E402, I001
import torch  # noqa: E402
from torch import nn  # noqa: E402

import quality_methods as qm  # noqa: E402
import quality_smaller as qsm  # noqa: E402
from quality_checks import check_oracle_not_val, row_latency  # noqa: E402
from quality_methods import BASELINES, SCHEDULES, finetune, tp_global, validate  # noqa: E402, F401
from quality_stats import DEFAULTS, MATCH_TOLERANCE, markdown_table, row_key, unmatched, verdict_table  # noqa: E402, F401
from pagcp.families import family_of  # noqa: E402
from pagcp.engine.settings import PruneSettings  # noqa: E402
from pagcp.pipeline import ExecutionSettings, FinetuneSettings, OracleSettings, RunSettings, prune_run  # noqa: E402

HERE = Path(__file__).resolve().parent
#: the version of the rows' protocol (seeds, schedules, budgets, ONNX latency); files of another are refused
PROTOCOL = 2


def pagcp_cycles(args: argparse.Namespace, epochs: int) -> int:
    """PAGCP's most cycles at a budget of ``epochs``: one epoch each, so never more than the budget."""
    return max(1, min(args.cycles, epochs))


def pagcp_run(args: argparse.Namespace, target: float, seed: int = 0, cycles: int | None = None) -> dict[str, Any]:
    """The library's prune run with up to ``cycles`` cycles to ``target``, oracle and fine-tune seed ``seed``
    (continued when its folder exists: with these very settings, or the run refuses); returns its report. The
    folder is named by target, tag, cycles and seed, not by budget: budgets share it."""
    cycles = args.cycles if cycles is None else cycles
    project, name = Path(args.project) / "prune", f"target{target:g}{args.tag}-c{cycles}-seed{seed}"
    settings = RunSettings(
        weights=args.weights, search=PruneSettings(target_gflops=target, **search_levers(args.levers)),
        oracle=OracleSettings(data=args.data, img=args.img, subset=args.subset, split="train", seed=seed),
        finetune=FinetuneSettings(epochs=0, cycles=cycles, cycle_epochs=1, batch=args.batch, hyp=args.hyp,
                                  distill=args.distill),
        execution=ExecutionSettings(device="cpu", latency=False), project=str(project), name=name,
    )  # fmt: skip
    resume = project / name if (project / name / "opt.yaml").is_file() else None
    return prune_run(settings, resume=resume)


def pagcp_row(args: argparse.Namespace, cfg: dict, target: float, seed: int | None = None,
              epochs: int | None = None) -> tuple[dict[str, Any], float]:  # fmt: skip
    """PAGCP's row at (``target``, ``seed``, budget ``epochs``; defaults: the first of ``--seeds`` and
    ``--epochs``) and its final FLOPs (what the baselines are matched to)."""
    seed = args.seed if seed is None else seed
    epochs = args.epochs if epochs is None else epochs
    t0 = time.perf_counter()
    most = pagcp_cycles(args, epochs)
    report = pagcp_run(args, target, seed, most)
    checked = check_oracle_not_val(report["run_dir"], cfg)
    cycles = len(report["cycles"])
    used = cycles if most > 1 else 0  # one epoch per cycle; a single cycle fine-tunes nothing here
    last = Path(report["run_dir"]) / f"cycle{cycles}" / "finetuned.pt"
    model = pagcp.load_model(last if used else report["pruned"])
    name = qm.run_name(target, seed, epochs, args, "pagcp")
    tuned = finetune(model, args, epochs - used, name, seed)
    stats = pagcp.model_stats(tuned, args.img)
    scores = validate(tuned, cfg, args.img)
    row = {"method": "pagcp", "schedule": "cycles", "target": target, "seed": seed, "epochs": epochs, **stats,
           "gflops_vs_pagcp": 1.0, "map50_95_pruned": round(report["map50_95_after"], 4),
           **{f"{k}_finetuned": v for k, v in scores.items()}, "cycles": cycles, "max_cycles": most,
           "cycle_epochs": used, "final_epochs": epochs - used,
           "cycle_gflops": [round(c["gflops"], 5) for c in report["cycles"]], "stop_rule": report["stop_rule"],
           "search_seconds": round(report["search_seconds"], 1), "evaluations": report["evaluations"],
           "oracle_images_checked": checked, "run_dir": report["run_dir"], **row_latency(tuned, args, name),
           "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    return row, stats["gflops"] * 1e9


def unpruned_row(args: argparse.Namespace, cfg: dict, model: nn.Module) -> dict[str, Any]:
    """The original model: GFLOPs, params, mAP, latency (its budget, seed and schedule do not apply)."""
    scores = validate(model, cfg, args.img)
    return {"method": "unpruned", "schedule": "-", "target": None, "seed": None, "epochs": None,
            **pagcp.model_stats(model, args.img), **{f"{k}_finetuned": v for k, v in scores.items()},
            **row_latency(model, args, "unpruned")}  # fmt: skip


def search_levers(text: str) -> dict[str, Any]:
    """``min_width=0.25,round_to=8`` -> PruneSettings fields for PAGCP (values parsed as YAML scalars)."""
    import yaml

    pairs = [p.split("=", 1) for p in text.split(",") if p]
    if any(len(p) != 2 for p in pairs):
        raise SystemExit(f"--levers {text}: use NAME=VALUE pairs separated by commas (e.g. min_width=0.25)")
    return {k.strip(): yaml.safe_load(v) for k, v in pairs}


def _list(text: str, kind: type, flag: str) -> list:
    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError as e:
        raise SystemExit(f"{flag} {text}: a comma list of {kind.__name__} values") from e
    if not values:
        raise SystemExit(f"{flag}: give at least one value")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's flags; the comma lists come back as lists (``targets``, ``budgets``, ``seeds``,
    ``methods``, ``schedules``), and ``epochs`` / ``seed`` are the first budget / seed (what a caller that
    runs one row, like bench_levers, reads)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=DEFAULTS["weights"], help="the model every method prunes")
    p.add_argument("--data", default=DEFAULTS["data"], help="data yaml or demo: train split to fine-tune, val to score")
    p.add_argument("--img", type=int, default=DEFAULTS["img"], help="image size")
    p.add_argument("--targets", default=DEFAULTS["targets"], help="comma list of GFLOPs fractions")
    p.add_argument("--methods", default=",".join(BASELINES), help="baselines to compare with PAGCP")
    p.add_argument("--schedules", default=",".join(SCHEDULES), help="baseline schedules: oneshot, iterative")
    p.add_argument("--subset", type=int, default=DEFAULTS["subset"], help="PAGCP oracle images (train split)")
    p.add_argument("--cycles", type=int, default=DEFAULTS["cycles"], help="most PAGCP cycles (1 epoch each)")
    p.add_argument("--epochs", default=DEFAULTS["epochs"], help="comma list of budgets (epochs)")
    p.add_argument("--seeds", default=DEFAULTS["seeds"], help="comma list of seeds")
    p.add_argument("--seed", type=int, default=None, help="one seed: the same as --seeds N")
    p.add_argument("--batch", type=int, default=DEFAULTS["batch"], help="fine-tuning batch")
    p.add_argument("--hyp", default=DEFAULTS["hyp"], help="fine-tuning hyp of every method")
    p.add_argument("--latency-runs", type=int, default=30, help="timed ONNX Runtime runs per model (interleaved)")
    p.add_argument("--smaller", action="store_true", help="add the smaller stock network trained from scratch")
    p.add_argument("--scratch-epochs", default="auto", help="its training epochs; auto: --original-epochs + budget")
    p.add_argument("--original-epochs", type=int, default=DEFAULTS["original_epochs"],
                   help="epochs the unpruned checkpoint had (yolov5n-demo: 14 scratch + 7 fine-tuning)")  # fmt: skip
    p.add_argument("--levers", default="", help="PAGCP's search settings beyond the defaults, NAME=VALUE pairs "
                   "(e.g. min_width=0.25: what --min-width sets); the baselines do not read them")  # fmt: skip
    p.add_argument("--distill", type=float, default=0.0, help="distillation weight of every method's fine-tune, "
                   "the unpruned model as teacher (0: none)")  # fmt: skip
    p.add_argument("--tag", default="", help="suffix of the run folders (keeps ablation runs apart)")
    p.add_argument("--project", default="/tmp/pagcp_bench_quality", help="folder of the runs")
    p.add_argument("--out", default=str(HERE / "results" / "quality.json"), help="rows and settings (JSON)")
    p.add_argument("--plot", default=str(HERE / "quality.png"), help="mAP50-95 against GFLOPs ('' for none)")
    p.add_argument("--summarize", metavar="JSON", help="only print the tables and plot of an earlier --out")
    p.add_argument("--json", action="store_true", help="print the result as a JSON object on the last line")
    args = p.parse_args(argv)
    args.targets = _list(args.targets, float, "--targets")
    args.budgets = _list(args.epochs, int, "--epochs")
    args.seeds = [args.seed] if args.seed is not None else _list(args.seeds, int, "--seeds")
    args.methods = [m for m in args.methods.split(",") if m]
    args.schedules = _list(args.schedules, str, "--schedules")
    _check(args)
    args.epochs, args.seed = args.budgets[0], args.seeds[0]
    return args


def _check(args: argparse.Namespace) -> None:
    rules = (("--targets", args.targets, lambda t: 0 < t < 1), ("--epochs", args.budgets, lambda e: e >= 1),
             ("--methods", args.methods, lambda m: m in BASELINES),
             ("--schedules", args.schedules, lambda s: s in SCHEDULES))  # fmt: skip
    bad = [(flag, v) for flag, values, ok in rules for v in values if not ok(v)]
    if bad:
        raise SystemExit("; ".join(f"{flag}: {v!r} is not allowed" for flag, v in bad))
    if args.scratch_epochs != "auto" and not str(args.scratch_epochs).isdigit():
        raise SystemExit(f"--scratch-epochs {args.scratch_epochs}: a number of epochs or auto")


def _identity(args: argparse.Namespace) -> dict[str, Any]:
    """The settings every row of one result file shares (its seeds, budgets and targets are the rows' own)."""
    settings = {"protocol": PROTOCOL, **{k: getattr(args, k) for k in ("weights", "data", "img", "subset", "cycles",
                                                                       "batch", "hyp")}}  # fmt: skip
    if args.levers:
        settings["levers"] = args.levers
    if args.distill:
        settings["distill"] = args.distill
    return settings


def _load(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The earlier rows of the same settings (a re-run continues), or a fresh result; a file of other
    settings is refused rather than overwritten."""
    settings = _identity(args)
    if not path.is_file():
        return {"settings": settings, "rows": [], "runs": []}
    old = json.loads(path.read_text())
    if old.get("settings") != settings:
        differ = sorted(k for k in {*settings, *old.get("settings", {})} if settings.get(k) != old["settings"].get(k))
        raise SystemExit(f"--out {path} holds rows of other settings ({', '.join(differ)} differ); pass another --out, "
                         "or move that file away to start afresh")  # fmt: skip
    return old


def _save(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)


def _machine(seconds: float) -> dict[str, Any]:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": round(seconds, 1),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                       f"{torch.get_num_threads()} threads", "load_average_1min": load,
            "torch": torch.__version__}  # fmt: skip


def _find(rows: list[dict[str, Any]], key: tuple, **fields: Any) -> dict[str, Any] | None:
    """The row of ``key`` (:func:`quality_stats.row_key`) whose ``fields`` match, if there is one."""
    return next((r for r in rows if row_key(r) == key and all(r.get(k) == v for k, v in fields.items())), None)


def run_grid(args: argparse.Namespace, cfg: dict, model: nn.Module, result: dict[str, Any], add) -> None:
    """Every row of the grid not yet in ``result`` (see the module docstring), each handed to ``add`` as it
    finishes: the unpruned model, then per seed, budget and target PAGCP and what is matched to it."""
    rows = result["rows"]
    if _find(rows, ("unpruned", "-", None, 0, None)) is None:
        add(unpruned_row(args, cfg, model))
    for seed in args.seeds:
        for epochs in args.budgets:
            for target in args.targets:
                ours = _find(rows, ("pagcp", "cycles", target, seed, epochs))
                if ours is None:
                    ours = pagcp_row(args, cfg, target, seed, epochs)[0]
                    add(ours)
                for method in args.methods:
                    for schedule in args.schedules:
                        if _find(rows, (method, schedule, target, seed, epochs)) is None:
                            row = qm.baseline_row(args, cfg, model, method, schedule, ours)
                            if row is not None:  # None: PAGCP pruned in one step, iterative is oneshot
                                add(row)
                scratch = {"scratch_epochs": qsm.scratch_epochs(args, epochs)}
                if args.smaller and _find(rows, ("smaller-stock", "scratch", target, seed, epochs), **scratch) is None:
                    add(qsm.smaller_row(args, cfg, model, ours))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.summarize:
        result = json.loads(Path(args.summarize).read_text())
        print_table(result["rows"])
        plot(result["rows"], args.plot)
        return
    out = Path(args.out)
    result = _load(out, args)
    started = time.perf_counter()
    model = pagcp.load_model(args.weights)
    cfg = family_of(model).data_config(args.data)  # "demo": the demo set with the model's task's labels

    def add(row: dict[str, Any]) -> None:
        result["rows"].append(row)
        _save(out, result)
        print(json.dumps(row), flush=True)

    run_grid(args, cfg, model, result, add)
    result["runs"].append(_machine(time.perf_counter() - started))
    _save(out, result)
    print_table(result["rows"])
    plot(result["rows"], args.plot)
    if args.json:
        print(json.dumps(result))
    failed = unmatched(result["rows"])
    if failed:
        raise SystemExit(f"not within {MATCH_TOLERANCE:.0%} of PAGCP's GFLOPs: " + "; ".join(failed))


def print_table(rows: list[dict[str, Any]]) -> None:
    """The rows (mean and range over seeds), then PAGCP's verdict against each baseline's better schedule."""
    print(markdown_table(rows))
    print()
    print(verdict_table(rows))


def plot(rows: list[dict[str, Any]], path: str) -> None:
    """mAP50-95 against GFLOPs, one panel per budget, one line per (method, schedule): the means over seeds,
    the bars their range."""
    if not path:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from quality_stats import METHOD_ORDER, grouped, seed_stats

    groups = grouped(rows)
    budgets = sorted({k[0] for k in groups if k[0] is not None}) or [None]
    fig, axes = plt.subplots(1, len(budgets), figsize=(6.4 * len(budgets), 4.4), squeeze=False)
    for ax, budget in zip(axes[0], budgets):
        lines = sorted({(m, s) for (e, _, m, s) in groups if e == budget})
        for method, schedule in lines:
            pts = sorted((seed_stats(r["gflops"] for r in rs).mean, seed_stats(r["map50_95_finetuned"] for r in rs))
                         for (e, _, m, s), rs in groups.items() if (e, m, s) == (budget, method, schedule))  # fmt: skip
            dashed = schedule not in ("cycles", "oneshot")
            color = f"C{METHOD_ORDER.index(method) % 10}" if method in METHOD_ORDER else None
            ax.errorbar([g for g, _ in pts], [st.mean for _, st in pts], capsize=3, marker="s" if dashed else "o",
                        yerr=[[st.mean - st.lo for _, st in pts], [st.hi - st.mean for _, st in pts]],
                        label=f"{method} ({schedule})", ls="--" if dashed else "-", color=color)  # fmt: skip
        unpruned = [r for r in rows if r["method"] == "unpruned"]
        if unpruned:
            ax.axhline(unpruned[0]["map50_95_finetuned"], color="gray", ls=":", label="unpruned")
        ax.set_xlabel("GFLOPs")
        ax.set_ylabel("mAP50-95 (val split)")
        ax.set_title(f"matched GFLOPs, {budget} epoch budget" if budget else "matched GFLOPs")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
