"""The baselines of the quality benchmark and their two schedules, matched to PAGCP's GFLOPs and budget.

Rules (one pruning step on a model, to a GFLOPs goal):

- ``uniform``: the same ratio in every unit, lowest-L1 channels; ``random``: the same ratio, seeded random
  channels (:func:`pagcp.engine.baselines.matched_keep`, which mixes the two ratios around a jump so that the
  FLOPs land within a fraction of a percent of the goal).
- ``tp-global``: Torch-Pruning's ``MagnitudePruner`` (``global_pruning=True``, its default importance, the
  head ignored), its ``pruning_ratio`` bisected to the goal; where Torch-Pruning cannot prune the model, the
  same rule on pagcp's graph, named ``global``.

Schedules (``schedule`` of a row), for a PAGCP row at target F, seed s and a budget of E epochs:

- ``oneshot``: one step from the original model to PAGCP's final GFLOPs, then all E epochs of fine-tuning.
- ``iterative``: as many prune -> fine-tune cycles as PAGCP ran (N), one epoch each, like PAGCP's; cycle c
  (0-based) starts from the previous cycle's fine-tuned model at g GFLOPs and prunes it to PAGCP's waypoint
  g·(F/g)^(1/(N−c)) (:func:`next_waypoint`), re-traced and re-matched on the current model, so the last cycle
  lands on PAGCP's final GFLOPs; then E − N epochs of final fine-tuning: E epochs in all, as PAGCP. For
  ``tp-global`` each cycle is a one-shot Torch-Pruning bisection on the current model (Torch-Pruning's own
  ``iterative_steps`` keep one pruner on one model object, while the family's trainer hands back a new one,
  its EMA weights, after every fine-tune; the importance is the same, re-ranked per cycle). When PAGCP pruned in
  a single step (``--cycles 1``, or a budget of one epoch) the iterative schedule is the one-shot one, and no
  row is made. Seed s seeds every fine-tune; the random rule's channels in cycle c are drawn with seed
  ``1000·s + c`` (one-shot: ``1000·s``).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
from quality_checks import row_latency
from quality_stats import BASELINES, MATCH_TOLERANCE, SCHEDULES
from torch import nn

import pagcp
from pagcp.engine.baselines import matched_keep, prunable_units
from pagcp.families import FinetuneJob, family_of

__all__ = ["BASELINES", "SCHEDULES", "baseline_row", "finetune", "next_waypoint", "tp_global", "validate"]


def finetune(model: nn.Module, args: argparse.Namespace, epochs: int, name: str, seed: int = 0,
             hyp: str | None = None) -> nn.Module:  # fmt: skip
    """``epochs`` of the family's trainer on the whole train split into ``--project``/finetune/``name`` (every
    method gets the same recipe: hyp ``--hyp``, batch ``--batch``, seed ``seed``, ``--distill`` with the
    unpruned model as teacher); an interrupted fine-tune continues from its folder."""
    if epochs <= 0:
        return model
    family = family_of(model)
    folder = Path(args.project) / "finetune" / name
    _claim(folder, {"weights": str(args.weights), "data": str(args.data), "img": args.img, "batch": args.batch,
                    "hyp": hyp or args.hyp, "distill": args.distill, "epochs": epochs, "seed": seed,
                    "source_checksum": checksum(model)})  # fmt: skip
    source = family.save(model, folder / "source.pt")
    job = FinetuneJob(folder=folder, epochs=epochs, source=source, data=args.data, img=args.img, batch=args.batch,
                      hyp=hyp or args.hyp, device="cpu", workers=0, distill=args.distill,
                      teacher=args.weights if args.distill else None, seed=seed)  # fmt: skip
    return family.finetune(copy.deepcopy(model), job)


def checksum(model: nn.Module) -> float:
    """The sum of the absolute values of ``model``'s parameters (identifies the model a fine-tune starts from)."""
    total = float(sum(p.detach().double().abs().sum() for p in model.parameters()))
    return float(f"{total:.9g}")  # 9 digits: the same figure whatever order the threads summed in


