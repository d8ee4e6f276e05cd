"""The oracle of Ultralytics detection models (YOLOv8, YOLO11): box, cls and dfl of Ultralytics' own loss.

:func:`ultralytics_problem` draws the oracle's images as :func:`pagcp.engine.yolo.yolo_problem` does (the same
:func:`pagcp.engine.yolo.oracle_batches`: seeded subset, validation-style batches, torchrun shards), and
:class:`UltralyticsProblem` is a :class:`~pagcp.engine.yolo.YoloProblem` with Ultralytics' loss.

The task losses are ``ultralytics.utils.loss.v8DetectionLoss``'s three components, gains applied, per batch
(the values Ultralytics logs as box_loss, cls_loss, dfl_loss); pagcp's targets (rows ``image, class, cx, cy,
w, h``, normalised to the letterboxed image) become Ultralytics' batch dict. The Detect head is a leaf that
runs in training mode during the search (its raw ``boxes``/``scores``/``feats`` dict feeds the loss).

The oracle evaluates one candidate per pass (``chunk`` 1): the subset oracle splits a pass over several
candidates only along tensors, lists and tuples, and Detect's training output is a dict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pagcp.engine.api import PruneResult
from pagcp.engine.naive import NaiveOracle, naive_prune
from pagcp.engine.oracle import SubsetOracle, TaskLoss
from pagcp.engine.settings import PruneSettings
from pagcp.engine.yolo import YoloProblem, oracle_batches
from pagcp.errors import ConfigError
from pagcp.graph import ChannelGraph
from pagcp.models.ultralytics_io import detect_head, fix_pruned_attributes, plain_args, require_ultralytics

#: the three task losses of Ultralytics' detection loss, in v8DetectionLoss's order
ULTRALYTICS_TASKS = ("box", "cls", "dfl")


def loss_hyperparameters(model: nn.Module) -> Any:
    """Ultralytics' default hyper-parameters overlaid with the model's own ``args`` (box/cls/dfl gains, ...)."""
    require_ultralytics()
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.utils import IterableSimpleNamespace

    own = plain_args(model)
    return IterableSimpleNamespace(**{**DEFAULT_CFG_DICT, **{k: v for k, v in own.items() if k in DEFAULT_CFG_DICT}})


def ultralytics_criterion(model: nn.Module) -> Any:
    """``v8DetectionLoss`` of ``model`` built as Ultralytics builds it, without touching ``model.args``."""
    require_ultralytics()
    from ultralytics.utils.loss import v8DetectionLoss

    head = detect_head(model)
    if getattr(head, "one2one_cv2", None) is not None:
        raise ConfigError(
            "this model has an end-to-end (one-to-one) Detect head (YOLO26 / YOLOv10 style); pagcp's Ultralytics "
            "oracle supports the one-to-many heads of YOLOv8 and YOLO11"
        )
    view = _CriterionView(model.model, model.parameters, loss_hyperparameters(model))
    return v8DetectionLoss(view)


@dataclass
class _CriterionView:
    """What v8DetectionLoss reads of a model (layers, parameters for the device, args), nothing else."""

    model: nn.Sequential
    parameters: Any
    args: Any
    class_weights: Any = None


def ultralytics_batch(targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """pagcp's targets (rows ``image, class, cx, cy, w, h``, normalised) as Ultralytics' batch dict."""
    return {"batch_idx": targets[:, 0], "cls": targets[:, 1:2], "bboxes": targets[:, 2:6]}


def _float(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_float(v) for v in value)
    if isinstance(value, dict):
        return {k: _float(v) for k, v in value.items()}
    return value


def ultralytics_task_loss(model: nn.Module) -> TaskLoss:
    """box, cls, dfl of Ultralytics' loss for ``model``'s raw training outputs (an eval (y, raw) pair works too)."""
    criterion = ultralytics_criterion(model)

    def loss_fn(out: Any, targets: torch.Tensor) -> torch.Tensor:
        raw = _float(out[1] if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict) else out)
        if not isinstance(raw, dict) or "boxes" not in raw:
            raise ConfigError(f"the Ultralytics loss needs Detect's raw output dict, got {type(raw).__name__}")
        _, items = criterion(raw, ultralytics_batch(targets))
        if isinstance(items, dict):
            items = torch.stack([items[name] for name in criterion.loss_names])
        return items.detach().reshape(-1)

    return loss_fn


def backbone_layer_count(model: nn.Module) -> int:
    """Layers of an Ultralytics model's backbone (YOLOv8: 10, YOLO11: 11), for ``--compression backbone``."""
    return len(getattr(model, "yaml", {}).get("backbone", [])) or 10


