"""Suffix replay: a unit's candidate pass recorded once per shape and replayed for its later candidate chunks.

While one unit is searched the weights, the cut of the walk and the shapes of a pass (R candidates x N
images) stay fixed, so every pass after the first can skip the graph walk (:meth:`Executor.run_suffix`)
and run a recording of it instead. The recording's inputs are the cached prefix values and the candidate
masks; everything else (the compact weights of the current keep) is a constant of the recording.

Modes (``--suffix-replay``, :data:`REPLAY_MODES`):

- ``off``: every pass walks the graph;
- ``graph``: the pass captured as a CUDA graph; a replay copies the inputs into the graph's static buffers
  and launches every kernel of the suffix at once (no Python, no per-kernel launch cost); the kernels are
  those of the walk, so the values, and the decisions, are the walk's bit for bit (CUDA only);
- ``trace``: the pass traced (``make_fx``) into one flat torch.fx graph of tensor operations whose
  generated code then runs: no graph walk, no keep-mask bookkeeping, the same operators (same values);
- ``compile``: the traced graph compiled by ``torch.compile`` (Inductor) for its static shapes, which fuses
  the elementwise operators; values equal the walk's up to rounding (a decision at the edge of the bound
  may differ); a compile per unit and shape costs seconds to minutes, so it pays on large models only;
- ``auto``: ``graph`` on CUDA, ``off`` elsewhere (on the CPU the walk is 4 % of the search, see
  benchmarks/RESULTS.md).

When a recording pays: the first pass of a shape in a unit walks the graph, the second records the pass
(and runs the recording), later ones replay it. A shape met once (the last, smaller chunk of a unit; a
chunk shortened by an early rejection) never costs a recording. Recordings are dropped when the next unit
(or the same unit under a changed keep) begins (:meth:`SuffixReplay.begin`).

A recording that fails (an operation that cannot be captured or traced) is reported once and the walk,
which is exact, serves the rest of the search. A CUDA graph's outputs live in its static buffers and are
overwritten by its next replay: read (or clone) them before the next pass, as the oracle does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx
from torch.utils import _pytree as pytree

from pagcp.engine.executor import CandidateRows, Executor
from pagcp.errors import ConfigError

log = logging.getLogger(__name__)

REPLAY_MODES = ("auto", "off", "graph", "trace", "compile")


def resolve_mode(mode: str, device: torch.device) -> str:
    """The mode ``mode`` means for values on ``device``; ConfigError naming the flag if it cannot run there."""
    if mode not in REPLAY_MODES:
        raise ConfigError(f"--suffix-replay {mode!r}: use one of {', '.join(REPLAY_MODES)}")
    if mode == "auto":
        return "graph" if device.type == "cuda" else "off"
    if mode == "graph" and device.type != "cuda":
        raise ConfigError(f"--suffix-replay graph: CUDA graphs need a CUDA device; the oracle runs on {device}")
    return mode


def _op_backend(device: torch.device) -> str:
    """The fused ops' backend inside a traced pass: one the dispatcher records as a single operator."""
    from pagcp.ops.registry import availability

    return "cpp" if availability("cpp", device)[0] else "torch"


class _Signature:
    """How one pass's inputs flatten: the tensors (the recording's inputs) and everything else (constants)."""

    def __init__(self, cached: dict[fx.Node, Any], rows: CandidateRows):
        leaves, self.spec = pytree.tree_flatten(((list(cached), list(cached.values())), rows.producers, rows.norms))
        self.count = rows.count
        self.slots = [i for i, v in enumerate(leaves) if isinstance(v, torch.Tensor)]
        self.constants = [None if isinstance(v, torch.Tensor) else v for v in leaves]
        self.key = (
            rows.count,
            tuple((tuple(leaves[i].shape), leaves[i].dtype, leaves[i].stride()) for i in self.slots),
            tuple(repr(v) for v in self.constants if v is not None and not isinstance(v, fx.Node)),
        )
        self.tensors = [leaves[i] for i in self.slots]

    def rebuild(self, tensors: Sequence[torch.Tensor]) -> tuple[dict[fx.Node, Any], CandidateRows]:
        leaves = list(self.constants)
        for i, t in zip(self.slots, tensors):
            leaves[i] = t
        (nodes, values), producers, norms = pytree.tree_unflatten(leaves, self.spec)
        return dict(zip(nodes, values)), CandidateRows(self.count, producers, norms)