def _claim(folder: Path, job: dict[str, Any]) -> None:
    """Write ``job`` as the folder's ``job.json``, or, when the folder holds another job's (another model, data
    or recipe: its files would be continued as if they were this one's), stop and say so."""
    stamp = folder / "job.json"
    if stamp.is_file():
        old = json.loads(stamp.read_text())
        if old != job:
            differ = sorted(k for k in {*old, *job} if old.get(k) != job.get(k))
            raise SystemExit(f"{folder} holds another fine-tune ({', '.join(differ)} differ); use another "
                             "--project, or remove the folder")  # fmt: skip
        return
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(job, indent=1))


def validate(model: nn.Module, cfg: dict, img: int) -> dict[str, float]:
    """The family's metrics on the whole val split: box mAP50 and mAP50-95, and a segmentation or pose model's
    mask or pose mAP beside them."""
    r = family_of(model).validate(model, cfg, img, torch.device("cpu"), progress=False)
    return {k: round(v, 4) for k, v in r.items()}


def tp_global(model: nn.Module, target_gflops: float, img: int, steps: int = 16) -> tuple[nn.Module, float]:
    """Torch-Pruning global magnitude pruning with its ``pruning_ratio`` bisected to ``target_gflops``; on a copy
    whose parameters require gradients (a loaded or fine-tuned model's do not, and Torch-Pruning, which finds the
    layers' dependencies through autograd, would then prune nothing)."""
    import torch_pruning as tp

    example = torch.zeros(1, 3, img, img)
    family = family_of(model)

    def pruned(ratio: float) -> nn.Module:
        m = copy.deepcopy(model).eval()
        m.requires_grad_(True)  # Torch-Pruning traces the graph through autograd: frozen (EMA) weights hide it
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


def prune_step(method: str, model: nn.Module, goal_gflops: float, img: int, seed: int):
    """One step of ``method`` on ``model`` (traced afresh) to ``goal_gflops``: (pruned model, what to report
    about it, the method's name: ``global`` where tp-global fell back)."""
    graph = pagcp.trace(model, torch.zeros(1, 3, img, img))  # the head a leaf, as the oracle traces it
    units = prunable_units(graph)
    sliced = family_of(model).sliced
    if method in ("uniform", "random"):
        ratio, k = matched_keep(graph, method, goal_gflops * 1e9, img, units, seed=seed)
        return sliced(graph.slice(k).eval()), {"ratio": round(ratio, 4)}, method
    if method == "tp-global":
        try:
            pruned, ratio = tp_global(model, goal_gflops, img)
            return pruned, {"tp_pruning_ratio": round(ratio, 4)}, method
        except Exception as e:  # noqa: BLE001 - Torch-Pruning cannot handle the model: same rule on the graph
            n, k = matched_keep(graph, "global", goal_gflops * 1e9, img, units)
            extra = {"pruned_channels": int(n), "torch_pruning_error": f"{type(e).__name__}: {e}"}
            return sliced(graph.slice(k).eval()), extra, "global"
    raise SystemExit(f"unknown method {method!r}; use {', '.join(BASELINES)}")


def next_waypoint(gflops: float, final: float, cycle: int, cycles: int) -> float:
    """PAGCP's per-cycle goal: cycle ``cycle`` (0-based) of ``cycles``, starting at ``gflops``, goes to
    gflops·(final/gflops)^(1/(cycles − cycle)); the last cycle goes to ``final`` exactly."""
    if not 0 <= cycle < cycles:
        raise ValueError(f"cycle {cycle} of {cycles}")
    return final if cycle == cycles - 1 else gflops * (final / gflops) ** (1 / (cycles - cycle))


def waypoint_schedule(start: float, final: float, cycles: int) -> list[float]:
    """The goals of ``cycles`` cycles from ``start`` GFLOPs when each lands on its goal exactly."""
    goals, g = [], start
    for c in range(cycles):
        g = next_waypoint(g, final, c, cycles)
        goals.append(g)
    return goals


def cycle_seed(seed: int, cycle: int) -> int:
    """The random rule's seed in a cycle (see the module docstring)."""
    return 1000 * seed + cycle


