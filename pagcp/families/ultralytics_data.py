"""Ultralytics' own data pipeline for the tasks whose labels pagcp's loader does not read (segmentation
polygons, keypoints): the oracle's batches, the validation of a model of such a task, and
:class:`UltralyticsDataFamily`, the family base that uses them.

- :func:`task_batches`: the oracle's images letterboxed as Ultralytics' validation loader prepares them
  (``mode="val"``: no augmentation, rectangular batches), with the batch dict its loss reads (``cls``,
  ``bboxes``, ``batch_idx`` and the task's ``masks`` or ``keypoints``), on the device, decoded once; it writes
  no labels cache beside the dataset's labels.
- :func:`task_metrics`: Ultralytics' validator of the task run on a copy of the model (its validator fuses
  the network it is given) on the val split, its log kept off stdout (a ``--json`` line stays the only thing
  there) and, under torchrun, as in a single process (pagcp validates in the main process only): box mAP50 /
  mAP50-95 and the task's own (mask or pose) beside them.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import torch
from torch import nn

from pagcp.data import load_data_config
from pagcp.engine.oracle import Batch
from pagcp.errors import ConfigError
from pagcp.families.ultralytics_base import UltralyticsFamily
from pagcp.families.ultralytics_loss import loss_hyperparameters
from pagcp.families.yolo_format import VAL_BATCH
from pagcp.models.ultralytics_io import require_ultralytics

#: the batch dict entries the losses read, moved to the device with the images
_TARGET_KEYS = ("batch_idx", "cls", "bboxes", "masks", "keypoints", "sem_masks")
#: Ultralytics' validator of each task: (module, class)
_VALIDATORS = {
    "segment": ("ultralytics.models.yolo.segment", "SegmentationValidator"),
    "pose": ("ultralytics.models.yolo.pose", "PoseValidator"),
}
#: the suffix of a task's metrics in Ultralytics' results, and the prefix of pagcp's name for them
_TASK_METRICS = {"segment": ("M", "mask"), "pose": ("P", "pose")}


def task_metric_names(task: str) -> tuple[str, ...]:
    """The metrics :func:`task_metrics` returns for ``task``, in the report's column order."""
    prefix = _TASK_METRICS[task][1]
    return ("map50", "map50_95", f"{prefix}_map50", f"{prefix}_map50_95")


def _quiet() -> contextlib.ExitStack:
    """Ultralytics' log and progress bars on stderr at warning level, for the duration."""
    from ultralytics.utils import LOGGER

    stack = contextlib.ExitStack()
    level = LOGGER.level
    stack.callback(LOGGER.setLevel, level)
    LOGGER.setLevel("WARNING")
    stack.enter_context(contextlib.redirect_stdout(sys.stderr))
    return stack


def _one_process() -> contextlib.ExitStack:
    """Ultralytics' validator as in a process of its own, for the duration: under torchrun it reads the launch's
    ranks (taken when it was imported) and waits for the other processes at barriers and gathers, while pagcp
    validates in the main process alone."""
    stack = contextlib.ExitStack()
    for name in ("ultralytics.engine.validator", "ultralytics.models.yolo.detect.val"):
        module = importlib.import_module(name)
        for rank in ("RANK", "LOCAL_RANK"):
            if hasattr(module, rank):
                stack.enter_context(mock.patch.object(module, rank, -1))
    return stack


def _dataset_cfg(model: nn.Module, task: str, img: int) -> Any:
    """Ultralytics' default settings with the task, image size and the model's own mask settings."""
    from ultralytics.cfg import get_cfg

    hyp = loss_hyperparameters(model)
    return get_cfg(overrides={"task": task, "imgsz": img, "mask_ratio": hyp.mask_ratio,
                              "overlap_mask": hyp.overlap_mask, "cache": False})  # fmt: skip


def _model_data(model: nn.Module, task: str) -> dict[str, Any]:
    """The data dict Ultralytics' dataset needs, from the model (class names, keypoint shape)."""
    head = model.model[-1]
    names = getattr(model, "names", None) or {k: str(k) for k in range(int(head.nc))}
    data: dict[str, Any] = {"names": names, "nc": int(head.nc), "channels": 3}
    if task == "pose":
        data["kpt_shape"] = list(head.kpt_shape)
    return data


def _cache_in_memory(prefix: str, path: Path, x: dict[str, Any], version: str) -> None:
    """Ultralytics' ``save_dataset_cache_file`` without the file: the version it adds, nothing written."""
    x["version"] = version


