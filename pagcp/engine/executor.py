"""Compact and candidate execution of a traced network, without rebuilding or copying it.

:class:`Executor` walks ``graph.gm`` node by node in one place (:meth:`Executor._walk`) on the compact
weights of the current keep (:mod:`pagcp.engine.compact`). What differs between its uses is a *pass*, the
object the walk asks how to read a value, run a conv step and finish a node:

- the compact pass (:meth:`Executor.run`, :meth:`Executor.prefix`): every value has N rows;
- the candidate pass (:meth:`Executor.run_candidates`) for R keep-masks of one unit: the values upstream of
  the unit (the prefix, computed once per batch by :meth:`Executor.prefix`) come from a cache; at each of
  the unit's producers :func:`pagcp.ops.masked_bn_act` applies BN + activation + every candidate's channel
  mask in one kernel, expanding one conv output into R; everything downstream runs on R·N rows,
  candidate-major.

The values equal those of ``graph.slice(keep)`` (up to float rounding of the BN folding).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.func import functional_call

from pagcp.engine.compact import CompactWeights, ConvStep, find_conv_steps
from pagcp.errors import PagcpError
from pagcp.graph import ChannelGraph, Keep
from pagcp.graph.split import suffix_nodes
from pagcp.ops import channel_activation_stats, masked_bn_act, masked_bn_act_rows


def _map(value: Any, fn) -> Any:
    if isinstance(value, fx.Node):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_map(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map(v, fn) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(_map(value.start, fn), _map(value.stop, fn), _map(value.step, fn))
    return value


def _nodes_in(value: Any) -> list[fx.Node]:
    found: list[fx.Node] = []
    _map(value, lambda n: found.append(n) or n)
    return found


def _map_tensors(value: Any, fn) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_map_tensors(v, fn) for v in value)
    return value


@dataclass
class CandidateRows:
    """R candidate keep-masks of one unit as the candidate pass applies them: per module, an R x (its kept
    output channels) float mask on the executor's device (producers and depthwise convs; norms)."""

    count: int
    producers: dict[str, torch.Tensor]
    norms: dict[str, torch.Tensor]


@dataclass
class UnitPlan:
    """How the walk is cut for one unit: the prefix runs once per batch, the suffix once per candidate chunk.

    ``frees[node]`` lists the prefix values that no later prefix node and no suffix node reads after ``node``.
    """

    prefix: list[fx.Node]
    suffix: list[fx.Node]
    frontier: list[fx.Node]
    frees: dict[fx.Node, list[fx.Node]]


class _CompactPass:
    """Every value has the batch's N rows; convs run folded."""

    def __init__(self, executor: Executor, env: dict[fx.Node, Any] | None = None):
        self.ex = executor
        self.env: dict[fx.Node, Any] = env if env is not None else {}

    def read(self, node: fx.Node) -> Any:
        return self.env[node]

    def conv(self, step: ConvStep) -> torch.Tensor:
        return self.ex.compact_conv(step, self.read(step.input))

    def finish(self, node: fx.Node, value: Any) -> Any:
        return value


class _ActivityPass(_CompactPass):
    """A compact pass that sums |value| per channel of the outputs of some conv steps as they are made."""

    def __init__(self, executor: Executor, modules: set[str]):
        super().__init__(executor)
        self.modules = modules
        self.sums: dict[str, tuple[torch.Tensor, int]] = {}

    def conv(self, step: ConvStep) -> torch.Tensor:
        y = super().conv(step)
        if step.conv_name in self.modules:  # read now: later nodes may write into y in place
            count = y.shape[0] * y.shape[2] * y.shape[3]
            total = channel_activation_stats(y)[0].double().cpu() * count
            if step.conv_name in self.sums:  # a conv called twice (shared weights): both calls count
                previous, n = self.sums[step.conv_name]
                total, count = previous + total, n + count
            self.sums[step.conv_name] = (total, count)
        return y


