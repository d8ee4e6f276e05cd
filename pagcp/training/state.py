"""The resumable training state: everything ``last.pt`` carries under ``meta["train_state"]`` so that a run
continues exactly where it stopped, and the helpers that find, read, restore and strip it.

The state holds the raw (non-EMA) weights, the optimizer, EMA and AMP grad-scaler states, the epoch just
finished, the best fitness so far, the python/numpy/torch RNG states, the settings and the hyper-parameters.
"""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pagcp.errors import CheckpointError
from pagcp.models.checkpoint import load_checkpoint_file, save_model
from pagcp.training.ema import ModelEMA

# ----------------------------------------------------------------------------------------------- RNG states


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


# ----------------------------------------------------------------------------------------------- capture, restore


def capture_train_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: ModelEMA,
    scaler: torch.amp.GradScaler,
    epoch: int,
    best_fitness: float,
    settings: Any,
    hyp: dict,
) -> dict[str, Any]:
    """The training state after ``epoch`` (a dataclass ``settings``), ready for ``save_model(train_state=...)``."""
    return {
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "ema": ema.state(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "best_fitness": best_fitness,
        "rng": rng_states(),
        "settings": dataclasses.asdict(settings),
        "hyp": hyp,
    }


def _load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    # save_model turns dict keys into strings; the optimizer indexes its state by parameter number
    state = {"state": {int(k): v for k, v in state["state"].items()}, "param_groups": state["param_groups"]}
    optimizer.load_state_dict(state)


def restore_train_state(
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    ema: ModelEMA,
    scaler: torch.amp.GradScaler,
    device: torch.device,
) -> tuple[int, float]:
    """Load a captured state into a run's optimizer, EMA and scaler and restore the RNG states.

    The raw weights were loaded into the model by ``read_train_state``. Returns (first epoch to run, best
    fitness so far).
    """
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    _load_optimizer_state(optimizer, state["optimizer"])
    ema.load_state(state["ema"])
    ema.module.to(device)
    start_epoch, best_fitness = int(state["epoch"]) + 1, float(state["best_fitness"])
    set_rng_states(state["rng"])
    return start_epoch, best_fitness


# ----------------------------------------------------------------------------------------------- checkpoint files


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


def meta_without_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's metadata less its training state (what a finished run's ``last.pt`` keeps)."""
    return {k: v for k, v in getattr(load_checkpoint_file(path), "meta", {}).items() if k != "train_state"}


def write_half_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, **meta: Any) -> Path:
    """Copy a checkpoint's model to ``dst`` with fp16 weights and no training state (for shipping)."""
    model = load_checkpoint_file(src)
    kept = {k: v for k, v in getattr(model, "meta", {}).items() if k != "train_state"}
    return save_model(model.half(), dst, **{**kept, **meta, "dtype": "float16"})
