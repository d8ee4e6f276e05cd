"""The quality benchmark's rows as numbers a reviewer can check: the GFLOPs match, the statistics over seeds,
the verdicts and the markdown tables (:mod:`bench_quality` prints them, ``summary.py`` writes them into the
README). Pure Python: no torch, so the README can be rebuilt anywhere.

A row is one (method, schedule, target, seed, budget) of ``benchmarks/results/quality*.json``. Files written
before seeds and schedules existed lack ``seed`` and ``schedule``: :func:`normalized` reads them as seed 0 and
the baselines' ``oneshot`` (PAGCP's is always ``cycles``, its own prune -> fine-tune schedule).

Over the seeds of one (method, schedule, target, budget), a figure is given as its mean and its spread, the
range max - min (``0.5731 (0.5712-0.5750)``). PAGCP is *ahead* of a baseline at a target only when the gap
of the two means exceeds the larger of the two ranges (so their seed ranges do not even overlap), *behind*
when the gap goes the other way by as much, and *tie* otherwise; with fewer than two common seeds there is
no spread to judge by and no verdict, and a baseline whose GFLOPs lie outside PAGCP's ±2 % gets none either.
Seeds are paired: baseline seed s was matched to PAGCP's seed-s model, so only the seeds both have count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: every method's GFLOPs must lie within this fraction of PAGCP's (of the same target, seed and budget)
MATCH_TOLERANCE = 0.02
#: the order methods and schedules are listed in
METHOD_ORDER = ("unpruned", "pagcp", "uniform", "tp-global", "global", "random", "smaller-stock")
SCHEDULE_ORDER = ("-", "cycles", "oneshot", "iterative", "scratch")
#: the baselines and their schedules, and bench_quality's defaults (summary.py names only the flags that differ)
BASELINES = ("uniform", "tp-global", "random")
SCHEDULES = ("oneshot", "iterative")
DEFAULTS = {"weights": "yolov5n-demo", "data": "demo", "img": 320, "subset": 64, "batch": 16, "hyp": "finetune",
            "targets": "0.7,0.5,0.35", "epochs": "3", "seeds": "0,1", "cycles": 1, "original_epochs": 21}  # fmt: skip


def unmatched(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The rows whose GFLOPs lie outside PAGCP's ±MATCH_TOLERANCE, described (method, schedule, target, seed,
    how far): a benchmark with any compares methods at different costs, and fails."""
    out = []
    for r in rows:
        if "gflops_vs_pagcp" in r and r["gflops_vs_pagcp"] is not None:
            if abs(r["gflops_vs_pagcp"] - 1) > MATCH_TOLERANCE + 1e-9:  # the edge (0.98, 1.02) itself passes
                n = normalized(r)
                out.append(f"{n['method']} ({n['schedule']}) at {n['target']:g}x, seed {n['seed']}, "
                           f"{n['epochs']} epochs: {r['gflops_vs_pagcp']:.4f} of PAGCP's GFLOPs")  # fmt: skip
    return out


def method_key(method: str) -> str:
    """The method a row was asked for: ``global`` is ``tp-global``'s fallback (Torch-Pruning could not prune
    the model, so the same rule ran on pagcp's graph)."""
    return "tp-global" if method == "global" else method


def normalized(row: dict[str, Any]) -> dict[str, Any]:
    """The row with ``schedule`` and ``seed`` filled in where an older file lacks them (see the module
    docstring)."""
    if row["method"] == "unpruned":
        default = "-"
    elif row["method"] == "pagcp":
        default = "cycles"
    else:
        default = "oneshot"
    return {**row, "schedule": row.get("schedule") or default,
            "seed": 0 if row.get("seed") is None else row["seed"], "epochs": row.get("epochs")}  # fmt: skip


def row_key(row: dict[str, Any]) -> tuple:
    """What makes a row unique, and what a re-run looks for to skip it: (method asked for, schedule, target,
    seed, epochs of the budget)."""
    n = normalized(row)
    return method_key(n["method"]), n["schedule"], n["target"], n["seed"], n["epochs"]


@dataclass(frozen=True)
class Stat:
    """A figure over seeds: mean, min, max and how many seeds."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def spread(self) -> float:
        """The range of the seeds' values (max - min): 0 with one seed."""
        return self.hi - self.lo

    def text(self, digits: int = 4) -> str:
        if self.n < 2:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ({self.lo:.{digits}f}–{self.hi:.{digits}f})"


