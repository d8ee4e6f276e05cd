"""PAGCP computed the straightforward way: the ground truth for tests and the baseline for benchmarks.

This module owns the oracle and one round of the rule; :mod:`pagcp.engine.naive_rounds` strings rounds
together (rounds back to back, the ``target_gflops`` fill, the stop rules, prune -> fine-tune cycles).
For every candidate it copies the model, slices the channels out physically (``graph.slice``) and runs
the whole subset through the copy; saliency is read off the sliced copy's weights with plain PyTorch.
It implements the decision rule of ``docs/algorithm.md`` on its own: it shares no code with the search it
checks (its own λ, scope, selection, order and topk), and has no prefix cache, no batching of candidates,
no early rejection and no reuse of any evaluation. It only relies on the channel graph for slicing and
FLOPs counting.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch
from torch import nn

from pagcp.engine.oracle import Batch, TaskLoss
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

    @torch.no_grad()
    def activation_scores(self, keep: Keep, unit: str) -> torch.Tensor:
        """Saliency ``act``: forward hooks on a sliced copy record each member's output channels (after the
        BatchNorm right after it and an activation right after that, if act(0) = 0), |.| averaged in float64."""
        graph = self.graph
        model = graph.slice(keep).eval()
        members = [*graph[unit].producers, *graph[unit].depthwise]
        sums: dict[str, list] = {}
        hooks = []
        for ref in members:
            after, act = _output_of(graph, ref.module)

            def record(_m, _args, out, name=ref.module, act=act):
                y = (act(out.clone()) if act is not None else out).double()  # clone: act may work in place
                s = sums.setdefault(name, [0.0, 0])
                s[0] = s[0] + y.abs().sum(dim=(0, 2, 3))
                s[1] += y.shape[0] * y.shape[2] * y.shape[3]

            hooks.append(model.get_submodule(after).register_forward_hook(record))
        try:
            for inputs, _ in self.batches:
                model(inputs)
        finally:
            for h in hooks:
                h.remove()
        scores = torch.zeros(graph[unit].size, dtype=torch.float64)
        for ref in members:
            out_keep = graph.module_keep(keep, ref.module)[0]
            mean = sums[ref.module][0] / sums[ref.module][1]
            row = 0
            compact = {}
            for pos in range(out_keep.numel()):
                if out_keep[pos]:
                    compact[pos], row = row, row + 1
            for pos, k in zip(ref.positions.tolist(), ref.unit_index.tolist()):
                if pos in compact:
                    scores[k] += mean[compact[pos]]
        return scores


def _output_of(graph: ChannelGraph, conv: str) -> tuple[str, nn.Module | None]:
    """The module whose output is ``conv``'s channels as the network reads them: a BatchNorm called only on the
    conv's output, else the conv; and the activation called only on that BatchNorm's output, if act(0) = 0."""
    nodes = [n for n in graph.gm.graph.nodes if n.op == "call_module" and n.target == conv]
    users = list(nodes[0].users)
    if len(users) != 1 or users[0].op != "call_module":
        return conv, None
    bn = graph.model.get_submodule(users[0].target)
    if not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats or len(users[0].args) != 1:
        return conv, None
    after = list(users[0].users)
    act = graph.model.get_submodule(after[0].target) if len(after) == 1 and after[0].op == "call_module" else None
    if act is not None and (list(act.parameters()) or float(act(torch.zeros(1))) != 0.0):
        act = None
    return users[0].target, act


def naive_lambda(rate: float, bound: float, n: int) -> float:
    """λ with ∏_{i<n} (1 + rate·λ^i) = bound, by Newton's method on the log-product, kept inside a bracket."""
    if n <= 0:
        return 1.0
    target = math.log(bound)

    def f(lam: float) -> tuple[float, float]:
        value = sum(math.log1p(rate * lam**i) for i in range(n)) - target
        slope = sum(i * rate * lam ** (i - 1) / (1 + rate * lam**i) for i in range(1, n))
        return value, slope

    if f(0.0)[0] > 0:
        raise ValueError(f"no λ >= 0 reaches the bound {bound} with rate {rate}")
    lo, hi = 0.0, 1.0
    while f(hi)[0] < 0:
        if hi > 1e6:  # e.g. one unit: the product is 1 + rate whatever λ is
            raise ValueError(f"no λ reaches the bound {bound} with rate {rate} over {n} units")
        lo, hi = hi, 2 * hi
    lam = hi
    for _ in range(100):
        value, slope = f(lam)
        if abs(value) < 1e-16:  # converged: stop before the bracket update moves λ off the root
            break
        if value < 0:
            lo = lam
        else:
            hi = lam
        step = lam - value / slope if slope > 0 else None
        lam = step if step is not None and lo < step < hi else (lo + hi) / 2
        if hi - lo < 1e-16:
            break
    return lam


