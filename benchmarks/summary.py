"""The README's results summary, generated from the benchmark JSON files in ``benchmarks/results/``.

    python benchmarks/summary.py            # rewrite the section between the README's results markers
    python benchmarks/summary.py --check    # exit 1 when the README differs from what the JSON files say
    python benchmarks/summary.py --record-prune RUN_DIR --wall SECONDS [--command "..."] [--as NAME]
        # store a finished `python -m pagcp.prune` run as results/prune_NAME.json (default: prune_default)

Every figure in the summary comes from one of these files, with the date and machine it was measured on, so
the README cannot drift from the measurements (tests/test_readme.py runs ``--check``). Lab notes (load,
history) stay in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import quality_stats

from pagcp.pipeline.report import speed_words

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"
BEGIN, END = "<!-- results:begin (benchmarks/summary.py writes this section) -->", "<!-- results:end -->"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _prune_rows(p: dict[str, Any]) -> list[str]:
    r = p["report"]
    latency = r.get("latency") or {}
    speed = ""
    if "pruned" in latency:
        o, q = latency["original"], latency["pruned"]
        speed = (f"; ONNX Runtime CPU latency (median / min of {o['runs']} interleaved runs) {o['median_ms']:.1f} / "
                 f"{o['min_ms']:.1f} → {q['median_ms']:.1f} / {q['min_ms']:.1f} ms, "
                 f"{speed_words(o['median_ms'], q['median_ms'])} by the median")  # fmt: skip
    what = "the default job" if p["command"] == "python -m pagcp.prune" else f"pruning {r.get('weights')}"
    return [f"| {what} | `{p['command']}` | {r.get('weights', 'yolov5n-demo')} at {r['img_size']} px, oracle on "
            f"{r['subset']} {r['oracle_split']} images: GFLOPs "
            f"{r['gflops_before']:.3f} → {r['gflops_after']:.3f} ({r['gflops_after'] / r['gflops_before']:.0%}), "
            f"params {r['params_before'] / 1e6:.2f} M → {r['params_after'] / 1e6:.2f} M; "
            f"{'; '.join(_map_words(r, m) for m in _REPORTED if f'{m}_before' in r)} after one fine-tuning epoch; "
            f"{r['evaluations']} candidate evaluations; {p['wall_s'] / 60:.1f} min in all{speed} "
            f"| {p['date']}, {p['machine']} |"]  # fmt: skip


#: the mAP50-95 of a prune report: box, then a segmentation or pose model's mask or pose
_REPORTED = tuple(quality_stats.METRIC_NAMES)


def _map_words(r: dict[str, Any], metric: str) -> str:
    multitask = any(f"{m}_before" in r for m in _REPORTED[1:])  # a mask or pose metric beside the box's
    name = "box mAP50-95" if multitask and metric == "map50_95" else quality_stats.METRIC_NAMES[metric]
    return (f"{name} {r[f'{metric}_before']:.3f} → {r[f'{metric}_after']:.3f} pruned → "
            f"{r[f'{metric}_finetuned']:.3f}")  # fmt: skip


def _search_rows(s: dict[str, Any]) -> list[str]:
    rows = [f"| engine vs naive loop | `python benchmarks/bench_search.py --chunks 1,2,4,7 --profile` | identical "
            f"decisions: {s['same_decisions']}; engine {s['engine_seconds']:.0f} s vs naive "
            f"{s['naive_seconds']:.0f} s, "
            f"**{s['speedup']:.1f}×**; R candidates per pass: "
            + ", ".join(f"R={c} {t:.0f} s" for c, t in s["chunk_seconds"].items())
            + f" | {s['date']}, {s['machine']} |"]  # fmt: skip
    prof = s.get("profile")
    if prof:
        share = {k: v / prof["wall_seconds"] for k, v in prof["seconds"].items()}
        top = ", ".join(f"{k} {v:.0%}" for k, v in sorted(share.items(), key=lambda kv: -kv[1])[:4])
        rows.append(f"| the engine against its floor | same, `--profile` | engine/floor = "
                    f"**{prof['engine_over_floor']:.2f}** (floor: the network's own operators); time: {top} "
                    f"| {s['date']}, {s['machine']} |")  # fmt: skip
    return rows


def _family(weights: str) -> str:
    """The registered family name of a benchmark's ``--weights`` (decided without loading the model)."""
    from pagcp.families import family_for_weights

    return family_for_weights(weights).name


