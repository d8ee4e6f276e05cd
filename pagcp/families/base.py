"""The :class:`Family` protocol: everything that differs between model kinds, behind one interface.

A family says how its models are recognised, loaded and saved (and in which format), what their head,
strides, class count and traced leaves are, which head inputs stay whole and why (its head matcher), what the
oracle's tasks are and how it builds their loss and batches, how the models are validated, fine-tuned with
their pruned widths kept, and exported. The prune run (:mod:`pagcp.pipeline`), the commands and the
benchmarks ask the model's family and never test a class name, index a head or compute a stride themselves.

A new family is one module with a :class:`Family` subclass and one entry in
:data:`pagcp.families.registry.FAMILIES` (or ``pagcp.families.register(...)`` from outside the package);
docs/architecture.md walks through it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from pagcp.engine.oracle import Batch, TaskLoss
from pagcp.engine.problem import Problem
from pagcp.errors import ConfigError
from pagcp.graph import ChannelGraph, HeadReads, trace

#: image sizes are multiples of a model's largest stride, and of at least this
MIN_IMAGE_MULTIPLE = 32


@dataclass(frozen=True)
class FinetuneJob:
    """One fine-tune of a run: ``epochs`` of the family's trainer into ``folder``/finetune, starting from the
    checkpoint ``source`` (the model passed along is the same network, loaded); ``what`` names it in messages."""

    folder: Path
    epochs: int
    source: Path
    data: str
    img: int
    batch: int
    hyp: str
    device: str
    workers: int
    what: str = "the fine-tune"
    #: the weight of the distillation loss (0: none) and the teacher's weights spec (the unpruned model)
    distill: float = 0.0
    teacher: str | None = None
    #: the seed of the fine-tune's data order and augmentation
    seed: int = 0


class Family:
    """Base class of the model families; a family overrides what its models need (see the module docstring).

    Class attributes: ``name`` (the registry key), ``title`` (in messages), ``checkpoint_format`` (what
    :meth:`save` writes), ``tasks`` (the oracle's task losses, in the loss's order; :meth:`task_names` when they
    depend on the model), ``metrics`` (what
    :meth:`validate` returns, in the report's column order) and ``primary_metric`` (the one its cycle table and
    plot show).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    checkpoint_format: ClassVar[str] = ""
    tasks: ClassVar[tuple[str, ...]] = ()
    metrics: ClassVar[tuple[str, ...]] = ()
    primary_metric: ClassVar[str] = ""

    #: whether the family's fine-tune takes a distillation loss toward the unpruned model (``--distill``)
    distills: bool = False

    def __repr__(self) -> str:
        return f"<{self.title or type(self).__name__} family {self.name!r}>"

    # -- recognising, loading, saving -----------------------------------------------------------
    def bundled(self) -> list[str]:
        """Names of this family's models that ship with pagcp (configs, checkpoints), for messages."""
        return []

    def recognises_weights(self, spec: str) -> bool:
        """Whether a ``--weights`` value (bundled name, yaml, checkpoint path) names one of this family's models;
        decided without unpickling anything."""
        raise NotImplementedError

    def is_config(self, spec: str) -> bool:
        """Whether a ``--weights`` value builds a new network (a model yaml or config name, random weights) rather
        than reading a trained one; a run then gives it the data's class count."""
        return str(spec).endswith((".yaml", ".yml"))

    def recognises_model(self, model: nn.Module) -> bool:
        """Whether a loaded model is one of this family's."""
        raise NotImplementedError

    def config_options(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """What a new network built from a config (:meth:`is_config`) takes from the data besides its class count
        (e.g. a pose model's keypoint shape), as keyword arguments of :meth:`load`; none by default."""
        return {}

    def load(self, spec: str | Path, nc: int | None = None, device: str | torch.device = "cpu") -> nn.Module:
        """The model a ``--weights`` value names, eval mode, float32, on ``device`` (``nc`` sets a config's class
        count; a checkpoint's must match it). Official checkpoints load through an allow-listing unpickler."""
        raise NotImplementedError

    def save(self, model: nn.Module, path: Path, **meta: Any) -> Path:
        """Write ``model`` (pruned widths included) in :attr:`checkpoint_format`, atomically; returns the path."""
        raise NotImplementedError

    # -- structure -------------------------------------------------------------------------------
    def head(self, model: nn.Module) -> nn.Module:
        """The model's head (traced as a leaf), or the model itself when it has none."""
        return model

    def strides(self, model: nn.Module) -> list[float]:
        """The head's output strides in pixels (none: the model takes any image size)."""
        return []

    def stride(self, model: nn.Module) -> int:
        """The multiple every image size must be: the largest stride, and at least :data:`MIN_IMAGE_MULTIPLE`
        for a model with strides (1 for one without). The one place this rule is written."""
        strides = self.strides(model)
        return int(max(max(strides), MIN_IMAGE_MULTIPLE)) if strides else 1

    def image_size(self, model: nn.Module, img: int, flag: str = "--img") -> int:
        """``img`` rounded up to a multiple of :meth:`stride`, saying so once when it changes."""
        stride = self.stride(model)
        rounded = -(-img // stride) * stride
        if rounded != img:
            logging.getLogger("pagcp").warning(
                "%s %d must be a multiple of max stride %d, updating to %d", flag, img, stride, rounded
            )
        return rounded

    def class_count(self, model: nn.Module) -> int:
        """How many classes the model predicts."""
        raise NotImplementedError

    def leaf_modules(self, model: nn.Module) -> tuple:
        """Module classes or names traced as leaves (the head, whose forward fx cannot follow)."""
        return ()

    def train_mode_leaves(self, model: nn.Module) -> tuple[type, ...]:
        """Leaf classes that run in training mode during the search (a head whose raw outputs feed the loss)."""
        return ()

    def head_reads(self, name: str, module: nn.Module, inputs: list[torch.Tensor]) -> HeadReads | None:
        """The head matcher: for a leaf of this family, which convs read which input directly, and which inputs
        stay whole and why (:class:`~pagcp.graph.HeadReads`); None for any other leaf (it is then opaque).
        Whatever else reads an input is found by running the head, and pins it (:mod:`pagcp.graph.heads`)."""
        return None

    def trace(self, model: nn.Module, example_input: torch.Tensor) -> ChannelGraph:
        """The model's channel graph with this family's leaves and head matcher."""
        return trace(model, example_input, leaf_modules=self.leaf_modules(model), head_reads=self.head_reads)

    def sliced(self, model: nn.Module) -> nn.Module:
        """A model fresh from ``graph.slice``, made consistent for its own forward code (attributes that hold
        widths); returns it."""
        return model

    def backbone_layers(self, model: nn.Module) -> int:
        """How many of the model's first layers ``--compression backbone`` searches."""
        return 10

    # -- data and the oracle ---------------------------------------------------------------------
    def data_config(self, spec: str) -> dict[str, Any]:
        """The data config of a ``--data`` value: at least ``nc``, ``names`` and the splits."""
        raise NotImplementedError

    def split_items(self, cfg: dict[str, Any], split: str) -> list[str]:
        """The items (image files, sample ids) of a split, in a fixed order; ConfigError naming the split when
        there is none."""
        raise NotImplementedError

    def check_data(self, model: nn.Module, cfg: dict[str, Any], weights: str, data: str) -> None:
        """Refuse data the model cannot be scored or fine-tuned on (another class count, ...), naming both."""
        nc, data_nc = self.class_count(model), int(cfg["nc"])
        if nc != data_nc:
            raise ConfigError(
                f"--data {data} has nc={data_nc} but --weights {weights} predicts {nc} classes; "
                "use the data yaml the model was trained on"
            )

    def task_names(self, model: nn.Module) -> tuple[str, ...]:
        """The oracle's tasks for ``model``, in the order :meth:`task_loss` returns them (:attr:`tasks` unless the
        family's models differ in their heads)."""
        return tuple(self.tasks)

    def task_loss(self, model: nn.Module, img_size: int) -> TaskLoss:
        """``loss_fn(outputs, targets)`` -> the 1-D tensor of :meth:`task_names` losses of one batch (means)."""
        raise NotImplementedError

    def oracle_batches(self, model: nn.Module, items: list[str], img: int, batch: int, device: torch.device,
                       workers: int) -> list[Batch]:  # fmt: skip
        """The oracle's batches of ``items``, prepared as validation prepares them, on ``device``."""
        raise NotImplementedError

    def problem(self, model: nn.Module, batches: list[Batch], img: int, items: list[str] | None = None,
                **options: Any) -> Problem:  # fmt: skip
        """The :class:`~pagcp.engine.problem.Problem` of ``model`` over ``batches`` (``options``: ``shard``,
        ``dtype``, ``replay``, as the Problem takes them)."""
        return Problem(model, batches, self.task_loss(model, img), self.task_names(model), img, list(items or []),
                       leaf_modules=self.leaf_modules(model), train_mode_leaves=self.train_mode_leaves(model),
                       head_reads=self.head_reads, finish=self.sliced, **options)  # fmt: skip

    # -- what a run does with the models ----------------------------------------------------------
    def check_run(self, world: int) -> None:
        """Refuse, before any run folder exists, what this family cannot run (e.g. ``world`` processes)."""

    def validate(self, model: nn.Module, cfg: dict[str, Any], img: int, device: torch.device, workers: int = 0,
                 progress: bool = True) -> dict[str, float]:  # fmt: skip
        """:attr:`metrics` of ``model`` on the val split of ``cfg``."""
        raise NotImplementedError

    def train(self, model: nn.Module, data: str, settings: Any, resume_state: dict | None = None) -> dict[str, Any]:
        """``python -m pagcp.train``: pagcp's training loop, for the families it serves."""
        raise ConfigError(f"--weights: {self.title} models are trained with their own tools, not python -m pagcp.train")

    def finetune(self, model: nn.Module, job: FinetuneJob) -> nn.Module:
        """``job.epochs`` of this family's trainer with the pruned widths kept, continued from its own files when
        a run was interrupted; returns the fine-tuned model (eval mode)."""
        raise ConfigError(f"{self.title} models cannot be fine-tuned by pagcp; use --finetune-epochs 0")

    def export_onnx(self, model: nn.Module, path: Path, img: int) -> Path:
        """An ONNX file of the model's prediction, as this family's users deploy it."""
        raise ConfigError(f"{self.title} models have no ONNX export in pagcp")

    def commands(self, weights: str, data: str, img: int) -> list[str]:
        """Shell commands that validate, fine-tune further or export a pruned checkpoint ``weights`` (the run's
        report lists them); none by default."""
        return []
