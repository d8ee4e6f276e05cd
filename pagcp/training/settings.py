"""The settings of a training run: ``TrainSettings`` (saved as ``opt.yaml`` and in ``last.pt``) and the checks
that they fit the model, the data and the process count before anything is built."""

from __future__ import annotations

import dataclasses

from pagcp.errors import ConfigError
from pagcp.training.optim import NOMINAL_BATCH, WARMUP_MIN_ITERS


@dataclasses.dataclass
class TrainSettings:
    """Resolved settings of a run (saved as ``opt.yaml`` and in ``last.pt``)."""

    epochs: int = 100
    img_size: int = 640
    batch_size: int = 16  # total over all processes
    device: str = "cpu"
    hyp: str | dict = "scratch"
    workers: int = 2
    seed: int = 0
    project: str = "runs/train"
    name: str = "exp"
    exist_ok: bool = False
    save_dir: str | None = None  # set when the run starts (or from the resumed checkpoint)
    sync_bn: bool = False
    cache: bool = False
    nominal_batch: int = NOMINAL_BATCH
    warmup_min_iters: int = WARMUP_MIN_ITERS
    ema_decay: float = 0.9999
    weights: str | None = None  # provenance only: what the model was loaded from
    data: str | None = None  # data spec as given ("demo", a yaml path)
    #: weight of the distillation loss (pagcp.training.distill; 0: none) and the teacher's weights spec
    distill: float = 0.0
    teacher: str | None = None


def check_settings(cfg: dict, s: TrainSettings, world: int, stride: int) -> None:
    """Raise ``ConfigError`` when the settings do not fit the data config, the process count or the model's
    ``stride`` (the multiple every image size must be, as its family says). The model's class count is checked
    against the data by its family before training starts."""
    if s.img_size % stride:
        raise ConfigError(f"--img {s.img_size}: must be a multiple of the model's max stride {stride}")
    if s.epochs < 1:
        raise ConfigError(f"--epochs {s.epochs}: must be at least 1")
    if s.batch_size < 1 or s.batch_size % world:
        raise ConfigError(f"--batch {s.batch_size}: must be a positive multiple of the process count {world}")
    if s.distill < 0 or (s.distill > 0 and not s.teacher):
        raise ConfigError(f"--distill {s.distill}: needs a weight >= 0 and, when > 0, a teacher (--teacher)")
    if not cfg.get("train"):
        raise ConfigError(f"--data {s.data}: no 'train' split")
