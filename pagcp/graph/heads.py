"""Leaf heads: which convs inside an opaque head read which of its inputs, checked by running the head once.

A detection head is traced as a leaf (its forward decodes boxes with shape-dependent code fx cannot follow),
so the channel analysis cannot see inside it. A *head matcher* (a model family's, see
:mod:`pagcp.families`) looks at a leaf's submodules and says, per input tensor i, which Conv2d reads it
directly (those are pruned on their input side, like any consumer; their outputs, and everything after them
inside the head, keep their widths) and which inputs must stay whole and why (:class:`HeadReads`).

Safe by default: :func:`probe_readers` runs the head once on zero inputs and records every op that reads an
input tensor (through aliases such as ``detach`` or ``contiguous``), attributed to the innermost submodule
running it. :func:`checked_reads` pins any input that something the matcher does not list reads (a new
branch, a reshape, an attention block), and any input whose listed conv was not seen reading it, with the
reason in the trace. A leaf no matcher recognises is opaque: all its inputs are pinned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree


@dataclass
class HeadReads:
    """What a leaf head does with its inputs: ``convs`` are (qualified name, Conv2d, input index) of the
    convs that read an input directly; ``pinned`` maps an input index to the reason it cannot be pruned."""

    convs: list[tuple[str, nn.Conv2d, int]] = field(default_factory=list)
    pinned: dict[int, str] = field(default_factory=dict)


#: a family's head matcher: (leaf name, leaf module, its inputs' channel layouts) -> HeadReads, or None when
#: the leaf is not a head of that family (it is then opaque)
HeadMatcher = Callable[[str, nn.Module, list[torch.Tensor]], "HeadReads | None"]

#: reads that see only a tensor's metadata, never its channels
_METADATA = {"shape", "dtype", "device", "ndim", "layout", "requires_grad", "is_cuda"}
_METADATA_METHODS = {"size", "dim", "__len__", "is_floating_point", "is_contiguous", "element_size", "get_device"}
#: ops whose result holds the same channels as their input (a read through them is a read of the input)
_ALIASES = {"detach", "contiguous", "clone", "requires_grad_"}


def first_conv(branch: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The first Conv2d of a branch in module order (the one its input reaches first), with its path."""
    for path, sub in branch.named_modules():
        if isinstance(sub, nn.Conv2d):
            return path, sub
    return None


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", str(func))
    if name == "__get__":  # a property such as x.shape
        return getattr(getattr(func, "__self__", None), "__name__", name)
    return name


class _ReadRecorder(TorchFunctionMode):
    """Records (input index, innermost submodule, op) for every torch function that reads a watched tensor."""

    def __init__(self, watched: list[torch.Tensor], where: Callable[[], str]):
        super().__init__()
        self.ids = {id(t): i for i, t in enumerate(watched)}
        self.keep_alive = list(watched)
        self.where = where
        self.reads: dict[int, set[tuple[str, str]]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = _op_name(func)
        out = func(*args, **kwargs)
        if op in _METADATA or op in _METADATA_METHODS:
            return out
        hit = {self.ids[id(a)] for a in pytree.tree_leaves((args, kwargs)) if id(a) in self.ids}
        for i in hit:
            self.reads.setdefault(i, set()).add((self.where(), op))
            if op in _ALIASES and isinstance(out, torch.Tensor):
                self.ids[id(out)] = i
                self.keep_alive.append(out)
        return out


@contextmanager
def _module_stack(root: nn.Module) -> Iterator[Callable[[], str]]:
    """While active, ``where()`` names the innermost submodule of ``root`` whose forward is running."""
    stack: list[str] = [""]
    handles = []

    def enter(path: str) -> Callable[..., None]:
        return lambda *_: stack.append(path)  # list.append returns None: the input is left as it is

    def leave(*_: Any) -> None:
        stack.pop()  # returning nothing leaves the output as it is

    for path, sub in root.named_modules():
        if path:
            handles.append(sub.register_forward_pre_hook(enter(path)))
            handles.append(sub.register_forward_hook(leave))
    try:
        yield lambda: stack[-1]
    finally:
        for h in handles:
            h.remove()


def probe_readers(module: nn.Module, args: tuple, inputs: list[torch.Tensor]) -> dict[int, set[tuple[str, str]]]:
    """Run ``module(*args)`` once (no grad) and return, per index into ``inputs`` (the tensors inside ``args``),
    the (submodule path, op) pairs that read it; the path is "" for the head's own forward code."""
    with torch.no_grad(), _module_stack(module) as where:
        recorder = _ReadRecorder(inputs, where)
        with recorder:
            module(*args)
    return recorder.reads


def checked_reads(name: str, reads: HeadReads, seen: dict[int, set[tuple[str, str]]], n_inputs: int) -> HeadReads:
    """``reads`` with every input pinned that the probe saw read by something the matcher does not list, or
    whose listed conv the probe did not see reading it (see the module docstring); such a conv is dropped from
    the convs."""
    pinned = dict(reads.pinned)
    listed: dict[int, set[str]] = {}
    for conv_name, _conv, i in reads.convs:
        listed.setdefault(i, set()).add(conv_name.removeprefix(f"{name}."))
    readers = {
        i: {(path, op) for path, op in seen.get(i, set()) if op not in _ALIASES or path} for i in range(n_inputs)
    }
    for i in range(n_inputs):
        if i in pinned:
            continue
        unlisted = sorted((p, op) for p, op in readers[i] if p not in listed.get(i, set()))
        unread = sorted(listed.get(i, set()) - {p for p, _ in readers[i]})
        if unlisted:
            who = ", ".join(f"{p or 'its forward'} ({op})" for p, op in unlisted[:3])
            pinned[i] = f"input {i} of leaf head {name}, also read by {who}, which the head matcher does not list"
        elif unread:
            pinned[i] = f"input {i} of leaf head {name}: the head matcher lists {unread[0]}, which does not read it"
    # a listed conv the probe did not see reading its input is no consumer of it (its input stays whole above)
    convs = [c for c in reads.convs if c[0].removeprefix(f"{name}.") in {p for p, _ in readers.get(c[2], ())}]
    return HeadReads(convs, pinned)


def zero_args(
    node: fx.Node, layouts: dict[str, Any], shapes: dict[str, Any], device: torch.device
) -> tuple[tuple, list[torch.Tensor]]:
    """Zero tensors of the recorded ``shapes`` in place of a leaf call ``node``'s positional arguments (what
    :func:`probe_readers` runs the head on), and those of them that carry a channel layout (``layouts``: a
    tensor of channel ids, or a tuple of them), in argument order: the head's inputs."""
    values: list[torch.Tensor] = []

    def build(layout: Any, shape: Any) -> Any:
        if isinstance(shape, torch.Size):
            value = torch.zeros(shape, device=device)
            if isinstance(layout, torch.Tensor):
                values.append(value)
            return value
        if isinstance(shape, tuple) and isinstance(layout, tuple) and len(shape) == len(layout):
            return [build(lay, sh) for lay, sh in zip(layout, shape)]
        return None

    def walk(arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            return build(layouts.get(arg.name), shapes.get(arg.name))
        if isinstance(arg, (list, tuple)):
            return [walk(a) for a in arg]
        return arg

    return tuple(walk(a) for a in node.args), values
