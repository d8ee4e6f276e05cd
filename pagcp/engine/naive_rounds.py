"""PAGCP's rounds, the ``target_gflops`` fill and prune -> fine-tune cycles, computed the straightforward way.

:mod:`pagcp.engine.naive` owns the oracle and one round of the rule; this module owns what strings rounds
together, as docs/algorithm.md ("Rounds, cycles and --target-gflops") states it: rounds back to back, each from
the previous round's final network with the next round index; the fill of a round that would end below the
target; the stop rules; and cycles that slice the model, fine-tune it (a caller's function), trace it afresh and
go on, each cycle until its waypoint. Like the round it shares no code with the engine's search or with the
pipeline: targets and waypoints are held here as absolute FLOPs, never as fractions of a cycle's model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from pagcp.engine.naive import (
    NaiveOracle,
    naive_least,
    naive_pick,
    naive_round,
    naive_saliency,
    naive_scope,
    naive_with,
)
from pagcp.engine.oracle import Batch, TaskLoss
from pagcp.engine.settings import PruneSettings
from pagcp.graph import ChannelGraph, Keep

#: "within 2 %" of docs/algorithm.md: a model of at most (1 + this) × the target meets it
TOLERANCE = 0.02
#: why a search ended (``stop``): no target; the target met by the selection, or by the fill; the waypoint
#: passed; ``max_rounds`` used; a round that selected no unit
STOPS = (
    "one round",
    "target reached",
    "target filled",
    "waypoint",
    "rounds used",
    "no unit selected",
    "units exhausted",
)


def naive_fill(graph: ChannelGraph, oracle: NaiveOracle, r: dict[str, Any], target: float, s: PruneSettings,
               img_size) -> Keep:  # fmt: skip
    """The round ``r``'s final masks rebuilt to end at or above ``target`` FLOPs: from the round's start, its
    selected units by efficiency (best first), each at the largest of its ratios up to the searched one whose
    channels (saliency on the network filled so far) keep the FLOPs >= target; a unit no ratio fits stays
    unpruned. Marks each such unit's ``target_ratio`` (0: unpruned; None: the searched ratio) and ``selected``."""
    keep = r["start"].copy()
    by_name = {d["name"]: d for d in r["decisions"]}
    for name in r["ranked"]:
        d = by_name[name]
        scores = naive_saliency(graph, oracle, keep, name, s.saliency)
        best = None
        for ratio in s.ratios:  # ascending: fewer FLOPs at each step, so the last that fits is the largest
            if ratio > d["ratio"]:
                break
            trial = naive_with(keep, name, naive_pick(scores, keep, name, ratio, s, graph))
            if graph.flops(trial, img_size) >= target:
                best = (ratio, trial)
        d["selected"] = best is not None
        d["target_ratio"] = 0.0 if best is None else (None if best[0] == d["ratio"] else best[0])
        if best is not None:
            keep = best[1]
    for d in r["decisions"]:
        d["channels_after"] = int(keep[d["name"]].sum())
    return keep


def _stop(graph: ChannelGraph, r: dict[str, Any], target: float | None, waypoint: float | None, rounds: int,
          s: PruneSettings) -> str | None:  # fmt: skip
    """Why the search ends after round ``r`` (one of :data:`STOPS`), or None when another round runs."""
    if target is None:
        return "one round"
    if r["flops"] <= target * (1 + TOLERANCE):
        return "target filled" if r["filled"] else "target reached"
    if waypoint is not None and r["flops"] <= waypoint * (1 + TOLERANCE):  # a waypoint has the target's tolerance
        return "waypoint"
    if rounds >= s.max_rounds:
        return "rounds used"
    if not any(d["selected"] for d in r["decisions"]):
        return "no unit selected"
    if s.exp and sum(int(r["keep"][u].sum()) > naive_least(s, graph, u) for u in naive_scope(graph, s)) < 2:
        return "units exhausted"  # a decaying threshold needs two units to spread the bound over
    return None


def naive_rounds(graph: ChannelGraph, oracle: NaiveOracle, tasks: Sequence[str], s: PruneSettings, img_size,
                 first_round: int, target: float | None, waypoint: float | None) -> dict[str, Any]:  # fmt: skip
    """Rounds ``first_round``, ``first_round`` + 1, ... from the full network, until a stop rule holds.
    ``target`` and ``waypoint`` are FLOPs (None: none). Returns ``history`` (every round: :func:`naive_round`'s
    dict plus ``flops_selected`` before any fill, ``filled`` and ``flops``), ``keep``, ``flops`` and ``stop``."""
    keep, history, stop = graph.full_keep(), [], None
    while stop is None:
        r = naive_round(graph, oracle, tasks, s, img_size, keep, first_round + len(history))
        r["flops_selected"] = graph.flops(r["keep"], img_size)
        r["filled"] = target is not None and r["flops_selected"] < target
        if r["filled"]:
            r["keep"] = naive_fill(graph, oracle, r, target, s, img_size)
        keep = r["keep"]
        r["flops"] = graph.flops(keep, img_size)
        history.append(r)
        stop = _stop(graph, r, target, waypoint, len(history), s)
    return {"history": history, "keep": keep, "flops": history[-1]["flops"], "stop": stop}


