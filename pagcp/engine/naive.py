"""PAGCP computed the straightforward way: the ground truth for tests and the baseline for benchmarks.

For every candidate it copies the model, slices the channels out physically (``graph.slice``) and runs
the whole subset through the copy; saliency is read off the sliced copy's weights with plain PyTorch.
It implements the decision rule of docs/algorithm.md independently of :mod:`pagcp.engine.search`, with no prefix
cache, no batching of candidates, no early rejection and no reuse of any evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pagcp.engine.oracle import Batch, TaskLoss
from pagcp.engine.rule import scope_units, solve_lambda
from pagcp.engine.settings import PruneSettings
from pagcp.graph import ChannelGraph, Keep


class NaiveOracle:
    """Per-task loss sums of a physically sliced copy of the model."""

    def __init__(
        self, graph: ChannelGraph, batches: Sequence[Batch], loss_fn: TaskLoss, train_mode_leaves: tuple[type, ...] = ()
    ):
        self.graph, self.batches, self.loss_fn = graph, list(batches), loss_fn
        self.train_mode_leaves = train_mode_leaves
        self.evaluations = 0

    @torch.no_grad()
    def losses(self, keep: Keep) -> torch.Tensor:
        self.evaluations += 1
        model = self.graph.slice(keep).eval()
        for m in model.modules():
            if isinstance(m, self.train_mode_leaves):
                m.training = True
        total = None
        for inputs, targets in self.batches:
            value = torch.as_tensor(self.loss_fn(model(inputs), targets)).double().cpu().reshape(-1)
            total = value * inputs.shape[0] if total is None else total + value * inputs.shape[0]
        return total


def naive_scores(graph: ChannelGraph, keep: Keep, unit_name: str, criterion: str = "l1") -> torch.Tensor:
    """Saliency of a unit's channels read off a sliced copy: per member, mean |w| (or RMS w) per filter."""
    sliced = graph.slice(keep)
    unit = graph[unit_name]
    vector = graph.keep_vector(keep)
    scores = torch.zeros(unit.size, dtype=torch.float64)
    for ref in (*unit.producers, *unit.depthwise):
        weight = sliced.get_submodule(ref.module).weight.detach().double()
        out_keep = vector[graph.out_index[ref.module]]
        row_of = torch.cumsum(out_keep.long(), 0) - 1  # full out position -> row in the sliced conv
        flat = weight.flatten(1)
        per_filter = flat.abs().mean(1) if criterion == "l1" else flat.pow(2).mean(1).sqrt()
        for pos, k in zip(ref.positions.tolist(), ref.unit_index.tolist()):
            if out_keep[pos]:
                scores[k] += per_filter[row_of[pos]]
    return scores


def _select(scores: torch.Tensor, keep: torch.Tensor, ratio: float) -> torch.Tensor:
    alive = [i for i in range(len(keep)) if keep[i]]
    n = min(int(ratio * len(alive)), len(alive) - 1)
    ranked = sorted(alive, key=lambda i: (float(scores[i]), i))
    new = keep.clone()
    for i in ranked[: max(n, 0)]:
        new[i] = False
    return new


def naive_prune(
    graph: ChannelGraph,
    batches: Sequence[Batch],
    loss_fn: TaskLoss,
    tasks: Sequence[str],
    settings: PruneSettings,
    img_size: int | tuple[int, int],
    train_mode_leaves: tuple[type, ...] = (),
) -> dict[str, Any]:
    """One round of PAGCP, straightforwardly. Returns ``keep`` (final masks), ``decisions`` (search order,
    with ``ratio`` and ``selected``), ``order``, ``lambda`` and ``evaluations``."""
    s = settings
    oracle = NaiveOracle(graph, batches, loss_fn, train_mode_leaves)
    keep = graph.full_keep()
    units = scope_units(graph, s)
    rate, bound = s.rate_and_bound(s.round)
    lam = solve_lambda(rate, bound, len(units)) if s.exp else 1.0
    full = graph.flops(keep, img_size)
    removed = {}
    for u in units:
        trial = dict(keep)
        trial[u] = _select(naive_scores(graph, keep, u, "l1"), keep[u], 0.3)
        removed[u] = full - graph.flops(trial, img_size)
    order = sorted(units, key=lambda u: -removed[u] if lam <= 1 else removed[u])

    base = oracle.losses(keep)
    base_start = base.clone()
    current = base.clone()
    thres = rate
    decisions = []
    for u in order:
        scores = naive_scores(graph, keep, u, s.saliency)
        last, last_losses, last_mask, tripped, at_90 = None, None, None, None, None
        for i, r in enumerate(s.ratios):
            mask = _select(scores, keep[u], r)
            trial = dict(keep)
            trial[u] = mask
            losses = oracle.losses(trial)
            if i == len(s.ratios) - 2:
                at_90 = (r, mask, losses)
            rel = losses / base
            if float(rel.max()) > 1 + thres:
                over = [t for t in range(len(tasks)) if float(rel[t]) > 1 + thres]
                tripped = tasks[max(over, key=lambda t: float(rel[t]))]
                break
            last, last_losses, last_mask = r, losses, mask
        d = {
            "name": u,
            "ratio": 0.0,
            "tripped_task": tripped,
            "losses_start": current.tolist(),
            "losses_accepted": None,
            "flops_removed": 0,
            "channels_before": int(keep[u].sum()),
        }
        if last is not None:
            if tripped is None and s.compat == "reference":  # unpruned now, pruned at 0.90 at the end
                r90, m90, l90 = at_90
                trial = dict(keep)
                trial[u] = m90
                d.update(
                    ratio=r90,
                    losses_accepted=l90.tolist(),
                    flops_removed=graph.flops(keep, img_size) - graph.flops(trial, img_size),
                )
            else:
                new = dict(keep)
                new[u] = last_mask
                d.update(
                    ratio=last,
                    losses_accepted=last_losses.tolist(),
                    flops_removed=graph.flops(keep, img_size) - graph.flops(new, img_size),
                )
                keep = new
                thres *= lam
                base = torch.maximum(base, last_losses)
                current = last_losses
        decisions.append(d)

    candidates = [d for d in decisions if d["ratio"] > 0 and d["flops_removed"] > 0]
    for d in candidates:
        d["efficiency"] = (sum(d["losses_accepted"]) - sum(d["losses_start"])) / d["flops_removed"]
    chosen = {d["name"] for d in sorted(candidates, key=lambda d: d["efficiency"])[: int(len(order) * s.topk)]}
    final = graph.full_keep()
    for d in decisions:
        d["selected"] = d["name"] in chosen
        if d["selected"]:
            final[d["name"]] = _select(naive_scores(graph, final, d["name"], s.saliency), final[d["name"]], d["ratio"])
        d["channels_after"] = int(final[d["name"]].sum())
    return {
        "keep": final,
        "decisions": decisions,
        "order": order,
        "lambda": lam,
        "evaluations": oracle.evaluations,
        "base": base_start.tolist(),
    }


__all__ = ["NaiveOracle", "naive_prune", "naive_scores"]
