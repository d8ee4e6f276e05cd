"""Training hyper-parameters: the paper's hyp.scratch, a milder fine-tuning set, and yaml overrides.

``SCRATCH`` is YOLOv5's hyp.scratch (the setting of the PAGCP paper's table). ``FINETUNE`` is pagcp's own
choice for fine-tuning a pruned network that already detects well: a 5x smaller initial learning rate, a
short warmup and milder augmentation, so the surviving filters are adjusted rather than relearned:

| key | scratch | finetune | why |
|---|---|---|---|
| lr0 | 0.01 | 0.002 | start close to the converged weights |
| lrf | 0.2 | 0.1 | end lower (final lr 0.0002) |
| warmup_epochs | 3.0 | 1.0 | BN statistics are already sensible |
| warmup_bias_lr | 0.1 | 0.02 | no large bias jump at the start |
| hsv_s, hsv_v | 0.7, 0.4 | 0.5, 0.3 | milder colour jitter |
| translate, scale | 0.1, 0.5 | 0.05, 0.3 | milder geometry |
| mosaic | 1.0 | 0.5 | half of the batches see whole images |

The loss gains (box, obj, cls) are the *unscaled* values; ``pagcp.detection.loss.ComputeLoss`` scales them by the
number of detection levels, classes and the image size.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import yaml

from pagcp.errors import ConfigError

LOGGER = logging.getLogger(__name__)

SCRATCH: dict[str, float] = {
    "lr0": 0.01,
    "lrf": 0.2,
    "momentum": 0.937,
    "weight_decay": 0.0005,
    "warmup_epochs": 3.0,
    "warmup_momentum": 0.8,
    "warmup_bias_lr": 0.1,
    "box": 0.05,
    "cls": 0.5,
    "cls_pw": 1.0,
    "obj": 1.0,
    "obj_pw": 1.0,
    "iou_t": 0.20,
    "anchor_t": 4.0,
    "fl_gamma": 0.0,
    "hsv_h": 0.015,
    "hsv_s": 0.7,
    "hsv_v": 0.4,
    "degrees": 0.0,
    "translate": 0.1,
    "scale": 0.5,
    "shear": 0.0,
    "perspective": 0.0,
    "flipud": 0.0,
    "fliplr": 0.5,
    "mosaic": 1.0,
    "mixup": 0.0,
    "copy_paste": 0.0,
}

FINETUNE: dict[str, float] = {
    **SCRATCH,
    "lr0": 0.002,
    "lrf": 0.1,
    "warmup_epochs": 1.0,
    "warmup_bias_lr": 0.02,
    "hsv_s": 0.5,
    "hsv_v": 0.3,
    "translate": 0.05,
    "scale": 0.3,
    "mosaic": 0.5,
}

_NAMED = {"scratch": SCRATCH, "finetune": FINETUNE}


def load_hyp(name_or_path: str | dict[str, Any] | None = "scratch") -> dict[str, float]:
    """Return a fresh hyper-parameter dict.

    ``name_or_path`` is ``"scratch"``, ``"finetune"`` (also ``"hyp.scratch"``, ``"hyp.scratch.yaml"``), a
    yaml file, a dict, or None (scratch). Keys missing from a yaml/dict are taken from ``SCRATCH``; unknown
    keys are kept and reported once in the log.
    """
    if name_or_path is None:
        return dict(SCRATCH)
    if isinstance(name_or_path, dict):
        overrides, source = dict(name_or_path), "dict"
    else:
        key = os.path.basename(str(name_or_path)).lower()
        for suffix in (".yaml", ".yml"):
            key = key.removesuffix(suffix)
        key = key.removeprefix("hyp.").removeprefix("hyp-")
        if key in _NAMED and not os.path.isfile(str(name_or_path)):
            return dict(_NAMED[key])
        if not os.path.isfile(str(name_or_path)):
            raise ConfigError(
                f"hyp {name_or_path!r}: not a file and not one of {sorted(_NAMED)}; "
                "pass 'scratch', 'finetune' or a yaml path"
            )
        try:
            with open(name_or_path, encoding="utf-8") as f:
                overrides = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"hyp file {name_or_path}: invalid yaml ({e})") from e
        if not isinstance(overrides, dict):
            raise ConfigError(f"hyp file {name_or_path}: expected a mapping of name: value")
        source = str(name_or_path)
    hyp = dict(SCRATCH)
    unknown = sorted(set(overrides) - set(SCRATCH))
    if unknown:
        LOGGER.warning("hyp %s: keys not used by pagcp: %s", source, ", ".join(map(str, unknown)))
    for k, v in overrides.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise ConfigError(f"hyp {source}: {k} must be a number, got {v!r}")
        hyp[k] = float(v)
    return hyp
