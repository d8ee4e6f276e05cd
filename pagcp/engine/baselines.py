"""Baseline channel-pruning rules on a traced graph, matched to a FLOPs target (for benchmarks).

- :func:`uniform_keep`: the same ratio in every unit, lowest-L1 channels first (``select_keep``).
- :func:`random_keep`: the same ratio in every unit, channels chosen by a seeded random permutation.
- :func:`global_magnitude_keep`: one global ranking of every channel's L1 score divided by its unit's mean
  score (Torch-Pruning's ``MagnitudePruner`` with ``global_pruning=True`` and its default ``mean``
  normalizer), pruning the lowest first; at least one channel of each unit stays.
- :func:`match_flops`: the ratio (or channel count) whose FLOPs are closest to a target, by bisection.
- :func:`matched_keep`: a rule's masks at a FLOPs target. Widths are often multiples of 8 or 16, so one ratio
  for every unit moves all their counts at once and the FLOPs jump past the target (0.97 of it at 0.35x on
  yolov5n); the uniform and random rules then take the ratio just above the target in the first k units (in
  graph order) and the one just below in the rest, k bisected, which lands within a fraction of a percent.

Every rule prunes the units that PAGCP's search may prune (``scope_units``), so all methods share a scope.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from pagcp.engine.rule import scope_units
from pagcp.engine.saliency import select_keep, unit_scores
from pagcp.engine.settings import PruneSettings
from pagcp.graph import ChannelGraph, Keep


def prunable_units(graph: ChannelGraph, compression: str = "global") -> list[str]:
    """The units PAGCP's search would visit with ``compression``."""
    return scope_units(graph, PruneSettings(compression=compression))


def uniform_keep(
    graph: ChannelGraph, ratio: float, units: Sequence[str], scores: dict[str, torch.Tensor] | None = None
) -> Keep:
    """Prune ``int(ratio * width)`` lowest-L1 channels of every unit (at least one channel stays)."""
    scores = scores if scores is not None else unit_scores(graph, None, units, "l1")
    keep = graph.full_keep()
    for name in units:
        keep[name] = select_keep(scores[name], keep[name], ratio)
    return keep


def random_orders(graph: ChannelGraph, units: Sequence[str], seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded random permutation of every unit's channels (the pruning order of :func:`random_keep`)."""
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randperm(graph[name].size, generator=g) for name in units}


def random_keep(
    graph: ChannelGraph,
    ratio: float,
    units: Sequence[str],
    seed: int = 0,
    orders: dict[str, torch.Tensor] | None = None,
) -> Keep:
    """Prune ``int(ratio * width)`` randomly chosen channels of every unit (seeded; nested in ``ratio``)."""
    orders = orders if orders is not None else random_orders(graph, units, seed)
    keep = graph.full_keep()
    for name in units:
        width = graph[name].size
        n = min(int(ratio * width), width - 1)
        keep[name][orders[name][:n]] = False
    return keep


def global_ranking(graph: ChannelGraph, units: Sequence[str]) -> list[tuple[str, int]]:
    """Every (unit, channel) ordered by L1 score / mean L1 score of its unit, lowest first (stable)."""
    scores = unit_scores(graph, None, units, "l1")
    values, owners = [], []
    for name in units:
        s = scores[name].double()
        values.append(s / s.mean().clamp_min(1e-12))
        owners.extend((name, i) for i in range(s.numel()))
    order = torch.sort(torch.cat(values), stable=True).indices.tolist()
    return [owners[i] for i in order]


def global_magnitude_keep(graph: ChannelGraph, n_pruned: int, ranking: Sequence[tuple[str, int]]) -> Keep:
    """Prune the first ``n_pruned`` channels of ``ranking`` that do not empty their unit."""
    keep = graph.full_keep()
    alive = {name: graph[name].size for name, _ in ranking}
    done = 0
    for name, channel in ranking:
        if done >= n_pruned:
            break
        if alive[name] > 1:
            keep[name][channel] = False
            alive[name] -= 1
            done += 1
    return keep


