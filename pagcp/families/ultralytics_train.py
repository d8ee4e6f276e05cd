"""The fine-tunes of a prune run with Ultralytics' trainer: started, continued after a kill, run under torchrun.

:func:`finetune_checkpoint` runs one fine-tune in this process into ``<folder>/finetune`` with the family's
trainer (pagcp's width-keeping, exactly resumable subclass, :mod:`pagcp.families.ultralytics_resume`): from the
job's pruned checkpoint; from ``weights/last.pt`` with Ultralytics' ``resume=True`` when an interrupted run left
one (to the weights the uninterrupted run ends with); not at all when ``last.pt`` holds a finished fine-tune.

Under torchrun (:func:`finetune_last`, several processes) Ultralytics cannot train inside the launch's
processes: it reads torchrun's ``RANK`` and ``LOCAL_RANK`` when imported and would act as one of its own DDP
workers (a distributed sampler over processes that do not train, barriers on the search's process group). So
the main process runs the fine-tune in a child process without torchrun's variables, on its own device, as one
process runs it; the others wait on a gloo group whose timeout is as long as a fine-tune may take
(:data:`WAIT`), hear how it ended, and every process then loads the same ``last.pt``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import torch

from pagcp.devices import is_main_process
from pagcp.errors import CheckpointError, PagcpError, UnsafePickleError
from pagcp.families.base import FinetuneJob
from pagcp.families.ultralytics_resume import RESUME_KEY
from pagcp.models.ultralytics_io import read_checkpoint

log = logging.getLogger("pagcp.prune")
#: how long the other processes of a torchrun launch wait for the main process's fine-tune
WAIT = timedelta(days=365)
#: torchrun's variables, which the fine-tune's child process does not get (also every TORCHELASTIC_*)
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                      "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # fmt: skip


def last_checkpoint(job: FinetuneJob) -> Path:
    """Where the job's fine-tune writes its last epoch (Ultralytics' ``weights/last.pt``)."""
    return job.folder / "finetune" / "weights" / "last.pt"


def epochs_done(job: FinetuneJob) -> int:
    """How many of ``job.epochs`` the job's ``last.pt`` holds: all of them for a finished fine-tune, 0 when there
    is none (or one pagcp cannot continue exactly: the fine-tune then starts again, saying why)."""
    last = last_checkpoint(job)
    if not last.is_file():
        return 0
    try:
        ckpt = read_checkpoint(last)
    except UnsafePickleError:
        raise
    except CheckpointError as e:
        log.warning("%s: %s; %s starts again", last, e, job.what)
        return 0
    epoch = ckpt.get("epoch", -1)
    if not isinstance(epoch, int) or epoch < 0 or epoch + 1 >= job.epochs:  # stripped when finished, or the last
        return job.epochs
    if RESUME_KEY not in ckpt:
        log.warning("%s holds no pagcp training state (another version wrote it); %s starts again", last, job.what)
        return 0
    return epoch + 1


def _device(device: str) -> str | int:
    """Ultralytics' ``device`` for pagcp's ``--device`` value."""
    return "cpu" if str(device) in ("", "cpu") and not torch.cuda.is_available() else device or 0


def finetune_checkpoint(job: FinetuneJob, trainer: type, data: str) -> Path:
    """The job's fine-tune in this process (see the module docstring) with the Ultralytics trainer class
    ``trainer`` on the data yaml ``data``; returns its ``last.pt``."""
    from ultralytics import YOLO

    last, done = last_checkpoint(job), epochs_done(job)
    if done >= job.epochs:
        log.info("%s had finished: %s", job.what, last)
        return last
    if job.distill > 0:
        from pagcp.families import load_model
        from pagcp.families.ultralytics_distill import distilling_trainer

        trainer = distilling_trainer(trainer, load_model(job.teacher), job.distill)
    common = {"trainer": trainer, "data": data, "batch": job.batch, "workers": job.workers,
              "device": _device(job.device)}  # fmt: skip
    if done:
        log.info("continuing %s from %s (epoch %d of %d done)", job.what, last, done, job.epochs)
        yolo = YOLO(str(last))
        yolo.train(resume=True, **common)
        return Path(yolo.trainer.last)
    log.info(
        "%s with Ultralytics' trainer: its model summary counts GFLOPs at 640 px, pagcp's report at --img %d "
        "(%.1fx fewer pixels); its labels cache (*.cache) is written beside the dataset's labels, as whenever "
        "Ultralytics trains on them", job.what, job.img, (640 / job.img) ** 2,
    )  # fmt: skip
    cuda = torch.cuda.is_available()
    yolo = YOLO(str(job.source))
    # an absolute project: Ultralytics puts a relative one under its own runs/detect/
    yolo.train(epochs=job.epochs, imgsz=job.img, plots=False, seed=job.seed, deterministic=True, amp=cuda,
               project=str(job.folder.resolve()), name="finetune", exist_ok=True, **common)  # fmt: skip
    return Path(yolo.trainer.last)


def finetune_last(job: FinetuneJob, trainer: type, data: str, device: torch.device) -> Path:
    """The job's fine-tune, in this process or, under torchrun, in a child of the main process while the others
    wait (module docstring); returns its ``last.pt``, the same file on every process. ``device``: this
    process's device (the child trains on the main process's)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return finetune_checkpoint(job, trainer, data)
    group = dist.new_group(backend="gloo", timeout=WAIT)
    try:
        failure = None
        if is_main_process():
            failure = _run_child(dataclasses.replace(job, device=_device_index(device)), trainer, data)
        box = [failure]
        dist.broadcast_object_list(box, src=0, group=group)
    finally:
        dist.destroy_process_group(group)
    if box[0]:
        raise PagcpError(box[0])
    return last_checkpoint(job)


def _device_index(device: torch.device) -> str:
    return "cpu" if device.type == "cpu" else str(device.index or 0)


def _run_child(job: FinetuneJob, trainer: type, data: str) -> str | None:
    """Run the fine-tune in a child process outside torchrun; None when it succeeded, else what went wrong."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the child trains on this process's GPU
    fields = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(job).items()}
    spec = json.dumps({"trainer": f"{trainer.__module__}:{trainer.__qualname__}", "data": data, "job": fields})
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES and not k.startswith("TORCHELASTIC_")}
    log.info("%s runs in a child of the main process (Ultralytics' trainer, outside torchrun) on %s; the other "
             "processes wait for it", job.what, "the CPU" if job.device == "cpu" else f"GPU {job.device}")  # fmt: skip
    code = "from pagcp.families.ultralytics_train import child_main; child_main()"
    ended = subprocess.run([sys.executable, "-c", code, spec], env=env).returncode
    if ended == 0:
        return None
    return (f"{job.what}: Ultralytics' trainer ended with exit code {ended} in the main process's child (its "
            f"output is above); fix the cause and continue with python -m pagcp.prune --resume")  # fmt: skip


def child_main(argv: list[str] | None = None) -> int:
    """The child process of :func:`finetune_last`: ``argv`` (default ``sys.argv[1:]``) holds one JSON object
    with the trainer class (``module:name``), the data yaml and the job."""
    spec = json.loads((sys.argv[1:] if argv is None else argv)[0])
    module, name = spec["trainer"].split(":")
    trainer = getattr(importlib.import_module(module), name)
    fields = spec["job"]
    job = FinetuneJob(**{**fields, "folder": Path(fields["folder"]), "source": Path(fields["source"])})
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    finetune_checkpoint(job, trainer, spec["data"])
    return 0