def task_batches(model: nn.Module, items: list[str], img: int, batch: int, stride: int, task: str,
                 device: torch.device) -> list[Batch]:  # fmt: skip
    """The oracle's ``(images in [0, 1], batch dict)`` pairs of ``items`` (see the module docstring)."""
    require_ultralytics()
    from ultralytics.data.build import build_yolo_dataset

    # no labels cache beside the user's labels (a subset's, which a trainer would discard; and torchrun's
    # processes read the same labels at once)
    no_cache = mock.patch("ultralytics.data.dataset.save_dataset_cache_file", _cache_in_memory)
    with tempfile.TemporaryDirectory() as tmp, _quiet(), no_cache:
        listing = Path(tmp) / "oracle.txt"  # Ultralytics reads a list of image files from a text file
        listing.write_text("".join(f"{Path(item).resolve()}\n" for item in items))
        dataset = build_yolo_dataset(_dataset_cfg(model, task, img), str(listing), batch, _model_data(model, task),
                                     mode="val", rect=True, stride=stride)  # fmt: skip
        if len(dataset) != len(items):
            raise ConfigError(f"the oracle's {len(items)} images gave {len(dataset)} samples in Ultralytics' loader")
        batches = []
        for start in range(0, len(dataset), batch):
            b = dataset.collate_fn([dataset[i] for i in range(start, min(start + batch, len(dataset)))])
            targets = {k: b[k].to(device) for k in _TARGET_KEYS if isinstance(b.get(k), torch.Tensor)}
            batches.append((b["img"].to(device).float() / 255, targets))
    return batches


def task_metrics(model: nn.Module, data_yaml: str, img: int, task: str, device: torch.device,
                 batch: int = 32, workers: int = 0) -> dict[str, float]:  # fmt: skip
    """Box and task mAP of ``model`` on the val split of ``data_yaml`` by Ultralytics' validator (see the
    module docstring), named as :func:`task_metric_names` says."""
    require_ultralytics()
    module, cls = _VALIDATORS[task]
    args = {"task": task, "data": data_yaml, "imgsz": img, "batch": batch, "workers": workers, "plots": False,
            "save_json": False, "half": False, "verbose": False, "rect": True,
            "device": "cpu" if device.type == "cpu" else str(device.index or 0)}  # fmt: skip
    with _quiet(), _one_process():
        validator = getattr(importlib.import_module(module), cls)(args=args)
        stats = validator(model=copy.deepcopy(model).float().eval())
    suffix, _ = _TASK_METRICS[task]
    values = (stats["metrics/mAP50(B)"], stats["metrics/mAP50-95(B)"], stats[f"metrics/mAP50({suffix})"],
              stats[f"metrics/mAP50-95({suffix})"])  # fmt: skip
    return {name: float(v) for name, v in zip(task_metric_names(task), values)}


class UltralyticsDataFamily(UltralyticsFamily):
    """An Ultralytics family whose labels and metrics are Ultralytics' own (segmentation, pose): the oracle's
    batches by :func:`task_batches`, validation by :func:`task_metrics`, and ``--data demo`` read as the demo
    set with this task's labels (:attr:`demo`)."""

    #: the ``--data`` name of the demo set with this task's labels (the same images as ``demo``)
    demo: ClassVar[str] = ""

    def data_config(self, spec: str) -> dict[str, Any]:
        name, sep, params = str(spec).partition(":")
        if name == "demo":
            spec = f"{self.demo}{sep}{params}"
        return load_data_config(spec)

    def oracle_batches(self, model: nn.Module, items: list[str], img: int, batch: int, device: torch.device,
                       workers: int) -> list[Batch]:  # fmt: skip
        return task_batches(model, items, img, batch, self.stride(model), self.task, device)

    def validate(self, model: nn.Module, cfg: dict[str, Any], img: int, device: torch.device, workers: int = 0,
                 progress: bool = True) -> dict[str, float]:  # fmt: skip
        if not cfg.get("yaml_file"):
            raise ConfigError(f"{self.title} models are validated by Ultralytics' validator, which reads a data yaml")
        return task_metrics(model, cfg["yaml_file"], img, self.task, device, VAL_BATCH, workers)

    def for_validation(self, model: nn.Module) -> nn.Module:
        raise ConfigError(f"pagcp.val scores detectors; validate {self.title} models with Ultralytics: "
                          f"yolo {self.task} val model=<weights> data=<data yaml>")  # fmt: skip

    def commands(self, weights: str, data: str, img: int) -> list[str]:
        """Ultralytics' own val and export commands (the checkpoint is Ultralytics')."""
        yaml_file = self.data_config(data).get("yaml_file") or data
        return [f"yolo {self.task} val model={weights} data={yaml_file} imgsz={img}",
                f"yolo export model={weights} format=onnx imgsz={img}"]  # fmt: skip