class _Outputs:
    """The pass's output split into its tensors and the rest (kept from the first recorded call)."""

    def __init__(self) -> None:
        self.spec: pytree.TreeSpec | None = None
        self.constants: list[Any] = []

    def flatten(self, out: Any) -> list[torch.Tensor]:
        leaves, self.spec = pytree.tree_flatten(out)
        self.constants = [None if isinstance(v, torch.Tensor) else v for v in leaves]
        return [v for v in leaves if isinstance(v, torch.Tensor)]

    def rebuild(self, tensors: Sequence[torch.Tensor]) -> Any:
        it = iter(tensors)
        return pytree.tree_unflatten([next(it) if c is None else c for c in self.constants], self.spec)


class _CudaGraph:
    """A pass captured as a CUDA graph over static input buffers (its pool shared by the unit's graphs)."""

    def __init__(self, fn: Callable[..., list[torch.Tensor]], tensors: list[torch.Tensor], pool: Any):
        self.inputs = [t.clone() for t in tensors]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture: lazy initialisations happen here
            fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            self.outputs = fn(*self.inputs)

    def __call__(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        for static, value in zip(self.inputs, tensors):
            if static.data_ptr() != value.data_ptr():
                static.copy_(value)
        self.graph.replay()
        return self.outputs


class SuffixReplay:
    """Runs an executor's candidate passes, walking or replaying recordings as ``mode`` says."""

    def __init__(self, executor: Executor, mode: str, device: torch.device):
        self.executor = executor
        self.mode = resolve_mode(mode, device)
        self.device = device
        self._programs: dict[Any, tuple[Callable[..., list[torch.Tensor]], _Outputs]] = {}
        self._seen: set[Any] = set()
        self._unit: tuple[str, int] | None = None  # (unit, weights version) the recordings belong to
        self._pool: Any = None
        #: recordings made and passes replayed (all units): what the replay did, for reports and tests
        self.recordings = 0
        self.replays = 0

    def begin(self, unit: str) -> None:
        """A unit's search starts under the executor's current keep: recordings of another unit, or made
        before the keep (and so the compact weights they read) changed, are dropped."""
        current = (unit, self.executor.weights.version)
        if current == self._unit:
            return
        self._programs.clear()
        self._seen.clear()
        self._unit = current
        if self.mode == "graph":
            self._pool = torch.cuda.graph_pool_handle()

    def run(self, unit: str, cached: dict[fx.Node, Any], candidates: Sequence[torch.Tensor]) -> Any:
        """The suffix of ``unit`` for these candidates (as :meth:`Executor.run_candidates`)."""
        if self.mode == "off":
            return self.executor.run_candidates(unit, cached, candidates)
        self.begin(unit)
        rows = self.executor.candidate_rows(unit, candidates)
        sig = _Signature(cached, rows)
        program = self._programs.get(sig.key)
        if program is None and sig.key not in self._seen:
            self._seen.add(sig.key)  # first pass of this shape: walk (and warm up)
            return self.executor.run_suffix(unit, cached, rows)
        if program is None:
            try:
                program = self._record(unit, sig)
                out = program[0](*sig.tensors)  # a compiled recording compiles here
            except torch.OutOfMemoryError:
                raise  # the oracle splits the chunk
            except Exception as exc:  # noqa: BLE001 - any failure to record falls back to the walk, which is exact
                log.warning("--suffix-replay %s: recording the passes of %s failed (%s: %s); walking the graph "
                            "from now on", self.mode, unit, type(exc).__name__, exc)  # fmt: skip
                self.mode = "off"
                return self.executor.run_suffix(unit, cached, rows)
            self._programs[sig.key] = program
            self.recordings += 1
            return program[1].rebuild(out)
        self.replays += 1
        fn, outputs = program
        return outputs.rebuild(fn(*sig.tensors))

    def _record(self, unit: str, sig: _Signature) -> tuple[Callable[..., list[torch.Tensor]], _Outputs]:
        outputs = _Outputs()
        ex = self.executor

        def suffix(*tensors: torch.Tensor) -> list[torch.Tensor]:
            cached, rows = sig.rebuild(tensors)
            return outputs.flatten(ex.run_suffix(unit, cached, rows))

        if self.mode == "graph":
            return _CudaGraph(suffix, sig.tensors, self._pool), outputs
        from torch.fx.experimental.proxy_tensor import make_fx

        previous, ex.op_backend = ex.op_backend, _op_backend(self.device)
        try:
            with torch.no_grad():
                traced = make_fx(suffix, tracing_mode="real")(*sig.tensors)
        finally:
            ex.op_backend = previous
        log.debug("suffix of %s traced: %d operations", unit, len(traced.graph.nodes))
        if self.mode == "compile":
            return torch.compile(traced, dynamic=False), outputs
        return traced, outputs
