"""The PAGCP greedy search (docs/algorithm.md): units one after another, each pruned as far as
the performance-aware oracle allows, then topk selection; resumable after every unit.

The search talks to an *oracle* (see :class:`Oracle`): per-task loss sums of the network under given
keep-masks, and the candidates of one unit evaluated in ascending ratio order up to the first one that
breaks its per-task bound. :mod:`pagcp.engine.oracle` computes these fast; :mod:`pagcp.engine.naive` is the
straightforward ground truth of the same rule.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pagcp.engine.oracle import Oracle
from pagcp.engine.rule import scope_units, solve_lambda
from pagcp.engine.saliency import select_keep, unit_scores
from pagcp.engine.settings import PruneSettings
from pagcp.errors import PagcpError
from pagcp.graph import ChannelGraph, Keep, keep_from_pruned, keep_to_pruned
from pagcp.runs import write_json_atomic

log = logging.getLogger(__name__)
STATE_VERSION = 1


@dataclass
class UnitDecision:
    """What the search decided for one unit in one round."""

    name: str
    channels_before: int
    channels_after: int
    ratio: float
    tripped_task: str | None
    losses_start: list[float]
    losses_accepted: list[float] | None
    flops_removed: int
    evaluations: int
    selected: bool = False
    efficiency: float | None = None
    round: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchState:
    """Everything needed to continue a search exactly where it stopped."""

    settings: dict[str, Any]
    fingerprint: dict[str, Any]
    round: int
    order: list[str] = field(default_factory=list)
    position: int = 0
    lam: float = 1.0
    thres: float = 0.0
    base: list[float] = field(default_factory=list)
    current: list[float] = field(default_factory=list)
    round_keep: dict[str, list[int]] = field(default_factory=dict)  # pruned indices per unit at round start
    keep: dict[str, list[int]] = field(default_factory=dict)  # pruned indices per unit now
    decisions: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)  # finished rounds
    evaluations: int = 0
    seconds: float = 0.0
    phase: str = "search"  # "search" -> "done"
    version: int = STATE_VERSION


def pruned_to_keep(graph: ChannelGraph, pruned: dict[str, list[int]]) -> Keep:
    return keep_from_pruned(graph.full_keep(), pruned)


class Search:
    """Runs PAGCP rounds over a traced graph with an oracle; writes its state after every unit."""

    def __init__(
        self,
        graph: ChannelGraph,
        oracle: Oracle,
        settings: PruneSettings,
        img_size: int | tuple[int, int],
        state_path: str | Path | None = None,
        fingerprint: dict[str, Any] | None = None,
        saliency_backend: str | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.graph, self.oracle, self.settings, self.img_size = graph, oracle, settings, img_size
        self.state_path = Path(state_path) if state_path else None
        self.fingerprint = fingerprint or {}
        self.backend = saliency_backend
        self.progress = progress
        self.units = scope_units(graph, settings)
        self.flops_original = graph.flops(None, img_size)
        self.state: SearchState | None = None

    # -- persistence ---------------------------------------------------------------------------
    def save(self) -> None:
        if self.state_path is not None and self.state is not None:
            write_json_atomic(self.state_path, asdict(self.state))

    def load(self) -> SearchState:
        if self.state_path is None or not self.state_path.is_file():
            raise PagcpError(f"{self.state_path}: no search state to resume from")
        data = json.loads(self.state_path.read_text())
        if data.get("version") != STATE_VERSION:
            raise PagcpError(f"{self.state_path}: state version {data.get('version')} is not {STATE_VERSION}")
        if data["settings"] != self.settings.to_dict():
            diff = sorted(k for k in data["settings"] if data["settings"][k] != self.settings.to_dict().get(k))
            raise PagcpError(
                f"{self.state_path}: the saved search used other settings ({', '.join(diff)}); "
                "resume with the same flags or start a new run"
            )
        if data["fingerprint"] != self.fingerprint:
            raise PagcpError(
                f"{self.state_path}: the saved search ran on another model or data "
                f"({data['fingerprint']} vs {self.fingerprint})"
            )
        self.state = SearchState(**data)
        return self.state

    # -- the rule ------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> Keep:
        """Run (or continue) the search; returns the final keep-masks."""
        if resume:
            self.load()
        else:
            self.state = SearchState(self.settings.to_dict(), self.fingerprint, round=self.settings.round)
        st = self.state
        while st.phase != "done":
            if not st.order:
                self._start_round(pruned_to_keep(self.graph, st.keep))
            self._search_round()
            final = self._finish_round()
            if not self._another_round(final):
                st.phase = "done"
            self.save()
        return pruned_to_keep(self.graph, st.keep)

    def _start_round(self, keep: Keep) -> None:
        st, s = self.state, self.settings
        rate, bound = s.rate_and_bound(st.round)
        units = [u for u in self.units if int(keep[u].sum()) > 1]
        st.lam = solve_lambda(rate, bound, len(units)) if s.exp else 1.0
        scores = unit_scores(self.graph, keep, units, "l1", self.backend)
        flops_now = self.graph.flops(keep, self.img_size)
        removed = {}
        for u in units:
            trial = dict(keep)
            trial[u] = select_keep(scores[u], keep[u], 0.3)
            removed[u] = flops_now - self.graph.flops(trial, self.img_size)
        st.order = sorted(units, key=lambda u: -removed[u] if st.lam <= 1 else removed[u])  # stable sort
        st.position, st.thres, st.decisions = 0, rate, []
        base = self.oracle.losses(keep)
        st.base = base.tolist()
        st.current = base.tolist()
        st.round_keep = keep_to_pruned(keep)
        st.keep = keep_to_pruned(keep)
        st.evaluations = self.oracle.evaluations
        self.save()

    def _search_round(self) -> None:
        st, s = self.state, self.settings
        tasks = self.oracle.tasks
        while st.position < len(st.order):
            t0 = time.perf_counter()
            name = st.order[st.position]
            keep = pruned_to_keep(self.graph, st.keep)
            width = int(keep[name].sum())
            scores = unit_scores(self.graph, keep, [name], s.saliency, self.backend)[name]
            masks = [select_keep(scores, keep[name], r) for r in s.ratios]
            base = torch.tensor(st.base, dtype=torch.float64)
            bound = base * (1 + st.thres)
            current = torch.tensor(st.current, dtype=torch.float64)
            # identical masks (same channel count) need one evaluation; the first ratios may prune nothing
            unique: list[torch.Tensor] = []
            index_of: list[int] = []
            for m in masks:
                if bool(m.equal(keep[name])):
                    index_of.append(-1)
                elif unique and bool(m.equal(unique[-1])):
                    index_of.append(len(unique) - 1)
                else:
                    unique.append(m)
                    index_of.append(len(unique) - 1)
            evals_before = self.oracle.evaluations
            results = self.oracle.evaluate(keep, name, unique, bound) if unique else []
            accepted, accepted_losses, tripped = None, None, None
            for i in range(len(s.ratios)):
                j = index_of[i]
                if j == -1:
                    losses = current
                elif j < len(results):
                    losses = results[j].losses
                else:
                    raise PagcpError(f"oracle returned {len(results)} results for unit {name} before a trip")
                over = losses > bound
                if bool(over.any()):
                    rel = (losses / bound).masked_fill(~over, -math.inf)
                    tripped = tasks[int(rel.argmax())]
                    break
                accepted, accepted_losses = i, losses
            all_passed = tripped is None
            decision = UnitDecision(
                name=name,
                channels_before=width,
                channels_after=width,
                ratio=0.0,
                tripped_task=tripped,
                losses_start=current.tolist(),
                losses_accepted=None,
                flops_removed=0,
                evaluations=self.oracle.evaluations - evals_before,
                round=st.round,
            )
            if accepted is not None:
                flops_now = self.graph.flops(keep, self.img_size)
                if all_passed and s.compat == "reference":
                    # the reference leaves such a unit unpruned during the search and prunes it at the ratio one
                    # place before the last at the end (its final step assumes the last entry tripped)
                    at = len(s.ratios) - 2
                    j = index_of[at]
                    trial = dict(keep)
                    trial[name] = masks[at]
                    decision.ratio = s.ratios[at]
                    decision.channels_after = int(masks[at].sum())
                    decision.losses_accepted = (current if j == -1 else results[j].losses).tolist()
                    decision.flops_removed = flops_now - self.graph.flops(trial, self.img_size)
                else:  # accept the last passing ratio: remove its channels, decay the threshold, ratchet the base
                    new_keep = dict(keep)
                    new_keep[name] = masks[accepted]
                    decision.ratio = s.ratios[accepted]
                    decision.channels_after = int(masks[accepted].sum())
                    decision.losses_accepted = accepted_losses.tolist()
                    decision.flops_removed = flops_now - self.graph.flops(new_keep, self.img_size)
                    st.keep = keep_to_pruned(new_keep)
                    st.thres *= st.lam
                    st.base = torch.maximum(base, accepted_losses).tolist()
                    st.current = accepted_losses.tolist()
            st.decisions.append(decision.to_dict())
            st.position += 1
            st.evaluations = self.oracle.evaluations
            st.seconds += time.perf_counter() - t0
            self.save()
            if self.progress is not None:
                self.progress(
                    {
                        "unit": name,
                        "position": st.position,
                        "total": len(st.order),
                        "ratio": decision.ratio,
                        "gflops": self.graph.flops(pruned_to_keep(self.graph, st.keep), self.img_size) / 1e9,
                        "tripped": tripped,
                    }
                )

    def _finish_round(self) -> Keep:
        """topk selection, then the round's final masks (saliency recomputed progressively)."""
        st, s = self.state, self.settings
        decisions = [UnitDecision(**d) for d in st.decisions]
        pruned = [d for d in decisions if d.ratio > 0 and d.flops_removed > 0]
        for d in pruned:
            d.efficiency = (sum(d.losses_accepted) - sum(d.losses_start)) / d.flops_removed
        n_keep = int(len(st.order) * s.topk)
        ranked = sorted(pruned, key=lambda d: d.efficiency)[:n_keep]  # stable: ties keep search order
        chosen = {d.name for d in ranked}
        keep = pruned_to_keep(self.graph, st.round_keep)
        for d in decisions:
            d.selected = d.name in chosen
            if d.selected:
                scores = unit_scores(self.graph, keep, [d.name], s.saliency, self.backend)[d.name]
                keep[d.name] = select_keep(scores, keep[d.name], d.ratio)
                d.channels_after = int(keep[d.name].sum())
            else:
                d.channels_after = d.channels_before
        st.decisions = [d.to_dict() for d in decisions]
        st.keep = keep_to_pruned(keep)
        st.history.append(
            {
                "round": st.round,
                "lambda": st.lam,
                "order": list(st.order),
                "decisions": st.decisions,
                "gflops": self.graph.flops(keep, self.img_size) / 1e9,
                "evaluations": self.oracle.evaluations,
            }
        )
        return keep

    def _another_round(self, keep: Keep) -> bool:
        st, s = self.state, self.settings
        if s.target_gflops is None:
            return False
        flops = self.graph.flops(keep, self.img_size)
        if flops <= s.target_gflops * self.flops_original:
            return False
        rounds_done = st.round - s.round + 1
        if rounds_done >= s.max_rounds or not any(d["selected"] for d in st.decisions):
            log.warning(
                "target %.3f x GFLOPs not reached after %d round(s): %.3f x",
                s.target_gflops,
                rounds_done,
                flops / self.flops_original,
            )
            return False
        st.round += 1
        st.order, st.position, st.decisions = [], 0, []
        return True
