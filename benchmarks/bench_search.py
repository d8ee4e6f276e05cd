"""Engine vs naive: the same PAGCP search (full 19-ratio schedule) computed both ways, in one run.

    python benchmarks/bench_search.py [--weights yolov5n-demo] [--data demo] [--img 256] [--subset 32] [--json]

The engine (pagcp.engine.search + pagcp.engine.oracle) and the straightforward loop (pagcp.engine.naive: copy,
slice, evaluate the whole subset per candidate) get the same model, the same oracle batches and the same settings.
Prints seconds, evaluations, seconds per evaluation and the speed-up side by side, and whether every unit's
decision agrees.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see pagcp/__init__.py

import torch  # noqa: E402

import pagcp  # noqa: E402
from pagcp.data import image_files, load_data_config  # noqa: E402
from pagcp.engine.search import Search  # noqa: E402
from pagcp.engine.settings import PruneSettings  # noqa: E402
from pagcp.engine.yolo import yolo_problem  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default="yolov5n-demo")
    p.add_argument("--data", default="demo")
    p.add_argument("--img", type=int, default=256)
    p.add_argument("--subset", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compression", default="global", choices=["global", "backbone"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu" if args.device == "cpu" else f"cuda:{args.device}")
    cfg = load_data_config(args.data)
    model = pagcp.load_model(args.weights, device=device)
    problem = yolo_problem(model, image_files(cfg["val"]), args.img, args.batch, args.subset, 0, device)
    graph = pagcp.trace(model, problem.example_input())
    settings = PruneSettings(compression=args.compression)

    t0 = time.perf_counter()
    oracle = problem.oracle(graph, chunk=settings.chunk)  # targets matched once
    search = Search(graph, oracle, settings, args.img)
    keep = search.run()
    engine_s = time.perf_counter() - t0
    engine = {d["name"]: d for d in search.state.decisions}

    t0 = time.perf_counter()
    truth = problem.naive(graph, settings)  # the reference re-matches targets at every evaluation
    naive_s = time.perf_counter() - t0
    naive = {d["name"]: d for d in truth["decisions"]}

    same_ratios = all(engine[n]["ratio"] == naive[n]["ratio"] for n in naive)
    same_selected = all(engine[n]["selected"] == naive[n]["selected"] for n in naive)
    same_keep = all(torch.equal(keep[k], truth["keep"][k]) for k in keep)
    result = {
        "weights": args.weights,
        "img": args.img,
        "subset": args.subset,
        "units": len(engine),
        "engine_seconds": round(engine_s, 2),
        "naive_seconds": round(naive_s, 2),
        "speedup": round(naive_s / engine_s, 2),
        "engine_evaluations": oracle.evaluations,
        "naive_evaluations": truth["evaluations"],
        "engine_ms_per_evaluation": round(1000 * engine_s / max(oracle.evaluations, 1), 1),
        "naive_ms_per_evaluation": round(1000 * naive_s / max(truth["evaluations"], 1), 1),
        "same_decisions": same_ratios and same_selected,
        "same_ratios": same_ratios,
        "same_selected": same_selected,
        "same_keep": same_keep,
        "gflops_ratio": round(graph.flops(keep, args.img) / graph.flops(None, args.img), 4),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    print_table(result)
    if args.json:
        print(json.dumps(result))


def print_table(r: dict) -> None:
    print(f"{'':>8s} {'seconds':>9s} {'evals':>7s} {'ms/eval':>9s}")
    for side in ("engine", "naive"):
        seconds, evals, ms = r[f"{side}_seconds"], r[f"{side}_evaluations"], r[f"{side}_ms_per_evaluation"]
        print(f"{side:>8s} {seconds:9.1f} {evals:7d} {ms:9.1f}")
    print(
        f"speed-up {r['speedup']:.2f}x; same decisions: {r['same_decisions']} "
        f"(ratios {r['same_ratios']}, topk selection {r['same_selected']}); GFLOPs kept {r['gflops_ratio']:.3f}"
    )


if __name__ == "__main__":
    main()
