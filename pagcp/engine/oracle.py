"""The subset oracle: per-task loss sums of the network under keep-masks, fast.

- The data: fixed batches, decoded once and kept on the device (for YOLO: a seeded subset of a split,
  prepared exactly as the validation loader prepares it, see :mod:`pagcp.engine.oracle_data`).
- Compact execution of the decided units and candidate execution of the unit under test
  (:class:`pagcp.engine.executor.Executor`).
- For one unit, every activation upstream of it is computed once per batch (the prefix cache,
  :class:`_PrefixCache`, kept across candidate chunks while it fits ``cache_bytes``); candidates go through
  the downstream part in chunks (:meth:`SubsetOracle._evaluate_chunk`), walked or replayed from a recording
  of the pass (``replay``, :mod:`pagcp.engine.replay`). On CUDA without an explicit chunk, the chunk is sized
  from free memory at the first unit (:meth:`SubsetOracle._size_chunk`); a device out of memory halves it.
- A pass over R candidates on N images returns the model's output with R·N rows in dim 0 of every tensor
  leaf, candidate-major, whatever pytree holds them (a tensor, lists, tuples, dicts such as Ultralytics'
  training-mode Detect output); candidate k's output is rows k·N:(k+1)·N of every tensor leaf
  (:func:`_candidate_outputs`), non-tensor leaves as they are.
- Sharded (torchrun): the partial sums of each lockstep batch are all-reduced (:class:`Shard`).
- Early rejection: a candidate stops as soon as a partial per-task sum exceeds its bound, and with it every
  later candidate of its chunk (the search stops at the first candidate over the bound).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import fx
from torch.profiler import record_function
from torch.utils import _pytree as pytree

from pagcp.engine.executor import Executor
from pagcp.engine.replay import SuffixReplay
from pagcp.engine.saliency import activation_scores
from pagcp.errors import ConfigError, PagcpError
from pagcp.graph import ChannelGraph, Keep

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, Any]
#: loss_fn(outputs, targets) -> 1-D tensor of per-task losses of the batch (means; the oracle sums them
#: times the batch size, as the reference sums each batch's components times its size)
TaskLoss = Callable[[Any, Any], torch.Tensor]


@dataclass
class Evaluation:
    """Per-task losses of one candidate; ``complete`` is False when it was rejected part-way."""

    losses: torch.Tensor
    complete: bool = True


class Oracle(Protocol):
    """What the search asks of an oracle (:class:`SubsetOracle` here, :class:`pagcp.engine.naive.NaiveOracle`)."""

    tasks: list[str]
    evaluations: int

    def losses(self, keep: Keep) -> torch.Tensor:
        """Per-task loss sums (float64) of the network pruned by ``keep``."""

    def evaluate(
        self, keep: Keep, unit: str, candidates: Sequence[torch.Tensor], bound: torch.Tensor
    ) -> list[Evaluation]:
        """Candidates (keep-masks of ``unit``, others as in ``keep``) in order, stopping after the first whose
        losses exceed ``bound`` in any task (that one may be incomplete)."""

    def activation_scores(self, keep: Keep, unit: str) -> torch.Tensor:
        """Saliency ``act`` of ``unit``'s channels on the oracle's data (see docs/algorithm.md)."""


@dataclass(frozen=True)
class Shard:
    """This process's share of the oracle's batches in a torchrun-sharded search.

    The ``total`` batches are dealt round-robin (process r of w holds batches r, r + w, ...); every process
    walks the same number of lockstep steps, one local batch per step (none once its share is done), and
    ``sum`` adds a float64 tensor over the processes (an all-reduce), so every process sees the same partial
    sums and takes the same decisions, early rejection included. One process: no communication.
    """

    rank: int = 0
    world: int = 1
    total: int = 0
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    reduce_min: Callable[[torch.Tensor], torch.Tensor] | None = None

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        return value if self.reduce is None or self.world == 1 else self.reduce(value)

    def min_int(self, value: int) -> int:
        """The smallest ``value`` of all processes (choices every process must share, e.g. the chunk)."""
        if self.reduce_min is None or self.world == 1:
            return value
        return int(self.reduce_min(torch.tensor([value], dtype=torch.int64)).item())

    def steps(self, local_batches: int) -> int:
        """Lockstep steps: the largest share of any process."""
        return local_batches if self.world == 1 else -(-self.total // self.world)

    def take(self, batches: Sequence[Batch]) -> list[Batch]:
        """This process's share of all ``batches``."""
        return list(batches[self.rank :: self.world])


