"""Exact continuation of an interrupted Ultralytics fine-tune.

Ultralytics continues a run from its ``last.pt`` (``resume=True``) with its epoch count, optimizer, EMA and
early-stopping state, but not to the weights the uninterrupted run reaches: the file holds the EMA and the
optimizer's buffers in float16 and no live weights (the resumed network starts from the EMA), the gradients
accumulated since the last optimizer step are lost and the accumulation count starts again, and later epochs
draw their data order and augmentations from fresh random states. :func:`resumable_trainer` subclasses a trainer
so that a resumed run ends with exactly the weights of an uninterrupted one:

- every epoch draws from seeds of its own (the run's seed, the epoch, the rank): Python's, NumPy's and torch's
  generators and the train loader's are seeded when it starts, the loader's iterator is restarted and its mosaic
  buffer emptied, so an epoch sees the same images and augmentations whatever ran before it in the process;
- ``last.pt`` is written atomically (a kill leaves the previous epoch's whole) and holds, under
  :data:`RESUME_KEY`, the float32 network and EMA, the optimizer's state as it is, the gradients accumulated
  since the last optimizer step and the batch of that step;
- on resume these replace what Ultralytics restored, the gradients are put back, and the first optimizer steps
  come at the batches where the uninterrupted run takes them (Ultralytics' loop counts its accumulation from the
  resumed epoch: its count is shifted until the first step).

When the fine-tune ends the key is dropped from ``last.pt`` (as Ultralytics then strips its own training state).
Nothing here is specific to detection: any Ultralytics trainer class can be wrapped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pagcp.errors import CheckpointError
from pagcp.models.checkpoint import torch_save_atomic

#: the key of pagcp's exact training state in an Ultralytics ``last.pt``
RESUME_KEY = "pagcp_resume"
#: the seeds of one run's epochs are this far apart per rank
_RANK_STRIDE = 1_000_003


@dataclass
class _Steps:
    """Where the training loop is, counted as an uninterrupted run counts it."""

    batch: int | None = None  # batch of the current epoch; None outside the loop
    last: int = -1  # global batch of the last optimizer step
    loop_last: int = -1  # the same as Ultralytics' loop counts it (-1 when its loop starts, resumed or not)
    accumulate: int | None = None  # Ultralytics' accumulation count while the current batch's is shifted
    grads: dict[str, torch.Tensor] = field(default_factory=dict)  # put back when the first resumed epoch starts


def _cpu(value: Any) -> Any:
    """``value`` (tensors, dicts, lists, tuples of them) with every tensor copied to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cpu(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_cpu(v) for v in value)
    return value


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    from ultralytics.utils.torch_utils import unwrap_model

    return unwrap_model(model)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of ``epoch`` of a run seeded ``seed`` in this process (Ultralytics' rank: -1 alone)."""
    from ultralytics.utils import RANK

    return ((int(seed) + 1 + RANK) * _RANK_STRIDE + int(epoch)) % 2**32


def _empty_mosaic_buffer(dataset: Any) -> None:
    """Forget the images an Ultralytics dataset keeps for mosaics (as it forgets them when its buffer is full)."""
    buffer = getattr(dataset, "buffer", None)
    if not isinstance(buffer, list):  # a RAM cache keeps every image and no buffer list
        return
    for i in buffer:
        dataset.ims[i] = dataset.im_hw0[i] = dataset.im_hw[i] = None
    buffer.clear()


def _start_epoch(trainer: Any) -> None:
    """Seed the epoch, restart the train loader, put back the gradients a resumed run carried over."""
    steps = trainer.pagcp_steps
    steps.batch = -1
    seed = epoch_seed(trainer.args.seed, trainer.epoch)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    loader = trainer.train_loader
    if hasattr(loader, "reset"):
        loader.reset()  # the next iterator is made after the seeding, whatever the loader did before
    if isinstance(getattr(loader, "generator", None), torch.Generator):
        loader.generator.manual_seed(seed)
    _empty_mosaic_buffer(loader.dataset)
    if steps.grads:
        params = dict(_unwrap(trainer.model).named_parameters())
        for name, grad in steps.grads.items():
            params[name].grad = grad.to(params[name].device)
        steps.grads = {}


def _start_loop(trainer: Any) -> None:
    trainer.pagcp_steps.loop_last = -1


def _start_batch(trainer: Any) -> None:
    trainer.pagcp_steps.batch += 1


def _end_batch(trainer: Any) -> None:
    steps = trainer.pagcp_steps
    if steps.accumulate is not None:
        trainer.accumulate, steps.accumulate = steps.accumulate, None


_HOOKS = {
    "on_train_start": _start_loop,
    "on_train_epoch_start": _start_epoch,
    "on_train_batch_start": _start_batch,
    "on_train_batch_end": _end_batch,
}


def training_state(trainer: Any) -> dict[str, Any]:
    """What :data:`RESUME_KEY` holds for the epoch ``trainer`` has just finished."""
    model = _unwrap(trainer.model)
    return {
        "epoch": trainer.epoch,
        "model": _cpu(model.state_dict()),
        "ema": _cpu(trainer.ema.ema.state_dict()),
        "updates": trainer.ema.updates,
        "optimizer": _cpu(trainer.optimizer.state_dict()),
        "grads": {n: _cpu(p.grad) for n, p in model.named_parameters() if p.grad is not None},
        "last_step": trainer.pagcp_steps.last,
    }


def restore_training_state(trainer: Any, saved: dict[str, Any], ckpt: dict[str, Any]) -> None:
    """Put ``saved`` (:func:`training_state` of the checkpoint ``ckpt``) in place of what Ultralytics restored."""
    if saved.get("epoch") != ckpt.get("epoch"):
        raise CheckpointError(
            f"{trainer.args.resume}: pagcp's training state is of epoch {saved.get('epoch')} but the checkpoint's "
            f"of epoch {ckpt.get('epoch')}; delete the file to fine-tune again from the start"
        )
    _unwrap(trainer.model).load_state_dict(saved["model"])
    trainer.ema.ema.load_state_dict(saved["ema"])
    trainer.ema.updates = saved["updates"]
    state = saved["optimizer"]
    for group, current in zip(state["param_groups"], trainer.optimizer.param_groups):
        group["fused"] = current.get("fused")  # this run's device picks the kernel
    trainer.optimizer.load_state_dict(state)
    trainer.pagcp_steps.last = saved["last_step"]
    trainer.pagcp_steps.grads = saved["grads"]


def drop_training_state(path: Path) -> None:
    """Remove :data:`RESUME_KEY` from the checkpoint at ``path``, if it has one (atomically)."""
    if not path.is_file():
        return
    ckpt = torch.load(path, map_location="cpu", weights_only=False)  # this run's own file
    if isinstance(ckpt, dict) and RESUME_KEY in ckpt:
        del ckpt[RESUME_KEY]
        torch_save_atomic(ckpt, path)


def resumable_trainer(base: type) -> type:
    """A subclass of the Ultralytics trainer ``base`` whose interrupted runs continue exactly (module docstring)."""

    class ResumableTrainer(base):
        def __init__(self, *args: Any, **kwargs: Any):
            self.pagcp_steps = _Steps()
            super().__init__(*args, **kwargs)

        def run_callbacks(self, event: str) -> None:
            hook = _HOOKS.get(event)
            if hook is not None:
                hook(self)
            super().run_callbacks(event)

        def preprocess_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
            batch = super().preprocess_batch(batch)
            steps = self.pagcp_steps
            if steps.batch is not None and steps.last != steps.loop_last:  # resumed, before its first step
                steps.accumulate = self.accumulate
                self.accumulate += steps.last - steps.loop_last
            return batch

        def optimizer_step(self) -> None:
            super().optimizer_step()
            steps = self.pagcp_steps
            steps.last = steps.loop_last = steps.batch + len(self.train_loader) * self.epoch

        def save_model(self) -> bool:
            final = Path(self.last)
            self.last = final.with_name(f".{final.name}.partial")
            try:
                saved = super().save_model()
            finally:
                written, self.last = self.last, final
            if written.is_file():
                ckpt = torch.load(written, map_location="cpu", weights_only=False)  # written just now
                ckpt[RESUME_KEY] = training_state(self)
                torch_save_atomic(ckpt, final)
                written.unlink()
            return saved

        def resume_training(self, ckpt: dict[str, Any] | None) -> None:
            super().resume_training(ckpt)
            saved = ckpt.get(RESUME_KEY) if ckpt and self.resume else None
            if saved is not None:
                restore_training_state(self, saved, ckpt)

        def final_eval(self) -> None:
            from ultralytics.utils import RANK

            if RANK in (-1, 0):
                drop_training_state(Path(self.last))
            super().final_eval()

    ResumableTrainer.__name__ = ResumableTrainer.__qualname__ = base.__name__
    return ResumableTrainer