def match_flops(
    build: Callable[[float], Keep],
    flops_of: Callable[[Keep], int],
    target: float,
    low: float,
    high: float,
    integer: bool = False,
    steps: int = 40,
) -> tuple[float, Keep]:
    """Bisection on a pruning amount x in [low, high] (FLOPs decreasing in x): the x whose FLOPs are closest
    to ``target``; returns (x, keep)."""
    best: tuple[float, float, Keep] | None = None

    def consider(x: float) -> float:
        nonlocal best
        keep = build(x)
        f = float(flops_of(keep))
        if best is None or abs(f - target) < best[0]:
            best = (abs(f - target), x, keep)
        return f

    lo, hi = low, high
    for _ in range(steps):
        mid = (lo + hi) // 2 if integer else (lo + hi) / 2
        if consider(mid) > target:
            lo = mid
        else:
            hi = mid
        if (integer and hi - lo <= 1) or (not integer and hi - lo < 1e-5):
            break
    consider(lo)
    consider(hi)
    return best[1], best[2]


def matched_keep(
    graph: ChannelGraph,
    method: str,
    target_flops: float,
    img_size: int,
    units: Sequence[str] | None = None,
    seed: int = 0,
) -> tuple[float, Keep]:
    """Keep-masks of ``method`` (uniform, random, global) with FLOPs closest to ``target_flops``; returns
    (the ratio, or the number of pruned channels for global; keep)."""
    units = list(units) if units is not None else prunable_units(graph)

    def flops_of(keep: Keep) -> int:
        return graph.flops(keep, img_size)

    if method in ("uniform", "random"):
        if method == "uniform":
            scores = unit_scores(graph, None, units, "l1")

            def build(r: float, names: Sequence[str] = units) -> Keep:
                return uniform_keep(graph, r, names, scores)
        else:
            orders = random_orders(graph, units, seed)

            def build(r: float, names: Sequence[str] = units) -> Keep:
                return random_keep(graph, r, names, orders=orders)

        return _two_step_match(graph, build, units, flops_of, target_flops)
    if method == "global":
        ranking = global_ranking(graph, units)
        return match_flops(
            lambda n: global_magnitude_keep(graph, int(n), ranking),
            flops_of,
            target_flops,
            0,
            len(ranking),
            integer=True,
        )
    raise ValueError(f"unknown baseline {method!r}: uniform, random or global")


def _two_step_match(graph: ChannelGraph, build, units: Sequence[str], flops_of, target: float) -> tuple[float, Keep]:
    """The ratio of one rule for every unit closest to ``target``; where the FLOPs jump past it, the larger of
    the two ratios around the jump in the first k units and the smaller in the rest (k bisected). Returns (the
    mean ratio over the units, keep)."""
    ratio, keep = match_flops(build, flops_of, target, 0.0, 0.99)
    above, below = ratio, ratio
    step = 1e-4
    while flops_of(build(above)) < target and above > 0:  # the bracket: FLOPs >= target at above, < at below
        above = max(above - step, 0.0)
    while flops_of(build(below)) >= target and below < 0.99:
        below = min(below + step, 0.99)
    low, high = build(above), build(below)

    def mixed(k: float) -> Keep:
        k = int(k)
        out = graph.full_keep()
        for i, name in enumerate(units):
            out[name] = (high if i < k else low)[name]
        return out

    k, best = match_flops(mixed, flops_of, target, 0, len(units), integer=True)
    if abs(flops_of(best) - target) > abs(flops_of(keep) - target):
        return ratio, keep
    k = int(k)
    return (k * below + (len(units) - k) * above) / max(len(units), 1), best


__all__ = [
    "global_magnitude_keep",
    "global_ranking",
    "match_flops",
    "matched_keep",
    "prunable_units",
    "random_keep",
    "random_orders",
    "uniform_keep",
]
