"""The oracle's data: which items it reads (a seeded subset of a split), YOLO-format images batched as validation
batches them, and a process's share of the batches in a torchrun-sharded search.

Any family uses :func:`subset_indices` and :func:`shard_batches`; the YOLO-format families
(:mod:`pagcp.families`) decode their images with :func:`letterbox_batches`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from pagcp.data import create_dataloader
from pagcp.devices import all_reduce_min, all_reduce_sum
from pagcp.engine.oracle import Batch, Shard
from pagcp.errors import ConfigError


def subset_indices(n_total: int, n: int | None, seed: int = 0) -> list[int]:
    """A fixed, seeded choice of ``n`` of ``n_total`` items (all when n is None), in file order."""
    if n is None or n >= n_total:
        return list(range(n_total))
    return sorted(random.Random(seed).sample(range(n_total), n))


def choose_items(items: Sequence[str], subset: int | None, seed: int) -> list[str]:
    """The oracle's items: ``subset`` of ``items`` drawn with ``seed`` (all when None); refuses a subset larger
    than the split (the message names ``--subset``)."""
    if subset is not None and subset > len(items):
        raise ConfigError(
            f"--subset {subset} is larger than the split ({len(items)} images); use --subset all or <= {len(items)}"
        )
    return [items[i] for i in subset_indices(len(items), subset, seed)]


def letterbox_batches(
    files: Sequence[str],
    img_size: int,
    batch_size: int,
    stride: int,
    nc: int,
    device: torch.device | str = "cpu",
    workers: int = 0,
) -> list[Batch]:
    """Decode YOLO-format images once, batched as the validation loader batches them (letterbox, rectangular
    batches, no augmentation), onto ``device``: ``(images in [0, 1], targets)`` pairs."""
    loader, _ = create_dataloader(
        list(files), img_size, batch_size, stride=stride, rect=True, pad=0.5, nc=nc, workers=workers, prefix="oracle: "
    )
    return [(imgs.to(device).float() / 255, targets.to(device)) for imgs, targets, _paths, _shapes in loader]


def shard_batches(
    batches: list[Batch], shard: tuple[int, int] | None, n_items: int
) -> tuple[list[Batch], Shard | None]:
    """This process's batches and its :class:`Shard` for ``shard=(rank, world)``; all of them and None for one
    process. Every process needs at least one batch."""
    if shard is None or shard[1] == 1:
        return batches, None
    rank, world = shard
    if len(batches) < world:
        raise ConfigError(
            f"--subset {n_items} gives {len(batches)} oracle batches for {world} processes; each needs at least "
            "one: use a larger --subset or a smaller --batch"
        )
    split = Shard(rank, world, len(batches), all_reduce_sum, all_reduce_min)
    return split.take(batches), split