def run_name(target: float, seed: int, epochs: int, args: argparse.Namespace, what: str) -> str:
    return f"target{target:g}{args.tag}-seed{seed}-e{epochs}-{what}"


def _row(args, cfg, tuned: nn.Module, pruned_map: float, ours: dict[str, Any], name: str, t0: float) -> dict:
    """The fields every baseline row shares: GFLOPs against PAGCP's, mAP, latency, seconds."""
    stats = pagcp.model_stats(tuned, args.img)
    return {**stats, "gflops_vs_pagcp": round(stats["gflops"] / ours["gflops"], 4), "map50_95_pruned": pruned_map,
            **{f"{k}_finetuned": v for k, v in validate(tuned, cfg, args.img).items()},
            **row_latency(tuned, args, name), "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def oneshot_row(args, cfg, model: nn.Module, method: str, ours: dict[str, Any]) -> dict[str, Any]:
    """``method`` pruned once from ``model`` (the original) to PAGCP's final GFLOPs, then fine-tuned for the
    whole budget of PAGCP's row ``ours`` (its target, seed and epochs)."""
    t0 = time.perf_counter()
    target, seed, epochs = ours["target"], ours["seed"], ours["epochs"]
    pruned, extra, name = prune_step(method, model, ours["gflops"], args.img, cycle_seed(seed, 0))
    pruned_map = validate(pruned, cfg, args.img)["map50_95"]
    folder = run_name(target, seed, epochs, args, f"{name}-oneshot")
    tuned = finetune(pruned, args, epochs, folder, seed)
    head = {"method": name, "schedule": "oneshot", "target": target, "seed": seed, "epochs": epochs}
    return {**head, **_row(args, cfg, tuned, pruned_map, ours, folder, t0), **extra}


def iterative_row(args, cfg, model: nn.Module, method: str, ours: dict[str, Any]) -> dict[str, Any] | None:
    """``method`` in PAGCP's cycles (see the module docstring), for PAGCP's row ``ours``; None when PAGCP
    pruned in one step."""
    cycles = ours["cycles"] if ours.get("cycle_epochs") else 0
    if cycles < 1:
        return None
    t0 = time.perf_counter()
    target, seed, epochs = ours["target"], ours["seed"], ours["epochs"]
    folder = run_name(target, seed, epochs, args, f"{method}-iterative")
    current, goals, reached, extras, names = model, [], [], {}, set()
    for c in range(cycles):
        start = pagcp.model_stats(current, args.img)["gflops"]
        goals.append(next_waypoint(start, ours["gflops"], c, cycles))
        pruned, extra, name = prune_step(method, current, goals[-1], args.img, cycle_seed(seed, c))
        reached.append(pagcp.model_stats(pruned, args.img)["gflops"])
        extras.update(extra)
        names.add(name)
        if c == cycles - 1:
            pruned_map = validate(pruned, cfg, args.img)["map50_95"]
        current = finetune(pruned, args, 1, f"{folder}/cycle{c + 1}", seed)
    tuned = finetune(current, args, epochs - cycles, f"{folder}/final", seed)
    name = "global" if "global" in names else method  # tp-global fell back in some cycle
    head = {"method": name, "schedule": "iterative", "target": target, "seed": seed, "epochs": epochs,
            "cycles": cycles, "cycle_epochs": cycles, "cycle_goal_gflops": [round(g, 5) for g in goals],
            "cycle_gflops": [round(g, 5) for g in reached]}  # fmt: skip
    return {**head, **_row(args, cfg, tuned, pruned_map, ours, folder, t0), **extras}


def baseline_row(args, cfg, model: nn.Module, method: str, schedule: str, ours: dict[str, Any]):
    """The row of ``method`` with ``schedule`` against PAGCP's row ``ours`` (None: the schedule makes none)."""
    if schedule == "oneshot":
        return oneshot_row(args, cfg, model, method, ours)
    if schedule == "iterative":
        return iterative_row(args, cfg, model, method, ours)
    raise SystemExit(f"unknown schedule {schedule!r}; use {', '.join(SCHEDULES)}")
