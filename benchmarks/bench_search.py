"""Engine vs naive: the same PAGCP search (full 19-ratio schedule) computed both ways, in one run.

    python benchmarks/bench_search.py [--weights yolov5n-demo] [--data demo] [--img 256] [--subset 32]
        [--chunks 1,2,4,7] [--replays auto,off,trace] [--profile] [--json]

``--chunks``: the engine runs once per R (candidates per pass), side by side; the speed-up is the first R's.
``--replays``: the engine runs once per suffix-replay mode (``--suffix-replay`` of pagcp.prune: walked, CUDA
graphs, traced, compiled) at the first R, side by side; the speed-up is the first mode's.
``--profile``: one more engine run under the profiler: where the time goes and engine/floor
(``benchmarks/search_profile.py``).

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
from pagcp.families import problem_of  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default="yolov5n-demo", help="model to prune")
    p.add_argument("--data", default="demo", help="data yaml or demo (the oracle's images: its val split)")
    p.add_argument("--img", type=int, default=256, help="image size")
    p.add_argument("--subset", type=int, default=32, help="oracle images")
    p.add_argument("--batch", type=int, default=16, help="oracle batch")
    p.add_argument("--device", default="cpu", help="cpu or a CUDA index")
    p.add_argument("--compression", default="global", choices=["global", "backbone"], help="units searched")
    p.add_argument("--backbone-layers", type=int, default=10, help="with --compression backbone: layers searched")
    p.add_argument("--chunks", default="0", help="comma list of candidates per pass R (0: the device's default)")
    p.add_argument("--replays", default="auto", help="comma list of suffix-replay modes (auto: graph on CUDA)")
    p.add_argument("--profile", action="store_true", help="profile one more engine run (first R, first mode)")
    p.add_argument("--skip-naive", action="store_true", help="time the engine only")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--json", action="store_true", help="print the result as a JSON object on the last line")
    return p.parse_args()


def engine_run(problem, graph, settings: PruneSettings, img: int, chunk: int, replay: str):
    """(seconds, search, keep) of one engine search with R = ``chunk`` candidates per pass."""
    t0 = time.perf_counter()
    problem.replay = replay
    oracle = problem.oracle(graph, chunk=chunk)  # targets matched once
    search = Search(graph, oracle, settings, img)
    keep = search.run()
    return time.perf_counter() - t0, search, keep


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu" if args.device == "cpu" else f"cuda:{args.device}")
    cfg = load_data_config(args.data)
    model = pagcp.load_model(args.weights, device=device)
    problem = problem_of(model, image_files(cfg["val"]), args.img, args.batch, args.subset, 0, device)
    graph = problem.trace()
    settings = PruneSettings(compression=args.compression, backbone_layers=args.backbone_layers)
    chunks = [int(c) for c in args.chunks.split(",")]
    replays = args.replays.split(",")
    runs = {c: engine_run(problem, graph, settings, args.img, c, replays[0]) for c in chunks}
    engine_s, search, keep = runs[chunks[0]]
    by_mode = {replays[0]: runs[chunks[0]]}
    by_mode.update({m: engine_run(problem, graph, settings, args.img, chunks[0], m) for m in replays[1:]})
    result = {"weights": args.weights, "img": args.img, "subset": args.subset, "units": len(search.state.order),
              "engine_seconds": round(engine_s, 3), "engine_evaluations": search.state.evaluations,
              "engine_ms_per_evaluation": round(1000 * engine_s / max(search.state.evaluations, 1), 1),
              "chunk_seconds": {str(search.oracle.chunk if c == 0 else c): round(r[0], 2) for c, r in runs.items()},
              "chunks_same_decisions": all(_decided(r[1]) == _decided(search) for r in runs.values()),
              "replay_seconds": {m: round(r[0], 2) for m, r in by_mode.items()},
              "replay_modes": {m: r[1].oracle.replay.mode for m, r in by_mode.items()},
              "replays_same_decisions": all(_decided(r[1]) == _decided(search) for r in by_mode.values()),
              "gflops_ratio": round(graph.flops(keep, args.img) / graph.flops(None, args.img), 4)}  # fmt: skip
    if not args.skip_naive:
        result.update(naive_comparison(problem, graph, settings, search, keep, engine_s))
    if args.profile:
        from search_profile import print_profile, profile_search

        result["profile"] = profile_search(
            lambda: engine_run(problem, graph, settings, args.img, chunks[0], replays[0])
        )
        print_profile(result["profile"])
    result.update({"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
                   "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "load_average_1min": os.getloadavg()[0]})  # fmt: skip
    print_table(result)
    if args.json:
        print(json.dumps(result))


def _decided(search) -> list[tuple]:
    """What a search decided per unit (not how many evaluations it took: that depends on R)."""
    return [
        (d["name"], d["ratio"], d["tripped_task"], d["selected"], d["channels_after"]) for d in search.state.decisions
    ]


def naive_comparison(problem, graph, settings, search, keep, engine_s: float) -> dict:
    """The naive loop on the same problem: its time, evaluations and whether every decision agrees."""
    t0 = time.perf_counter()
    truth = problem.naive(graph, settings)  # the reference re-matches targets at every evaluation
    naive_s = time.perf_counter() - t0
    engine = {d["name"]: d for d in search.state.decisions}
    naive = {d["name"]: d for d in truth["decisions"]}
    same_ratios = all(engine[n]["ratio"] == naive[n]["ratio"] for n in naive)
    same_selected = all(engine[n]["selected"] == naive[n]["selected"] for n in naive)
    return {"naive_seconds": round(naive_s, 3), "speedup": round(naive_s / engine_s, 2),
            "naive_evaluations": truth["evaluations"],
            "naive_ms_per_evaluation": round(1000 * naive_s / max(truth["evaluations"], 1), 1),
            "same_decisions": same_ratios and same_selected, "same_ratios": same_ratios,
            "same_selected": same_selected,
            "same_keep": all(torch.equal(keep[k], truth["keep"][k]) for k in keep)}  # fmt: skip


def print_table(r: dict) -> None:
    print(f"{'':>8s} {'seconds':>9s} {'evals':>7s} {'ms/eval':>9s}")
    for side in ("engine", "naive"):
        if f"{side}_seconds" in r:
            seconds, evals, ms = r[f"{side}_seconds"], r[f"{side}_evaluations"], r[f"{side}_ms_per_evaluation"]
            print(f"{side:>8s} {seconds:9.1f} {evals:7d} {ms:9.1f}")
    per_r = ", ".join(f"R={c}: {s:.1f} s" for c, s in r["chunk_seconds"].items())
    print(f"engine by candidates per pass: {per_r} (same decisions: {r['chunks_same_decisions']})")
    per_mode = ", ".join(f"{m} ({r['replay_modes'][m]}): {s:.1f} s" for m, s in r["replay_seconds"].items())
    print(f"engine by suffix replay: {per_mode} (same decisions: {r['replays_same_decisions']})")
    if "speedup" in r:
        print(
            f"speed-up {r['speedup']:.2f}x; same decisions: {r['same_decisions']} "
            f"(ratios {r['same_ratios']}, topk selection {r['same_selected']}); GFLOPs kept {r['gflops_ratio']:.3f}"
        )


if __name__ == "__main__":
    main()
