"""Tracing: a CNN symbolically traced once with torch.fx into a :class:`~pagcp.graph.channel_graph.ChannelGraph`.

Conv2d, BatchNorm and activations are leaves as usual, so are YOLO ``Detect`` heads (recognised by class
name, whatever zoo they come from) and any module named in ``leaf_modules``. When fx fails, the error names
the innermost module it was tracing and how to make it a leaf.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import fx, nn

from pagcp.errors import TraceError
from pagcp.graph.channel_graph import ChannelGraph

LeafSpec = str | type


class _Tracer(fx.Tracer):
    """fx tracer with extra leaves that remembers the module stack when tracing fails."""

    def __init__(self, leaf_names: set[str], leaf_types: tuple[type, ...]):
        super().__init__()
        self.leaf_names = leaf_names
        self.leaf_types = leaf_types
        self.stack: list[tuple[str, str]] = []
        self.failed_in: list[tuple[str, str]] | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaf_names or isinstance(m, self.leaf_types):
            return True
        if type(m).__name__ == "Detect":  # YOLO detection heads, from pagcp.models or any other zoo
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        self.stack.append((self.path_of_module(m), type(m).__name__))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = list(self.stack)
            raise
        finally:
            self.stack.pop()


def _symbolic_trace(model: nn.Module, n_inputs: int, leaf_modules: Iterable[LeafSpec]) -> fx.GraphModule:
    names = {spec for spec in leaf_modules if isinstance(spec, str)}
    types = tuple(spec for spec in leaf_modules if isinstance(spec, type))
    tracer = _Tracer(names, types)
    params = list(inspect.signature(model.forward).parameters.values())[n_inputs:]
    concrete = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    try:
        graph = tracer.trace(model, concrete_args=concrete or None)
    except Exception as e:
        if not tracer.failed_in:
            raise TraceError(
                f"torch.fx cannot trace the forward of {type(model).__name__} itself: {type(e).__name__}: {e}. "
                "Move the untraceable code into a submodule and pass it as leaf_modules=[...]."
            ) from e
        name, cls = tracer.failed_in[-1]
        raise TraceError(
            f"torch.fx cannot trace module '{name}' ({cls}): {type(e).__name__}: {e}. "
            f"Make it a leaf: pagcp.trace(model, x, leaf_modules=['{name}']) "
            "(a leaf's input channels are then not prunable, unless it is a Detect-like head)."
        ) from e
    return fx.GraphModule(model, graph, class_name=type(model).__name__)


def trace(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    leaf_modules: Iterable[LeafSpec] = (),
) -> ChannelGraph:
    """Trace ``model`` once and build its channel graph.

    ``example_input``: a tensor (or a sequence of positional tensors) of the shape the model will
    run at. ``leaf_modules``: module qualified names or classes fx must not trace into (their input
    channels become unprunable, except for Detect-like heads whose ``m[i]`` convs read input i).
    Raises TraceError naming the module fx could not trace.
    """
    inputs = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    gm = _symbolic_trace(model, len(inputs), tuple(leaf_modules))
    return ChannelGraph(model, gm, inputs)
