"""Training and fine-tuning of YOLOv5 models (single process or torchrun DDP), resumable exactly.

``train(model, data, settings)`` runs the YOLOv5 recipe (``pagcp.training.optim``, ``pagcp.training.ema``):
SGD nesterov with three parameter groups, gradient accumulation to the nominal batch 64, warmup, one-cycle
cosine lr, EMA of the weights, AMP on CUDA, validation of the EMA model every epoch, and ``last.pt`` / ``best.pt`` pagcp
checkpoints (EMA weights; a pruned model keeps its pruned widths). ``last.pt`` also carries the training
state under ``meta["train_state"]`` (raw weights, optimizer, EMA, RNG states, settings) until the run ends.

Determinism: the data order and augmentation of an epoch are functions of (seed, rank, epoch) only, the lr
schedule is a function of (epoch, iteration), and gradient accumulation never spans an epoch boundary (the
last batch of an epoch always steps), so a run resumed from any epoch's ``last.pt`` ends with exactly the
weights of an uninterrupted run on the same device and thread count.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from pagcp.data import create_dataloader, load_data_config
from pagcp.data.dataset import YoloDataset
from pagcp.detection.evaluate import evaluate
from pagcp.detection.loss import ComputeLoss
from pagcp.devices import distributed_env, init_distributed, select_device
from pagcp.errors import CheckpointError, ConfigError
from pagcp.hyps import load_hyp
from pagcp.models.checkpoint import load_checkpoint_file, save_model
from pagcp.runs import increment_run_dir, save_yaml
from pagcp.training.ema import ModelEMA, unwrap
from pagcp.training.optim import NOMINAL_BATCH, WARMUP_MIN_ITERS, Schedule, build_optimizer
from pagcp.training.results import ResultsLog

LOGGER = logging.getLogger(__name__)

GRAD_CLIP_NORM = 10.0
LOSS_NAMES = ("box", "obj", "cls")
RESULT_COLUMNS = (
    "epoch",
    "train/box_loss",
    "train/obj_loss",
    "train/cls_loss",
    "metrics/precision",
    "metrics/recall",
    "metrics/mAP_0.5",
    "metrics/mAP_0.5:0.95",
    "fitness",
    "lr/bn_weights",
    "lr/weights",
    "lr/biases",
    "seconds",
)


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


# ----------------------------------------------------------------------------------------------- processes


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, rank: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    info.dataset.rng = np.random.default_rng(torch.initial_seed() % 2**32)


def rng_states() -> dict[str, Any]:
    """Python, numpy and torch RNG states as checkpoint-safe values (tensors, lists, numbers)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "python": {"version": version, "state": list(mt), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what ``rng_states`` returned."""
    py, npy = states["python"], states["numpy"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"]), py["gauss"]))
    np.random.set_state(
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"])
    )
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ----------------------------------------------------------------------------------------------- checkpoints


def _load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    # save_model turns dict keys into strings; the optimizer indexes its state by parameter number
    state = {"state": {int(k): v for k, v in state["state"].items()}, "param_groups": state["param_groups"]}
    optimizer.load_state_dict(state)


def read_train_state(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """The model (raw training weights, its own widths) and training state stored in a run's ``last.pt``.

    ``path`` is a ``last.pt`` or a run folder holding ``weights/last.pt``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "weights" / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"--resume {path}: no such checkpoint (pass a run's weights/last.pt or its folder)")
    model = load_checkpoint_file(path)
    state = getattr(model, "meta", {}).get("train_state")
    if not state:
        raise CheckpointError(
            f"--resume {path}: this checkpoint holds no training state (the run finished, or it "
            "was not written by pagcp.train); fine-tune it with --weights instead"
        )
    model.load_state_dict(state["model"])
    return model, state