def seed_stats(values: Iterable[float]) -> Stat:
    """Mean, min, max and count of ``values`` (one per seed)."""
    v = [float(x) for x in values]
    if not v:
        raise ValueError("no values to summarize")
    return Stat(sum(v) / len(v), min(v), max(v), len(v))


def verdict(ours: Stat, theirs: Stat) -> str:
    """``ahead`` / ``behind`` when the gap of the means exceeds the larger spread, ``tie`` otherwise; ``no
    spread`` with fewer than two seeds on either side."""
    if ours.n < 2 or theirs.n < 2:
        return "no spread"
    gap = ours.mean - theirs.mean
    if abs(gap) <= max(ours.spread, theirs.spread):
        return "tie"
    return "ahead" if gap > 0 else "behind"


def grouped(rows: Iterable[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Rows by (epochs, target, method, schedule), each list ordered by seed."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in map(normalized, rows):
        groups.setdefault((r["epochs"], r["target"], r["method"], r["schedule"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in groups.items()}


def _order(key: tuple) -> tuple:
    epochs, target, method, schedule = key
    m = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    s = SCHEDULE_ORDER.index(schedule) if schedule in SCHEDULE_ORDER else len(SCHEDULE_ORDER)
    return (-1 if epochs is None else epochs, -(target or 2.0), m, s)


def paired(a: list[dict[str, Any]], b: list[dict[str, Any]], field: str) -> tuple[Stat, Stat] | None:
    """``field`` over the seeds both row lists have (None: no common seed)."""
    va, vb = ({r["seed"]: r[field] for r in rows} for rows in (a, b))
    common = sorted(va.keys() & vb.keys())
    if not common:
        return None
    return seed_stats(va[s] for s in common), seed_stats(vb[s] for s in common)


def better_schedule(groups: dict[tuple, list[dict[str, Any]]], epochs: int, target: float, method: str,
                    metric: str = "map50_95") -> str | None:  # fmt: skip
    """The method's schedule with the higher mean ``metric`` (fine-tuned) at (budget, target), among those whose
    GFLOPs match PAGCP's (any schedule when none does); None when the method has no rows there."""
    names = [s for (e, t, m, s) in sorted(groups, key=_order) if (e, t, m) == (epochs, target, method)]
    matched = [s for s in names if not unmatched(groups[(epochs, target, method, s)])]
    names = matched or names
    if not names:
        return None
    return max(names, key=lambda s: mean_map(groups[(epochs, target, method, s)], metric))


def mean_map(rows: list[dict[str, Any]], metric: str = "map50_95") -> float:
    """The mean fine-tuned ``metric`` (default mAP50-95) over the rows' seeds."""
    return seed_stats(r[f"{metric}_finetuned"] for r in rows).mean


def task_metric(rows: Iterable[dict[str, Any]]) -> str | None:
    """The task's own metric of a segmentation or pose benchmark (mask or pose mAP50-95), None for detection."""
    keys = {k for r in rows for k in r}
    return next((m for m in ("mask_map50_95", "pose_map50_95") if f"{m}_finetuned" in keys), None)


def verdicts(rows: Iterable[dict[str, Any]], metric: str = "map50_95") -> list[dict[str, Any]]:
    """Per (budget, target, baseline): the better schedule, both statistics of ``metric`` (fine-tuned; default
    mAP50-95) on the common seeds and PAGCP's verdict (see :func:`verdict`; ``unmatched`` when that schedule's
    GFLOPs do not match)."""
    groups = grouped(rows)
    out = []
    for epochs, target, method, schedule in sorted(groups, key=_order):
        if schedule != "cycles" or method != "pagcp":
            continue
        ours = groups[(epochs, target, method, schedule)]
        others = (m for (e, t, m, _) in sorted(groups, key=_order) if (e, t) == (epochs, target) and m != "pagcp")
        for base in dict.fromkeys(others):
            best = better_schedule(groups, epochs, target, base, metric)
            if best is None:
                continue
            theirs = groups[(epochs, target, base, best)]
            stats = paired(ours, theirs, f"{metric}_finetuned")
            if stats is None:
                continue
            word = "unmatched" if unmatched(theirs) else verdict(*stats)
            out.append({"epochs": epochs, "target": target, "baseline": base, "schedule": best, "pagcp": stats[0],
                        "theirs": stats[1], "verdict": word})  # fmt: skip
    return out


def _latency_text(rows: list[dict[str, Any]]) -> str:
    """ONNX Runtime CPU batch-1 median / min (means over seeds); an older row's PyTorch figure, labelled."""
    if all("latency_ms_median" in r for r in rows):
        med = seed_stats(r["latency_ms_median"] for r in rows).mean
        low = seed_stats(r["latency_ms_min"] for r in rows).mean
        return f"{med:.1f} / {low:.1f}"
    if all("latency_ms" in r for r in rows):
        return f"PyTorch {seed_stats(r['latency_ms'] for r in rows).mean:.1f}"
    return "-"


def _gflops_text(method: str, rows: list[dict[str, Any]]) -> str:
    g = seed_stats(r["gflops"] for r in rows).mean
    if method in ("pagcp", "unpruned"):
        return f"{g:.3f}"
    vs = seed_stats(r["gflops_vs_pagcp"] for r in rows)
    lo, hi = f"{vs.lo:.3f}", f"{vs.hi:.3f}"
    span = lo if lo == hi else f"{lo}–{hi}"
    return f"{g:.3f} ({span})" + (" **unmatched**" if unmatched(rows) else "")


def markdown_table(rows: Iterable[dict[str, Any]]) -> str:
    """One line per (budget, target, method, schedule): seeds, GFLOPs (vs PAGCP's, per seed), params, mAP50-95
    and mAP50 fine-tuned (mean and range over seeds; box, and a segmentation or pose benchmark's mask or pose
    mAP50-95 too), ONNX Runtime latency, PAGCP's cycles."""
    rows = list(rows)
    task = task_metric(rows)
    extra = f" {METRIC_NAMES[task]} fine-tuned |" if task else ""
    lines = ["| budget | target | method | schedule | seeds | GFLOPs (vs PAGCP) | params | mAP50-95 fine-tuned | "
             f"mAP50 fine-tuned |{extra} latency ms, ORT CPU median / min | cycles |",
             "|---:|---|---|---|---|---:|---:|---:|---:|" + ("---:|" if task else "") + "---:|---:|"]  # fmt: skip
    groups = grouped(rows)
    for key in sorted(groups, key=_order):
        epochs, target, method, schedule = key
        rs = groups[key]
        name = f"**{method}**" if method == "pagcp" else method
        maps = [seed_stats(r[f"{m}_finetuned"] for r in rs).text() for m in ("map50_95", "map50", task) if m]
        cycles = ", ".join(str(r["cycles"]) for r in rs) if rs[0].get("cycles") else ""
        params = round(seed_stats(r["params"] for r in rs).mean)
        seeds = "-" if method == "unpruned" else ",".join(str(r["seed"]) for r in rs)
        lines.append(f"| {'-' if epochs is None else epochs} | {'-' if target is None else f'{target:g}×'} | {name} "
                     f"| {schedule} | {seeds} | {_gflops_text(method, rs)} | "
                     f"{params:,} | {' | '.join(maps)} | {_latency_text(rs)} | {cycles} |")  # fmt: skip
    return "\n".join(lines)


#: how the tables name a metric
METRIC_NAMES = {"map50_95": "mAP50-95", "mask_map50_95": "mask mAP50-95", "pose_map50_95": "pose mAP50-95"}


def verdict_table(rows: Iterable[dict[str, Any]], metric: str = "map50_95") -> str:
    """PAGCP against each baseline's better schedule, per budget and target (``metric`` fine-tuned)."""
    name = METRIC_NAMES[metric]
    lines = [f"| budget | target | baseline | better schedule | baseline {name} | PAGCP {name} | gap | "
             "larger range | PAGCP is |", "|---:|---|---|---|---:|---:|---:|---:|---|"]  # fmt: skip
    for v in verdicts(rows, metric):
        ours, theirs = v["pagcp"], v["theirs"]
        spread = f"{max(ours.spread, theirs.spread):.4f}" if min(ours.n, theirs.n) > 1 else "-"
        lines.append(f"| {v['epochs']} | {v['target']:g}× | {v['baseline']} | {v['schedule']} | {theirs.text()} | "
                     f"{ours.text()} | {ours.mean - theirs.mean:+.4f} | {spread} | {v['verdict']} |")  # fmt: skip
    return "\n".join(lines)
