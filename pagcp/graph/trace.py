"""Tracing: a CNN symbolically traced once with torch.fx into a :class:`~pagcp.graph.channel_graph.ChannelGraph`.

Conv2d, BatchNorm and activations are leaves as usual, so is any module named in ``leaf_modules`` (a model
family's head, :mod:`pagcp.families`); ``head_reads``, a family's head matcher, says which convs inside such a
leaf read its inputs (:mod:`pagcp.graph.heads`). When fx fails, the error names
the innermost module it was tracing and how to make it a leaf. A forward that takes ``*args`` / ``**kwargs``
(Ultralytics' ``forward(x, *args, **kwargs)``) is traced as called with the example inputs alone.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import fx, nn

from pagcp.errors import TraceError
from pagcp.graph.channel_graph import ChannelGraph
from pagcp.graph.heads import HeadMatcher

LeafSpec = str | type


class _Proxy(fx.Proxy):
    """A proxy whose ``len()`` is known when the code fixes it (the pieces of ``x.chunk(2, 1)``), so that
    ``list(x.chunk(2, 1))`` traces; any other ``len()`` fails as in fx."""

    def __len__(self) -> int:
        n = _pieces(self.node)
        return n if n is not None else super().__len__()


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
        return super().is_leaf_module(m, module_qualified_name)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)

    def iter(self, obj: fx.Proxy) -> Any:
        """Unpacking a chunk/split whose piece count is fixed in the code (``a, b = x.chunk(2, 1)``,
        ``list(x.split([4, 4], 1))``): one getitem per piece; anything else fails as in fx."""
        n = _pieces(obj.node)
        if n is None:
            return super().iter(obj)
        return iter([obj[i] for i in range(n)])

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


def _pieces(node: fx.Node) -> int | None:
    """How many tensors a chunk/split node returns when its code fixes it, else None."""
    if node.op == "call_method" and node.target in ("chunk", "split", "tensor_split"):
        name, rest, kwargs = node.target, node.args[1:], node.kwargs
    elif node.op == "call_function" and node.target in (torch.chunk, torch.split, torch.tensor_split):
        name, rest, kwargs = node.target.__name__, node.args[1:], node.kwargs
    else:
        return None
    keyword = {"chunk": "chunks", "split": "split_size_or_sections", "tensor_split": "indices_or_sections"}[name]
    spec = rest[0] if rest else kwargs.get(keyword, kwargs.get("split_size"))
    if name == "chunk" and isinstance(spec, int):
        return spec  # chunk(n) of a dim of at least n
    if isinstance(spec, (list, tuple)) and all(isinstance(v, int) for v in spec):
        return len(spec) + (name == "tensor_split")
    if name == "tensor_split" and isinstance(spec, int):
        return spec
    return None


_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _fixed_arity_root(model: nn.Module, n_inputs: int) -> nn.Module:
    """``model`` itself, or, when its forward takes ``*args``/``**kwargs`` (fx would hand it a proxy to unpack),
    a shallow view of it (the same submodules, parameters and names) whose forward takes exactly the inputs."""
    params = inspect.signature(model.forward).parameters.values()
    if not any(p.kind in _VARIADIC for p in params):
        return model
    cls = type(model)
    if n_inputs == 1:

        def forward(self, input0):
            return cls.forward(self, input0)

    elif n_inputs == 2:

        def forward(self, input0, input1):
            return cls.forward(self, input0, input1)

    else:
        raise TraceError(
            f"{cls.__name__}.forward takes *args/**kwargs; pagcp traces such a forward with one or two example "
            f"inputs, not {n_inputs}"
        )
    view = copy.copy(model)  # a new object sharing _modules/_parameters/_buffers with model
    view.__class__ = type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__})
    return view


def _symbolic_trace(model: nn.Module, n_inputs: int, leaf_modules: Iterable[LeafSpec]) -> fx.GraphModule:
    names = {spec for spec in leaf_modules if isinstance(spec, str)}
    types = tuple(spec for spec in leaf_modules if isinstance(spec, type))
    tracer = _Tracer(names, types)
    root = _fixed_arity_root(model, n_inputs)
    params = list(inspect.signature(root.forward).parameters.values())[n_inputs:]
    concrete = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    try:
        graph = tracer.trace(root, concrete_args=concrete or None)
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
            "(a leaf's input channels are then not prunable, unless a head matcher lists the convs reading them)."
        ) from e
    return fx.GraphModule(model, graph, class_name=type(model).__name__)


def trace(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    leaf_modules: Iterable[LeafSpec] = (),
    head_reads: HeadMatcher | None = None,
) -> ChannelGraph:
    """Trace ``model`` once and build its channel graph.

    ``example_input``: a tensor (or a sequence of positional tensors) of the shape the model will
    run at. ``leaf_modules``: module qualified names or classes fx must not trace into (their input
    channels become unprunable, unless ``head_reads`` lists the convs inside that read them; see
    :mod:`pagcp.graph.heads`). ``pagcp.trace`` fills both in from the model's family.
    Raises TraceError naming the module fx could not trace.
    """
    inputs = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    gm = _symbolic_trace(model, len(inputs), tuple(leaf_modules))
    return ChannelGraph(model, gm, inputs, head_reads)
