"""Quality at matched GFLOPs and an equal fine-tuning budget: PAGCP against uniform L1, Torch-Pruning global
magnitude and random channels.

    python benchmarks/bench_quality.py [--targets 0.7,0.5,0.35] [--epochs 3] [--cycles 2] [--json]
    python benchmarks/bench_quality.py --summarize benchmarks/results/quality.json   # table and plot again

Per target fraction F of the original GFLOPs:

- ``pagcp``: the library's prune run (:func:`pagcp.pipeline.prune_run`, what ``python -m pagcp.prune
  --target-gflops F --cycles C --cycle-epochs 1 --finetune-epochs 0`` runs; oracle: ``--subset`` seeded
  images of the *train* split, never the val images that are scored); the
  cycles stop at the first that meets F, and the final model is then fine-tuned for the epochs left of the
  budget (``--epochs`` minus one per cycle run). The last cycle's epoch is already spent on the final
  architecture, so with C cycles it gets ``--epochs`` - C + 1 epochs: at most 2 cycles of a 3-epoch budget
  leave it 2 (the baselines get all 3 on theirs).
- ``uniform``: the same ratio in every unit, lowest-L1 channels; ``random``: the same ratio, seeded random
  channels; ``tp-global``: Torch-Pruning's ``MagnitudePruner`` (``global_pruning=True``, its default
  importance; Detect ignored; where Torch-Pruning cannot prune the model, the same rule on pagcp's graph as
  ``global``). Each is pruned in one shot from the original model to PAGCP's final GFLOPs (bisection; the
  table shows how close) and fine-tuned for the whole budget.

Every fine-tune uses the whole train split, hyp ``--hyp``, batch ``--batch`` and seed ``--seed``; mAP is
measured on the whole val split. Rows are appended to ``--out`` as they finish and a re-run skips them, so
an interrupted benchmark continues.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see pagcp/__init__.py

import pagcp  # noqa: E402, I001
import torch  # noqa: E402
from torch import nn  # noqa: E402

from pagcp.data import load_data_config  # noqa: E402
from pagcp.engine.baselines import matched_keep, prunable_units  # noqa: E402
from pagcp.engine.settings import PruneSettings  # noqa: E402
from pagcp.families import FinetuneJob, family_of  # noqa: E402
from pagcp.pipeline import ExecutionSettings, FinetuneSettings, OracleSettings, RunSettings, prune_run  # noqa: E402

BASELINES = ("uniform", "tp-global", "random")
#: every method's GFLOPs must lie within this fraction of PAGCP's
MATCH_TOLERANCE = 0.02
HERE = Path(__file__).resolve().parent


def latency_ms(model: nn.Module, img: int, runs: int) -> float:
    """Median wall time (ms) of one batch-1 PyTorch forward pass on the CPU, after two warm-up passes."""
    model = copy.deepcopy(model).float().eval().cpu()
    x = torch.zeros(1, 3, img, img)
    times = []
    with torch.inference_mode():
        for i in range(runs + 2):
            t0 = time.perf_counter()
            model(x)
            if i >= 2:
                times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def tp_global(model: nn.Module, target_gflops: float, img: int, steps: int = 16) -> tuple[nn.Module, float]:
    """Torch-Pruning global magnitude pruning with its ``pruning_ratio`` bisected to ``target_gflops``."""
    import torch_pruning as tp

    example = torch.zeros(1, 3, img, img)
    family = family_of(model)

    def pruned(ratio: float) -> nn.Module:
        m = copy.deepcopy(model).eval()
        pruner = tp.pruner.MagnitudePruner(m, example, importance=tp.importance.MagnitudeImportance(),
                                           global_pruning=True, pruning_ratio=ratio,
                                           ignored_layers=[family.head(m)])  # fmt: skip
        pruner.step()
        return m

    lo, hi, best = 0.0, 0.95, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        m = pruned(mid)
        g = pagcp.model_stats(m, img)["gflops"]
        if best is None or abs(g - target_gflops) < best[0]:
            best = (abs(g - target_gflops), mid, m)
        lo, hi = (mid, hi) if g > target_gflops else (lo, mid)
    if best[0] > MATCH_TOLERANCE * target_gflops:  # e.g. Torch-Pruning leaves a block it cannot prune whole
        raise ValueError(f"Torch-Pruning reached {target_gflops + best[0]:.4f} GFLOPs at best, not {target_gflops:.4f}")
    return best[2], best[1]


def finetune(model: nn.Module, args: argparse.Namespace, epochs: int, name: str) -> nn.Module:
    """``epochs`` of fine-tuning on the whole train split (every method gets the same recipe: pagcp's loop for
    YOLOv5, Ultralytics' trainer with the pruned widths kept for Ultralytics models)."""
    if epochs <= 0:
        return model
    family = family_of(model)
    folder = Path(args.project) / "finetune" / name
    source = family.save(model, folder / "source.pt")
    job = FinetuneJob(folder=folder, epochs=epochs, source=source, data=args.data, img=args.img, batch=args.batch,
                      hyp=args.hyp, device="cpu", workers=0)  # fmt: skip
    return family.finetune(copy.deepcopy(model), job)


def validate(model: nn.Module, cfg: dict, img: int) -> dict[str, float]:
    r = family_of(model).validate(model, cfg, img, torch.device("cpu"), progress=False)
    return {"map50": round(r["map50"], 4), "map50_95": round(r["map50_95"], 4)}


def pagcp_run(args: argparse.Namespace, target: float) -> dict[str, Any]:
    """The library's prune run with cycles to ``target`` (continued when its folder exists: with these very
    settings, or the run refuses); returns its report."""
    project, name = Path(args.project) / "prune", f"target{target:g}"
    settings = RunSettings(
        weights=args.weights, search=PruneSettings(target_gflops=target),
        oracle=OracleSettings(data=args.data, img=args.img, subset=args.subset, split="train"),
        finetune=FinetuneSettings(epochs=0, cycles=args.cycles, cycle_epochs=1, batch=args.batch, hyp=args.hyp),
        execution=ExecutionSettings(device="cpu", latency=False), project=str(project), name=name,
    )  # fmt: skip
    resume = project / name if (project / name / "opt.yaml").is_file() else None
    return prune_run(settings, resume=resume)


def pagcp_row(args: argparse.Namespace, cfg: dict, target: float) -> tuple[dict[str, Any], float]:
    """PAGCP's row and its final FLOPs (what the baselines are matched to)."""
    t0 = time.perf_counter()
    report = pagcp_run(args, target)
    cycles = len(report["cycles"])
    used = cycles if args.cycles > 1 else 0  # one epoch per cycle; a single cycle fine-tunes nothing here
    last = Path(report["run_dir"]) / f"cycle{cycles}" / "finetuned.pt"
    model = pagcp.load_model(last if used else report["pruned"])
    left = args.epochs - used
    tuned = finetune(model, args, left, f"target{target:g}-pagcp")
    stats = pagcp.model_stats(tuned, args.img)
    scores = validate(tuned, cfg, args.img)
    row = {"method": "pagcp", "target": target, **stats, "gflops_vs_pagcp": 1.0,
           "map50_95_pruned": round(report["map50_95_after"], 4), **{f"{k}_finetuned": v for k, v in scores.items()},
           "epochs": used + max(left, 0), "cycles": cycles, "stop_rule": report["stop_rule"],
           "search_seconds": round(report["search_seconds"], 1), "evaluations": report["evaluations"],
           "latency_ms": round(latency_ms(tuned, args.img, args.latency_runs), 2),
           "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    return row, stats["gflops"] * 1e9


def baseline_model(method: str, graph, model: nn.Module, target: float, img: int, units, seed: int):
    """(``method``'s one-shot pruned model at ``target`` FLOPs, what to report about it, the method's name)."""
    sliced = family_of(model).sliced
    if method in ("uniform", "random"):
        ratio, k = matched_keep(graph, method, target, img, units, seed=seed)
        return sliced(graph.slice(k).eval()), {"ratio": round(ratio, 4)}, method
    if method == "tp-global":
        try:
            pruned, ratio = tp_global(model, target / 1e9, img)
            return pruned, {"tp_pruning_ratio": round(ratio, 4)}, method
        except Exception as e:  # noqa: BLE001 - Torch-Pruning cannot handle the model: same rule on the graph
            n, k = matched_keep(graph, "global", target, img, units)
            extra = {"pruned_channels": int(n), "torch_pruning_error": f"{type(e).__name__}: {e}"}
            return sliced(graph.slice(k).eval()), extra, "global"
    raise SystemExit(f"unknown method {method!r}; use {', '.join(BASELINES)}")


def baseline_row(args, cfg, graph, model, method: str, target: float, flops: float, units) -> dict[str, Any]:
    t0 = time.perf_counter()
    pruned, extra, name = baseline_model(method, graph, model, flops, args.img, units, args.seed)
    stats = pagcp.model_stats(pruned, args.img)
    tuned = finetune(pruned, args, args.epochs, f"target{target:g}-{name}")
    return {"method": name, "target": target, **stats, "gflops_vs_pagcp": round(stats["gflops"] * 1e9 / flops, 4),
            "map50_95_pruned": validate(pruned, cfg, args.img)["map50_95"],
            **{f"{k}_finetuned": v for k, v in validate(tuned, cfg, args.img).items()}, "epochs": args.epochs,
            "latency_ms": round(latency_ms(tuned, args.img, args.latency_runs), 2), **extra,
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default="yolov5n-demo", help="the model every method prunes")
    p.add_argument("--data", default="demo", help="data yaml or demo: train split to fine-tune, val split to score")
    p.add_argument("--img", type=int, default=320, help="image size")
    p.add_argument("--targets", default="0.7,0.5,0.35", help="comma list of GFLOPs fractions")
    p.add_argument("--methods", default=",".join(BASELINES), help="baselines to compare with PAGCP")
    p.add_argument("--subset", type=int, default=64, help="PAGCP oracle images (train split)")
    p.add_argument("--cycles", type=int, default=2, help="most PAGCP prune -> fine-tune cycles (1 epoch each)")
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning budget of every method (epochs)")
    p.add_argument("--batch", type=int, default=16, help="fine-tuning batch")
    p.add_argument("--hyp", default="finetune", help="fine-tuning hyp of every method")
    p.add_argument("--latency-runs", type=int, default=20, help="timed batch-1 forward passes per model")
    p.add_argument("--seed", type=int, default=0, help="seed of fine-tuning and of the random baseline")
    p.add_argument("--project", default="/tmp/pagcp_bench_quality", help="folder of the runs")
    p.add_argument("--out", default=str(HERE / "results" / "quality.json"), help="rows and settings (JSON)")
    p.add_argument("--plot", default=str(HERE / "quality.png"), help="mAP50-95 against GFLOPs")
    p.add_argument("--summarize", metavar="JSON", help="only print the table and plot of an earlier --out")
    p.add_argument("--json", action="store_true", help="print the result as a JSON object on the last line")
    return p.parse_args()


def _load(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The earlier rows of the same benchmark settings (a re-run continues), or a fresh result."""
    settings = {k: getattr(args, k) for k in ("weights", "data", "img", "subset", "cycles", "epochs", "batch",
                                              "hyp", "seed")}  # fmt: skip
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("settings") == settings:
            return old
    return {"settings": settings, "rows": [], "runs": []}


def _save(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)


def main() -> None:
    args = parse_args()
    if args.summarize:
        result = json.loads(Path(args.summarize).read_text())
        print_table(result["rows"])
        plot(result["rows"], args.plot)
        return
    out = Path(args.out)
    result = _load(out, args)
    started = time.perf_counter()
    cfg = load_data_config(args.data)
    model = pagcp.load_model(args.weights)
    graph = pagcp.trace(model, torch.zeros(1, 3, args.img, args.img))  # the head a leaf, as the oracle traces it
    units = prunable_units(graph)
    done = {(r["method"], r["target"]) for r in result["rows"]}

    def add(row: dict[str, Any]) -> None:
        result["rows"].append(row)
        _save(out, result)
        print(json.dumps(row), flush=True)

    if ("unpruned", None) not in done:
        add({"method": "unpruned", "target": None, **pagcp.model_stats(model, args.img),
             **{f"{k}_finetuned": v for k, v in validate(model, cfg, args.img).items()},
             "latency_ms": round(latency_ms(model, args.img, args.latency_runs), 2)})  # fmt: skip
    for target in (float(t) for t in args.targets.split(",")):
        if ("pagcp", target) not in done:
            add(pagcp_row(args, cfg, target)[0])
        ours = next(r for r in result["rows"] if r["method"] == "pagcp" and r["target"] == target)
        flops = ours["gflops"] * 1e9
        for method in (m for m in args.methods.split(",") if m):
            names = (method, "global") if method == "tp-global" else (method,)  # global: tp-global's fallback
            if not any(r["target"] == target and r["method"] in names for r in result["rows"]):
                add(baseline_row(args, cfg, graph, model, method, target, flops, units))
    result["runs"].append(_machine(time.perf_counter() - started))
    _save(out, result)
    print_table(result["rows"])
    plot(result["rows"], args.plot)
    if args.json:
        print(json.dumps(result))


def _machine(seconds: float) -> dict[str, Any]:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": round(seconds, 1),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                       f"{torch.get_num_threads()} threads", "load_average_1min": load,
            "torch": torch.__version__}  # fmt: skip


def print_table(rows: list[dict[str, Any]]) -> None:
    print(markdown_table(rows))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per (target, method): GFLOPs, params, mAP50-95 before/after fine-tuning, epochs, latency."""
    lines = ["| target | method | GFLOPs (vs PAGCP) | params | mAP50-95 pruned | mAP50-95 fine-tuned | mAP50 "
             "fine-tuned | epochs | latency ms |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        target = "-" if r["target"] is None else f"{r['target']:g}×"
        vs = "" if r["method"] in ("pagcp", "unpruned") else f" ({r['gflops_vs_pagcp']:.3f})"
        pruned = r.get("map50_95_pruned")
        pruned = "-" if pruned is None else f"{pruned:.4f}" + (" ¹" if r["method"] == "pagcp" else "")
        lines.append(f"| {target} | {r['method']} | {r['gflops']:.3f}{vs} | {r['params']:,} | {pruned} | "
                     f"{r['map50_95_finetuned']:.4f} | {r['map50_finetuned']:.4f} | {r.get('epochs', '-')} | "
                     f"{r['latency_ms']:.1f} |")  # fmt: skip
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for method, marker in zip(("pagcp", "uniform", "tp-global", "global", "random"), "o^sDv"):
        pts = sorted((r["gflops"], r["map50_95_finetuned"]) for r in rows if r["method"] == method)
        if pts:
            ax.plot([g for g, _ in pts], [m for _, m in pts], marker=marker, label=method)
    unpruned = [r for r in rows if r["method"] == "unpruned"]
    if unpruned:
        ax.axhline(unpruned[0]["map50_95_finetuned"], color="gray", ls="--", label="unpruned")
    ax.set_xlabel("GFLOPs (320 px)")
    ax.set_ylabel("mAP50-95 (demo val, 500 images)")
    ax.set_title("matched GFLOPs, same fine-tuning budget")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
