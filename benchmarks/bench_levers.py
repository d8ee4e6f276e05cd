"""Ablation of PAGCP's levers at deep targets: each lever is a search setting (and a prune flag), run with
the quality benchmark's protocol (:mod:`bench_quality`: the library's prune run to the target with up to
``--cycles`` 1-epoch cycles on the train split's oracle subset, the rest of the ``--epochs`` budget as a final
fine-tune, mAP on the val split), one row per (lever, target).

    python benchmarks/bench_levers.py [--targets 0.5,0.35] [--levers "default;min_width=0.25"] [--json]

Besides mAP each row says how far the search thinned the network: the parameters, and per conv the fraction
of its output channels left (the smallest, and how many convs keep under 10 %), which is where the default
rule goes wrong at deep targets (units the oracle's loss barely needs are cut to a few channels, round after
round). Rows are appended to ``--out`` as they finish; a re-run skips them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_quality as bq  # noqa: E402
from torch import nn  # noqa: E402

import pagcp  # noqa: E402, I001
from pagcp.data import load_data_config  # noqa: E402

HERE = Path(__file__).resolve().parent


def thinning(original: nn.Module, pruned: nn.Module) -> dict[str, Any]:
    """Per conv (by name), the fraction of its output channels ``pruned`` keeps: the smallest, and how many
    keep under 10 %."""
    before = {n: m.out_channels for n, m in original.named_modules() if isinstance(m, nn.Conv2d)}
    fractions = {n: m.out_channels / before[n] for n, m in pruned.named_modules()
                 if isinstance(m, nn.Conv2d) and n in before}  # fmt: skip
    thinnest = min(fractions, key=fractions.get)
    return {"min_width_fraction": round(fractions[thinnest], 4), "thinnest_conv": thinnest,
            "convs_under_10pct": sum(f < 0.1 for f in fractions.values()), "convs": len(fractions)}  # fmt: skip


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--levers", default="default;min_width=0.25",
                   help="';'-separated levers, each 'default' or NAME=VALUE pairs of search settings")  # fmt: skip
    p.add_argument("--targets", default="0.5,0.35", help="comma list of GFLOPs fractions")
    p.add_argument("--out", default=str(HERE / "results" / "levers.json"), help="rows (JSON)")
    p.add_argument("--json", action="store_true", help="print the result as a JSON object on the last line")
    args, rest = p.parse_known_args()
    return args, rest  # the rest: bench_quality's flags (--weights, --epochs, --cycles, --seed, --project...)


def main() -> None:
    args, rest = parse_args()
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {"rows": [], "runs": []}
    started = time.perf_counter()
    for lever in args.levers.split(";"):
        levers = "" if lever == "default" else lever
        tag = "" if not levers else "-" + levers.replace("=", "").replace(",", "-")
        q = bq.parse_args([*rest, f"--levers={levers}", f"--tag={tag}"])  # "=": a tag may start with "-"
        cfg, original = load_data_config(q.data), pagcp.load_model(q.weights)
        for target in (float(t) for t in args.targets.split(",")):
            key = {"lever": lever, "target": target, "weights": q.weights, "epochs": q.epochs, "cycles": q.cycles,
                   "seed": q.seed, "subset": q.subset}  # fmt: skip
            if any(all(r.get(k) == v for k, v in key.items()) for r in result["rows"]):
                continue
            row, _ = bq.pagcp_row(q, cfg, target)
            report = json.loads((Path(row["run_dir"]) / "report.json").read_text())
            pruned = pagcp.load_model(report["pruned"])
            result["rows"].append({**key, **row, **thinning(original, pruned)})
            bq._save(out, result)
            print(json.dumps(result["rows"][-1]), flush=True)
    result["runs"].append(bq._machine(time.perf_counter() - started))
    bq._save(out, result)
    print(markdown_table(result["rows"]))
    if args.json:
        print(json.dumps(result))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| target | lever | GFLOPs | params | thinnest conv (fraction) | convs < 10 % | mAP50-95 pruned | "
             "mAP50-95 fine-tuned | epochs | seed |", "|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in sorted(rows, key=lambda r: (-r["target"], r["lever"], r["seed"])):
        thin = f"{r['thinnest_conv']} ({r['min_width_fraction']:.3f}) | {r['convs_under_10pct']}/{r['convs']}"
        maps = f"{r['map50_95_pruned']:.4f} | {r['map50_95_finetuned']:.4f}"
        lines.append(f"| {r['target']:g}× | {r['lever']} | {r['gflops']:.3f} | {r['params']:,} | {thin} | {maps} | "
                     f"{r['epochs']} | {r['seed']} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