def naive_scope(graph: ChannelGraph, settings: PruneSettings) -> list[str]:
    """The units to visit: the named ones, else every unit of 2+ channels (backbone: of layers 0..9)."""
    if settings.units is not None:
        return list(settings.units)
    chosen = []
    for unit in graph.units:
        match = re.match(r"model\.(\d+)(\.|$)", unit.members[0])
        in_backbone = match is not None and int(match.group(1)) < settings.backbone_layers
        if unit.size >= 2 and (settings.compression == "global" or in_backbone):
            chosen.append(unit.name)
    return chosen


def naive_scores(graph: ChannelGraph, keep: Keep, unit_name: str, criterion: str = "l1",
                 sliced: nn.Module | None = None) -> torch.Tensor:  # fmt: skip
    """Saliency of a unit's channels read off a sliced copy (``sliced``: ``graph.slice(keep)`` when the caller
    has it already): per member, mean |w| (or RMS w) per filter."""
    sliced = graph.slice(keep) if sliced is None else sliced
    unit = graph[unit_name]
    scores = torch.zeros(unit.size, dtype=torch.float64)
    for ref in (*unit.producers, *unit.depthwise):
        weight = sliced.get_submodule(ref.module).weight.detach().double()
        out_keep = graph.module_keep(keep, ref.module)[0]
        row_of = torch.cumsum(out_keep.long(), 0) - 1  # full out position -> row in the sliced conv
        flat = weight.flatten(1)
        per_filter = flat.abs().mean(1) if criterion == "l1" else flat.pow(2).mean(1).sqrt()
        for pos, k in zip(ref.positions.tolist(), ref.unit_index.tolist()):
            if out_keep[pos]:
                scores[k] += per_filter[row_of[pos]]
    return scores


def naive_select(scores: torch.Tensor, keep: torch.Tensor, ratio: float, reference: bool,
                 multiple: int = 1, least: int = 1) -> torch.Tensor:  # fmt: skip
    """The lowest-scoring floor(ratio × alive) channels removed: the ratio's decimal times the width exactly,
    or (reference) the float product as numpy computes it; ``least`` channels (one at least) always stay.
    ``multiple`` > 1: fewer are removed, so that the channels left are the smallest multiple of it at or above
    what the ratio leaves, and none where that multiple is not below the channels alive."""
    alive = [i for i in range(len(keep)) if keep[i]]
    product = ratio * len(alive) if reference else Fraction(repr(ratio)) * len(alive)
    n = max(min(math.floor(product), len(alive) - max(least, 1)), 0)
    if multiple > 1 and n > 0:
        stay = len(alive) - n
        while stay % multiple:
            stay += 1
        n = len(alive) - stay if stay < len(alive) else 0
    ranked = sorted(alive, key=lambda i: (float(scores[i]), i))
    new = keep.clone()
    for i in ranked[:n]:
        new[i] = False
    return new


def naive_least(s: PruneSettings, graph: ChannelGraph, unit: str) -> int:
    """The channels ``unit`` always keeps: min_width of its original width (the settings' ``original_widths``,
    else the traced width), rounded up, and one at least."""
    widths = s.original_widths if s.original_widths is not None else {}
    original = widths[unit] if unit in widths else graph[unit].size
    return max(1, math.ceil(Fraction(repr(s.min_width)) * original))