class _CandidatePass(_CompactPass):
    """R candidate keep-masks of one unit over cached prefix values (N rows) -> values of R·N rows."""

    def __init__(self, executor: Executor, cached: dict[fx.Node, Any], rows: CandidateRows):
        super().__init__(executor, dict(cached))
        self.R = rows.count
        self.producer_rows = rows.producers
        self.norm_rows = rows.norms
        self.wide: set[fx.Node] = set()  # nodes whose value already has R·N rows
        self.repeated: dict[fx.Node, Any] = {}

    def read(self, node: fx.Node) -> Any:
        if node in self.wide:
            return self.env[node]
        if self.R == 1:  # one candidate: prefix values already have its rows
            return self.env[node]
        if node not in self.repeated:  # a prefix value (N rows), repeated once to R·N rows
            self.repeated[node] = _map_tensors(self.env[node], lambda t: t.repeat(self.R, *([1] * (t.dim() - 1))))
        return self.repeated[node]

    def conv(self, step: ConvStep) -> torch.Tensor:
        rows = self.producer_rows.get(step.conv_name)
        self.wide.add(step.out_node)
        if rows is None:
            return self.ex.compact_conv(step, self.read(step.input))
        x_node = step.input
        if x_node in self.wide:  # already R·N rows: mask row block r with candidate r
            return self.ex.masked_conv(step, self.env[x_node], rows, expand=False)
        return self.ex.masked_conv(step, self.env[x_node], rows, expand=True)

    def finish(self, node: fx.Node, value: Any) -> Any:
        self.wide.add(node)
        rows = self.norm_rows.get(node.target) if node.op == "call_module" else None
        if rows is None:
            return value
        rows = rows.to(value.dtype)
        R, N = self.R, value.shape[0] // self.R
        shape = (R, 1, -1, *([1] * (value.dim() - 2)))
        return (value.view(R, N, *value.shape[1:]) * rows.view(shape)).view_as(value)