def _legacy_command(q: dict[str, Any], name: str) -> str:
    """The command of a result file written before seeds and schedules (no ``protocol``), as it was run."""
    st, command = q["settings"], "python benchmarks/bench_quality.py"
    if name != "quality":  # another model: the flags that differ from the defaults
        targets = sorted({r["target"] for r in q["rows"] if r["target"]}, reverse=True)
        command += f" --weights {st['weights']} --targets {','.join(f'{t:g}' for t in targets)}"
        used = {"tp-global" if r["method"] == "global" else r["method"] for r in q["rows"]}
        methods = sorted(used - {"pagcp", "unpruned"})
        command += f" --epochs {st['epochs']} --cycles {st['cycles']} --methods {','.join(methods)}"
        command += f" --out benchmarks/results/{name}.json --plot benchmarks/{name}.png"
    return command


def _quality_command(q: dict[str, Any], name: str) -> str:
    """The command that made the rows of ``q``: bench_quality.py with the flags whose values differ from its
    defaults (the settings, and what the rows cover: targets, budgets, seeds, methods, the smaller network)."""
    if "protocol" not in q["settings"]:
        return _legacy_command(q, name)
    st, rows = q["settings"], [r for r in q["rows"] if r["method"] != "unpruned"]
    values = {**{k: st[k] for k in ("weights", "data", "img", "subset", "cycles", "batch", "hyp")},
              "targets": ",".join(f"{t:g}" for t in sorted({r["target"] for r in rows}, reverse=True)),
              "epochs": ",".join(str(e) for e in sorted({r["epochs"] for r in rows})),
              "seeds": ",".join(str(x) for x in sorted({r["seed"] for r in rows}))}  # fmt: skip
    flags = [f"--{k} {v}" for k, v in values.items() if str(v) != str(quality_stats.DEFAULTS[k])]
    methods = [m for m in quality_stats.BASELINES if any(quality_stats.method_key(r["method"]) == m for r in rows)]
    if methods != list(quality_stats.BASELINES):
        flags.append(f"--methods {','.join(methods)}")
    schedules = _schedules(rows)
    if schedules != list(quality_stats.SCHEDULES):
        flags.append(f"--schedules {','.join(schedules)}")
    flags += _smaller_flags([r for r in rows if r["method"] == "smaller-stock"])
    flags += [f"--{k} {st[k]}" for k in ("levers", "distill") if k in st]
    if name != "quality":
        flags.append(f"--out benchmarks/results/{name}.json --plot benchmarks/{name}.png")
    return " ".join(["python benchmarks/bench_quality.py", *flags])


def _schedules(rows: list[dict[str, Any]]) -> list[str]:
    """The baseline schedules the rows hold, in the benchmark's order."""
    return [s for s in quality_stats.SCHEDULES if any(r["schedule"] == s for r in rows)]


def _smaller_flags(rows: list[dict[str, Any]]) -> list[str]:
    """``--smaller`` and the epochs its rows were trained from scratch, when they were any (and not the default)."""
    if not rows:
        return []
    before = {r["scratch_epochs"] - r["epochs"] for r in rows}  # auto: --original-epochs + the budget
    if len(before) == 1:
        (n,) = before
        return ["--smaller"] + ([] if n == quality_stats.DEFAULTS["original_epochs"] else [f"--original-epochs {n}"])
    return ["--smaller", f"--scratch-epochs {','.join(sorted({str(r['scratch_epochs']) for r in rows}))}"]


