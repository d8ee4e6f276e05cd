"""Search cost: seconds per candidate evaluation, engine (SubsetOracle) against naive (copy, slice, evaluate).

    python benchmarks/bench_cost.py [--models n,s,m] [--sizes 320,640] [--images 16] [--units 2]
        [--ratios 0.1,0.5,0.9] [--evals-per-unit 6.8] [--subset 64] [--json]

For each model and size (YOLOv5 configs with 80 classes; the weights do not change the cost) it takes
``--images`` demo val images as the oracle data and ``--units`` units spread over the network, and times

- engine: ``SubsetOracle.evaluate`` of the candidates of ``--ratios`` of each unit with an infinite bound
  (no early rejection), prefix cache included, divided by the number of candidates;
- naive: ``NaiveOracle.losses`` (the reference's way: deep copy, slice, whole forward) per candidate;
- a plain forward pass per image (eval mode, no grad) of the unpruned model.

Projections of one round charge both sides **the same candidate schedule**, stated twice:

- ``visited``: the candidates the rule visits, measured on a real search (``--schedule STATE``, a prune
  run's ``state.json``): per unit the ascending ratios up to and including the first that trips (all 19 when
  none does). The reference evaluates every one of them; it is charged that many full validation passes.
  The engine is charged the same number of candidates at its measured cost per candidate (it may evaluate
  fewer: identical masks once, early rejection; that saving is not counted here).
- ``upper``: 19 candidates for every unit on both sides (the reference's worst case).

Engine: candidates x seconds per candidate, scaled from ``--images`` to ``--subset`` oracle images. Reference:
candidates x ``--coco-images`` x the measured per-image forward time (forward only: no NMS, data loading,
model copies or graph rebuilding, so its real time is longer). Same machine, same model, same schedule.
"""

from __future__ import annotations

import argparse
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

from pagcp.engine.baselines import prunable_units  # noqa: E402
from pagcp.data import image_files, load_data_config  # noqa: E402
from pagcp.families import problem_of  # noqa: E402
from pagcp.engine.saliency import select_keep, unit_scores  # noqa: E402

#: candidates per unit the rule visited in the default demo search (python -m pagcp.prune, 2026-12-03: 293 over 50)
DEFAULT_VISITED = 5.86


def measure(name: str, img: int, files: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Engine and naive seconds per candidate and per-image forward time of one model at one size."""
    model = pagcp.load_model(name, nc=80)
    problem = problem_of(model, files, img, args.images, args.images, 0, cache_targets=False)
    graph = problem.trace()
    units = prunable_units(graph)
    step = len(units) / args.units
    sample = [units[int(step * (i + 0.5))] for i in range(args.units)]
    ratios = [float(r) for r in args.ratios.split(",")]
    keep = graph.full_keep()
    scores = unit_scores(graph, keep, sample, "l1")
    engine = problem.oracle(graph)
    naive = problem.naive_oracle(graph)
    bound = torch.full((len(problem.tasks),), float("inf"), dtype=torch.float64)
    engine.losses(keep)  # warm-up (allocator, kernels)
    engine_s, naive_s = [], []
    for unit in sample:
        masks = [select_keep(scores[unit], keep[unit], r) for r in ratios]
        t0 = time.perf_counter()
        engine.evaluate(keep, unit, masks, bound)
        engine_s.append((time.perf_counter() - t0) / len(masks))
        for m in masks:
            trial = keep.replace(unit, m)
            t0 = time.perf_counter()
            naive.losses(trial)
            naive_s.append(time.perf_counter() - t0)
    x = torch.cat([b[0] for b in problem.batches])
    forward = []
    with torch.inference_mode():
        model.eval()(x[:1])
        for _ in range(3):
            t0 = time.perf_counter()
            model(x)
            forward.append((time.perf_counter() - t0) / x.shape[0])
    n = args.images
    per_cand_engine, per_cand_naive = statistics.mean(engine_s), statistics.mean(naive_s)
    per_image = statistics.median(forward)
    schedules = {"visited": len(units) * args.visited_per_unit, "upper": len(units) * 19}
    row = {
        "model": name,
        "img": img,
        "units": len(units),
        "sampled_units": sample,
        "images": n,
        "engine_s_per_candidate": round(per_cand_engine, 3),
        "naive_s_per_candidate": round(per_cand_naive, 3),
        "speedup": round(per_cand_naive / per_cand_engine, 2),
        "forward_s_per_image": round(per_image, 4),
    }
    for name, candidates in schedules.items():
        row[f"{name}_candidates"] = round(candidates, 1)
        row[f"{name}_engine_round_h"] = round(candidates * per_cand_engine / n * args.subset / 3600, 3)
        row[f"{name}_naive_round_h"] = round(candidates * per_cand_naive / n * args.subset / 3600, 3)
        row[f"{name}_reference_coco_round_h"] = round(candidates * args.coco_images * per_image / 3600, 1)
    return row


def visited_per_unit(state_path: str) -> float:
    """Mean candidates per unit the rule visits in a finished search (the reference evaluates each one)."""
    state = json.loads(Path(state_path).read_text())
    ratios = state["settings"]["ratios"]
    counts = []
    for d in state["history"][0]["decisions"]:
        if d["tripped_task"] is None:
            counts.append(len(ratios))
        elif d["ratio"] == 0:
            counts.append(1)
        else:
            counts.append(min(ratios.index(d["ratio"]) + 2, len(ratios)))
    return statistics.mean(counts)


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\n| model | img | units | engine s/cand ({args.images} img) | naive s/cand | speed-up | forward s/img | "
          f"schedule | candidates | engine round h ({args.subset} img) | reference COCO round h |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        for name in ("visited", "upper"):
            print(f"| {r['model']} | {r['img']} | {r['units']} | {r['engine_s_per_candidate']:.3f} | "
                  f"{r['naive_s_per_candidate']:.3f} | {r['speedup']:.2f}x | {r['forward_s_per_image']:.4f} | "
                  f"{name} | {r[name + '_candidates']:.0f} | {r[name + '_engine_round_h']:.2f} | "
                  f"{r[name + '_reference_coco_round_h']:.0f} |")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="n,s,m")
    p.add_argument("--sizes", default="320,640")
    p.add_argument("--images", type=int, default=16, help="oracle images per measurement (one batch)")
    p.add_argument("--units", type=int, default=2, help="units sampled, spread over the network")
    p.add_argument("--ratios", default="0.1,0.5,0.9", help="candidates per sampled unit")
    p.add_argument("--schedule", default=None, metavar="STATE",
                   help="a prune run's state.json: the candidates per unit the rule visited there")  # fmt: skip
    p.add_argument("--visited-per-unit", type=float, default=DEFAULT_VISITED,
                   help="candidates visited per unit without --schedule (measured on the demo search)")  # fmt: skip
    p.add_argument("--subset", type=int, default=64, help="oracle images of the projected round")
    p.add_argument("--coco-images", type=int, default=5000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.schedule:
        args.visited_per_unit = visited_per_unit(args.schedule)
    cfg = load_data_config("demo")
    files = image_files(cfg["val"])
    rows = []
    for m in args.models.split(","):
        for img in (int(s) for s in args.sizes.split(",")):
            row = measure(f"yolov5{m}", img, files, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print_table(rows, args)
    result = {
        "rows": rows,
        "args": vars(args),
        "gpu": "not measured (no GPU lent to this task)",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
