"""Channel bookkeeping over a traced graph: which channels of which tensors are the same channel.

Every channel that a node creates gets an integer id (a conv's output channels, the model input, the
output of an op that is not understood). Each node's value carries a *layout*: the ids of its dim-1
channels in order (a LongTensor; a tuple of layouts for tuple values). Channel-preserving ops pass the
layout on, concatenation joins layouts, chunk/split/slicing cut them, flatten repeats each id over the
spatial positions, and element-wise ops with several inputs (residual adds, attention products) unite
their inputs' ids position by position in a union-find. A depthwise conv and a BatchNorm keep the
layout of their input and record which of their channels hold which ids.

Ids that reach the model output, come from the model input or from an op this module cannot see
through are *pinned*: their equivalence classes are never pruned. Nothing here is hard-coded for a
model family; YOLOv5's residual groups fall out of the residual adds. Which ops keep, join or cut channels
is listed in :mod:`pagcp.graph.op_rules`; the classes live in a :class:`~pagcp.graph.union_find.UnionFind`.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from pagcp.graph.heads import HeadMatcher, HeadReads, checked_reads, probe_readers, zero_args
from pagcp.graph.op_rules import (
    BATCH_NORMS,
    CATS,
    CHANNELWISE_MODULES,
    ELEMENTWISE_FUNCTIONS,
    ELEMENTWISE_METHODS,
    FLATTENS,
    REDUCTIONS,
    SHAPE_QUERIES,
    SPLITS,
)
from pagcp.graph.shapes import ShapeRecord, ShapeTree, is_torch_nn_module
from pagcp.graph.union_find import UnionFind

Layout = Any  # torch.LongTensor | tuple[Layout, ...] | None


@dataclass
class ModuleChannels:
    """Channel ids of one prunable module: ``kind`` is conv, depthwise, bn or linear.

    ``in_ids`` are the ids its input channels (conv, linear) read; ``out_ids`` the ids of its output
    channels (conv, depthwise) or of the channels it scales (bn). Linear outputs are pinned.
    """

    name: str
    kind: str
    module: nn.Module
    in_ids: torch.Tensor | None
    out_ids: torch.Tensor | None


def _tensors(layout: Layout) -> list[torch.Tensor]:
    if isinstance(layout, torch.Tensor):
        return [layout]
    if isinstance(layout, dict):
        layout = tuple(layout.values())
    if isinstance(layout, tuple):
        return [t for item in layout for t in _tensors(item)]
    return []


def _arg(node: fx.Node, position: int, keyword: str, default: Any) -> Any:
    return node.args[position] if len(node.args) > position else node.kwargs.get(keyword, default)


def _bounds(index: slice) -> tuple[Any, Any, Any]:
    return index.start, index.stop, index.step


def _has_tensor(shape: ShapeTree) -> bool:
    if isinstance(shape, torch.Size):
        return True
    if isinstance(shape, dict):
        shape = tuple(shape.values())
    return isinstance(shape, tuple) and any(_has_tensor(s) for s in shape)


def _normalize_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


class ChannelAnalysis:
    """Walks a traced graph once and records channel ids, unions, pins and prunable modules."""

    def __init__(self, gm: fx.GraphModule, shapes: ShapeRecord, head_reads: HeadMatcher | None = None):
        self.gm = gm
        self.shapes = shapes.node_shapes
        self.head_reads = head_reads
        self.uf = UnionFind()
        self.modules: dict[str, ModuleChannels] = {}
        self.layouts: dict[str, Layout] = {}
        self.shape_of: dict[str, Any] = {}  # shape-valued node -> the tensor node it describes

    # -- helpers -------------------------------------------------------------------------------
    def _fresh(self, shape: ShapeTree, pinned: str | None) -> Layout:
        if isinstance(shape, torch.Size):
            return self.uf.new(shape[1], pinned) if len(shape) >= 2 else None
        if isinstance(shape, tuple):
            return tuple(self._fresh(s, pinned) for s in shape)
        if isinstance(shape, dict):
            return {k: self._fresh(s, pinned) for k, s in shape.items()}
        return None

    def _layout(self, arg: Any) -> Layout:
        if isinstance(arg, fx.Node):
            return self.layouts.get(arg.name)
        if isinstance(arg, (tuple, list)):
            return tuple(self._layout(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self._layout(a) for k, a in arg.items()}
        return None

    def _opaque(self, node: fx.Node, reason: str) -> Layout:
        """An op the analysis cannot see through: pin its inputs, give its output new pinned ids."""
        for t in _tensors(self._layout((node.args, tuple(node.kwargs.values())))):
            self.uf.pin(t, f"{reason} ({node.name})")
        return self._fresh(self.shapes[node.name], f"output of {reason} ({node.name})")

    def _shape(self, arg: Any) -> ShapeTree:
        return self.shapes.get(arg.name) if isinstance(arg, fx.Node) else None

    # -- the walk ------------------------------------------------------------------------------
    def run(self) -> ChannelAnalysis:
        for node in self.gm.graph.nodes:
            self.layouts[node.name] = self._visit(node)
        return self

    def _visit(self, node: fx.Node) -> Layout:
        shape = self.shapes[node.name]
        if node.op == "placeholder":
            return self._fresh(shape, "model input")
        if node.op == "get_attr":
            return self._fresh(shape, f"tensor attribute {node.target}")
        if node.op == "output":
            for t in _tensors(self._layout(node.args[0])):
                self.uf.pin(t, "model output")
            return None
        if node.op == "call_module":
            return self._visit_module(node, self.gm.get_submodule(str(node.target)))
        target = node.target
        if self._shape_query(node):
            return None
        if not _has_tensor(shape):
            return None  # other non-tensor results carry no channels
        if node.op == "call_method":
            if target in ELEMENTWISE_METHODS:
                return self._elementwise(node, node.args)
            if target in ("chunk", "split", "tensor_split"):
                return self._split(node, node.args[0], _arg(node, 2, "dim", 0), target == "chunk")
            if target in ("flatten", "view", "reshape"):
                return self._flatten(node, node.args[0])
            if target in REDUCTIONS:
                return self._reduction(node)
            return self._opaque(node, f"method {target}")
        if target is operator.getitem:
            return self._getitem(node)
        if target in CATS:
            return self._cat(node, node.args[0], _arg(node, 1, "dim", 0))
        if target in SPLITS:
            return self._split(node, node.args[0], _arg(node, 2, "dim", 0), target is torch.chunk)
        if target in FLATTENS:
            return self._flatten(node, node.args[0])
        if target in ELEMENTWISE_FUNCTIONS:
            return self._elementwise(node, node.args)
        if target in (torch.mean, torch.sum, torch.amax, torch.amin):
            return self._reduction(node)
        return self._opaque(node, f"function {getattr(target, '__name__', target)}")

    def _elementwise(self, node: fx.Node, args: tuple) -> Layout:
        out = self.shapes[node.name]
        if not isinstance(out, torch.Size) or len(out) < 2:
            return self._opaque(node, "element-wise op without a channel dim")
        joined: torch.Tensor | None = None
        for arg in list(args) + list(node.kwargs.values()):
            shape, layout = self._shape(arg), self._layout(arg)
            if not isinstance(shape, torch.Size) or not isinstance(layout, torch.Tensor):
                continue
            if len(shape) != len(out):
                if len(shape) >= len(out) - 1 and shape[len(shape) - len(out) + 1] != 1:
                    return self._opaque(node, "broadcast along channels")
                continue
            if shape[1] == 1 and out[1] != 1:
                continue  # broadcast over channels: touches every channel alike
            if shape[1] != out[1]:
                return self._opaque(node, "channel count changes")
            if joined is None:
                joined = layout
            else:
                self.uf.union(joined, layout)
        return joined if joined is not None else self._fresh(out, None)

    def _cat(self, node: fx.Node, items: Any, dim: int) -> Layout:
        out = self.shapes[node.name]
        layouts = [self._layout(a) for a in items]
        if not all(isinstance(t, torch.Tensor) for t in layouts):
            return self._opaque(node, "concatenation of unknown tensors")
        if _normalize_dim(dim, len(out)) == 1:
            return torch.cat(layouts)
        return self._elementwise(node, tuple(items))

    def _shape_query(self, node: fx.Node) -> bool:
        """Shape queries; code that reads a channel count as a number pins that tensor's channels.

        A sliced model re-runs that code with the pruned width, so the number would change under it
        (hard-coded split sizes, ``x.shape[1] // 2``, ...): such widths must not be pruned.
        """
        target, args = node.target, node.args
        whole_shape = (node.op == "call_function" and target is getattr and len(args) == 2 and args[1] == "shape") or (
            node.op == "call_method" and target == "size" and _arg(node, 1, "dim", None) is None
        )
        if whole_shape:
            self.shape_of[node.name] = args[0]
            if any(u.target is not operator.getitem for u in node.users):  # the whole shape is used
                self._pin_width(args[0], node)
            return True
        if node.op == "call_method" and target in SHAPE_QUERIES:
            source_shape = self._shape(args[0])
            if target == "size":
                dim = _arg(node, 1, "dim", None)
                reads_width = not isinstance(dim, int) or _normalize_dim(dim, len(source_shape)) == 1
            else:
                reads_width = target in ("numel", "nelement")
            if reads_width and node.users:
                self._pin_width(args[0], node)
            return True
        if node.op == "call_function" and target is operator.getitem and isinstance(args[0], fx.Node):
            source = self.shape_of.get(args[0].name)
            if source is None:
                return False
            index, ndim = args[1], len(self._shape(source))
            if isinstance(index, int):
                reads_width = _normalize_dim(index, ndim) == 1
            elif isinstance(index, slice) and not any(isinstance(b, fx.Node) for b in _bounds(index)):
                reads_width = 1 in range(ndim)[index]
            else:
                reads_width = True
            if reads_width and node.users:
                self._pin_width(source, node)
            return True
        return False

    def _pin_width(self, source: Any, node: fx.Node) -> None:
        for t in _tensors(self._layout(source)):
            self.uf.pin(t, f"channel count read by code ({node.name})")

    def _split(self, node: fx.Node, source: Any, dim: int, is_chunk: bool) -> Layout:
        layout, shape, out = self._layout(source), self._shape(source), self.shapes[node.name]
        if not isinstance(layout, torch.Tensor) or not isinstance(out, tuple):
            return self._opaque(node, "split of an unknown tensor")
        if _normalize_dim(dim, len(shape)) != 1:
            return tuple(layout for _ in out)
        pieces, start = [], 0
        for piece in out:
            pieces.append(layout[start : start + piece[1]])
            start += piece[1]
        if is_chunk and all(len(p) == len(pieces[0]) for p in pieces):
            # chunk(n) re-splits the pruned tensor evenly: channel i of every piece goes together
            for piece in pieces[1:]:
                self.uf.union(pieces[0], piece)
        else:
            self.uf.pin(layout, f"split with fixed sizes ({node.name})")
        return tuple(pieces)

    def _flatten(self, node: fx.Node, source: Any) -> Layout:
        layout, shape, out = self._layout(source), self._shape(source), self.shapes[node.name]
        if isinstance(layout, torch.Tensor) and isinstance(out, torch.Size) and out == shape:
            return layout
        if (
            isinstance(layout, torch.Tensor)
            and isinstance(out, torch.Size)
            and len(out) == 2
            and out[0] == shape[0]
            and out[1] == shape[1:].numel()
        ):
            return layout.repeat_interleave(shape[2:].numel())
        return self._opaque(node, "reshape across channels")

    def _reduction(self, node: fx.Node) -> Layout:
        source = node.args[0]
        shape, out = self._shape(source), self.shapes[node.name]
        dims = _arg(node, 1, "dim", None)
        if dims is None or not isinstance(shape, torch.Size):
            return self._opaque(node, "reduction over all dims")
        dims = [dims] if isinstance(dims, int) else list(dims)
        if 1 in [_normalize_dim(d, len(shape)) for d in dims] or not isinstance(out, torch.Size):
            return self._opaque(node, "reduction over channels")
        return self._layout(source) if len(out) >= 2 and out[1] == shape[1] else self._opaque(node, "reduction")

    def _getitem(self, node: fx.Node) -> Layout:
        source, index = node.args
        layout, shape = self._layout(source), self._shape(source)
        if isinstance(layout, dict):
            return layout.get(index) if not isinstance(index, fx.Node) else self._opaque(node, "indexing")
        if isinstance(shape, tuple) and not isinstance(shape, torch.Size):
            return layout[index] if isinstance(layout, tuple) and isinstance(index, int) else None
        if not isinstance(layout, torch.Tensor):
            return self._opaque(node, "indexing")
        items = index if isinstance(index, tuple) else (index,)
        bounds = [b for i in items if isinstance(i, slice) for b in _bounds(i)]
        if any(isinstance(i, (fx.Node, torch.Tensor, list)) for i in [*items, *bounds]):
            return self._opaque(node, "advanced indexing")
        used = sum(1 for i in items if i is not None and i is not Ellipsis)
        expanded: list[Any] = []
        for i in items:
            expanded.extend([slice(None)] * (len(shape) - used) if i is Ellipsis else [i])
        dim = 0
        for i in expanded:
            if i is None:
                if dim <= 1:
                    return self._opaque(node, "new axis before channels")
                continue
            if isinstance(i, int) and dim <= 1:
                return self._opaque(node, "integer index at or before channels")
            if dim == 1:
                result = layout[i]
                out = self.shapes[node.name]
                if out[1] != len(result):
                    return self._opaque(node, "indexing")
                if len(result) != len(layout):  # fixed channel bounds in code: that width must stay
                    self.uf.pin(layout, f"channel slicing with fixed bounds ({node.name})")
                return result
            dim += 1
        return layout

    def _visit_module(self, node: fx.Node, module: nn.Module) -> Layout:
        name = str(node.target)
        out = self.shapes[node.name]
        source = node.args[0] if node.args else None
        layout = self._layout(source)
        if isinstance(module, nn.Conv2d) and isinstance(layout, torch.Tensor):
            return self._conv(name, module, layout, out)
        if isinstance(module, BATCH_NORMS) and isinstance(layout, torch.Tensor):
            return self._holder(name, "bn", module, layout)
        if isinstance(module, nn.Linear) and isinstance(layout, torch.Tensor) and len(self._shape(source)) == 2:
            self._record(name, "linear", module, layout, None)
            return self._fresh(out, f"output of linear {name}")
        if isinstance(module, nn.Flatten) and module.end_dim == -1 and module.start_dim == 1:
            return self._flatten(node, source)
        if isinstance(module, CHANNELWISE_MODULES) and len(node.args) == 1 and not node.kwargs:
            return self._elementwise(node, node.args)
        if not is_torch_nn_module(module):
            return self._leaf(node, name, module)
        return self._opaque(node, f"module {name} ({type(module).__name__})")

    def _leaf(self, node: fx.Node, name: str, module: nn.Module) -> Layout:
        """A leaf module: a head the matcher recognises is pruned on the input side of the convs it lists (checked
        by running it once, :func:`pagcp.graph.heads.checked_reads`); any other leaf is opaque."""
        inputs = _tensors(self._layout((node.args, tuple(node.kwargs.values()))))
        reads = self.head_reads(name, module, inputs) if self.head_reads is not None else None
        if reads is None:
            return self._opaque(node, f"leaf module {name} ({type(module).__name__})")
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        args, values = zero_args(node, self.layouts, self.shapes, device)
        try:
            if len(values) != len(inputs):
                raise ValueError(f"{len(values)} input values for {len(inputs)} channel layouts")
            reads = checked_reads(name, reads, probe_readers(module, args, values), len(inputs))
        except Exception as e:  # noqa: BLE001 - what cannot be checked is not pruned
            why = f"inputs of leaf head {name}, whose readers could not be checked ({type(e).__name__}: {e})"
            reads = HeadReads([], dict.fromkeys(range(len(inputs)), why))
        for i, reason in reads.pinned.items():
            self.uf.pin(inputs[i], reason)
        for conv_name, conv, i in reads.convs:
            outs = self.uf.new(conv.out_channels, f"output of leaf module {name}")
            self._record(conv_name, "conv", conv, inputs[i], outs)
        return self._fresh(self.shapes[node.name], f"output of leaf module {name}")

    def _record(self, name: str, kind: str, module: nn.Module, in_ids, out_ids) -> None:
        previous = self.modules.get(name)
        if previous is None:
            self.modules[name] = ModuleChannels(name, kind, module, in_ids, out_ids)
            return
        # a module called again (shared weights): the same weights see both inputs
        for old, new in ((previous.in_ids, in_ids), (previous.out_ids, out_ids)):
            if old is not None and new is not None:
                self.uf.union(old, new)

    def _holder(self, name: str, kind: str, module: nn.Module, layout: torch.Tensor) -> torch.Tensor:
        self._record(name, kind, module, None, layout)
        return layout

    def _conv(self, name: str, conv: nn.Conv2d, layout: torch.Tensor, out: torch.Size) -> Layout:
        if conv.groups == 1:
            previous = self.modules.get(name)
            out_ids = previous.out_ids if previous is not None else self.uf.new(conv.out_channels)
            self._record(name, "conv", conv, layout, out_ids)
            return out_ids
        if conv.groups == conv.in_channels == conv.out_channels:
            return self._holder(name, "depthwise", conv, layout)
        self.uf.pin(layout, f"input of grouped conv {name}")
        return self._fresh(out, f"output of grouped conv {name}")
