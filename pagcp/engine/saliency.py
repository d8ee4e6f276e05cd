"""Channel saliency of pruning units, on top of :func:`pagcp.ops.filter_saliency`.

A unit's score for channel k is the sum over its members (producer convs and depthwise convs tied to
it) of each member's mean |w| (``l1``) or root-mean-square w (``l2``) of the filter that makes channel k,
taken over only the input channels still alive under the current keep-masks (docs/algorithm.md, "Saliency").
All members of all requested units go to the kernel in one launch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pagcp.engine.settings import pruned_count
from pagcp.errors import ConfigError
from pagcp.graph import ChannelGraph, Keep
from pagcp.ops import filter_saliency

#: weight criteria (need no data); ``act`` (mean |activation| on the oracle's data) is computed by the oracle
CRITERIA = ("l1", "l2")


def unit_scores(
    graph: ChannelGraph,
    keep: Keep | None,
    units: Sequence[str],
    criterion: str = "l1",
    backend: str | None = None,
) -> dict[str, torch.Tensor]:
    """Saliency of every channel of each named unit (float32, CPU), on the network pruned by ``keep``."""
    if criterion not in CRITERIA:
        raise ConfigError(f"saliency criterion {criterion!r} is not known; use one of {', '.join(CRITERIA)}")
    keep = graph.keep(keep)
    weights, masks, refs = [], [], []
    for name in units:
        unit = graph[name]
        for ref in (*unit.producers, *unit.depthwise):
            conv = graph.model.get_submodule(ref.module)
            weights.append(conv.weight.detach())
            depthwise = ref in unit.depthwise
            masks.append(None if depthwise else graph.module_keep(keep, ref.module)[1].to(conv.weight.device))
            refs.append((name, ref))
    p = 1 if criterion == "l1" else 2
    values = filter_saliency(weights, masks, p=p, reduce="mean", backend=backend) if weights else []
    scores = {name: torch.zeros(graph[name].size, dtype=torch.float32) for name in units}
    for (name, ref), value in zip(refs, values):
        value = value.float().cpu()
        if p == 2:
            value = value.sqrt()
        scores[name].index_add_(0, ref.unit_index, value[ref.positions])
    return scores


def activation_scores(executor, batches, keep: Keep, unit: str, reduce=None) -> torch.Tensor:
    """Saliency ``act`` of a unit's channels: for each member (producer or tied depthwise conv), the mean |value|
    of its output channel (after the BN and activation it absorbs) over every image and pixel of ``batches``,
    summed over the members; computed on the network pruned by ``keep``. float64, CPU; pruned channels get 0.
    ``reduce`` sums a float64 tensor over the processes of a sharded search (each holds some of the batches).
    """
    graph = executor.graph
    u = graph[unit]
    members = [*u.producers, *u.depthwise]
    executor.set_keep(keep)
    totals: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for inputs, _ in batches:
        for name, (value, count) in executor.activity([inputs], {r.module for r in members}).items():
            totals[name] = totals[name] + value if name in totals else value
            counts[name] = counts.get(name, 0) + count
    if reduce is not None:
        for name in sorted(totals):
            packed = reduce(
                torch.cat([totals[name].double(), torch.tensor([float(counts[name])], dtype=torch.float64)])
            )
            totals[name], counts[name] = packed[:-1], int(packed[-1].item())
    scores = torch.zeros(u.size, dtype=torch.float64)
    for ref in members:
        out_keep = graph.module_keep(keep, ref.module)[0]
        row = torch.cumsum(out_keep.long(), 0) - 1  # full output channel -> compact channel
        alive = out_keep[ref.positions]
        mean = totals[ref.module] / max(counts[ref.module], 1)
        scores.index_add_(0, ref.unit_index[alive], mean[row[ref.positions[alive]]])
    return scores


def select_keep(scores: torch.Tensor, keep: torch.Tensor, ratio: float, exact: bool = True,
                round_to: int = 1, floor: int = 1) -> torch.Tensor:  # fmt: skip
    """Prune floor(ratio × width) of the alive channels with the lowest scores; at least ``floor`` (>= 1) stay.

    ``exact``: count with the ratio as an exact decimal, else in float64 as the reference; ``round_to``: the
    channels left are a multiple of it, or all of them (see :func:`pagcp.engine.settings.pruned_count`). Ties go
    to the lower channel index (a stable sort).
    """
    alive = torch.nonzero(keep).flatten()
    width = alive.numel()
    n = pruned_count(ratio, width, exact, round_to, floor)
    new = keep.clone()
    if n <= 0:
        return new
    order = torch.sort(scores[alive], stable=True).indices
    new[alive[order[:n]]] = False
    return new