def naive_pick(scores: torch.Tensor, keep: Keep, unit: str, ratio: float, s: PruneSettings,
               graph: ChannelGraph, reference: bool | None = None) -> torch.Tensor:  # fmt: skip
    """:func:`naive_select` of ``unit`` at ``ratio`` by the settings (their mode unless ``reference`` is given,
    ``round_to``, the unit's :func:`naive_least`)."""
    reference = s.compat == "reference" if reference is None else reference
    return naive_select(scores, keep[unit], ratio, reference, s.round_to, naive_least(s, graph, unit))


def naive_with(keep: Keep, unit: str, mask: torch.Tensor) -> Keep:
    """A copy of ``keep`` with ``unit``'s mask replaced."""
    trial = keep.copy()
    trial[unit] = mask
    return trial


@dataclass
class _Rule:
    """The running values of the rule: threshold, λ, base and current losses, the masks."""

    keep: Keep
    thres: float
    lam: float
    base: torch.Tensor
    current: torch.Tensor
    base_total: float  # the reference's own ratchet of the total loss (its efficiency base in topk)


def _visit(graph, oracle, rule: _Rule, unit: str, tasks, s: PruneSettings, img_size) -> dict[str, Any]:
    """All ratios of one unit, one full evaluation each, until one trips; then accept the last good one."""
    keep = rule.keep
    scores = naive_saliency(graph, oracle, keep, unit, s.saliency)
    last, last_losses, last_mask, tripped, at_90 = None, None, None, None, None
    for i, r in enumerate(s.ratios):
        mask = naive_pick(scores, keep, unit, r, s, graph)
        losses = oracle.losses(naive_with(keep, unit, mask))
        if i == len(s.ratios) - 2:
            at_90 = (r, mask, losses)
        rel = losses / rule.base
        if float(rel.max()) > 1 + rule.thres:
            over = [t for t in range(len(tasks)) if float(rel[t]) > 1 + rule.thres]
            tripped = tasks[max(over, key=lambda t: float(rel[t]))]
            break
        last, last_losses, last_mask = r, losses, mask
    d = {"name": unit, "ratio": 0.0, "tripped_task": tripped, "losses_start": rule.current.tolist(),
         "losses_accepted": None, "flops_removed": 0, "channels_before": int(keep[unit].sum()),
         "target_ratio": None, "base_total": rule.base_total}  # fmt: skip
    if last is None:
        return d
    if tripped is None and s.compat == "reference":  # unpruned now, pruned at the next-to-last ratio at the end
        r90, m90, l90 = at_90
        removed = graph.flops(keep, img_size) - graph.flops(naive_with(keep, unit, m90), img_size)
        d.update(ratio=r90, losses_accepted=l90.tolist(), flops_removed=removed)
        return d
    new = naive_with(keep, unit, last_mask)
    d.update(ratio=last, losses_accepted=last_losses.tolist(),
             flops_removed=graph.flops(keep, img_size) - graph.flops(new, img_size))  # fmt: skip
    rule.keep, rule.thres = new, rule.thres * rule.lam
    rule.base, rule.current = torch.maximum(rule.base, last_losses), last_losses
    rule.base_total = max(rule.base_total, float(last_losses.sum()))
    return d


def naive_saliency(graph: ChannelGraph, oracle: NaiveOracle, keep: Keep, unit: str, criterion: str) -> torch.Tensor:
    """A unit's channel scores under ``keep`` by the criterion: weights of a sliced copy, or its activations."""
    if criterion == "act":
        return oracle.activation_scores(keep, unit)
    return naive_scores(graph, keep, unit, criterion)


def _reference_flops(graph, oracle, start: Keep, decisions: list[dict[str, Any]], s: PruneSettings, img_size):
    """What the reference charges each unit in topk: a copy of the round's start pruned unit after unit, in search
    order, every unit with a ratio at that ratio (channels by saliency on that copy); the FLOPs each step removes."""
    copy, charged = start.copy(), {}
    for d in decisions:
        if d["ratio"] > 0:
            scores = naive_saliency(graph, oracle, copy, d["name"], s.saliency)
            after = naive_with(copy, d["name"], naive_pick(scores, copy, d["name"], d["ratio"], s, graph, True))
            charged[d["name"]] = graph.flops(copy, img_size) - graph.flops(after, img_size)
            copy = after
    return charged


