"""Devices and processes: the ``--device`` flag, the torchrun environment and its process group."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any

import torch
import torch.distributed as dist

from pagcp.errors import ConfigError


def select_device(device: str | torch.device | None, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """``''``/None/``auto`` (CUDA when available), ``cpu``, ``0``, ``0,1`` (first) or ``cuda:N`` -> a device.

    Under DDP (``world_size > 1``) any CUDA choice means this process's local GPU, ``cuda:local_rank``.
    Raises ConfigError naming ``--device`` when the device does not exist here.
    """
    if isinstance(device, torch.device):
        return device
    text = str(device or "").strip().lower()
    if text in ("", "auto"):
        if not torch.cuda.is_available():
            return torch.device("cpu")
        text = "0"
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device!r}: CUDA is not available on this machine; use --device cpu")
    if world_size > 1:
        return torch.device("cuda", local_rank)
    index = text.removeprefix("cuda").lstrip(":").split(",")[0] or "0"
    if not index.isdigit():
        raise ConfigError(f"--device {device!r}: expected cpu, a CUDA index such as 0, or cuda:0")
    if int(index) >= torch.cuda.device_count():
        raise ConfigError(f"--device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return torch.device(f"cuda:{index}")


def describe_device(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H200, 139 GiB)`` or ``cpu (no CUDA device visible)`` / ``cpu (N threads)``."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{device} ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    if not torch.cuda.is_available():
        n = torch.get_num_threads()
        return f"cpu ({n} thread{'s' if n != 1 else ''}; no CUDA device visible)"
    return f"cpu ({torch.get_num_threads()} threads)"


def distributed_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment; (0, 1, 0) without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init_distributed(device: torch.device) -> bool:
    """Join the torchrun process group (nccl on GPUs, gloo on CPU) unless alone or already joined.

    Returns True when this call created the group (the caller then destroys it).
    """
    if distributed_env()[1] == 1 or dist.is_initialized():
        return False
    die_with_launcher()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def die_with_launcher() -> None:
    """Have Linux kill this process when its parent (torchrun's agent) dies. torchrun starts every worker in a
    session of its own, so a launcher killed outright (SIGKILL, an OOM kill) would otherwise leave its workers
    running the run on, beside whatever ``--resume`` starts next in the same folder. Nothing elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher died before the request: follow it now
        os.kill(os.getpid(), signal.SIGKILL)


def is_main_process() -> bool:
    """True outside torchrun and on rank 0: the process that writes files and prints."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every process of the group (nothing outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every process (``value`` itself outside torchrun)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, 0)
    return box[0]


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum of ``value`` over every process, as a new tensor on ``value``'s device and dtype.

    nccl reduces CUDA tensors only: under it the sum is taken on this process's GPU.
    """
    return _all_reduce(value, "sum")


def all_reduce_min(value: torch.Tensor) -> torch.Tensor:
    """The element-wise minimum of ``value`` over every process (see :func:`all_reduce_sum`)."""
    return _all_reduce(value, "min")


def _all_reduce(value: torch.Tensor, op: str) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()):
        return value.clone()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else value.device
    work = value.detach().to(device, copy=True)
    dist.all_reduce(work, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MIN)
    return work.to(value.device)
