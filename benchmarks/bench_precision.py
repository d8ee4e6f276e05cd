"""Decision agreement of the oracle in bf16 / fp16 against fp32: the same search in each precision, side by side.

    python benchmarks/bench_precision.py [--weights yolov5s] [--img 640] [--subset 256] [--device 0]
        [--dtypes bf16,fp16] [--json]

Reports, per reduced precision: the fraction of units searched to the same ratio as in fp32, the fraction
with the same topk selection, the final GFLOPs of both and their relative difference, and each search's time.
A reduced precision is fit to be the GPU default only where it agrees on at least 98 % of the units.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see pagcp/__init__.py

import torch  # noqa: E402

import pagcp  # noqa: E402
from pagcp.data import image_files, load_data_config  # noqa: E402
from pagcp.engine.oracle import ORACLE_DTYPES  # noqa: E402
from pagcp.engine.settings import PruneSettings  # noqa: E402
from pagcp.families import problem_of  # noqa: E402

AGREEMENT_FOR_DEFAULT = 0.98


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default="yolov5s", help="model (a config name gets seeded random weights)")
    p.add_argument("--data", default="demo", help="data yaml or demo (the oracle's images: its train split)")
    p.add_argument("--img", type=int, default=640, help="image size")
    p.add_argument("--subset", type=int, default=256, help="oracle images")
    p.add_argument("--batch", type=int, default=32, help="oracle batch")
    p.add_argument("--device", default="0" if torch.cuda.is_available() else "cpu", help="cpu or a CUDA index")
    p.add_argument("--dtypes", default="bf16,fp16", help="reduced precisions compared with fp32")
    p.add_argument("--compression", default="global", choices=["global", "backbone"], help="units searched")
    p.add_argument("--backbone-layers", type=int, default=10, help="with --compression backbone: layers searched")
    p.add_argument("--json", action="store_true", help="print the result as a JSON object on the last line")
    return p.parse_args()


def search(problem, dtype: str, settings: PruneSettings) -> tuple[dict, float, float]:
    """(decisions by unit, final GFLOPs, seconds) of one search with the oracle in ``dtype``."""
    problem.dtype = ORACLE_DTYPES[dtype]
    t0 = time.perf_counter()
    result = problem.prune(settings)
    seconds = time.perf_counter() - t0
    gflops = result.graph.flops(result.keep, problem.img_size) / 1e9
    return {d["name"]: d for d in result.decisions}, gflops, seconds


def main() -> None:
    args = parse_args()
    device = torch.device("cpu" if args.device == "cpu" else f"cuda:{args.device}")
    cfg = load_data_config(args.data)
    torch.manual_seed(0)
    model = pagcp.load_model(args.weights, device=device)
    problem = problem_of(model, image_files(cfg["train"]), args.img, args.batch, args.subset, 0, device)
    settings = PruneSettings(compression=args.compression, backbone_layers=args.backbone_layers)
    reference, ref_gflops, ref_s = search(problem, "fp32", settings)
    rows = {"fp32": {"gflops": ref_gflops, "seconds": round(ref_s, 1)}}
    for dtype in (d for d in args.dtypes.split(",") if d):
        got, gflops, seconds = search(problem, dtype, settings)
        same_ratio = sum(got[n]["ratio"] == reference[n]["ratio"] for n in reference) / len(reference)
        same_selected = sum(got[n]["selected"] == reference[n]["selected"] for n in reference) / len(reference)
        rows[dtype] = {"same_ratio": round(same_ratio, 4), "same_selected": round(same_selected, 4),
                       "gflops": gflops, "gflops_rel_diff": round((gflops - ref_gflops) / ref_gflops, 5),
                       "seconds": round(seconds, 1),
                       "fit_for_default": same_ratio >= AGREEMENT_FOR_DEFAULT}  # fmt: skip
    print("| oracle dtype | units with the fp32 ratio | same topk | GFLOPs | vs fp32 | search s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {100 * r.get('same_ratio', 1):.1f} % | {100 * r.get('same_selected', 1):.1f} % | "
              f"{r['gflops']:.4f} | {100 * r.get('gflops_rel_diff', 0):+.2f} % | {r['seconds']:.1f} |")  # fmt: skip
    result = {"weights": args.weights, "img": args.img, "subset": args.subset, "device": str(device),
              "units": len(reference), "rows": rows, "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
