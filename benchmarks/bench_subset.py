"""Oracle subset size: PAGCP decisions and mAP with 16 ... 128 oracle images against 512.

    python benchmarks/bench_subset.py [--levels 512,16,32,64,128] [--compression backbone] [--json]
    python benchmarks/bench_subset.py --summarize runs.jsonl   # the table from (partial) results

Each level runs PAGCP with default settings on the demo checkpoint with a seeded oracle subset of that many
*train* images (``all``: the whole train split) and validates the pruned model (no fine-tuning) on the whole
val split: the images that steer the search are never the images it is scored on.
Every level's result is appended to ``--out`` (JSON lines) as soon as it is done, so an interrupted run
still gives a table. Agreement with the reference level (``all`` when present, else the largest):
the fraction of units with the same final ratio (0 where unselected), and the per-unit ratios' mean
absolute difference; plus GFLOPs and mAP side by side.
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

from pagcp.data import image_files, load_data_config  # noqa: E402
from pagcp.families import problem_of  # noqa: E402
from pagcp.engine.search import Search  # noqa: E402
from pagcp.engine.settings import PruneSettings  # noqa: E402
from pagcp.detection.evaluate import evaluate  # noqa: E402


def run_level(level: str, args: argparse.Namespace, cfg: dict) -> dict[str, Any]:
    """One PAGCP search with ``level`` oracle images, then validation of the pruned model."""
    model = pagcp.load_model(args.weights)
    img = args.img
    files = image_files(cfg["train"])  # the oracle's images; mAP below is on val
    n = None if level == "all" else int(level)
    problem = problem_of(model, files, img, args.batch, n, args.seed, cache_targets=False)
    graph = problem.trace()
    oracle = problem.oracle(graph)
    search = Search(graph, oracle, PruneSettings(compression=args.compression), img)
    t0 = time.perf_counter()
    keep = search.run()
    seconds = time.perf_counter() - t0
    pruned = graph.slice(keep).eval()
    r = evaluate(pruned, cfg, img_size=img, batch_size=32, device="cpu", progress=False)
    ratios = {d["name"]: (d["ratio"] if d["selected"] else 0.0) for d in search.state.decisions}
    return {
        "level": level,
        "images": len(files) if n is None else n,
        "seed": args.seed,
        "gflops": round(graph.flops(keep, img) / 1e9, 4),
        "params": graph.params(keep),
        "map50": round(r["map50"], 4),
        "map50_95": round(r["map50_95"], 4),
        "search_seconds": round(seconds, 1),
        "evaluations": oracle.evaluations,
        "ratios": ratios,
        "compression": args.compression,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Agreement of every level with the reference level; prints the table."""
    ref = next((r for r in rows if r["level"] == "all"), max(rows, key=lambda r: r["images"]))
    table = []
    for r in sorted(rows, key=lambda r: r["images"]):
        names = ref["ratios"].keys()
        same = sum(r["ratios"].get(k) == ref["ratios"][k] for k in names) / len(names)
        mad = sum(abs(r["ratios"].get(k, 0.0) - ref["ratios"][k]) for k in names) / len(names)
        table.append(
            {
                "images": r["images"],
                "same_ratio": round(same, 3),
                "mean_abs_ratio_diff": round(mad, 3),
                "gflops": r["gflops"],
                "gflops_vs_ref": round(r["gflops"] / ref["gflops"], 3),
                "map50_95": r["map50_95"],
                "map50_95_vs_ref": round(r["map50_95"] - ref["map50_95"], 4),
                "map50": r["map50"],
                "search_seconds": r["search_seconds"],
                "evaluations": r["evaluations"],
            }
        )
    print(f"reference: {ref['images']} images ({ref['compression']} scope)")
    print(
        "| oracle images | same ratio | mean abs ratio diff | GFLOPs | GFLOPs vs ref | mAP50-95 | Δ mAP50-95 | "
        "mAP50 | search s | evaluations |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in table:
        print(
            f"| {t['images']} | {t['same_ratio']:.2f} | {t['mean_abs_ratio_diff']:.3f} | {t['gflops']:.3f} | "
            f"{t['gflops_vs_ref']:.3f} | {t['map50_95']:.4f} | {t['map50_95_vs_ref']:+.4f} | {t['map50']:.4f} | "
            f"{t['search_seconds']:.0f} | {t['evaluations']} |"
        )
    return {"reference_images": ref["images"], "table": table}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default="yolov5n-demo")
    p.add_argument("--data", default="demo")
    p.add_argument("--img", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    levels_help = "oracle images (train split) per run; the largest is the reference; all: the whole split"
    p.add_argument("--levels", default="512,16,32,64,128", help=levels_help)
    p.add_argument(
        "--compression",
        default="backbone",
        choices=["global", "backbone"],
        help="search scope (backbone: 26 of yolov5n's 50 units, to fit the CPU)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="/tmp/pagcp_bench_subset.jsonl", help="JSON lines, one per finished level")
    p.add_argument("--summarize", default=None, help="only print the table of this JSON lines file")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.summarize:
        rows = [json.loads(line) for line in Path(args.summarize).read_text().splitlines() if line.strip()]
    else:
        cfg = load_data_config(args.data)
        rows = []
        out = Path(args.out)
        for level in args.levels.split(","):
            row = run_level(level, args, cfg)
            rows.append(row)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps({k: v for k, v in row.items() if k != "ratios"}), flush=True)
    result = summarize(rows)
    result.update(
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", torch=torch.__version__
    )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
