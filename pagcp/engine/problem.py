"""A pruning problem: one model, the oracle's fixed batches and its per-task loss, ready for the engine.

A model family (:mod:`pagcp.families`) builds a :class:`Problem` for its models (YOLOv5: box, obj, cls;
Ultralytics detection: box, cls, dfl; any other family: its own tasks); the prune run, the benchmarks and the
tests then ask it for the engine's oracle (:meth:`Problem.oracle`), the straightforward check
(:meth:`Problem.naive`) or a whole search (:meth:`Problem.prune`). Nobody wires a loss and its task names by
hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pagcp.engine.api import PruneResult, prune
from pagcp.engine.naive import NaiveOracle
from pagcp.engine.naive_rounds import naive_prune
from pagcp.engine.oracle import Batch, Shard, SubsetOracle, TaskLoss
from pagcp.engine.settings import PruneSettings
from pagcp.errors import ConfigError
from pagcp.graph import ChannelGraph, HeadMatcher, trace


def _unchanged(model: nn.Module) -> nn.Module:
    return model


@dataclass
class Problem:
    """What PAGCP's oracle measures on a model: fixed batches, the task losses and how to trace the model.

    ``leaf_modules`` are traced as leaves (a detection head), ``head_reads`` is the family's matcher of the
    convs inside them that read their inputs, ``train_mode_leaves`` run in training mode for the loss (a
    head's raw outputs). ``naive_loss_fn`` is the loss the straightforward check uses (default ``loss_fn``;
    YOLOv5's re-matches targets at every call, as the reference does). ``finish`` makes a sliced model
    consistent for its own forward code.
    """

    model: nn.Module
    batches: list[Batch]
    loss_fn: TaskLoss
    tasks: tuple[str, ...]
    img_size: int
    items: list[str] = field(default_factory=list)  # what the batches were built from (e.g. image files)
    leaf_modules: tuple = ()
    train_mode_leaves: tuple[type, ...] = ()
    head_reads: HeadMatcher | None = None
    naive_loss_fn: TaskLoss | None = None
    finish: Callable[[nn.Module], nn.Module] = _unchanged
    shard: Shard | None = None  # this process's share of the batches in a sharded search
    dtype: torch.dtype = torch.float32  # the precision of the oracle's forward passes
    replay: str = "auto"  # how the oracle runs a unit's candidate passes (pagcp.engine.replay.REPLAY_MODES)

    def __post_init__(self) -> None:
        if not self.batches:
            raise ConfigError("the oracle needs at least one batch of data")

    @property
    def device(self) -> torch.device:
        return self.batches[0][0].device

    def example_input(self) -> torch.Tensor:
        """The input the model is traced with: one square image of ``img_size`` with the batches' channels."""
        channels = self.batches[0][0].shape[1]
        return torch.zeros(1, channels, self.img_size, self.img_size, device=self.device)

    def trace(self) -> ChannelGraph:
        """The model's channel graph, traced with this problem's leaves and head matcher."""
        return trace(self.model, self.example_input(), leaf_modules=self.leaf_modules, head_reads=self.head_reads)

    def oracle(self, graph: ChannelGraph, chunk: int = 0) -> SubsetOracle:
        """The engine's oracle over these batches (``chunk``: candidates per pass, 0 for the device's default)."""
        return SubsetOracle(graph, self.batches, self.loss_fn, self.tasks, chunk,
                            train_mode_leaves=self.train_mode_leaves, shard=self.shard, dtype=self.dtype,
                            replay=self.replay)  # fmt: skip

    def naive_oracle(self, graph: ChannelGraph) -> NaiveOracle:
        """The straightforward oracle over the same batches."""
        return NaiveOracle(graph, self.batches, self.naive_loss_fn or self.loss_fn, self.train_mode_leaves)

    def naive(self, graph: ChannelGraph, settings: PruneSettings) -> dict[str, Any]:
        """The straightforward search (:mod:`pagcp.engine.naive`) over the same batches."""
        return naive_prune(graph, self.batches, self.naive_loss_fn or self.loss_fn, self.tasks, settings,
                           self.img_size, self.train_mode_leaves)  # fmt: skip

    def prune(self, settings: PruneSettings | None = None, **kwargs: Any) -> PruneResult:
        """PAGCP on ``self.model`` with this oracle; ``kwargs`` go to :func:`pagcp.engine.api.prune`.
        ``result.model`` is the sliced model, made consistent by ``finish``."""
        result = prune(
            self.model, self.loss_fn, self.batches, self.example_input(), tasks=list(self.tasks),
            leaf_modules=self.leaf_modules, head_reads=self.head_reads, train_mode_leaves=self.train_mode_leaves,
            img_size=self.img_size, settings=settings, shard=self.shard, oracle_dtype=self.dtype,
            suffix_replay=self.replay, **kwargs,
        )  # fmt: skip
        result.model = self.finish(result.model)
        return result
