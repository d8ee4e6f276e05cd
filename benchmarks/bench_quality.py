"""Quality at matched GFLOPs: PAGCP against uniform L1, Torch-Pruning global magnitude and random channels.

    python benchmarks/bench_quality.py [--levels default,0.5,0.35] [--subset 64] [--epochs 1]
        [--train-images 256] [--pagcp-run DIR] [--json]
    python benchmarks/bench_quality.py --summarize run1.log run2.log   # one table and plot of earlier runs

For each level (``default``: PAGCP's default settings, one round; a number: ``--target-gflops`` of that
fraction; one search to the lowest target gives every target's rounds) PAGCP prunes the demo checkpoint;
every baseline is then matched to that result's GFLOPs:

- ``uniform``: the same ratio in every unit, lowest-L1 channels (bisection on the ratio);
- ``tp-global``: Torch-Pruning's ``MagnitudePruner`` (``global_pruning=True``, ``MagnitudeImportance``
  with its defaults: p=2, mean group reduction, mean normalizer; Detect ignored), bisection on its
  ``pruning_ratio``; where Torch-Pruning cannot prune the model, the same rule on pagcp's graph
  (:func:`pagcp.engine.baselines.global_magnitude_keep`, L1) as ``global``;
- ``random``: the same ratio in every unit, seeded random channels (bisection on the ratio).

Each pruned model is validated on the whole val split, fine-tuned for ``--epochs`` on a seeded subset of
``--train-images`` training images (hyp ``finetune``), validated again; params, GFLOPs and the CPU latency
(batch 1, median of ``--latency-runs``) of the physically smaller model are reported. ``--pagcp-run`` takes
the PAGCP keep-masks of the ``default`` level from an earlier ``python -m pagcp.prune`` run folder.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see pagcp/__init__.py

import pagcp  # noqa: E402, I001
import torch  # noqa: E402
from torch import nn  # noqa: E402

from pagcp.engine.baselines import matched_keep, prunable_units  # noqa: E402
from pagcp.data import image_files, load_data_config  # noqa: E402
from pagcp.engine.yolo import YoloProblem, yolo_problem  # noqa: E402
from pagcp.engine.search import Search  # noqa: E402
from pagcp.engine.settings import PruneSettings  # noqa: E402
from pagcp.graph import Keep  # noqa: E402
from pagcp.training.loop import TrainSettings, train  # noqa: E402
from pagcp.detection.evaluate import evaluate  # noqa: E402

METHODS = ("pagcp", "uniform", "tp-global", "random")


def latency_ms(model: nn.Module, img: int, runs: int) -> float:
    """Median wall time (ms) of one batch-1 forward pass on the CPU, after two warm-up passes."""
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


def tp_global(model: nn.Module, target_gflops: float, img: int, steps: int = 14) -> tuple[nn.Module, float]:
    """Torch-Pruning global magnitude pruning with its ``pruning_ratio`` bisected to ``target_gflops``."""
    import torch_pruning as tp

    example = torch.zeros(1, 3, img, img)

    def pruned(ratio: float) -> nn.Module:
        m = copy.deepcopy(model).eval()
        pruner = tp.pruner.MagnitudePruner(
            m,
            example,
            importance=tp.importance.MagnitudeImportance(),
            global_pruning=True,
            pruning_ratio=ratio,
            ignored_layers=[m.model[-1]],
        )
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
    return best[2], best[1]


class _RecordingSearch(Search):
    """A Search that keeps every round's final keep-masks (a ``target_gflops`` run stops at the first round
    under its target, so one run to the lowest target gives every higher target's result too)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.round_keeps: list[Keep] = []

    def _finish_round(self) -> Keep:
        keep = super()._finish_round()
        self.round_keeps.append(keep.copy())
        return keep


def pagcp_keeps(graph, problem: YoloProblem, levels: list[str], img: int) -> dict[str, tuple[Keep, dict[str, Any]]]:
    """PAGCP keep-masks of every level: 'default' (one round) and target fractions (rounds until under each)."""
    out: dict[str, tuple[Keep, dict[str, Any]]] = {}
    targets = sorted((float(v) for v in levels if v != "default"), reverse=True)
    runs = (["default"] if "default" in levels else []) + ([min(targets)] if targets else [])
    for run in runs:
        settings = PruneSettings() if run == "default" else PruneSettings(target_gflops=run)
        oracle = problem.oracle(graph)
        search = _RecordingSearch(graph, oracle, settings, img)
        t0 = time.perf_counter()
        search.run()
        seconds = round(time.perf_counter() - t0, 1)
        full = graph.flops(None, img)
        if run == "default":
            out["default"] = (
                search.round_keeps[0],
                {"search_seconds": seconds, "evaluations": oracle.evaluations, "rounds": 1},
            )
            continue
        for t in targets:
            i = next(
                (i for i, k in enumerate(search.round_keeps) if graph.flops(k, img) <= t * full),
                len(search.round_keeps) - 1,
            )
            hist = search.state.history[i]
            out[f"{t:g}"] = (
                search.round_keeps[i],
                {"rounds": i + 1, "evaluations": hist["evaluations"], "search_seconds_all_rounds": seconds},
            )
    return out