#: the most candidates per pass chosen automatically (a unit has at most 19)
MAX_CHUNK = 19
#: --oracle-dtype: the precision the oracle's forward passes run in (losses are summed in float64 always)
ORACLE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _map_float(value: Any) -> Any:
    """``value`` with its floating tensor leaves in float32 (the loss of a bf16/fp16 pass), other leaves as they are."""
    return pytree.tree_map_only(torch.Tensor, lambda t: t.float() if t.is_floating_point() else t, value)


def _nbytes(value: Any) -> int:
    """Bytes held by the tensor leaves of ``value`` (the size of one batch's prefix cache)."""
    return sum(v.numel() * v.element_size() for v in pytree.tree_leaves(value) if isinstance(v, torch.Tensor))


def _candidate_outputs(out: Any, count: int, n: int) -> list[Any]:
    """Each of ``count`` candidates' outputs of a pass: rows k·n:(k+1)·n of every tensor leaf of ``out``."""
    leaves, spec = pytree.tree_flatten(out)
    if not any(isinstance(v, torch.Tensor) for v in leaves):
        raise ConfigError(f"the model's output holds no tensor to split per candidate (it is a {type(out).__name__})")

    def rows(k: int) -> Any:
        return [v[k * n : (k + 1) * n] if isinstance(v, torch.Tensor) else v for v in leaves]

    return [pytree.tree_unflatten(rows(k), spec) for k in range(count)]


def _join(first: Any, second: Any) -> Any:
    """Two passes' outputs as one, candidate-major: tensor leaves concatenated in dim 0, others from ``first``."""
    a, spec = pytree.tree_flatten(first)
    b, other = pytree.tree_flatten(second)
    if spec != other:
        raise PagcpError("the two halves of a split candidate pass returned outputs of different structure")
    return pytree.tree_unflatten([torch.cat([x, y]) if isinstance(x, torch.Tensor) else x for x, y in zip(a, b)], spec)


class _PrefixCache:
    """One unit's prefix values per batch: computed on demand, kept across chunks while they fit ``limit`` bytes."""

    def __init__(self, compute: Callable[[int], dict[fx.Node, Any]], batches: int, limit: int):
        self.compute = compute
        self.batches = batches
        self.limit = limit
        self.entries: dict[int, dict[fx.Node, Any]] = {}
        self.keeping = True

    def get(self, b: int) -> dict[fx.Node, Any]:
        """Batch ``b``'s prefix values; computing batch 0 decides whether any entries are kept (all must fit)."""
        cached = self.entries.get(b)
        if cached is not None:
            return cached
        cached = self.compute(b)
        if self.keeping:
            self.entries[b] = cached
            if b == 0 and _nbytes(cached) * self.batches > self.limit:  # all batches would not fit: keep none
                self.keeping = False
                self.entries.clear()
        return cached