def _topk(decisions: list[dict[str, Any]], n_units: int, s: PruneSettings, charged: dict[str, int] | None) -> list[str]:
    """The int(n_units * topk) most loss-efficient pruned units, most efficient first (ties: search order).
    ``charged``: the FLOPs the reference charges (its mode), else each unit's own ``flops_removed``; the reference
    also measures the loss rise from its ratcheted total (``base_total``), this engine from the unit's start."""
    reference = charged is not None
    flops = charged if reference else {d["name"]: d["flops_removed"] for d in decisions}
    candidates = [d for d in decisions if d["ratio"] > 0 and flops.get(d["name"], 0) > 0]
    for d in candidates:
        start = d["base_total"] if reference else sum(d["losses_start"])
        d["efficiency"] = (sum(d["losses_accepted"]) - start) / flops[d["name"]]
    ranked = [d["name"] for d in sorted(candidates, key=lambda d: d["efficiency"])[: int(n_units * s.topk)]]
    for d in decisions:
        d["selected"] = d["name"] in ranked
    return ranked


def _rebuild(graph, oracle, start: Keep, decisions: list[dict[str, Any]], s: PruneSettings) -> Keep:
    """The round's final masks: from its start, the selected units at their ratios in search order."""
    final = start.copy()
    for d in decisions:
        if d["selected"]:
            scores = naive_saliency(graph, oracle, final, d["name"], s.saliency)
            final[d["name"]] = naive_pick(scores, final, d["name"], d["ratio"], s, graph)
        d["channels_after"] = int(final[d["name"]].sum())
    return final


def naive_round(graph, oracle: NaiveOracle, tasks: Sequence[str], s: PruneSettings, img_size, start: Keep,
                index: int) -> dict[str, Any]:  # fmt: skip
    """Round ``index`` of PAGCP from the masks ``start``: scope (units with 2+ channels alive), λ, order, the
    search and topk. Returns ``start``, ``keep`` (the round's final masks), ``decisions`` (search order),
    ``ranked`` (the selected units, most efficient first), ``order``, ``lambda``, ``base`` and ``round``."""
    reference = s.compat == "reference"
    units = [u for u in naive_scope(graph, s) if int(start[u].sum()) > naive_least(s, graph, u)]
    rate = s.initial_rate + s.rate_slope * index
    lam = naive_lambda(rate, s.initial_thres + s.thres_slope * index, len(units)) if s.exp else 1.0
    now, sliced = graph.flops(start, img_size), graph.slice(start)
    removed = {}
    for u in units:
        cut = naive_select(naive_scores(graph, start, u, "l1", sliced), start[u], 0.3, reference)
        removed[u] = now - graph.flops(naive_with(start, u, cut), img_size)
    order = sorted(units, key=lambda u: -removed[u] if lam <= 1 else removed[u])
    base = oracle.losses(start)
    rule = _Rule(start.copy(), rate, lam, base.clone(), base.clone(), float(base.sum()))
    decisions = [_visit(graph, oracle, rule, u, list(tasks), s, img_size) for u in order]
    for d in decisions:
        d["round"] = index
    charged = _reference_flops(graph, oracle, start, decisions, s, img_size) if reference else None
    ranked = _topk(decisions, len(order), s, charged)
    final = _rebuild(graph, oracle, start, decisions, s)
    return {"round": index, "start": start.copy(), "keep": final, "decisions": decisions, "ranked": ranked,
            "order": order, "lambda": lam, "base": base.tolist()}  # fmt: skip


__all__ = [
    "NaiveOracle", "naive_lambda", "naive_least", "naive_pick", "naive_round", "naive_saliency", "naive_scope",
    "naive_scores", "naive_select", "naive_with",
]  # fmt: skip
