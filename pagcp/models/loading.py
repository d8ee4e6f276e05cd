"""The one entry point that turns a user's ``--weights`` into a model: a bundled name, a yaml, an official or
pagcp YOLOv5 checkpoint (:mod:`pagcp.models.checkpoint`) or an Ultralytics model
(:mod:`pagcp.models.ultralytics_io`)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pagcp.errors import CheckpointError, ConfigError
from pagcp.models.checkpoint import WEIGHTS_DIR, bundled_weights, load_checkpoint_file
from pagcp.models.ultralytics_io import is_ultralytics_spec, load_ultralytics
from pagcp.models.yolo import CONFIG_DIR, Model, bundled_configs


def load_model(spec: str | Path, nc: int | None = None, device: str | torch.device = "cpu") -> Model:
    """Load a YOLOv5 model in eval mode, float32, on ``device``.

    ``spec``: a bundled config name ('yolov5s', 'yolov5m-v5'), a bundled checkpoint name ('yolov5n-demo'),
    a model yaml path, an official YOLOv5 ``.pt`` file (v5.0 to v7.0) or a pagcp checkpoint.
    ``nc`` sets the class count of a config; for a checkpoint it must match the file's.
    An Ultralytics model (``yolov8n-demo``, ``yolo11n.yaml``, a ``.pt`` written by Ultralytics) is read by
    :func:`pagcp.models.ultralytics_io.load_ultralytics` (the ``ultralytics`` package is needed then).
    """
    text = str(spec)
    path = Path(text)
    if not (CONFIG_DIR / f"{text}.yaml").exists() and is_ultralytics_spec(text):
        return load_ultralytics(text, nc=nc, device=device)
    if path.suffix in (".yaml", ".yml") or (not path.exists() and (CONFIG_DIR / f"{text}.yaml").exists()):
        if path.suffix and not path.exists():
            raise ConfigError(f"{path}: model yaml not found")
        model = Model(path if path.exists() else text, nc=nc)
    elif path.exists() or path.suffix in (".pt", ".pth") or os.sep in text:
        model = load_checkpoint_file(path, nc)
    elif text in bundled_weights():
        model = load_checkpoint_file(WEIGHTS_DIR / f"{text}.pt", nc)
    else:
        raise CheckpointError(
            f"{text}: no such file, and not a bundled model; bundled configs: {', '.join(bundled_configs())}; "
            f"bundled checkpoints: {', '.join(bundled_weights()) or 'none'}"
        )
    return model.to(device).float().eval()