def finetune(model: nn.Module, data: dict, args: argparse.Namespace, name: str) -> nn.Module:
    s = TrainSettings(
        epochs=args.epochs,
        img_size=args.img,
        batch_size=args.batch,
        device="cpu",
        hyp=args.hyp,
        workers=0,
        project=args.project,
        name=name,
        exist_ok=True,
        seed=args.seed,
    )
    return train(copy.deepcopy(model).train(), data, s)["model"].float().eval()


def train_data(cfg: dict, n_train: int, n_val: int, seed: int) -> dict:
    """A data dict: a seeded subset of the train split and (for training's own per-epoch check) of val."""
    train_files, val_files = image_files(cfg["train"]), image_files(cfg["val"])
    rng = random.Random(seed)
    return {
        "path": cfg["path"],
        "train": sorted(rng.sample(train_files, min(n_train, len(train_files)))),
        "val": sorted(rng.sample(val_files, min(n_val, len(val_files)))),
        "nc": cfg["nc"],
        "names": cfg["names"],
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default="yolov5n-demo")
    p.add_argument("--data", default="demo")
    p.add_argument("--img", type=int, default=320)
    p.add_argument("--levels", default="default", help="comma list: 'default' and/or target GFLOPs fractions")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--subset", type=int, default=64, help="PAGCP oracle images")
    p.add_argument("--pagcp-run", default=None, help="reuse this prune run's state.json for the 'default' level")
    p.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs (0: none)")
    p.add_argument("--train-images", type=int, default=256, help="seeded training subset for fine-tuning")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--hyp", default="finetune")
    p.add_argument("--latency-runs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--project", default="/tmp/pagcp_bench_quality")
    p.add_argument("--plot", default=str(Path(__file__).with_name("quality.png")))
    p.add_argument(
        "--summarize",
        nargs="+",
        default=None,
        metavar="LOG",
        help="only merge earlier runs' --json outputs (their last line) into one table and plot",
    )
    p.add_argument("--json", action="store_true")
    return p.parse_args()


def summarize_logs(args: argparse.Namespace) -> None:
    """One table (and plot) from the --json outputs of earlier runs."""
    merged: list[dict[str, Any]] = []
    for log in args.summarize:
        rows = json.loads(Path(log).read_text().strip().splitlines()[-1])["rows"]
        merged += [r for r in rows if r["method"] != "unpruned" or not merged]
    print_table(merged)
    if args.plot:
        plot(merged, args.plot, any("map50_95_finetuned" in r for r in merged))


def reused_search(graph, run_dir: str) -> tuple[Keep, dict[str, Any]]:
    """The final keep-masks and figures of an earlier ``python -m pagcp.prune`` run."""
    state = json.loads((Path(run_dir) / "state.json").read_text())
    info = {"search_seconds": round(state["seconds"], 1), "evaluations": state["evaluations"], "rounds": 1,
            "reused": run_dir}  # fmt: skip
    return Keep.from_pruned(graph.layout, state["keep"]), info


def method_model(method: str, graph, model, keep: Keep, info, units, img: int, seed: int):
    """(the pruned model of ``method`` at the GFLOPs of PAGCP's ``keep``, what to report about it, method name)."""
    target = graph.flops(keep, img)
    if method == "pagcp":
        return graph.slice(keep).eval(), info, method
    if method in ("uniform", "random"):
        ratio, k = matched_keep(graph, method, target, img, units, seed=seed)
        return graph.slice(k).eval(), {"ratio": round(ratio, 4)}, method
    if method == "tp-global":
        try:
            pruned, ratio = tp_global(model, target / 1e9, img)
            return pruned, {"tp_pruning_ratio": round(ratio, 4)}, method
        except Exception as e:  # noqa: BLE001 - Torch-Pruning cannot handle the model: same rule on the graph
            n, k = matched_keep(graph, "global", target, img, units)
            extra = {"pruned_channels": int(n), "torch_pruning_error": f"{type(e).__name__}: {e}"}
            return graph.slice(k).eval(), extra, "global"
    raise SystemExit(f"unknown method {method!r}; use {', '.join(METHODS)}")