def _quality_words(q: dict[str, Any]) -> str:
    """What every row of ``q`` shares, in words (after the command and the date)."""
    st, rows = q["settings"], q["rows"]
    trainer = f"`--hyp {st['hyp']}`" if _family(st["weights"]) == "yolov5" else "Ultralytics' default hyper-parameters"
    train, val = ("the 2,000 demo train images", "the 500 val images") if st["data"] in ("demo", "demo-seg",
        "demo-pose") else (f"the train split of {st['data']}", "its val split")  # fmt: skip
    if "protocol" not in st:
        epochs = f"{st['epochs']} epoch{'' if st['epochs'] == 1 else 's'}"
        return (f"every method fine-tuned {epochs} on {train} ({trainer}, batch {st['batch']}); PAGCP's oracle on "
                f"{st['subset']} train images, its cycles (one epoch each) counted in its budget; mAP50-95 on {val}; "
                "one seed; the baselines pruned in one shot; latency: a PyTorch batch-1 forward pass (these rows "
                "predate the ONNX Runtime measurement)")  # fmt: skip
    budgets = sorted({r["epochs"] for r in rows if r.get("epochs")})
    seeds = sorted({r["seed"] for r in rows if r.get("seed") is not None})
    scratch = sorted({r["scratch_epochs"] for r in rows if r["method"] == "smaller-stock"})
    smaller = (f"; `smaller-stock`: the same YOLOv5 config at a width matched to PAGCP's GFLOPs, trained from random "
               f"weights (`--hyp scratch`) for {', '.join(map(str, scratch))} epochs") if scratch else ""  # fmt: skip
    words = {"oneshot": "in one shot (`oneshot`)", "iterative": "in PAGCP's cycles at its waypoints (`iterative`)"}
    schedules = " and ".join(words[s] for s in _schedules(rows))
    task = quality_stats.task_metric(rows)
    scores = f"box and {quality_stats.METRIC_NAMES[task]}" if task else "mAP50-95"
    plural = "" if budgets == [1] else "s"
    return (f"every method fine-tuned for the same budget ({', '.join(map(str, budgets))} epoch{plural}) on {train} "
            f"({trainer}, batch {st['batch']}), seeds {', '.join(map(str, seeds))}; PAGCP's oracle on {st['subset']} "
            f"train images (checked to hold no val image), its cycles (one epoch each) counted in its budget; "
            f"baselines {schedules}; {scores} on {val}{smaller}; figures are means over the seeds with their range "
            "(min–max); latency: ONNX Runtime CPU, batch 1, median / min of runs interleaved with the unpruned "
            "model's")  # fmt: skip


def _quality_table(q: dict[str, Any], name: str) -> list[str]:
    if not q.get("runs"):  # a benchmark still running: its rows are not final
        return []
    run, st = q["runs"][-1], q["settings"]
    lines = ["", f"**{st['weights']}: quality at matched GFLOPs and the same fine-tuning** "
             f"(`{_quality_command(q, name)}`; {run['date']}, {run['machine']}): {_quality_words(q)}.", "",
             quality_stats.markdown_table(q["rows"]), "",
             "PAGCP against each baseline's better schedule (mAP50-95 fine-tuned, on the seeds both have): *ahead* "
             "or *behind* only when the gap of the means exceeds the larger of the two seed ranges, *tie* "
             "otherwise; no verdict with one seed (*no spread*) or where the GFLOPs differ by more than "
             f"{quality_stats.MATCH_TOLERANCE:.0%} (*unmatched*).", "",
             quality_stats.verdict_table(q["rows"])]  # fmt: skip
    task = quality_stats.task_metric(q["rows"])
    if task:
        lines += ["", f"The same on the task's own metric ({task.split('_')[0]} mAP50-95 fine-tuned):", "",
                  quality_stats.verdict_table(q["rows"], task)]  # fmt: skip
    if any(r["method"] == "global" for r in q["rows"]):
        lines += [
            "",
            "global: a global magnitude criterion on pagcp's channel graph (every channel's L1 filter score divided "
            "by its unit's mean, ranked across the network), not Torch-Pruning's default importance (group L2 "
            "over the whole "
            "group, BN included). Torch-Pruning itself pruned nothing here because the loaded model's parameters "
            "had requires_grad=False (its error is kept in the JSON row).",
        ]
    return [*lines, "", f"![{st['weights']}: mAP50-95 against GFLOPs](benchmarks/{name}.png)"]


def _cost_rows(c: dict[str, Any]) -> list[str]:
    m = next((r for r in c["rows"] if r["model"] == "yolov5m" and r["img"] == 640), None)
    if m is None:
        return []
    n = c["args"]["subset"]
    return [f"| search cost, yolov5m at 640 | `python benchmarks/bench_cost.py` | one COCO round, every side charged "
            f"the same schedule, {m['visited_candidates']:.0f} candidates (as visited by the rule). At equal images "
            f"({n}), what the engine buys: engine {m['visited_engine_round_h']:.2f} h vs the straightforward loop "
            f"{m['visited_naive_round_h']:.2f} h (**{m['speedup']:.2f}×**). What the subset buys: the "
            f"reference reads all 5,000 val images per candidate, at least {m['visited_reference_coco_round_h']:,.0f} "
            f"h (plain forward passes only). All 19 ratios per unit: engine "
            f"{m['upper_engine_round_h']:.1f} h, loop {m['upper_naive_round_h']:.1f} h, reference "
            f"{m['upper_reference_coco_round_h']:,.0f} h | {c['date']}, {c['machine']} |"]  # fmt: skip


