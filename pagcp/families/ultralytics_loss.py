"""The oracle's task losses of Ultralytics models: the components of Ultralytics' own training loss.

The criterion is the one the model's class builds for training (its ``init_criterion``: ``v8DetectionLoss``,
``v8SegmentationLoss`` / ``SegmentLoss26``, ``v8PoseLoss`` / ``PoseLoss26``, each inside ``E2ELoss`` for an
end-to-end head), and the tasks are its ``loss_names`` without ``_loss``:

- detection (YOLOv8, YOLO11, YOLO12): box, cls and dfl, the values Ultralytics logs as box_loss, cls_loss and
  dfl_loss;
- segmentation: box, seg (the mask loss), cls, dfl, and sem (the semantic-mask loss) where the head has the
  semantic branch (Segment26; Ultralytics' older Segment reports a sem_loss that is always 0, left out);
- pose: box, pose (keypoint locations), kobj (keypoint visibility), cls, dfl, and rle where the head has the
  residual log-likelihood flow (Pose26).
An end-to-end head (YOLO26, YOLOv10): a one-to-many and a one-to-one branch side by side. Ultralytics trains
  both (``E2ELoss``: the one-to-many loss with the task-aligned top 10, the one-to-one loss with top 7 then 1,
  mixed by weights that shift during training) and deploys either: the one-to-many branch with NMS by default,
  the one-to-one branch when NMS is turned off. So each branch's components are tasks of their own:
  ``box, cls, l1`` (or ``dfl`` where ``reg_max`` > 1, and the task's own) of the one-to-many branch, then the
  same of the one-to-one branch, suffixed ``_o2o``. Each is the value Ultralytics' own ``E2ELoss`` computes for
  that branch on the batch (the one-to-one ones are what it logs), so no mixing weight enters the search.

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


def _branch_names(criterion: Any, head: nn.Module) -> tuple[str, ...]:
    """One branch's loss names as its criterion reports them, those the head cannot produce left out."""
    names = tuple(criterion.loss_names)
    proto = getattr(head, "proto", None)
    if "sem_loss" in names and getattr(proto, "semseg", None) is None:
        names = tuple(n for n in names if n != "sem_loss")
    return names


def criterion_tasks(model: nn.Module, criterion: Any = None) -> tuple[str, ...]:
    """The task names of ``model``'s training loss, in the order :func:`ultralytics_task_loss` returns them."""
    criterion = criterion or ultralytics_criterion(model)
    head = model.model[-1]
    one = criterion.one2many if is_end_to_end(head) else criterion
    branch = tuple(n.removesuffix("_loss") for n in _branch_names(one, head))
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
    kpt_oks_sigmas: Any = None


def ultralytics_criterion(model: nn.Module) -> Any:
    """Ultralytics' training loss of ``model``, built by its own class's ``init_criterion`` (see the module
    docstring) from a view of the model, so that ``model.args`` is never touched."""
    require_ultralytics()
    view = _CriterionView(model.model, model.parameters, loss_hyperparameters(model),
                          kpt_oks_sigmas=getattr(model, "kpt_oks_sigmas", None))  # fmt: skip
    init = getattr(type(model), "init_criterion", None)
    if init is None:
        raise ConfigError(f"{type(model).__name__} is not an Ultralytics task model (it has no init_criterion)")
    return init(view)


def ultralytics_batch(targets: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pagcp's targets (rows ``image, class, cx, cy, w, h``, normalised) as Ultralytics' batch dict; a batch
    dict (the segmentation and pose oracles' targets: masks, keypoints) as it is."""
    if isinstance(targets, dict):
        return targets
    return {"batch_idx": targets[:, 0], "cls": targets[:, 1:2], "bboxes": targets[:, 2:6]}


def _items(criterion: Any, names: tuple[str, ...], raw: dict[str, Any], batch: dict[str, Any]) -> torch.Tensor:
    """One branch's loss components ``names``, as the criterion's ``loss`` returns them."""
    _, items = criterion.loss(raw, batch)
    if not isinstance(items, dict):
        items = dict(zip(criterion.loss_names, items.detach().reshape(-1)))
    return torch.stack([items[name].detach().reshape(()) for name in names])


def raw_outputs(out: Any) -> dict[str, Any]:
    """Detect's raw training-mode dict, from it or from an eval-mode (prediction, raw) pair."""
    raw = out[1] if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict) else out
    if not isinstance(raw, dict) or not ({"boxes", "one2many"} & raw.keys()):
        raise ConfigError(f"the Ultralytics loss needs Detect's raw output dict, got {type(raw).__name__}")
    return pytree.tree_map_only(torch.Tensor, lambda t: t.float() if t.is_floating_point() else t, raw)


def ultralytics_task_loss(model: nn.Module) -> TaskLoss:
    """The :func:`criterion_tasks` losses of ``model``'s raw training outputs (an eval (y, raw) pair works too)."""
    criterion = ultralytics_criterion(model)
    head = model.model[-1]
    end_to_end = is_end_to_end(head)
    names = _branch_names(criterion.one2many if end_to_end else criterion, head)

    def loss_fn(out: Any, targets: Any) -> torch.Tensor:
        raw, batch = raw_outputs(out), ultralytics_batch(targets)
        if not end_to_end:
            return _items(criterion, names, raw, batch)
        return torch.cat([_items(criterion.one2many, names, raw["one2many"], batch),
                          _items(criterion.one2one, names, raw["one2one"], batch)])  # fmt: skip

    return loss_fn
