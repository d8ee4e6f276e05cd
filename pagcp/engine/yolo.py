"""The one YOLO oracle builder: what every caller (CLI, benchmarks, tests) uses to prune a YOLOv5 model.

A :class:`YoloProblem` holds what the oracle measures for a YOLOv5 detector: its data (a seeded subset of a
split, decoded once and batched exactly as the validation loader batches it: letterbox, rectangular batches,
no augmentation), the per-task loss (box, obj, cls of YOLOv5's loss, targets matched once) with the task
names, and what the engine must know about the model (the Detect head computes its raw training-mode outputs
for the loss). Build one with :func:`yolo_problem` from image files, or directly from batches; then
:meth:`YoloProblem.prune` runs PAGCP through :func:`pagcp.engine.api.prune`, and
:meth:`YoloProblem.oracle` / :meth:`YoloProblem.naive` give the engine's and the straightforward oracle.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pagcp.data import create_dataloader
from pagcp.detection.loss import ComputeLoss
from pagcp.devices import all_reduce_min, all_reduce_sum
from pagcp.engine.api import PruneResult, prune
from pagcp.engine.naive import NaiveOracle, naive_prune
from pagcp.engine.oracle import Batch, Shard, SubsetOracle, TaskLoss
from pagcp.engine.settings import PruneSettings
from pagcp.errors import ConfigError
from pagcp.graph import ChannelGraph
from pagcp.models.yolo import Detect

#: the three task losses of YOLOv5's detection loss, in ComputeLoss's order
YOLO_TASKS = ("box", "obj", "cls")


def subset_indices(n_total: int, n: int | None, seed: int = 0) -> list[int]:
    """A fixed, seeded choice of ``n`` of ``n_total`` images (all when n is None), in file order."""
    if n is None or n >= n_total:
        return list(range(n_total))
    return sorted(random.Random(seed).sample(range(n_total), n))


def yolo_subset(
    files: Sequence[str],
    img_size: int,
    batch_size: int,
    stride: int,
    nc: int,
    device: torch.device | str = "cpu",
    workers: int = 0,
) -> list[Batch]:
    """Decode YOLO images once, batched as the validation loader batches them, onto ``device``."""
    loader, _ = create_dataloader(
        list(files), img_size, batch_size, stride=stride, rect=True, pad=0.5, nc=nc, workers=workers, prefix="oracle: "
    )
    return [(imgs.to(device).float() / 255, targets.to(device)) for imgs, targets, _paths, _shapes in loader]


def yolo_task_loss(model: nn.Module, img_size: int, cache_targets: bool = True) -> TaskLoss:
    """box, obj, cls of YOLOv5's loss for ``model`` (raw outputs; an eval-mode (decoded, raw) pair works too).

    ``cache_targets`` matches each batch's targets to anchors once (the oracle's data never changes);
    False re-matches them at every call, as the reference does.
    """
    compute_loss = ComputeLoss(model, img_size=img_size, cache_targets=cache_targets)

    def loss_fn(out: Any, targets: torch.Tensor) -> torch.Tensor:
        raw = out[1] if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], list) else out
        return compute_loss(raw, targets)[1]

    return loss_fn


def model_stride(model: nn.Module) -> int:
    """The largest stride of a YOLO model's Detect head, at least 32 (image sizes are multiples of it)."""
    return int(max(model.model[-1].stride.max().item(), 32))


