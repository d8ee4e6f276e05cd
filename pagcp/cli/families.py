"""The model families the prune command handles, and what differs between them at the edges of a run.

``pagcp.prune`` runs the same search on every family; a family says how its models are read and written, which
oracle measures them (YOLOv5: box, obj, cls; Ultralytics YOLOv8/YOLO11: box, cls, dfl), how pagcp's validation
sees their predictions, how they are fine-tuned with their pruned widths and how they are exported:

- :class:`YoloV5Family`: pagcp checkpoints, pagcp's training loop (single process or DDP), pagcp's ONNX export.
- :class:`UltralyticsFamily`: Ultralytics checkpoints (``YOLO("pruned.pt")`` loads them without pagcp),
  fine-tuning by Ultralytics' own trainer with :class:`~pagcp.models.ultralytics_io.PrunedDetectionTrainer`
  (so the widths survive), Ultralytics' ONNX export. Needs ``pip install "pagcp[ultralytics]"``.

:func:`family_of` picks the family of a ``--weights`` value or of a loaded model.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from pagcp.errors import ConfigError

log = logging.getLogger("pagcp.prune")


class YoloV5Family:
    """YOLOv5 models (v5.0 to v7.0 layouts) as pagcp builds and stores them."""

    def check(self, args: argparse.Namespace, world: int) -> None:
        """Refuse the flags this family cannot run with (before any run folder exists); YOLOv5 runs them all."""

    def problem(self, model: nn.Module, files, img: int, batch: int, subset, seed: int, device, workers: int, shard):
        from pagcp.engine.yolo import yolo_problem

        return yolo_problem(model, files, img, batch, subset, seed, device, workers, shard=shard)

    def backbone_layers(self, model: nn.Module) -> int:
        return 10

    def save(self, model: nn.Module, path: Path, **meta: Any) -> Path:
        from pagcp import save_model

        return save_model(model, path, **meta)

    def load(self, path: Path, device) -> nn.Module:
        from pagcp import load_model

        return load_model(path, device=device)

    def for_validation(self, model: nn.Module) -> nn.Module:
        return model

    def sliced(self, model: nn.Module) -> nn.Module:
        """A model fresh from ``graph.slice``, made consistent for its own forward code."""
        return model

    def finetune(self, model: nn.Module, folder: Path, epochs: int, args: argparse.Namespace, img: int,
                 source: Path, what: str = "the fine-tune") -> nn.Module:  # fmt: skip
        """``epochs`` with pagcp's training loop into ``folder``/finetune, continued from its ``last.pt`` when a
        run was interrupted (the loop resumes exactly); returns the fine-tuned model."""
        from pagcp.models.checkpoint import load_checkpoint_file
        from pagcp.training.loop import train
        from pagcp.training.settings import TrainSettings
        from pagcp.training.state import read_train_state

        last = folder / "finetune" / "weights" / "last.pt"
        state = load_checkpoint_file(last).meta.get("train_state") if last.is_file() else None
        if state and state["epoch"] + 1 < state["settings"]["epochs"]:
            tuned, state = read_train_state(last)
            log.info("continuing %s from %s (epoch %d of %d done)", what, last, state["epoch"] + 1,
                     state["settings"]["epochs"])  # fmt: skip
            result = train(tuned, args.data, TrainSettings(**state["settings"]), resume_state=state)
            return result["model"].float().eval()
        if last.is_file():  # every epoch had finished (last.pt holds their EMA weights); only later files had not
            return self.load(last, next(model.parameters()).device)
        s = TrainSettings(epochs=epochs, img_size=img, batch_size=args.finetune_batch, device=args.device,
                          hyp=args.hyp, workers=args.workers, project=str(folder), name="finetune", exist_ok=True,
                          weights=str(source), data=str(args.data))  # fmt: skip
        return train(model.train(), args.data, s)["model"].float().eval()

    def export_onnx(self, model: nn.Module, path: Path, img: int) -> Path:
        from pagcp.deploy import export_onnx

        return export_onnx(model, path, img_size=img)


class UltralyticsFamily(YoloV5Family):
    """Ultralytics detection models (YOLOv8, YOLO11, ...); the ``ultralytics`` package is imported when used."""

    def check(self, args: argparse.Namespace, world: int) -> None:
        """One process (Ultralytics' trainer cannot join the search's torchrun launch) and one candidate per
        pass (:func:`pagcp.engine.ultralytics_oracle.UltralyticsProblem` says why)."""
        if world > 1:
            raise ConfigError(f"--weights {args.weights}: Ultralytics models are pruned by one process (not torchrun)")
        if args.chunk > 1:
            raise ConfigError(f"--chunk {args.chunk}: Ultralytics models are searched one candidate per pass")

    def problem(self, model: nn.Module, files, img: int, batch: int, subset, seed: int, device, workers: int, shard):
        from pagcp.engine.ultralytics_oracle import ultralytics_problem

        return ultralytics_problem(model, files, img, batch, subset, seed, device, workers, shard=shard)

    def backbone_layers(self, model: nn.Module) -> int:
        from pagcp.engine.ultralytics_oracle import backbone_layer_count

        return backbone_layer_count(model)

    def save(self, model: nn.Module, path: Path, **meta: Any) -> Path:
        from pagcp.models.ultralytics_io import save_ultralytics

        return save_ultralytics(model, path, **meta)

    def load(self, path: Path, device) -> nn.Module:
        from pagcp.models.ultralytics_io import load_ultralytics

        return load_ultralytics(path, device=device)

    def for_validation(self, model: nn.Module) -> nn.Module:
        from pagcp.models.ultralytics_io import YoloV5Outputs

        return YoloV5Outputs(model)

    def sliced(self, model: nn.Module) -> nn.Module:
        from pagcp.models.ultralytics_io import fix_pruned_attributes

        return fix_pruned_attributes(model)

    def finetune(self, model: nn.Module, folder: Path, epochs: int, args: argparse.Namespace, img: int,
                 source: Path, what: str = "the fine-tune") -> nn.Module:  # fmt: skip
        """``epochs`` with Ultralytics' trainer (pruned widths kept) into ``folder``/finetune; an interrupted
        Ultralytics fine-tune starts again from ``source`` (its own resume rebuilds the network)."""
        from ultralytics import YOLO

        from pagcp.models.ultralytics_io import PrunedDetectionTrainer, load_ultralytics

        yolo = YOLO(str(source))
        device = "cpu" if str(args.device) in ("", "cpu") and not _cuda() else args.device or 0
        yolo.train(trainer=PrunedDetectionTrainer, data=_data_yaml(args.data), epochs=epochs, imgsz=img,
                   batch=args.finetune_batch, workers=args.workers, device=device, plots=False, seed=0,
                   deterministic=True, project=str(folder), name="finetune", exist_ok=True, amp=_cuda())  # fmt: skip
        return load_ultralytics(yolo.trainer.last, device=next(model.parameters()).device)

    def export_onnx(self, model: nn.Module, path: Path, img: int) -> Path:
        """Ultralytics' own ONNX export of the model (the file Ultralytics users deploy)."""
        from ultralytics import YOLO
        from ultralytics.utils import LOGGER

        level = LOGGER.level
        LOGGER.setLevel(logging.WARNING)  # its export banner would land on stdout, before a --json line
        try:
            with tempfile.TemporaryDirectory() as tmp:
                source = self.save(model, Path(tmp) / f"{path.stem}.pt")
                made = YOLO(str(source)).export(format="onnx", imgsz=img, simplify=False)
                shutil.move(str(made), path)
        finally:
            LOGGER.setLevel(level)
        return path


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _data_yaml(data: str) -> str:
    """A data yaml path Ultralytics reads for ``--data`` (the demo sets carry one)."""
    from pagcp.data import load_data_config

    cfg = load_data_config(data)
    path = cfg.get("yaml_file")
    if not path:
        raise ConfigError(f"--data {data}: Ultralytics fine-tuning needs a data yaml file")
    return str(path)


def family_of(weights: str | None = None, model: nn.Module | None = None) -> YoloV5Family:
    """The family of a loaded ``model``, else of a ``--weights`` value (bundled name, yaml or checkpoint)."""
    from pagcp.models.ultralytics_io import is_ultralytics_model, is_ultralytics_spec

    if model is not None:
        return UltralyticsFamily() if is_ultralytics_model(model) else YoloV5Family()
    return UltralyticsFamily() if weights is not None and is_ultralytics_spec(weights) else YoloV5Family()
