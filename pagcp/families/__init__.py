"""Model families: everything that differs between model kinds, one module per family, one table of them.

- :class:`Family` (:mod:`.base`): the protocol a family implements (recognise, load, save, head, strides,
  classes, leaves and head matcher, tasks and loss, oracle batches, validation, fine-tuning, export).
- :mod:`.registry`: :data:`~pagcp.families.registry.FAMILIES` (the shipped ones: :mod:`.yolov5`,
  :mod:`.ultralytics_detect`, :mod:`.ultralytics_segment`, :mod:`.ultralytics_pose`), :func:`register` for new
  ones, and the lookups :func:`family_of` (a model),
  :func:`family_for_weights` (a ``--weights`` value), :func:`load_model`, :func:`save_model` and
  :func:`problem_of` (the oracle's problem of a model over image files or other items).
- :func:`trace`: ``pagcp.trace``, the channel graph with the model's family's leaves and head matcher.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from pagcp.families.base import MIN_IMAGE_MULTIPLE, Family, FinetuneJob
from pagcp.families.registry import (
    FAMILIES,
    families,
    family_for_weights,
    family_named,
    family_of,
    load_model,
    problem_of,
    register,
    save_model,
    unregister,
)
from pagcp.graph import ChannelGraph, HeadMatcher
from pagcp.graph import trace as trace_graph

__all__ = [
    "FAMILIES", "MIN_IMAGE_MULTIPLE", "Family", "FinetuneJob", "families", "family_for_weights", "family_named",
    "family_of", "load_model", "problem_of", "register", "save_model", "trace", "unregister",
]  # fmt: skip


def _recognised(model: nn.Module) -> Family | None:
    return next((f for f in families() if f.recognises_model(model)), None)


def trace(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    leaf_modules: Iterable[str | type] = (),
    head_reads: HeadMatcher | None = None,
) -> ChannelGraph:
    """Trace ``model`` once and build its channel graph (:func:`pagcp.graph.trace`); for a model of a registered
    family, its head is a leaf read through the family's head matcher unless ``head_reads`` is given."""
    family = _recognised(model) if head_reads is None else None
    if family is not None:
        leaf_modules = (*family.leaf_modules(model), *leaf_modules)
        head_reads = family.head_reads
    return trace_graph(model, example_input, leaf_modules=leaf_modules, head_reads=head_reads)