def main() -> None:
    args = parse_args()
    if args.summarize:
        summarize_logs(args)
        return
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    cfg = load_data_config(args.data)
    model = pagcp.load_model(args.weights)
    img = args.img
    problem = yolo_problem(model, image_files(cfg["val"]), img, 16, args.subset, 0)
    graph = pagcp.trace(model, problem.example_input())
    data = train_data(cfg, args.train_images, 32, args.seed)
    units = prunable_units(graph)

    def val(m: nn.Module) -> dict[str, float]:
        r = evaluate(m, cfg, img_size=img, batch_size=32, device="cpu", progress=False)
        return {"map50": round(r["map50"], 4), "map50_95": round(r["map50_95"], 4)}

    rows: list[dict[str, Any]] = [{
        "method": "unpruned", "level": "-", **pagcp.model_stats(model, img),
        **{f"{k}_pruned": v for k, v in val(model).items()},
        "latency_ms": round(latency_ms(model, img, args.latency_runs), 2),
    }]  # fmt: skip
    print(f"unpruned: {rows[0]}", flush=True)
    levels = args.levels.split(",")
    reuse = args.pagcp_run and "default" in levels
    found = pagcp_keeps(graph, problem, [v for v in levels if not (reuse and v == "default")], img)
    if reuse:
        found["default"] = reused_search(graph, args.pagcp_run)
    for level in levels:
        keep, info = found["default" if level == "default" else f"{float(level):g}"]
        for method in [m for m in args.methods.split(",") if m]:
            t0 = time.perf_counter()
            pruned, extra, method = method_model(method, graph, model, keep, info, units, img, args.seed)
            stats = pagcp.model_stats(pruned, img)
            row = {"method": method, "level": level, **stats,
                   "gflops_vs_pagcp": round(stats["gflops"] * 1e9 / graph.flops(keep, img), 4),
                   **{f"{k}_pruned": v for k, v in val(pruned).items()},
                   "latency_ms": round(latency_ms(pruned, img, args.latency_runs), 2), **extra}  # fmt: skip
            if args.epochs > 0:
                tuned = finetune(pruned, data, args, f"{level}-{method}")
                row.update({f"{k}_finetuned": v for k, v in val(tuned).items()})
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    report(rows, args, started)


def report(rows: list[dict[str, Any]], args: argparse.Namespace, started: float) -> None:
    print_table(rows)
    if args.plot:
        plot(rows, args.plot, args.epochs > 0)
    result = {
        "rows": rows, "weights": args.weights, "data": args.data, "img": args.img, "subset": args.subset,
        "epochs": args.epochs, "train_images": args.train_images, "hyp": args.hyp,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} threads",
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }  # fmt: skip
    if args.json:
        print(json.dumps(result))


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "| level | method | params | GFLOPs | mAP50-95 pruned | mAP50-95 fine-tuned | mAP50 fine-tuned | latency ms |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['level']} | {r['method']} | {r['params']:,} | {r['gflops']:.3f} | {r['map50_95_pruned']:.4f} | "
            f"{r.get('map50_95_finetuned', float('nan')):.4f} | {r.get('map50_finetuned', float('nan')):.4f} | "
            f"{r['latency_ms']:.1f} |"
        )


def plot(rows: list[dict[str, Any]], path: str, tuned: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    key = "map50_95_finetuned" if tuned else "map50_95_pruned"
    for method, marker in zip(("pagcp", "uniform", "tp-global", "global", "random"), "o^sDv"):
        pts = sorted((r["gflops"], r[key], r["map50_95_pruned"]) for r in rows if r["method"] == method)
        if pts:
            line = ax.plot([g for g, _, _ in pts], [m for _, m, _ in pts], marker=marker, label=method)[0]
            if tuned:
                ax.plot(
                    [g for g, _, _ in pts],
                    [m for _, _, m in pts],
                    marker=marker,
                    ls=":",
                    mfc="none",
                    color=line.get_color(),
                )
    unpruned = [r for r in rows if r["method"] == "unpruned"]
    if unpruned:
        ax.axhline(unpruned[0]["map50_95_pruned"], color="gray", ls="--", label="unpruned")
    ax.set_xlabel("GFLOPs (320 px)")
    ax.set_ylabel("mAP50-95 (demo val)")
    ax.set_title("matched GFLOPs; solid: fine-tuned, dotted: before fine-tuning" if tuned else "before fine-tuning")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