class SubsetOracle:
    """Per-task loss sums over fixed batches, computed with the compact/candidate executor."""

    def __init__(
        self,
        graph: ChannelGraph,
        batches: Sequence[Batch],
        loss_fn: TaskLoss,
        tasks: Sequence[str],
        chunk: int = 0,
        cache_bytes: int | None = None,
        train_mode_leaves: tuple[type, ...] = (),
        shard: Shard | None = None,
        dtype: torch.dtype = torch.float32,
        replay: str = "auto",
    ):
        if not batches:
            raise ConfigError("the oracle needs at least one batch of data")
        self.graph = graph
        self.batches = list(batches)
        self.loss_fn = loss_fn
        self.tasks = list(tasks)
        device = batches[0][0].device
        self.chunk = chunk or 1  # on CUDA without an explicit chunk: sized from free memory at the first unit
        self.auto_chunk = chunk == 0 and device.type == "cuda"
        self.cache_bytes = cache_bytes if cache_bytes is not None else (2 << 30 if device.type == "cpu" else 8 << 30)
        self.executor = Executor(graph, train_mode_leaves)
        self.evaluations = 0
        self.shard = shard or Shard()
        if dtype not in ORACLE_DTYPES.values():
            raise ConfigError(f"--oracle-dtype {dtype}: use one of {', '.join(ORACLE_DTYPES)}")
        self.dtype = dtype
        self.device_type = device.type
        self.replay = SuffixReplay(self.executor, replay, device)
        #: called with the number of candidates of the current ``evaluate`` call decided so far (progress bars)
        self.on_candidates: Callable[[int], None] | None = None

    def _batch(self, step: int) -> Batch | None:
        """This process's batch of a lockstep ``step`` (None once its share is done, see :class:`Shard`)."""
        return self.batches[step] if step < len(self.batches) else None

    def _precision(self) -> Any:
        """Autocast to the oracle's dtype (convolutions in bf16/fp16, the fused ops in their input's dtype)."""
        enabled = self.dtype != torch.float32  # no cast cache: a CUDA graph capture must not keep one
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=enabled, cache_enabled=False)

    def _batch_losses(self, out: Any, targets: Any, rows: int) -> torch.Tensor:
        if self.dtype != torch.float32:  # the loss always in float32
            out = _map_float(out)
        with record_function("pagcp.loss"):
            value = self.loss_fn(out, targets)
        value = torch.as_tensor(value).detach().reshape(-1).double().cpu()
        if value.numel() != len(self.tasks):
            raise ConfigError(
                f"loss_fn returned {value.numel()} task losses; expected {len(self.tasks)} ({', '.join(self.tasks)})"
            )
        return value * rows

    def _run_candidates(self, unit: str, cached: dict[fx.Node, Any], masks: list[torch.Tensor]) -> Any:
        """The candidates in one pass; on a device out of memory, in halves (outputs joined candidate-major)."""
        try:
            with self._precision():
                return self.replay.run(unit, cached, masks)
        except torch.OutOfMemoryError:
            if len(masks) == 1:
                raise
            half = len(masks) // 2
            log.info("out of device memory with %d candidates at once; splitting", len(masks))
            self.chunk = max(1, half)
            first = self._run_candidates(unit, cached, masks[:half])
            first = pytree.tree_map_only(torch.Tensor, torch.clone, first)  # a replay's buffers are reused
            second = self._run_candidates(unit, cached, masks[half:])
            return _join(first, second)

    def _size_chunk(self, unit: str, cached: dict[fx.Node, Any], mask: torch.Tensor) -> None:
        """Candidates per pass on CUDA: as many as half the free memory holds (at most 19), from the peak memory
        of one candidate's pass; measured once, at the first unit (the OOM fallback halves it if needed)."""
        self.auto_chunk = False
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            self._run_candidates(unit, cached, [mask])
        per_candidate = max(torch.cuda.max_memory_allocated() - base, 1)
        free, _ = torch.cuda.mem_get_info()
        self.chunk = self.shard.min_int(int(max(1, min(MAX_CHUNK, free // 2 // per_candidate))))
        log.info("oracle: %d candidates per pass (%.0f MiB each, %.0f MiB free)", self.chunk, per_candidate / 2**20,
                 free / 2**20)  # fmt: skip

    def _step_losses(self, unit: str, cached: dict[fx.Node, Any], masks: list[torch.Tensor], batch: Batch):
        """Per-task loss sums (R x tasks, float64) of R candidates on one batch."""
        inputs, targets = batch
        with record_function("pagcp.suffix"):
            out = self._run_candidates(unit, cached, masks)
        n = inputs.shape[0]
        return torch.stack([self._batch_losses(o, targets, n) for o in _candidate_outputs(out, len(masks), n)])

    def _prefix(self, unit: str, b: int) -> dict[fx.Node, Any]:
        """Batch ``b``'s prefix values of ``unit`` (compact, in the oracle's precision): a prefix cache entry."""
        with record_function("pagcp.prefix"), self._precision():
            return self.executor.prefix([self.batches[b][0]], unit)

    def losses(self, keep: Keep) -> torch.Tensor:
        """Per-task loss sums (float64) of the network pruned by ``keep``."""
        self.executor.set_keep(keep)
        total = torch.zeros(len(self.tasks), dtype=torch.float64)
        for inputs, targets in self.batches:
            with self._precision():
                out = self.executor.run([inputs])
            total += self._batch_losses(out, targets, inputs.shape[0])
        return self.shard.sum(total)

    def activation_scores(self, keep: Keep, unit: str) -> torch.Tensor:
        """Mean |activation| of ``unit``'s channels over the oracle's batches (:func:`activation_scores`)."""
        reduce = self.shard.sum if self.shard.world > 1 else None
        with self._precision():
            return activation_scores(self.executor, self.batches, keep, unit, reduce)

    def evaluate(
        self, keep: Keep, unit: str, candidates: Sequence[torch.Tensor], bound: torch.Tensor
    ) -> list[Evaluation]:
        """Candidates of ``unit`` in order, up to and including the first whose losses exceed ``bound``."""
        self.executor.set_keep(keep)
        cache = _PrefixCache(lambda b: self._prefix(unit, b), len(self.batches), self.cache_bytes)
        results: list[Evaluation] = []
        start = 0
        bound = bound.double()
        while start < len(candidates):
            if self.auto_chunk and start > 0:  # every process gets here at the same candidate
                self._size_chunk(unit, cache.get(0), candidates[start])
            chunk = list(candidates[start : start + self.chunk])
            sums, trip = self._evaluate_chunk(unit, chunk, cache, bound)
            stop = len(chunk) if trip is None else trip + 1
            results += [Evaluation(sums[i].clone(), complete=trip is None or i < trip) for i in range(stop)]
            self._report(len(results))
            if trip is not None:
                return results
            start += len(chunk)
        return results

    def _evaluate_chunk(
        self, unit: str, chunk: list[torch.Tensor], cache: _PrefixCache, bound: torch.Tensor
    ) -> tuple[torch.Tensor, int | None]:
        """One chunk over the lockstep batches: per-candidate loss sums (len(chunk) x tasks, float64, partial
        from the first trip on) and the first candidate over ``bound`` (None: none)."""
        sums = torch.zeros(len(chunk), len(self.tasks), dtype=torch.float64)
        active = list(range(len(chunk)))
        trip: int | None = None
        self.evaluations += len(chunk)
        for b in range(self.shard.steps(len(self.batches))):
            step = torch.zeros(len(active), len(self.tasks), dtype=torch.float64)
            batch = self._batch(b)
            if batch is not None:
                step = self._step_losses(unit, cache.get(b), [chunk[i] for i in active], batch)
            sums[active] += self.shard.sum(step)  # every process sees the same partial sums
            trip = self._first_trip(sums, active, bound, trip)
            active = [i for i in active if trip is None or i < trip]  # a trip stops it and every later one
            if not active:
                break
        return sums, trip

    @staticmethod
    def _first_trip(sums: torch.Tensor, active: list[int], bound: torch.Tensor, trip: int | None) -> int | None:
        """The earliest candidate whose partial sums exceed ``bound`` in any task (``trip``: the earliest so far)."""
        over = [i for i in active if bool((sums[i] > bound).any())]
        if not over:
            return trip
        return over[0] if trip is None else min(trip, over[0])

    def _report(self, decided: int) -> None:
        """Progress: tells ``on_candidates`` how many candidates of the current ``evaluate`` call are decided."""
        if self.on_candidates is not None:
            self.on_candidates(decided)
