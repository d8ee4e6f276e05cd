"""The PAGCP greedy search (docs/algorithm.md): units one after another, each pruned as far as
the performance-aware oracle allows, then topk selection; resumable after every unit.

The search talks to an *oracle* (see :class:`Oracle`): per-task loss sums of the network under given
keep-masks, and the candidates of one unit evaluated in ascending ratio order up to the first one that
breaks its per-task bound. :mod:`pagcp.engine.oracle` computes these fast; :mod:`pagcp.engine.naive` is the
straightforward ground truth of the same rule. The state it writes after every unit is :mod:`pagcp.engine.state`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from pagcp.devices import is_main_process
from pagcp.engine.oracle import Evaluation, Oracle
from pagcp.engine.rule import scope_units, solve_lambda
from pagcp.engine.saliency import select_keep, unit_scores
from pagcp.engine.settings import PruneSettings
from pagcp.engine.state import SearchState, UnitDecision
from pagcp.errors import PagcpError
from pagcp.graph import ChannelGraph, Keep

log = logging.getLogger(__name__)

#: --target-gflops is met when the pruned model has at most this much more than the target (relative)
TARGET_TOLERANCE = 0.02


def distinct_candidates(masks: Sequence[torch.Tensor], current: torch.Tensor) -> tuple[list[torch.Tensor], list[int]]:
    """The masks worth evaluating and, per mask, its index among them (-1: prunes nothing more than ``current``).

    Consecutive ratios often select the same channel count; each distinct mask is evaluated once.
    """
    unique: list[torch.Tensor] = []
    index_of: list[int] = []
    for m in masks:
        if bool(m.equal(current)):
            index_of.append(-1)
        elif unique and bool(m.equal(unique[-1])):
            index_of.append(len(unique) - 1)
        else:
            unique.append(m)
            index_of.append(len(unique) - 1)
    return unique, index_of


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
        #: the fewest channels each unit may keep (--min-width; one without it), fixed for the whole search
        self.floors = {u.name: settings.floor(u.name, u.size) for u in graph.units}
        self.flops_original = graph.flops(None, img_size)
        self.state: SearchState | None = None
        self._evaluations_seen = 0  # the oracle's count already added to the state's

    def _count_evaluations(self) -> None:
        """Add the oracle's evaluations since the last call to the state (which a resumed run continues)."""
        now = self.oracle.evaluations
        self.state.evaluations += now - self._evaluations_seen
        self._evaluations_seen = now

    def save(self) -> None:
        """Write the state file (the main process of a sharded search only; the others hold the same state)."""
        if self.state is not None and is_main_process():
            self.state.save(self.state_path)

    def run(self, resume: bool = False) -> Keep:
        """Run (or continue) the search; returns the final keep-masks."""
        if resume:
            if self.state_path is None:
                raise PagcpError("resume=True needs the state_path of the search to continue")
            self.state = SearchState.load(self.state_path, self.settings.to_dict(), self.fingerprint, self.graph.layout)
        else:
            full = self.graph.full_keep()
            self.state = SearchState(self.settings.to_dict(), self.fingerprint, self.settings.round, full, full.copy())
        st = self.state
        self._evaluations_seen = self.oracle.evaluations
        if resume:
            self._say_resuming(st)
        while st.phase != "done":
            if not st.order:
                self._start_round(st.keep)
            self._search_round()
            final = self._finish_round()
            if not self._another_round(final):
                st.phase = "done"
            self.save()
        return st.keep.copy()

    def _say_resuming(self, st: SearchState) -> None:
        if st.phase == "done":
            log.info("resuming %s: the search had finished (%d evaluations); nothing to redo", self.state_path,
                     st.evaluations)  # fmt: skip
        elif not st.order:
            log.info("resuming %s: round %d starts afresh (%d evaluations done)", self.state_path, st.round,
                     st.evaluations)  # fmt: skip
        else:
            following = st.order[st.position] if st.position < len(st.order) else "topk selection"
            log.info("resuming %s: round %d, %d of %d units decided, next %s; %d evaluations done",
                     self.state_path, st.round, st.position, len(st.order), following, st.evaluations)  # fmt: skip

    # -- one round -----------------------------------------------------------------------------
    def _start_round(self, keep: Keep) -> None:
        """λ, the unit order (by the FLOPs a 30 % L1 cut of each removes) and the base losses of a round."""
        st, s = self.state, self.settings
        rate, bound = s.rate_and_bound(st.round)
        units = [u for u in self.units if keep.kept(u) > self.floors[u]]
        st.lam = solve_lambda(rate, bound, len(units)) if s.exp else 1.0
        scores = unit_scores(self.graph, keep, units, "l1", self.backend)
        flops_now = self.graph.flops(keep, self.img_size)
        removed = {}
        for u in units:
            trial = keep.replace(u, select_keep(scores[u], keep[u], 0.3, s.exact_counts))
            removed[u] = flops_now - self.graph.flops(trial, self.img_size)
        st.order = sorted(units, key=lambda u: -removed[u] if st.lam <= 1 else removed[u])  # stable sort
        st.position, st.thres, st.decisions = 0, rate, []
        base = self.oracle.losses(keep)
        st.base = base.tolist()
        st.current = base.tolist()
        st.round_keep = keep.copy()
        st.keep = keep.copy()
        self._count_evaluations()
        self.save()

    def _search_round(self) -> None:
        st = self.state
        while st.position < len(st.order):
            t0 = time.perf_counter()
            decision = self._search_unit(st.order[st.position])
            st.decisions.append(decision.to_dict())
            st.position += 1
            self._count_evaluations()
            st.seconds += time.perf_counter() - t0
            self.save()
            self._tell({
                "event": "unit", "unit": decision.name, "position": st.position, "total": len(st.order),
                "ratio": decision.ratio, "gflops": self.graph.flops(st.keep, self.img_size) / 1e9,
                "tripped": decision.tripped_task,
            })  # fmt: skip

    def _tell(self, event: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress(event)

    def _search_unit(self, name: str) -> UnitDecision:
        """Ratios of one unit in ascending order until a task's loss passes its bound; accept the last good one."""
        st, s = self.state, self.settings
        keep = st.keep
        width = keep.kept(name)
        scores = self._scores(keep, name)
        masks = [self._select(scores, keep, name, r) for r in s.ratios]
        base = torch.tensor(st.base, dtype=torch.float64)
        bound = base * (1 + st.thres)
        current = torch.tensor(st.current, dtype=torch.float64)
        unique, index_of = distinct_candidates(masks, keep[name])
        evals_before = self.oracle.evaluations
        self._tell({"event": "start", "unit": name, "position": st.position, "total": len(st.order),
                    "candidates": len(unique)})  # fmt: skip
        results = self._evaluate(keep, name, unique, bound) if unique else []

        def losses_at(i: int) -> torch.Tensor:
            return current if index_of[i] == -1 else _result(results, index_of[i], name).losses

        accepted, tripped = self._first_trip(losses_at, bound)
        decision = UnitDecision(
            name=name, channels_before=width, channels_after=width, ratio=0.0, tripped_task=tripped,
            losses_start=current.tolist(), losses_accepted=None, flops_removed=0,
            evaluations=self.oracle.evaluations - evals_before, round=st.round,
        )  # fmt: skip
        if accepted is not None:
            late = s.mode.all_passed_ratio_index
            if tripped is None and late is not None:
                # the reference leaves such a unit unpruned during the search and prunes it at the ratio one place
                # before the last at the end (its final step assumes the last entry tripped)
                self._record(decision, keep, masks, late % len(s.ratios), losses_at)
            else:  # accept the last passing ratio: remove its channels, decay the threshold, ratchet the base
                st.keep = self._record(decision, keep, masks, accepted, losses_at)
                st.thres *= st.lam
                st.base = torch.maximum(base, losses_at(accepted)).tolist()
                st.current = losses_at(accepted).tolist()
        return decision

    def _evaluate(self, keep: Keep, name: str, unique: list[torch.Tensor], bound: torch.Tensor) -> list[Evaluation]:
        """The oracle's evaluation of a unit's candidates; an oracle with ``on_candidates`` reports each one."""
        if self.progress is None or not hasattr(self.oracle, "on_candidates"):
            return self.oracle.evaluate(keep, name, unique, bound)
        total = len(unique)

        def done(n: int) -> None:
            self._tell({"event": "candidates", "unit": name, "done": n, "candidates": total})

        self.oracle.on_candidates = done
        try:
            return self.oracle.evaluate(keep, name, unique, bound)
        finally:
            self.oracle.on_candidates = None

    def _scores(self, keep: Keep, name: str) -> torch.Tensor:
        """Saliency of a unit's channels on the network pruned by ``keep``, by the settings' criterion."""
        if self.settings.saliency == "act":
            return self.oracle.activation_scores(keep, name)
        return unit_scores(self.graph, keep, [name], self.settings.saliency, self.backend)[name]

    def _select(self, scores: torch.Tensor, keep: Keep, name: str, ratio: float) -> torch.Tensor:
        """Unit ``name``'s mask at ``ratio`` under ``keep``: by the mode's count, ``round_to`` and its floor."""
        s = self.settings
        return select_keep(scores, keep[name], ratio, s.exact_counts, s.round_to, self.floors[name])

    def _first_trip(
        self, losses_at: Callable[[int], torch.Tensor], bound: torch.Tensor
    ) -> tuple[int | None, str | None]:
        """(index of the last ratio within the bound or None, the task that tripped first or None)."""
        accepted = None
        for i in range(len(self.settings.ratios)):
            losses = losses_at(i)
            over = losses > bound
            if bool(over.any()):
                rel = (losses / bound).masked_fill(~over, -math.inf)
                return accepted, self.oracle.tasks[int(rel.argmax())]
            accepted = i
        return accepted, None

    def _record(self, decision: UnitDecision, keep: Keep, masks, at: int, losses_at) -> Keep:
        """Fill ``decision`` for pruning at ratio index ``at``; returns the keep-masks with that pruning."""
        name = decision.name
        new = keep.replace(name, masks[at])
        decision.ratio = self.settings.ratios[at]
        decision.channels_after = int(masks[at].sum())
        decision.losses_accepted = losses_at(at).tolist()
        decision.flops_removed = self.graph.flops(keep, self.img_size) - self.graph.flops(new, self.img_size)
        return new

    def _finish_round(self) -> Keep:
        """topk selection, then the round's final masks (saliency recomputed progressively); with
        ``target_gflops``, a selection that would go below the target is filled up to it instead."""
        st, s = self.state, self.settings
        decisions = [UnitDecision(**d) for d in st.decisions]
        flops, base = self._topk_flops(decisions), self._efficiency_bases(decisions)
        pruned = [d for d in decisions if d.ratio > 0 and flops[d.name] > 0]
        for d in pruned:
            d.efficiency = (sum(d.losses_accepted) - base[d.name]) / flops[d.name]
        n_keep = int(len(st.order) * s.topk)
        ranked = sorted(pruned, key=lambda d: d.efficiency)[:n_keep]  # stable: ties keep search order
        chosen = {d.name for d in ranked}
        keep = st.round_keep.copy()
        for d in decisions:
            d.selected = d.name in chosen
            if d.selected:
                scores = self._scores(keep, d.name)
                keep[d.name] = self._select(scores, keep, d.name, d.ratio)
        target = self._target_flops()
        if target is not None and self.graph.flops(keep, self.img_size) < target:
            keep = self._fill_to_target(ranked, target)
        for d in decisions:
            d.channels_after = keep.kept(d.name) if d.selected else d.channels_before
        st.decisions = [d.to_dict() for d in decisions]
        searched, final = (self.graph.flops(k, self.img_size) / 1e9 for k in (st.keep, keep))
        kept = sum(d.selected for d in decisions)
        log.info("topk %g: %d of the %d units were searched to some ratio; the %d most loss-efficient (at most "
                 "topk x %d) stay pruned, %d are restored whole: %.3f GFLOPs with every unit as searched -> %.3f",
                 s.topk, len(pruned), len(st.order), kept, len(st.order), len(pruned) - kept, searched,
                 final)  # fmt: skip
        st.keep = keep
        st.history.append({
            "round": st.round, "lambda": st.lam, "order": list(st.order), "decisions": st.decisions,
            "gflops": self.graph.flops(keep, self.img_size) / 1e9, "evaluations": st.evaluations,
        })  # fmt: skip
        return keep

    def _topk_flops(self, decisions: list[UnitDecision]) -> dict[str, float]:
        """The FLOPs topk charges each unit, by the mode (:class:`pagcp.engine.compat.Compat` ``topk_flops``)."""
        s = self.settings
        if s.mode.topk_flops == "search":
            return {d.name: d.flops_removed for d in decisions}
        keep, flops = self.state.round_keep.copy(), {}
        now = self.graph.flops(keep, self.img_size)
        for d in decisions:
            flops[d.name] = 0
            if d.ratio > 0:
                keep = keep.replace(d.name, self._select(self._scores(keep, d.name), keep, d.name, d.ratio))
                flops[d.name], now = now - (after := self.graph.flops(keep, self.img_size)), after
        return flops

    def _efficiency_bases(self, decisions: list[UnitDecision]) -> dict[str, float]:
        """The total loss each unit's efficiency is measured from, by the mode (``efficiency_base``)."""
        if self.settings.mode.efficiency_base == "start":
            return {d.name: sum(d.losses_start) for d in decisions}
        late = self.settings.mode.all_passed_ratio_index is not None
        bases, running = {}, sum(decisions[0].losses_start) if decisions else 0.0
        for d in decisions:
            bases[d.name] = running
            if d.ratio > 0 and not (late and d.tripped_task is None):  # applied during the search: it ratchets
                running = max(running, sum(d.losses_accepted))
        return bases

    def _target_flops(self) -> float | None:
        s = self.settings
        return None if s.target_gflops is None else s.target_gflops * self.flops_original

    def _fill_to_target(self, ranked: list[UnitDecision], target: float) -> Keep:
        """The round's masks rebuilt from its start, units in order of efficiency (best first), each at the
        largest ratio up to its accepted one that keeps the FLOPs at or above ``target``; units that fit no
        ratio are left unpruned (``target_ratio`` 0). See docs/algorithm.md, "--target-gflops"."""
        s, st = self.settings, self.state
        keep = st.round_keep.copy()
        for d in ranked:
            scores = self._scores(keep, d.name)
            d.selected, d.target_ratio = False, 0.0
            for r in sorted((r for r in s.ratios if r <= d.ratio), reverse=True):
                trial = keep.replace(d.name, self._select(scores, keep, d.name, r))
                if self.graph.flops(trial, self.img_size) >= target:
                    keep, d.selected = trial, True
                    d.target_ratio = r if r != d.ratio else None
                    break
        return keep

    def _another_round(self, keep: Keep) -> bool:
        """Whether a next round runs; when not, ``state.stop_rule`` says why the search ended."""
        st, s = self.state, self.settings
        target = self._target_flops()
        flops = self.graph.flops(keep, self.img_size)
        fraction = flops / self.flops_original
        if target is None:
            st.stop_rule = f"one round (no --target-gflops): {fraction:.4f} x the original GFLOPs"
            return False
        if flops <= target * (1 + TARGET_TOLERANCE):
            filled = any(d.get("target_ratio") is not None for d in st.decisions)
            how = "filled up to it by efficiency" if filled else "reached by the round's selection"
            st.stop_rule = f"target {s.target_gflops:g} x reached in round {st.round} ({how}): {fraction:.4f} x"
            return False
        if s.reach_gflops is not None and fraction <= s.reach_gflops * (1 + TARGET_TOLERANCE):
            st.stop_rule = (
                f"waypoint {s.reach_gflops:.4f} x reached in round {st.round} on the way to {s.target_gflops:.4f} x: "
                f"{fraction:.4f} x"
            )
            return False
        rounds_done = st.round - s.round + 1
        if rounds_done >= s.max_rounds or not any(d["selected"] for d in st.decisions):
            why = f"--max-rounds {s.max_rounds} used" if rounds_done >= s.max_rounds else "a round selected no unit"
            st.stop_rule = f"target {s.target_gflops:g} x not reached ({why}): {fraction:.4f} x"
            log.info("%s", st.stop_rule)  # a round of a cycle run is not the end: the caller warns at the end
            return False
        left = sum(keep.kept(u) > self.floors[u] for u in self.units)
        if s.exp and left < 2:  # λ spreads the round's bound over its units: one alone cannot be solved for
            st.stop_rule = (f"target {s.target_gflops:g} x not reached ({left} unit(s) left with channels to prune; "
                            f"a round needs two): {fraction:.4f} x")  # fmt: skip
            log.info("%s", st.stop_rule)
            return False
        st.round += 1
        st.order, st.position, st.decisions = [], 0, []
        return True


def _result(results: list[Evaluation], j: int, unit: str) -> Evaluation:
    if j >= len(results):
        raise PagcpError(f"oracle returned {len(results)} results for unit {unit} before a trip")
    return results[j]