def latest_run_checkpoint(project: str | os.PathLike = "runs/train") -> Path:
    """The most recently written ``last.pt`` under ``project`` that can still be resumed."""
    candidates = sorted(Path(project).glob("*/weights/last.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not candidates:
        raise CheckpointError(f"--resume: no runs/*/weights/last.pt found under {project}; pass the checkpoint path")
    return candidates[0]


def write_half_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, **meta: Any) -> Path:
    """Copy a checkpoint's model to ``dst`` with fp16 weights and no training state (for shipping)."""
    model = load_checkpoint_file(src)
    kept = {k: v for k, v in getattr(model, "meta", {}).items() if k != "train_state"}
    return save_model(model.half(), dst, **{**kept, **meta, "dtype": "float16"})


# ----------------------------------------------------------------------------------------------- the loop


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
        worker_init_fn=_seed_worker if workers else None,
        generator=generator,
    )
    return loader, sampler, generator


def _sync_buffers(model: nn.Module) -> None:
    """Give every process rank 0's BatchNorm statistics (DDP only broadcasts them before each forward)."""
    for buffer in model.buffers():
        dist.broadcast(buffer, 0)


def _validate(model: nn.Module, loader: DataLoader | None, half: bool) -> dict[str, float]:
    """Scalar validation figures (map50, map50_95, precision, recall, fitness); {} without a val split."""
    if loader is None:
        return {}
    result = evaluate(model, loader, half=half)
    return {k: float(result[k]) for k in ("precision", "recall", "map50", "map50_95", "fitness")}


def _check_settings(model: nn.Module, cfg: dict, s: TrainSettings, world: int) -> int:
    stride = int(max(unwrap(model).stride.max().item(), 32))
    if s.img_size % stride:
        raise ConfigError(f"--img {s.img_size}: must be a multiple of the model's max stride {stride}")
    if s.epochs < 1:
        raise ConfigError(f"--epochs {s.epochs}: must be at least 1")
    if s.batch_size < 1 or s.batch_size % world:
        raise ConfigError(f"--batch {s.batch_size}: must be a positive multiple of the process count {world}")
    nc = int(unwrap(model).nc)
    if nc != cfg["nc"]:
        raise ConfigError(
            f"--data {s.data}: has nc={cfg['nc']} classes but the model (--weights/--cfg) has "
            f"nc={nc}; train a model built for this data (e.g. --cfg yolov5n) or use matching data"
        )
    if not cfg.get("train"):
        raise ConfigError(f"--data {s.data}: no 'train' split")
    return stride


