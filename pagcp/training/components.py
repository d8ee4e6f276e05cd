"""What a training run updates: the model on its device and, under DDP, its DistributedDataParallel wrapper,
the SGD optimizer, the AMP grad scaler, the EMA of the weights and the YOLOv5 loss, built in the order that
keeps runs reproducible."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from pagcp.detection.loss import ComputeLoss
from pagcp.training.distill import Distiller
from pagcp.training.ema import ModelEMA, unwrap
from pagcp.training.optim import build_optimizer
from pagcp.training.settings import TrainSettings


@dataclasses.dataclass
class TrainComponents:
    """The objects one process trains with.

    ``model`` is the bare model (what the optimizer, EMA and checkpoints see); ``train_model`` is what the
    forward pass runs (the DDP wrapper with several processes, else ``model`` itself).
    """

    model: nn.Module
    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: ModelEMA
    compute_loss: ComputeLoss
    amp: bool  # mixed precision (CUDA only)
    distiller: Distiller | None = None  # the teacher's loss (--distill), else None


def _wrap_ddp(model: nn.Module, s: TrainSettings, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(model, its DistributedDataParallel wrapper); wrapping broadcasts rank 0's weights to every process.

    With ``sync_bn`` on CUDA the BatchNorm layers of the returned model are SyncBatchNorm (same parameters).
    """
    if s.sync_bn and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model, ddp


def build_components(
    model: nn.Module, hyp: dict, s: TrainSettings, device: torch.device, world: int, teacher: nn.Module | None = None
) -> TrainComponents:
    """Move ``model`` to ``device`` in train mode with every parameter trainable and build what trains it
    (with ``s.distill`` > 0, the distillation toward ``teacher`` too)."""
    model = unwrap(model).to(device).train()
    for p in model.parameters():
        p.requires_grad_(True)
    optimizer = build_optimizer(model, hyp, s.batch_size, s.nominal_batch)
    model, train_model = _wrap_ddp(model, s, device) if world > 1 else (model, model)
    ema = ModelEMA(model, decay=s.ema_decay)
    compute_loss = ComputeLoss(model, hyp, s.img_size)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    distiller = Distiller(teacher, s.distill, device) if teacher is not None and s.distill > 0 else None
    return TrainComponents(model, train_model, optimizer, scaler, ema, compute_loss, amp, distiller)