class Executor:
    """Runs a traced graph compactly under keep-masks, and a unit's candidates batched."""

    def __init__(self, graph: ChannelGraph, train_mode_leaves: tuple[type, ...] = ()):
        self.graph = graph
        self.model = graph.model
        self.train_mode_leaves = train_mode_leaves
        self.steps = find_conv_steps(graph)
        fused = {n for step in self.steps.values() for n in step.fused_nodes}
        self.order: list[fx.Node] = [n for n in graph.gm.graph.nodes if n not in fused]
        self.weights = CompactWeights(graph)
        self._plans: dict[str, UnitPlan] = {}
        #: per leaf: the leaf and the modules inside it that run in training mode (found once, not per call)
        self._train_mode: dict[str, list[nn.Module]] = {}
        #: where the model's weights, and so the executor's values, are
        first = next(itertools.chain(self.model.parameters(), self.model.buffers()), None)
        self.device = first.device if first is not None else torch.device("cpu")
        #: the backend of the fused ops (None: the ops' own choice; see :mod:`pagcp.ops.registry`)
        self.op_backend: str | None = None

    def set_keep(self, keep: Keep) -> None:
        """Run under these keep-masks from now on (weights are re-gathered only where they changed)."""
        self.weights.set_keep(keep)

    # -- the walk ----------------------------------------------------------------------------------
    def _walk(
        self,
        nodes: Sequence[fx.Node],
        run: _CompactPass,
        inputs: Sequence[torch.Tensor] = (),
        frees: dict[fx.Node, list[fx.Node]] | None = None,
    ) -> Any:
        """Execute ``nodes`` in order with ``run``; returns the model output if the output node is among them."""
        placeholders = iter(inputs)
        for node in nodes:
            if node.op == "placeholder":
                run.env[node] = next(placeholders)
            elif node.op == "output":
                return _map(node.args[0], run.read)
            elif node in self.steps:
                step = self.steps[node]
                run.env[step.out_node] = run.conv(step)
            else:
                run.env[node] = run.finish(node, self._generic(node, run.read))
            for dead in frees.get(node, ()) if frees else ():
                run.env.pop(dead, None)
        return None

    @torch.no_grad()
    def run(self, inputs: Sequence[torch.Tensor]) -> Any:
        """The whole network, compact under the current keep."""
        out = self._walk(self.order, _CompactPass(self), inputs)
        if out is None:
            raise PagcpError("executor: the graph has no output node")
        return out

    @torch.no_grad()
    def prefix(self, inputs: Sequence[torch.Tensor], unit: str) -> dict[fx.Node, Any]:
        """The prefix values that ``unit``'s suffix reads (computed compact, N rows): the cache of its candidates."""
        plan = self.plan(unit)
        run = _CompactPass(self)
        self._walk(plan.prefix, run, inputs, plan.frees)
        return {n: run.env[n] for n in plan.frontier if n in run.env}

    @torch.no_grad()
    def run_candidates(self, unit: str, cached: dict[fx.Node, Any], candidates: Sequence[torch.Tensor]) -> Any:
        """The suffix of ``unit`` for R candidate keep-masks of it (each over the unit's full size) from the
        values :meth:`prefix` returned; the result has R·N rows, candidate-major."""
        return self.run_suffix(unit, cached, self.candidate_rows(unit, candidates))

    @torch.no_grad()
    def run_suffix(self, unit: str, cached: dict[fx.Node, Any], rows: CandidateRows) -> Any:
        """The suffix of ``unit`` for the candidates ``rows`` holds (:meth:`candidate_rows`) from the values
        :meth:`prefix` returned. No host synchronisation and no host-to-device copy happen in it: it can be
        captured as a CUDA graph or traced into one graph of tensor operations (:mod:`pagcp.engine.replay`)."""
        out = self._walk(self.plan(unit).suffix, _CandidatePass(self, cached, rows))
        if out is None:
            raise PagcpError("executor: the graph has no output node")
        return out

    def candidate_rows(self, unit: str, candidates: Sequence[torch.Tensor]) -> CandidateRows:
        """The R candidate keep-masks of ``unit`` (each over the unit's full size) as the candidate pass
        applies them, on the device of the model's weights."""
        u = self.graph[unit]
        masks = torch.stack([torch.as_tensor(c, dtype=torch.bool).cpu() for c in candidates])
        alive = self.weights.keep[unit]
        if bool((masks & ~alive).any()):
            raise PagcpError(f"candidates of {unit} keep channels that are already pruned")
        device = self.device

        def rows(refs) -> dict[str, torch.Tensor]:
            return {ref.module: self._module_rows(ref, masks).to(device) for ref in refs}

        return CandidateRows(masks.shape[0], rows((*u.producers, *u.depthwise)), rows(u.norms))

    @torch.no_grad()
    def activity(self, inputs: Sequence[torch.Tensor], modules: set[str]) -> dict[str, tuple[torch.Tensor, int]]:
        """Per conv in ``modules``: (sum of |output| per kept channel, pixels summed over), compact under the
        current keep; the output is the conv's step value, after the BN and activation it absorbs.

        The walk stops after the last of these convs.
        """
        wanted = [i for i, n in enumerate(self.order) if n in self.steps and self.steps[n].conv_name in modules]
        run = _ActivityPass(self, modules)
        self._walk(self.order[: max(wanted) + 1] if wanted else [], run, inputs)
        return run.sums

    def plan(self, unit: str) -> UnitPlan:
        """The prefix/suffix cut of the walk at ``unit`` (built once per unit)."""
        if unit not in self._plans:
            u = self.graph[unit]
            downstream = suffix_nodes(self.graph.gm, {r.module for r in (*u.producers, *u.depthwise)})
            prefix = [n for n in self.order if n not in downstream and n.op != "output"]
            suffix = [n for n in self.order if n in downstream or n.op == "output"]
            frontier = list(
                dict.fromkeys(a for n in suffix for a in _nodes_in((n.args, n.kwargs)) if a not in downstream)
            )
            kept = set(frontier)
            last_use: dict[fx.Node, fx.Node] = {}
            for node in prefix:
                for a in _nodes_in((node.args, node.kwargs)):
                    last_use[a] = node
            frees: dict[fx.Node, list[fx.Node]] = {}
            for value, node in last_use.items():
                if value not in kept:
                    frees.setdefault(node, []).append(value)
            self._plans[unit] = UnitPlan(prefix, suffix, frontier, frees)
        return self._plans[unit]

    # -- conv steps --------------------------------------------------------------------------------
    def compact_conv(self, step: ConvStep, x: torch.Tensor) -> torch.Tensor:
        """Folded conv + bias, then the step's activation."""
        p = self.weights.conv(step, fold=True)
        c = step.conv
        y = F.conv2d(x, p.weight, p.bias, c.stride, c.padding, c.dilation, p.groups)
        if step.act is None:
            return y
        if step.act_kind == "silu":
            return F.silu(y, inplace=True)
        if step.act_kind == "relu":
            return F.relu(y, inplace=True)
        return step.act_after(y) if step.act_after is not None else y

    def masked_conv(self, step: ConvStep, x: torch.Tensor, rows: torch.Tensor, expand: bool) -> torch.Tensor:
        """Conv, then BN + activation + per-candidate mask (``rows``: R x compact C_out) in one kernel."""
        p = self.weights.conv(step, fold=False)
        c = step.conv
        y = F.conv2d(x, p.weight, None, c.stride, c.padding, c.dilation, p.groups)
        scale, shift = p.scale, p.shift
        if scale is None:
            scale = torch.ones(y.shape[1], device=y.device)
            shift = torch.zeros(y.shape[1], device=y.device)
        act = step.act_kind if step.act_after is None else "identity"
        fn = masked_bn_act if expand else masked_bn_act_rows
        y = fn(y, scale, shift, rows, act=act, backend=self.op_backend)
        return step.act_after(y) if step.act_after is not None else y

    def _module_rows(self, ref, candidates: torch.Tensor) -> torch.Tensor:
        """R x (kept output channels of ``ref.module``) float masks: the module's channels under each candidate."""
        out_keep = self.weights.module_keep(ref.module)[0]
        full = torch.ones(candidates.shape[0], out_keep.numel(), dtype=torch.float32)
        full[:, ref.positions] = candidates[:, ref.unit_index].float()
        return full[:, out_keep]

    # -- other nodes -------------------------------------------------------------------------------
    def _generic(self, node: fx.Node, read) -> Any:
        args = _map(node.args, read)
        kwargs = _map(node.kwargs, read)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "call_module":
            return self._call_module(node.target, self.model.get_submodule(node.target), args, kwargs)
        if node.op == "get_attr":
            obj = self.model
            for part in node.target.split("."):
                obj = getattr(obj, part)
            return obj
        raise PagcpError(f"executor: unsupported node {node.op} {node.target}")

    def _call_module(self, name: str, module: nn.Module, args, kwargs) -> Any:
        if isinstance(module, nn.BatchNorm2d):
            mean, var, weight, bias = self.weights.norm(name, module)
            return F.batch_norm(args[0], mean, var, weight, bias, False, 0.0, module.eps)
        if isinstance(module, nn.Linear):
            return F.linear(args[0], self.weights.linear(name, module), module.bias)
        overrides = self.weights.leaf_overrides(name, module)
        # the leaf, and any train-mode module inside it, runs its training branch (its norms stay in eval)
        if name not in self._train_mode:
            self._train_mode[name] = [m for m in module.modules() if isinstance(m, self.train_mode_leaves)]
        flipped = [m for m in self._train_mode[name] if not m.training]
        for m in flipped:
            m.training = True
        try:
            if overrides:
                return functional_call(module, overrides, tuple(args), kwargs, strict=False)
            return module(*args, **kwargs)
        finally:
            for m in flipped:
                m.training = False