def naive_search(graph: ChannelGraph, oracle: NaiveOracle, tasks: Sequence[str], settings: PruneSettings,
                 img_size) -> dict[str, Any]:  # fmt: skip
    """The search ``settings`` describe, its target and waypoint read as fractions of ``graph``'s full FLOPs.
    Returns :func:`naive_rounds`' dict plus the last round's ``decisions``, ``order``, ``lambda`` and ``base``,
    ``flops_full`` and the oracle's ``evaluations``."""
    s = settings
    full = graph.flops(graph.full_keep(), img_size)
    target = None if s.target_gflops is None else s.target_gflops * full
    waypoint = None if s.reach_gflops is None else s.reach_gflops * full
    out = naive_rounds(graph, oracle, list(tasks), s, img_size, s.round, target, waypoint)
    last = out["history"][-1]
    out.update({k: last[k] for k in ("decisions", "order", "lambda", "base")})
    out.update(flops_full=full, evaluations=oracle.evaluations)
    return out


def naive_cycles(model: nn.Module, problem_of: Callable[[nn.Module], Any], settings: PruneSettings, cycles: int,
                 finetune: Callable[[nn.Module], nn.Module]) -> dict[str, Any]:  # fmt: skip
    """``cycles`` times: trace the model afresh (``problem_of(model)``: a :class:`pagcp.engine.problem.Problem`),
    run the cycle's rounds (first index ``settings.round`` + cycle), slice the result, ``finetune`` it; stop early
    once a model meets ``target_gflops`` (× the original, within the tolerance). With a target F, cycle c of N
    starting at g FLOPs runs until its waypoint g·(F/g)^(1/(N−c)) (never below F); without, one round.
    Returns ``cycles`` (per cycle: ``start_flops``, ``target``, ``waypoint``, ``history``, ``stop``, ``keep``,
    ``flops``, ``evaluations``), ``flops_original``, ``model`` (the last fine-tuned one) and ``met``."""
    s, records, original = settings, [], None
    for c in range(cycles):
        problem = problem_of(model)
        graph, img = problem.trace(), problem.img_size
        start = graph.flops(graph.full_keep(), img)
        if original is None:  # min_width stays a fraction of the first model's widths in every cycle
            original = start
            s = dataclasses.replace(settings, original_widths={u.name: u.size for u in graph.units})
        target = waypoint = None
        if s.target_gflops is not None:
            target = s.target_gflops * original
            waypoint = max(target, start * (target / start) ** (1 / (cycles - c)))
        oracle = NaiveOracle(graph, problem.batches, problem.naive_loss_fn or problem.loss_fn,
                             problem.train_mode_leaves)  # fmt: skip
        out = naive_rounds(graph, oracle, list(problem.tasks), s, img, s.round + c, target, waypoint)
        model = finetune(problem.finish(graph.slice(out["keep"])).eval())
        records.append({"cycle": c, "start_flops": start, "target": target, "waypoint": waypoint,
                        "evaluations": oracle.evaluations, **out})  # fmt: skip
        if target is not None and out["flops"] <= target * (1 + TOLERANCE):
            break
    met = s.target_gflops is not None and records[-1]["flops"] <= records[-1]["target"] * (1 + TOLERANCE)
    return {"cycles": records, "flops_original": original, "model": model, "met": met}


def naive_prune(
    graph: ChannelGraph,
    batches: Sequence[Batch],
    loss_fn: TaskLoss,
    tasks: Sequence[str],
    settings: PruneSettings,
    img_size: int | tuple[int, int],
    train_mode_leaves: tuple[type, ...] = (),
) -> dict[str, Any]:
    """The search the settings describe, straightforwardly: one round, or with ``target_gflops`` rounds back to
    back (:func:`naive_search`). Returns ``keep`` (final masks), ``decisions`` (the last
    round's, search order, with ``ratio`` and ``selected``), its ``order``, ``lambda`` and ``base``, ``history``
    (every round), ``stop`` (why it ended) and ``evaluations``."""
    oracle = NaiveOracle(graph, batches, loss_fn, train_mode_leaves)
    return naive_search(graph, oracle, tasks, settings, img_size)


__all__ = ["STOPS", "TOLERANCE", "naive_cycles", "naive_fill", "naive_prune", "naive_rounds", "naive_search"]