def _detect_class() -> type:
    from ultralytics.nn.modules.head import Detect

    return Detect


@dataclass
class UltralyticsProblem(YoloProblem):
    """What PAGCP's oracle measures on an Ultralytics detector: fixed batches and the box/cls/dfl losses.

    A :class:`~pagcp.engine.yolo.YoloProblem` with Ultralytics' loss, Detect as a traced leaf, and one
    candidate per pass (``cache_targets`` does not apply: Ultralytics assigns targets inside its loss).
    """

    tasks: tuple[str, ...] = ULTRALYTICS_TASKS
    train_mode_leaves: tuple[type, ...] = ()

    def __post_init__(self) -> None:
        if not self.batches:
            raise ConfigError("the Ultralytics oracle needs at least one batch of images")
        self.train_mode_leaves = self.train_mode_leaves or (_detect_class(),)
        self.loss_fn = ultralytics_task_loss(self.model)

    def oracle(self, graph: ChannelGraph, chunk: int = 0) -> SubsetOracle:
        """The engine's oracle over these batches (one candidate per pass, see the module docstring)."""
        return super().oracle(graph, _one_candidate(chunk))

    def naive(self, graph: ChannelGraph, settings: PruneSettings) -> dict[str, Any]:
        """The straightforward search over the same batches."""
        return naive_prune(graph, self.batches, self.loss_fn, self.tasks, settings, self.img_size,
                           self.train_mode_leaves)  # fmt: skip

    def naive_oracle(self, graph: ChannelGraph) -> NaiveOracle:
        return NaiveOracle(graph, self.batches, self.loss_fn, self.train_mode_leaves)

    def prune(self, settings: PruneSettings | None = None, **kwargs: Any) -> PruneResult:
        """PAGCP on ``self.model`` with this oracle; ``kwargs`` go to :func:`pagcp.engine.api.prune`.

        ``result.model`` is the sliced model with its block attributes fixed (:func:`fix_pruned_attributes`).
        """
        if settings is not None:
            settings = dataclasses.replace(settings, chunk=_one_candidate(settings.chunk))
        else:
            kwargs["chunk"] = _one_candidate(kwargs.get("chunk", 0))
        result = super().prune(settings, leaf_modules=self.train_mode_leaves, **kwargs)
        fix_pruned_attributes(result.model)
        return result


def _one_candidate(chunk: int) -> int:
    if chunk > 1:
        raise ConfigError(
            f"--chunk {chunk}: the Ultralytics oracle evaluates one candidate per pass (Detect's training output "
            "is a dict, which the subset oracle does not split per candidate); use --chunk 1"
        )
    return 1


def ultralytics_problem(
    model: nn.Module,
    files: Sequence[str],
    img_size: int,
    batch_size: int,
    subset: int | None,
    seed: int = 0,
    device: torch.device | str | None = None,
    workers: int = 0,
    shard: tuple[int, int] | None = None,
) -> UltralyticsProblem:
    """The Ultralytics oracle of ``model``: ``subset`` images drawn (seeded) from ``files`` (all when None).

    Same rules as :func:`pagcp.engine.yolo.yolo_problem`: ``img_size`` a multiple of the model's stride, the
    batches on ``device`` (default: the model's), ``shard=(rank, world)`` for a torchrun-sharded search.
    """
    chosen, batches, split = oracle_batches(model, int(detect_head(model).nc), files, img_size, batch_size, subset,
                                            seed, device, workers, shard)  # fmt: skip
    return UltralyticsProblem(model, batches, img_size, chosen, shard=split)