@dataclass
class YoloProblem:
    """What PAGCP's oracle measures on a YOLOv5 model: fixed batches and the box/obj/cls losses."""

    model: nn.Module
    batches: list[Batch]
    img_size: int
    files: list[str] = field(default_factory=list)  # the oracle's images, when built from files
    cache_targets: bool = True
    tasks: tuple[str, ...] = YOLO_TASKS
    train_mode_leaves: tuple[type, ...] = (Detect,)
    shard: Shard | None = None  # this process's share of the batches in a sharded search
    dtype: torch.dtype = torch.float32  # the precision of the oracle's forward passes
    replay: str = "auto"  # how the oracle runs a unit's candidate passes (pagcp.engine.replay.REPLAY_MODES)

    def __post_init__(self) -> None:
        if not self.batches:
            raise ConfigError("the YOLO oracle needs at least one batch of images")
        self.loss_fn = yolo_task_loss(self.model, self.img_size, self.cache_targets)

    @property
    def device(self) -> torch.device:
        return self.batches[0][0].device

    def example_input(self) -> torch.Tensor:
        """The input the model is traced with: one square image of ``img_size``."""
        return torch.zeros(1, 3, self.img_size, self.img_size, device=self.device)

    def oracle(self, graph: ChannelGraph, chunk: int = 0) -> SubsetOracle:
        """The engine's oracle over these batches."""
        return SubsetOracle(graph, self.batches, self.loss_fn, self.tasks, chunk,
                            train_mode_leaves=self.train_mode_leaves, shard=self.shard, dtype=self.dtype,
                            replay=self.replay)  # fmt: skip

    def naive(self, graph: ChannelGraph, settings: PruneSettings, cache_targets: bool = False) -> dict[str, Any]:
        """The straightforward search over the same batches (targets re-matched per call, as the reference)."""
        loss_fn = yolo_task_loss(self.model, self.img_size, cache_targets)
        return naive_prune(graph, self.batches, loss_fn, self.tasks, settings, self.img_size, self.train_mode_leaves)

    def naive_oracle(self, graph: ChannelGraph, cache_targets: bool = False) -> NaiveOracle:
        loss_fn = yolo_task_loss(self.model, self.img_size, cache_targets)
        return NaiveOracle(graph, self.batches, loss_fn, self.train_mode_leaves)

    def prune(self, settings: PruneSettings | None = None, **kwargs: Any) -> PruneResult:
        """PAGCP on ``self.model`` with this oracle; ``kwargs`` go to :func:`pagcp.engine.api.prune`."""
        return prune(
            self.model, self.loss_fn, self.batches, self.example_input(), tasks=list(self.tasks),
            train_mode_leaves=self.train_mode_leaves, img_size=self.img_size, settings=settings, shard=self.shard,
            oracle_dtype=self.dtype, suffix_replay=self.replay, **kwargs,
        )  # fmt: skip


def yolo_problem(
    model: nn.Module,
    files: Sequence[str],
    img_size: int,
    batch_size: int,
    subset: int | None,
    seed: int = 0,
    device: torch.device | str | None = None,
    workers: int = 0,
    cache_targets: bool = True,
    shard: tuple[int, int] | None = None,
) -> YoloProblem:
    """The YOLO oracle of ``model``: ``subset`` images drawn (seeded) from ``files`` (all when None).

    ``img_size`` must be a multiple of the model's stride; the batches go to ``device`` (default: the model's).
    ``shard=(rank, world)``: this process keeps its round-robin share of the batches and the oracle sums the
    losses over the processes (a torchrun-sharded search, see :class:`pagcp.engine.oracle.Shard`).
    """
    chosen, batches, split = oracle_batches(model, int(model.model[-1].nc), files, img_size, batch_size, subset, seed,
                                            device, workers, shard)  # fmt: skip
    return YoloProblem(model, batches, img_size, chosen, cache_targets, shard=split)


def oracle_batches(
    model: nn.Module,
    nc: int,
    files: Sequence[str],
    img_size: int,
    batch_size: int,
    subset: int | None,
    seed: int,
    device: torch.device | str | None,
    workers: int,
    shard: tuple[int, int] | None,
) -> tuple[list[str], list[Batch], Shard | None]:
    """The oracle's images of any YOLO family: (the seeded subset of ``files``, this process's batches of it
    on ``device``, the :class:`Shard` of a torchrun-sharded search or None)."""
    if subset is not None and subset > len(files):
        raise ConfigError(
            f"--subset {subset} is larger than the split ({len(files)} images); use --subset all or <= {len(files)}"
        )
    chosen = [files[i] for i in subset_indices(len(files), subset, seed)]
    device = device if device is not None else next(model.parameters()).device
    batches = yolo_subset(chosen, img_size, batch_size, model_stride(model), nc, device, workers)
    if shard is None or shard[1] == 1:
        return chosen, batches, None
    rank, world = shard
    if len(batches) < world:
        raise ConfigError(
            f"--subset {len(chosen)} gives {len(batches)} oracle batches for {world} processes; each needs at least "
            "one: use a larger --subset or a smaller --batch"
        )
    split = Shard(rank, world, len(batches), all_reduce_sum, all_reduce_min)
    return chosen, split.take(batches), split
