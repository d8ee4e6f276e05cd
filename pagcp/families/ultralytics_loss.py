"""The oracle's task losses of Ultralytics detectors: the components of Ultralytics' own training loss.

- A one-to-many Detect head (YOLOv8, YOLO11, YOLO12): ``v8DetectionLoss``'s box, cls and dfl, the values
  Ultralytics logs as box_loss, cls_loss and dfl_loss.
- An end-to-end head (YOLO26, YOLOv10): a one-to-many and a one-to-one branch side by side. Ultralytics trains
  both (``E2ELoss``: the one-to-many loss with the task-aligned top 10, the one-to-one loss with top 7 then 1,
  mixed by weights that shift during training) and deploys either: the one-to-many branch with NMS by default,
  the one-to-one branch when NMS is turned off. So each branch's components are tasks of their own:
  ``box, cls, l1`` (or ``dfl`` where ``reg_max`` > 1) of the one-to-many branch, then the same of the one-to-one
  branch, suffixed ``_o2o``. Each is the value Ultralytics' own ``E2ELoss`` computes for that branch on the
  batch (the one-to-one ones are what it logs), so no mixing weight enters the search.

Everything is computed by Ultralytics' own loss classes, built as Ultralytics builds them but from a view of
the model, so that ``model.args`` is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from pagcp.engine.oracle import TaskLoss
from pagcp.errors import ConfigError
from pagcp.models.ultralytics_io import plain_args, require_ultralytics

#: the suffix of the one-to-one branch's tasks of an end-to-end head
ONE_TO_ONE = "_o2o"


def is_end_to_end(head: nn.Module) -> bool:
    """Whether a Detect head has a one-to-one branch beside its one-to-many one (YOLO26, YOLOv10)."""
    return getattr(head, "one2one_cv2", None) is not None


def detection_tasks(head: nn.Module) -> tuple[str, ...]:
    """The task names of a Detect head's loss, in the order :func:`ultralytics_task_loss` returns them."""
    branch = ("box", "cls", "dfl" if int(head.reg_max) > 1 else "l1")
    return (*branch, *(t + ONE_TO_ONE for t in branch)) if is_end_to_end(head) else branch


def loss_hyperparameters(model: nn.Module) -> Any:
    """Ultralytics' default hyper-parameters overlaid with the model's own ``args`` (box/cls/dfl gains, ...)."""
    require_ultralytics()
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.utils import IterableSimpleNamespace

    own = plain_args(model)
    return IterableSimpleNamespace(**{**DEFAULT_CFG_DICT, **{k: v for k, v in own.items() if k in DEFAULT_CFG_DICT}})


@dataclass
class _CriterionView:
    """What Ultralytics' loss classes read of a model (layers, parameters for the device, args), nothing else."""

    model: nn.Sequential
    parameters: Any
    args: Any
    class_weights: Any = None


def ultralytics_criterion(model: nn.Module) -> Any:
    """Ultralytics' detection loss of ``model`` as its ``init_criterion`` builds it (``E2ELoss`` for an
    end-to-end head, ``v8DetectionLoss`` else), without touching ``model.args``."""
    from ultralytics.utils.loss import E2ELoss, v8DetectionLoss

    view = _CriterionView(model.model, model.parameters, loss_hyperparameters(model))
    return E2ELoss(view) if is_end_to_end(model.model[-1]) else v8DetectionLoss(view)


def ultralytics_batch(targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """pagcp's targets (rows ``image, class, cx, cy, w, h``, normalised) as Ultralytics' batch dict."""
    return {"batch_idx": targets[:, 0], "cls": targets[:, 1:2], "bboxes": targets[:, 2:6]}


def _items(criterion: Any, raw: dict[str, Any], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One branch's loss components (box, cls, dfl|l1), as the criterion's ``loss`` returns them."""
    _, items = criterion.loss(raw, batch)
    if isinstance(items, dict):
        items = torch.stack([items[name] for name in criterion.loss_names])
    return items.detach().reshape(-1)


def raw_outputs(out: Any) -> dict[str, Any]:
    """Detect's raw training-mode dict, from it or from an eval-mode (prediction, raw) pair."""
    raw = out[1] if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict) else out
    if not isinstance(raw, dict) or not ({"boxes", "one2many"} & raw.keys()):
        raise ConfigError(f"the Ultralytics loss needs Detect's raw output dict, got {type(raw).__name__}")
    return pytree.tree_map_only(torch.Tensor, lambda t: t.float() if t.is_floating_point() else t, raw)


def ultralytics_task_loss(model: nn.Module) -> TaskLoss:
    """The :func:`detection_tasks` losses of ``model``'s raw training outputs (an eval (y, raw) pair works too)."""
    criterion = ultralytics_criterion(model)
    end_to_end = is_end_to_end(model.model[-1])

    def loss_fn(out: Any, targets: torch.Tensor) -> torch.Tensor:
        raw, batch = raw_outputs(out), ultralytics_batch(targets)
        if not end_to_end:
            return _items(criterion, raw, batch)
        return torch.cat([_items(criterion.one2many, raw["one2many"], batch),
                          _items(criterion.one2one, raw["one2one"], batch)])  # fmt: skip

    return loss_fn
