"""The data side of a training run: the augmented, distributed train loader, the rank-0 validation loader,
and the per-epoch reseeding that makes an epoch's data order and augmentation a function of
(seed, rank, epoch) only, which is what lets a resumed run repeat an uninterrupted one exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from pagcp.data import create_dataloader
from pagcp.data.dataset import YoloDataset
from pagcp.training.settings import TrainSettings


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of one process's data order and augmentation in one epoch."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


@dataclasses.dataclass
class TrainLoaders:
    """The loaders of one process: ``train`` (sharded by ``sampler``) and ``val`` (rank 0 only, else None)."""

    train: DataLoader
    sampler: DistributedSampler
    generator: torch.Generator
    dataset: YoloDataset
    val: DataLoader | None

    def start_epoch(self, seed: int, rank: int, epoch: int) -> None:
        """Reseed the shuffling and the augmentation stream for ``epoch`` (the same for any number of workers:
        each image's augmentations come from (stream, its index), :class:`pagcp.data.dataset.YoloDataset`)."""
        self.sampler.set_epoch(epoch)
        seed = epoch_seed(seed, rank, epoch)
        self.generator.manual_seed(seed)
        self.dataset.stream = seed


def _train_loader(
    dataset: YoloDataset, batch_size: int, workers: int, seed: int, rank: int, world: int
) -> tuple[DataLoader, DistributedSampler, torch.Generator]:
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    generator = torch.Generator()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        collate_fn=YoloDataset.collate,
        generator=generator,
    )
    return loader, sampler, generator


def build_loaders(cfg: dict, s: TrainSettings, hyp: dict, stride: int, rank: int, world: int) -> TrainLoaders:
    """Loaders of a run: ``s.batch_size // world`` images per train batch, twice that per val batch."""
    per_rank = s.batch_size // world
    _, train_set = create_dataloader(
        cfg["train"],
        s.img_size,
        per_rank,
        stride,
        hyp,
        augment=True,
        cache=s.cache,
        workers=0,
        seed=s.seed,
        nc=cfg["nc"],
        prefix="train: ",
    )
    loader, sampler, generator = _train_loader(train_set, per_rank, s.workers, s.seed, rank, world)
    val_loader = None
    if rank == 0 and cfg.get("val"):
        val_loader, _ = create_dataloader(
            cfg["val"],
            s.img_size,
            per_rank * 2,
            stride,
            hyp,
            rect=True,
            pad=0.5,
            cache=s.cache,
            workers=s.workers,
            nc=cfg["nc"],
            prefix="val: ",
        )
    return TrainLoaders(loader, sampler, generator, train_set, val_loader)