def train(
    model: nn.Module,
    data: str | dict,
    settings: TrainSettings,
    resume_state: dict | None = None,
    on_epoch_end: Callable[[int, dict], bool | None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``data`` (a data yaml, ``"demo"`` or a config dict) and return the final results.

    ``settings.save_dir`` (and ``settings.data`` when unset) are filled in. ``resume_state`` is the training
    state from ``read_train_state`` (``model`` must then be its model).
    ``on_epoch_end(epoch, results)`` runs on every process after each epoch; returning True stops the run
    there (the checkpoints of that epoch are written, ``last.pt`` keeps its training state).
    Returns epochs, best_fitness, map50, map50_95, precision, recall (last epoch), seconds, save_dir, last,
    best (paths) and ``model`` (the final EMA model, eval mode).
    """
    start_time = time.time()
    rank, world, local_rank = distributed_env()
    device = select_device(settings.device, local_rank, world)
    own_group = init_distributed(device)
    try:
        return _run(model, data, settings, resume_state, on_epoch_end, rank, world, device, start_time)
    finally:
        if own_group and dist.is_initialized():
            dist.destroy_process_group()


def _run(model, data, s: TrainSettings, resume_state, on_epoch_end, rank, world, device, start_time):
    main = rank == 0
    cfg = load_data_config(data)
    hyp = load_hyp(s.hyp)
    stride = _check_settings(model, cfg, s, world)
    s.data = s.data or (data if isinstance(data, str) else cfg.get("yaml_file"))
    unwrap(model).names = list(cfg["names"])
    if resume_state is None:
        save_dir = increment_run_dir(s.project, s.name, s.exist_ok)
        if world > 1:  # every process must agree on the folder rank 0 picked
            box = [str(save_dir)]
            dist.broadcast_object_list(box, 0)
            save_dir = Path(box[0])
        s.save_dir = str(save_dir)
    save_dir = Path(s.save_dir)
    weights_dir = save_dir / "weights"
    if main:
        weights_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(save_dir / "opt.yaml", {**dataclasses.asdict(s), "hyp": hyp, "world_size": world})
        LOGGER.info(
            "training in %s: %s",
            save_dir,
            ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(s).items() if k != "hyp"),
        )

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
    if main and cfg.get("val"):
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

    model = unwrap(model).to(device).train()
    for p in model.parameters():
        p.requires_grad_(True)
    optimizer = build_optimizer(model, hyp, s.batch_size, s.nominal_batch)
    start_epoch, best_fitness = 0, -1.0
    if world > 1:  # wrapping broadcasts rank 0's weights to every process
        if s.sync_bn and device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        train_model: nn.Module = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    else:
        train_model = model
    ema = ModelEMA(model, decay=s.ema_decay)
    compute_loss = ComputeLoss(model, hyp, s.img_size)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    if resume_state is not None:
        if resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        _load_optimizer_state(optimizer, resume_state["optimizer"])
        ema.load_state(resume_state["ema"])
        ema.module.to(device)
        start_epoch, best_fitness = int(resume_state["epoch"]) + 1, float(resume_state["best_fitness"])
        set_rng_states(resume_state["rng"])
        if start_epoch >= s.epochs:
            raise CheckpointError(f"--resume {save_dir}: all {s.epochs} epochs are already done")
        LOGGER.info("resuming %s from epoch %d of %d", save_dir, start_epoch, s.epochs)
    nb = len(loader)
    schedule = Schedule(hyp, s.epochs, nb, s.batch_size, s.nominal_batch, s.warmup_min_iters)
    log = ResultsLog(save_dir, RESULT_COLUMNS)
    if main:
        log.truncate(start_epoch)
        LOGGER.info(
            "%d batches of %d per epoch and process, accumulate %d, warmup %d iterations, %d process(es)",
            nb,
            per_rank,
            schedule.accumulate,
            schedule.warmup,
            world,
        )
    last, best = weights_dir / "last.pt", weights_dir / "best.pt"
    metrics: dict[str, float] = {}
    epoch = start_epoch - 1
    for epoch in range(start_epoch, s.epochs):
        epoch_start = time.time()
        sampler.set_epoch(epoch)
        epoch_seed = _epoch_seed(s.seed, rank, epoch)
        generator.manual_seed(epoch_seed)
        train_set.rng = np.random.default_rng(epoch_seed)
        model.train()
        mean_loss = torch.zeros(3, device=device)
        since_step = 0
        optimizer.zero_grad(set_to_none=True)
        bar = tqdm(loader, total=nb, desc=f"epoch {epoch + 1}/{s.epochs}", disable=not main or None, leave=False)
        log_every = max(nb // 5, 1) if main and bar.disable else 0  # no terminal: a few log lines instead
        for i, (imgs, targets, _, _) in enumerate(bar):
            iteration = i + nb * epoch
            schedule.apply(optimizer, epoch, iteration)
            imgs = imgs.to(device, non_blocking=True).float() / 255.0
            with torch.autocast(device.type, enabled=amp):
                preds = train_model(imgs)
                loss, items = compute_loss(preds, targets.to(device))
            if world > 1:
                loss = loss * world  # DDP averages gradients over processes; the loss is a per-batch sum
            scaler.scale(loss).backward()
            since_step += 1
            if since_step >= schedule.accumulation(iteration) or i == nb - 1:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), max_norm=GRAD_CLIP_NORM)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                if world > 1:
                    _sync_buffers(model)
                ema.update(model)
                since_step = 0
            mean_loss = (mean_loss * i + items) / (i + 1)
            if main:
                bar.set_postfix({n: f"{v:.4f}" for n, v in zip(LOSS_NAMES, mean_loss.tolist())}, refresh=False)
                if log_every and (i + 1) % log_every == 0:
                    LOGGER.info(
                        "epoch %d/%d batch %d/%d: loss box %.4f obj %.4f cls %.4f (%.0fs)",
                        epoch + 1,
                        s.epochs,
                        i + 1,
                        nb,
                        *mean_loss.tolist(),
                        time.time() - epoch_start,
                    )
        bar.close()
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        stop = False
        if main:
            metrics = _validate(ema.module, val_loader, amp)
            fitness = metrics.get("fitness", 0.0)
            row = {
                "epoch": epoch,
                **{f"train/{n}_loss": v for n, v in zip(LOSS_NAMES, mean_loss.tolist())},
                "metrics/precision": metrics.get("precision", 0.0),
                "metrics/recall": metrics.get("recall", 0.0),
                "metrics/mAP_0.5": metrics.get("map50", 0.0),
                "metrics/mAP_0.5:0.95": metrics.get("map50_95", 0.0),
                "fitness": fitness,
                **{f"lr/{k}": v for k, v in lrs.items()},
                "seconds": time.time() - epoch_start,
            }
            log.append(row)
            improved = fitness > best_fitness or not metrics  # without a val split best.pt follows last.pt
            best_fitness = max(best_fitness, fitness)
            epoch_meta = {
                "epoch": epoch,
                "epochs": s.epochs,
                "fitness": fitness,
                "best_fitness": best_fitness,
                "metrics": metrics,
                "settings": dataclasses.asdict(s),
                "hyp": hyp,
            }
            state = {
                "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "ema": ema.state(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "best_fitness": best_fitness,
                "rng": rng_states(),
                "settings": dataclasses.asdict(s),
                "hyp": hyp,
            }
            save_model(ema.module, last, **epoch_meta, train_state=state)
            if improved:
                save_model(ema.module, best, **epoch_meta)
            LOGGER.info(
                "epoch %d/%d: loss box %.4f obj %.4f cls %.4f | P %.3f R %.3f mAP50 %.4f mAP50-95 %.4f | %.0fs",
                epoch + 1,
                s.epochs,
                *mean_loss.tolist(),
                metrics.get("precision", 0.0),
                metrics.get("recall", 0.0),
                metrics.get("map50", 0.0),
                metrics.get("map50_95", 0.0),
                row["seconds"],
            )
        if on_epoch_end is not None:
            stop = bool(on_epoch_end(epoch, dict(metrics)))
        if world > 1:
            flag = torch.tensor([int(stop)], device=device)
            dist.broadcast(flag, 0)
            stop = bool(flag.item())
        if stop:
            break
    finished = epoch == s.epochs - 1
    if main:
        try:
            log.plot()
        except (ImportError, RuntimeError, ValueError) as e:
            LOGGER.warning("results.png not written: %s", e)
    if main and finished:
        final_meta = {k: v for k, v in load_checkpoint_file(last).meta.items() if k != "train_state"}
        save_model(ema.module, last, **final_meta)  # the finished run keeps no training state
    if world > 1:
        dist.barrier()
    return {
        "epochs": epoch + 1,
        "finished": finished,
        "best_fitness": best_fitness,
        "map50": metrics.get("map50", float("nan")),
        "map50_95": metrics.get("map50_95", float("nan")),
        "precision": metrics.get("precision", float("nan")),
        "recall": metrics.get("recall", float("nan")),
        "seconds": round(time.time() - start_time, 1),
        "save_dir": str(save_dir),
        "last": str(last),
        "best": str(best) if best.exists() else None,
        "model": ema.module.eval(),
    }