def _precision_rows(p: dict[str, Any]) -> list[str]:
    rows = []
    for name, r in p["rows"].items():
        if "same_ratio" in r:
            f32 = p["rows"]["fp32"]["seconds"]
            command = f"python benchmarks/bench_precision.py --weights {p['weights']} --img {p['img']} " \
                      f"--subset {p['subset']} --device cpu"  # fmt: skip
            rows.append(f"| oracle in {name} vs fp32 | `{command}` | same ratio on {r['same_ratio']:.0%} of "
                        f"{p['units']} units, same topk on {r['same_selected']:.0%}, GFLOPs "
                        f"{r['gflops_rel_diff']:+.2%}; search {f32:.0f} s (fp32) vs {r['seconds']:.0f} s "
                        f"| {p['date']}, {p['machine']} |")  # fmt: skip
    return rows


def _legacy_rows(legacy: dict[str, Any]) -> list[str]:
    return [f"| {r['what']} | `{r['command']}` | {r['result']} | {r['date']}, {r['machine']} |" for r in legacy["rows"]]


def summary() -> str:
    """The markdown of the results section."""
    lines = ["| what | command | result | measured |", "|---|---|---|---|"]
    prunes = sorted(p.stem for p in RESULTS.glob("prune_*.json"))
    parts = [*((name, _prune_rows) for name in prunes), ("search", _search_rows), ("cost", _cost_rows),
             ("precision", _precision_rows), ("legacy", _legacy_rows)]  # fmt: skip
    for name, render in parts:
        data = _load(name)
        if data is not None:
            lines += render(data)
    for name in sorted(p.stem for p in RESULTS.glob("quality*.json")):
        lines += _quality_table(_load(name), name)
    return "\n".join(lines)


def write_readme(check: bool) -> int:
    text = README.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        print(f"{README}: the results markers are missing", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{summary()}\n{END}{tail}"
    if check:
        if new != text:
            print(
                "README.md's results section differs from benchmarks/results/*.json: run python benchmarks/summary.py"
            )
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    return 0


def record_prune(run_dir: str, wall: float, command: str, name: str) -> None:
    """results/prune_NAME.json from a finished prune run's report.json."""
    report = json.loads((Path(run_dir) / "report.json").read_text())
    keep = {k: report[k] for k in ("gflops_before", "gflops_after", "params_before", "params_after",
                                   "map50_95_before", "map50_95_after", "map50_95_finetuned", "map50_before",
                                   "map50_after", "map50_finetuned", "evaluations", "search_seconds", "stop_rule",
                                   "oracle_split", "subset", "img_size", "latency", "weights", "tasks",
                                   *(f"{m}_{s}" for m in ("mask_map50_95", "pose_map50_95", "mask_map50",
                                                          "pose_map50") for s in ("before", "after", "finetuned")))
            if k in report}  # fmt: skip
    load = os.getloadavg()[0]
    out = {"command": command, "wall_s": wall, "report": keep, "load_average_1min_at_record": load,
           "date": time.strftime("%Y-%m-%d", time.gmtime()),
           "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores"}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"prune_{name}.json").write_text(json.dumps(out, indent=1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when the README is out of date")
    p.add_argument("--record-prune", metavar="RUN_DIR", help="store this prune run as results/prune_default.json")
    p.add_argument("--wall", type=float, default=0.0, help="the run's wall seconds (with --record-prune)")
    p.add_argument("--command", default="python -m pagcp.prune", help="the run's command (with --record-prune)")
    p.add_argument("--as", dest="name", default="default", help="stored as results/prune_NAME.json")
    args = p.parse_args()
    if args.record_prune:
        record_prune(args.record_prune, args.wall, args.command, args.name)
        return 0
    return write_readme(args.check)


if __name__ == "__main__":
    sys.exit(main())
