"""Python API: PAGCP on any traceable CNN whose loss returns per-task components."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pagcp.engine.oracle import Shard, SubsetOracle, TaskLoss
from pagcp.engine.progress import SearchProgress
from pagcp.engine.search import Search
from pagcp.engine.settings import PruneSettings
from pagcp.graph import ChannelGraph, HeadMatcher, Keep, trace


@dataclass
class PruneResult:
    """Outcome of :func:`prune`: the keep-masks, per-unit decisions (last round), and the sliced model.

    ``history`` has one entry per round; ``evaluations`` and ``seconds`` are the search's counts; ``lam`` is
    the last round's λ; ``stop_rule`` says in words why the search ended (one round, target reached, ...).
    """

    keep: Keep
    decisions: list[dict[str, Any]]
    model: nn.Module
    graph: ChannelGraph
    history: list[dict[str, Any]] = field(default_factory=list)
    evaluations: int = 0
    seconds: float = 0.0
    lam: float = 1.0
    stop_rule: str = ""

    def summary(self) -> str:
        rows = [f"{'unit':40s} {'before':>6s} {'after':>6s} {'ratio':>5s}  tripped  selected"]
        for d in self.decisions:
            rows.append(
                f"{d['name']:40s} {d['channels_before']:6d} {d['channels_after']:6d} {d['ratio']:5.2f}  "
                f"{str(d['tripped_task'] or '-'):8s} {'yes' if d['selected'] else 'no'}"
            )
        return "\n".join(rows)


def prune(
    model: nn.Module,
    loss_fn: TaskLoss,
    batches: Iterable[tuple[torch.Tensor, Any]],
    example_input: torch.Tensor,
    tasks: Sequence[str] | None = None,
    leaf_modules: Sequence[str | type] = (),
    head_reads: HeadMatcher | None = None,
    train_mode_leaves: tuple[type, ...] = (),
    img_size: int | tuple[int, int] | None = None,
    state_path: str | Path | None = None,
    resume: bool = False,
    progress: Callable[[dict[str, Any]], None] | bool | None = None,
    fingerprint: dict[str, Any] | None = None,
    settings: PruneSettings | None = None,
    shard: Shard | None = None,
    oracle_dtype: torch.dtype = torch.float32,
    suffix_replay: str = "auto",
    chunk: int = 0,
    **options: Any,
) -> PruneResult:
    """Prune ``model`` with PAGCP.

    Args:
        model: a CNN torch.fx can trace (``leaf_modules`` names modules to keep opaque, ``head_reads`` is a
            head matcher saying which convs inside them read their inputs, :mod:`pagcp.graph.heads`).
        loss_fn: ``loss_fn(outputs, targets)`` -> 1-D tensor of task losses of one batch (means).
        batches: the oracle's data, ``(inputs, targets)`` pairs on the model's device, fixed for the search.
        example_input: one input batch for tracing (e.g. ``torch.zeros(1, 3, 224, 224)``).
        tasks: task names (default ``task0``...); their number must match ``loss_fn``'s output.
        train_mode_leaves: leaf module classes that run in training mode for the loss (YOLO's Detect).
        img_size: the size FLOPs are counted at (default: the example input's).
        state_path: JSON file the search writes after every unit; ``resume=True`` continues it.
        progress: True for a progress bar (:class:`pagcp.engine.progress.SearchProgress`), or a callable
            called with a dict per event: ``event="start"`` when a unit's search begins (``unit``,
            ``position`` = units decided, ``total``, ``candidates``), ``"candidates"`` as they are decided
            (``done``, ``candidates``), and ``"unit"`` after every unit (``unit``, ``position``, ``total``,
            ``ratio``, ``gflops``, ``tripped``).
        fingerprint: what identifies the model and data in the state file (a resume on others fails); the
            number of units found is added to it.
        shard: this process's share of ``batches`` in a torchrun-sharded search (:class:`Shard`); only the
            main process writes ``state_path``.
        oracle_dtype: the precision of the oracle's forward passes (float32, bfloat16 or float16; the losses
            are summed in float64 whatever it is).
        suffix_replay: how a unit's candidate passes run: walked ("off"), replayed from a CUDA graph
            ("graph"), a traced graph ("trace") or a compiled one ("compile"); "auto" is "graph" on CUDA and
            "off" elsewhere (:mod:`pagcp.engine.replay`).
        chunk: candidates per oracle pass (0: 1 on the CPU, sized from free memory on a GPU). Like
            ``suffix_replay`` and the device, it changes how fast the search runs, never what it decides.
        settings / **options: a :class:`pagcp.engine.settings.PruneSettings`, or its fields (initial_rate,
            initial_thres, exp, topk, round, rate_slope, thres_slope, ratios, compression, saliency, compat,
            target_gflops, max_rounds, units). ``compat="reference"`` takes the reference's search rules
            (:mod:`pagcp.engine.compat`); its data rules (split, subset, batch) are the caller's here, since
            the caller gives the batches.
    """
    if settings is not None and options:
        raise TypeError(f"pass either settings= or setting keywords, not both ({', '.join(options)})")
    s = settings if settings is not None else PruneSettings(**options)
    batches = list(batches)
    model.eval()
    graph = trace(model, example_input, leaf_modules=leaf_modules, head_reads=head_reads)
    if tasks is None:
        with torch.no_grad():
            n_tasks = torch.as_tensor(loss_fn(model(batches[0][0]), batches[0][1])).numel()
        tasks = [f"task{i}" for i in range(n_tasks)]
    size = img_size if img_size is not None else tuple(example_input.shape[-2:])
    oracle = SubsetOracle(graph, batches, loss_fn, tasks, chunk, train_mode_leaves=train_mode_leaves, shard=shard,
                          dtype=oracle_dtype, replay=suffix_replay)  # fmt: skip
    fingerprint = {**(fingerprint or {}), "units": len(graph.units)}
    bar = SearchProgress() if progress is True else None
    progress = bar or progress or None
    search = Search(graph, oracle, s, size, state_path=state_path, fingerprint=fingerprint, progress=progress)
    try:
        keep = search.run(resume=resume)
    finally:
        if bar is not None:
            bar.close()
    st = search.state
    return PruneResult(
        keep, st.decisions, graph.slice(keep), graph, st.history, st.evaluations, st.seconds, st.lam, st.stop_rule
    )
