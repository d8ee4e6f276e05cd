"""The parts of PAGCP's decision rule that are pure arithmetic: λ, and which units a search may prune.

See ``docs/algorithm.md`` for the rule as a whole; :mod:`pagcp.engine.search` applies it.
"""

from __future__ import annotations

import math

from pagcp.engine.settings import PruneSettings
from pagcp.errors import ConfigError
from pagcp.graph import ChannelGraph


def solve_lambda(rate: float, bound: float, n_units: int) -> float:
    """λ with ∏_{i<L} (1 + rate·λ^i) = bound (bisection; the product grows with λ)."""
    if n_units <= 0:
        return 1.0

    def product(lam: float) -> float:
        return math.exp(sum(math.log1p(rate * lam**i) for i in range(n_units)))

    if product(0.0) > bound:  # 1 + rate alone exceeds the bound
        raise ConfigError(f"--initial-thres {bound} is below 1 + initial rate ({1 + rate}): no λ satisfies the bound")
    lo, hi = 0.0, 1.0
    while product(hi) < bound:
        hi *= 2
        if hi > 1e6:
            raise ConfigError(f"no λ reaches the bound {bound} with rate {rate} over {n_units} units")
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if product(mid) < bound else (lo, mid)
    return (lo + hi) / 2


def scope_units(graph: ChannelGraph, settings: PruneSettings) -> list[str]:
    """Units the search may prune: explicit names, else all (global) or layers < backbone_layers (backbone)."""
    if settings.units is not None:
        for name in settings.units:
            graph[name]  # raises naming the unknown unit
        return list(settings.units)
    names = []
    for unit in graph.units:
        if unit.size < 2:
            continue
        if settings.compression == "backbone":
            parts = unit.members[0].split(".")
            layer = int(parts[1]) if len(parts) > 1 and parts[0] == "model" and parts[1].isdigit() else None
            if layer is None or layer >= settings.backbone_layers:
                continue
        names.append(unit.name)
    return names
