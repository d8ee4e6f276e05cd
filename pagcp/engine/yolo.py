"""The one YOLO oracle builder: what every caller (CLI, benchmarks, tests) uses to prune a YOLOv5 model.

A :class:`YoloProblem` holds the oracle's data (a seeded subset of a split, decoded once, batched exactly as
the validation loader batches it: letterbox, rectangular batches, no augmentation), the per-task loss (box,
obj, cls of YOLOv5's loss) and what the engine must know about the model (the Detect head computes its raw
training-mode outputs for the loss). Pass its fields to :func:`pagcp.prune`, or build an oracle from it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from pagcp.data import create_dataloader
from pagcp.engine.oracle import Batch, TaskLoss
from pagcp.errors import ConfigError

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
    n: int | None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    workers: int = 0,
) -> list[Batch]:
    """Decode a seeded subset of a YOLO split once, as the validation loader would batch it, onto ``device``."""

    if n is not None and n > len(files):
        raise ConfigError(
            f"--subset {n} is larger than the split ({len(files)} images); use --subset all or <= {len(files)}"
        )
    chosen = [files[i] for i in subset_indices(len(files), n, seed)]
    loader, _ = create_dataloader(
        chosen, img_size, batch_size, stride=stride, rect=True, pad=0.5, nc=nc, workers=workers, prefix="oracle: "
    )
    batches = []
    for imgs, targets, _paths, _shapes in loader:
        batches.append((imgs.to(device).float() / 255, targets.to(device)))
    return batches


def yolo_task_loss(compute_loss) -> TaskLoss:
    """box, obj, cls of a YOLOv5 ComputeLoss (raw outputs; an eval-mode (decoded, raw) pair works too)."""

    def loss_fn(out: Any, targets: torch.Tensor) -> torch.Tensor:
        raw = out[1] if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], list) else out
        return compute_loss(raw, targets)[1]

    return loss_fn
