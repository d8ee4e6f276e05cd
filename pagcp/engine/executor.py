"""Compact and candidate execution of a traced network, without rebuilding or copying it.

:class:`Executor` runs ``graph.gm`` node by node with

- *compact* convs: every conv's BN folded in and its pruned channels gathered out of the weights (cached,
  re-gathered only when a conv's keep changes), so the cost falls as the network shrinks exactly as a
  physically pruned copy's would;
- *candidate* mode for one unit: nodes that do not depend on the unit's producers (the prefix) come from a
  cache computed once per batch; at each producer the unit's candidates are expanded, one conv output into
  R candidate outputs, by :func:`pagcp.ops.masked_bn_act` (BN + activation + per-candidate channel mask in
  one pass); everything downstream runs on R·N rows.

The values equal those of ``graph.slice(keep)`` (up to float rounding of the BN folding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.func import functional_call

from pagcp.errors import PagcpError
from pagcp.graph import ChannelGraph
from pagcp.graph.split import suffix_nodes
from pagcp.ops import masked_bn_act, masked_bn_act_rows

#: activation modules masked_bn_act fuses; other activations with act(0) == 0 run after an identity mask
_FUSED_ACTS = {nn.SiLU: "silu", nn.ReLU: "relu", nn.Identity: "identity"}
_ZERO_PRESERVING = (nn.ReLU6, nn.Hardswish, nn.LeakyReLU, nn.GELU, nn.Mish, nn.Hardtanh, nn.ELU, nn.SELU, nn.Tanh)


@dataclass
class ConvStep:
    """A Conv2d, optionally with the BatchNorm2d and activation that follow it alone."""

    conv_node: fx.Node
    out_node: fx.Node
    conv_name: str
    conv: nn.Conv2d
    bn: nn.BatchNorm2d | None
    act: nn.Module | None
    bn_name: str | None = None
    fused_nodes: list[fx.Node] = field(default_factory=list)

    @property
    def act_kind(self) -> str:
        return _FUSED_ACTS.get(type(self.act), "identity") if self.act is not None else "identity"

    @property
    def act_after(self) -> nn.Module | None:
        return self.act if self.act is not None and type(self.act) not in _FUSED_ACTS else None


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


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


class Executor:
    """Runs a traced graph compactly under keep-masks, and a unit's candidates batched."""

    def __init__(self, graph: ChannelGraph, train_mode_leaves: tuple[type, ...] = ()):
        self.graph = graph
        self.model = graph.model
        self.nodes: list[fx.Node] = list(graph.gm.graph.nodes)
        self.train_mode_leaves = train_mode_leaves
        self.steps: dict[fx.Node, ConvStep] = {}
        self.skip: set[fx.Node] = set()
        self._build_steps()
        self._cache: dict[str, tuple[bytes, Any]] = {}
        self._resolved: dict[str, Any] = {}  # conv params under the current keep: no mask compare per forward
        self._vector: torch.Tensor | None = None

    # -- structure -------------------------------------------------------------------------------
    def _module(self, node: fx.Node) -> nn.Module | None:
        return self.model.get_submodule(node.target) if node.op == "call_module" else None

    def _build_steps(self) -> None:
        for node in self.nodes:
            conv = self._module(node)
            if not isinstance(conv, nn.Conv2d):
                continue
            step = ConvStep(node, node, node.target, conv, None, None)
            nxt = _single_user(node)
            bn = self._module(nxt) if nxt is not None else None
            if isinstance(bn, nn.BatchNorm2d) and nxt.args[0] is node and len(nxt.args) == 1 and bn.track_running_stats:
                step.bn, step.bn_name, step.out_node = bn, nxt.target, nxt
                step.fused_nodes.append(nxt)
                nxt2 = _single_user(nxt)
                act = self._module(nxt2) if nxt2 is not None else None
                if act is not None and (type(act) in _FUSED_ACTS or isinstance(act, _ZERO_PRESERVING)):
                    step.act, step.out_node = act, nxt2
                    step.fused_nodes.append(nxt2)
            self.steps[node] = step
            self.skip.update(step.fused_nodes)

    def suffix_of(self, unit_name: str) -> set[fx.Node]:
        """Nodes whose value depends on the unit's producers (these run once per candidate)."""
        unit = self.graph[unit_name]
        return suffix_nodes(self.graph.gm, {r.module for r in (*unit.producers, *unit.depthwise)})

    # -- compact weights ---------------------------------------------------------------------------
    def set_keep(self, keep) -> None:
        """Use these keep-masks for compact execution (weights are re-gathered lazily where they changed)."""
        self._vector = self.graph.keep_vector(keep)
        self._resolved = {}

    def _keeps(self, name: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        v = self._vector
        out = v[self.graph.out_index[name]] if name in self.graph.out_index else None
        inp = v[self.graph.in_index[name]] if name in self.graph.in_index else None
        return out, inp

    def _cached(self, key: str, masks: Sequence[torch.Tensor | None], build):
        tag = b"|".join(b"-" if m is None else m.numpy().tobytes() for m in masks)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == tag:
            return hit[1]
        value = build()
        self._cache[key] = (tag, value)
        return value

    def _conv_params(self, step: ConvStep, fold: bool):
        """(weight, bias, groups, scale, shift) of a conv under the current keep."""
        key = f"{step.conv_name}:{int(fold)}"
        resolved = self._resolved.get(key)
        if resolved is None:
            resolved = self._resolved[key] = self._gather_conv(step, fold)
        return resolved

    def _gather_conv(self, step: ConvStep, fold: bool):
        out_keep, in_keep = self._keeps(step.conv_name)
        bn_keep = self._keeps(step.bn_name)[0] if step.bn_name is not None else None

        def build():
            conv = step.conv
            w = conv.weight.detach()
            b = conv.bias.detach() if conv.bias is not None else None
            groups = conv.groups
            kind = self.graph.modules[step.conv_name].kind if step.conv_name in self.graph.modules else None
            ok = out_keep if out_keep is not None else None
            if kind == "depthwise":
                if ok is not None and not bool(ok.all()):
                    idx = torch.nonzero(ok).flatten().to(w.device)
                    w = w.index_select(0, idx)
                    b = b.index_select(0, idx) if b is not None else None
                    groups = idx.numel()
            else:
                if ok is not None and not bool(ok.all()):
                    idx = torch.nonzero(ok).flatten().to(w.device)
                    w = w.index_select(0, idx)
                    b = b.index_select(0, idx) if b is not None else None
                if in_keep is not None and not bool(in_keep.all()):
                    if groups != 1:
                        raise PagcpError(f"{step.conv_name}: input channels of a grouped conv cannot be pruned")
                    w = w.index_select(1, torch.nonzero(in_keep).flatten().to(w.device))
            scale = shift = None
            if step.bn is not None:
                bn = step.bn
                scale = (bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_var)) / torch.sqrt(
                    bn.running_var + bn.eps
                )
                shift = (bn.bias.detach() if bn.bias is not None else torch.zeros_like(bn.running_mean)) - (
                    bn.running_mean * scale
                )
                bk = bn_keep if bn_keep is not None else ok
                if bk is not None and not bool(bk.all()):
                    idx = torch.nonzero(bk).flatten().to(w.device)
                    scale, shift = scale.index_select(0, idx), shift.index_select(0, idx)
                if b is not None:  # conv bias before BN
                    shift = shift + b * scale
                    b = None
            elif b is not None:
                scale, shift = torch.ones_like(b), b
            if fold and scale is not None:
                return (w * scale.view(-1, 1, 1, 1)).contiguous(), shift.contiguous(), groups, None, None
            return w.contiguous(), None, groups, scale, shift

        return self._cached(f"{step.conv_name}:{int(fold)}", (out_keep, in_keep, bn_keep), build)

    def _conv(self, step: ConvStep, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, groups: int):
        c = step.conv
        return F.conv2d(x, w, b, c.stride, c.padding, c.dilation, groups)

    def _run_step(self, step: ConvStep, x: torch.Tensor) -> torch.Tensor:
        w, b, groups, _, _ = self._conv_params(step, fold=True)
        y = self._conv(step, x, w, b, groups)
        if step.act is not None:
            kind = step.act_kind
            if kind == "silu":
                y = F.silu(y, inplace=True)
            elif kind == "relu":
                y = F.relu(y, inplace=True)
            elif step.act_after is not None:
                y = step.act_after(y)
        return y

    def _run_masked_step(self, step: ConvStep, x: torch.Tensor, rows_mask: torch.Tensor, expand: bool) -> torch.Tensor:
        """Conv, then BN + activation + per-candidate mask (R x C_out compact) in one kernel."""
        w, _, groups, scale, shift = self._conv_params(step, fold=False)
        y = self._conv(step, x, w, None, groups)
        if scale is None:
            scale = torch.ones(y.shape[1], device=y.device)
            shift = torch.zeros(y.shape[1], device=y.device)
        act = step.act_kind if step.act_after is None else "identity"
        fn = masked_bn_act if expand else masked_bn_act_rows
        y = fn(y, scale, shift, rows_mask.to(y.device), act=act)
        return step.act_after(y) if step.act_after is not None else y

    # -- generic nodes -----------------------------------------------------------------------------
    def _call_module(self, node: fx.Node, module: nn.Module, args, kwargs):
        name = node.target
        if isinstance(module, nn.BatchNorm2d):
            keep = self._keeps(name)[0]
            mean, var, weight, bias = module.running_mean, module.running_var, module.weight, module.bias
            if keep is not None and not bool(keep.all()):
                idx = torch.nonzero(keep).flatten().to(mean.device)
                mean, var = mean[idx], var[idx]
                weight = weight[idx] if weight is not None else None
                bias = bias[idx] if bias is not None else None
            return F.batch_norm(args[0], mean, var, weight, bias, False, 0.0, module.eps)
        if isinstance(module, nn.Linear):
            keep = self._keeps(name)[1]
            w = module.weight
            if keep is not None and not bool(keep.all()):
                w = w[:, torch.nonzero(keep).flatten().to(w.device)]
            return F.linear(args[0], w, module.bias)
        overrides = self._leaf_overrides(name, module)
        train_mode = isinstance(module, self.train_mode_leaves) and not module.training
        if train_mode:
            module.training = True
        try:
            if overrides:
                return functional_call(module, overrides, tuple(args), kwargs, strict=False)
            return module(*args, **kwargs)
        finally:
            if train_mode:
                module.training = False

    def _leaf_overrides(self, name: str, module: nn.Module) -> dict[str, torch.Tensor]:
        overrides = {}
        prefix = name + "."
        for sub_name, sub in module.named_modules():
            full = prefix + sub_name if sub_name else name
            if full == name or full not in self.graph.modules:
                continue
            _, in_keep = self._keeps(full)
            if in_keep is not None and not bool(in_keep.all()) and isinstance(sub, (nn.Conv2d, nn.Linear)):
                idx = torch.nonzero(in_keep).flatten().to(sub.weight.device)
                overrides[f"{sub_name}.weight"] = sub.weight.detach().index_select(1, idx)
        return overrides

    def _generic(self, node: fx.Node, env: dict[fx.Node, Any], fetch) -> Any:
        args = _map(node.args, fetch)
        kwargs = _map(node.kwargs, fetch)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "call_module":
            return self._call_module(node, self._module(node), args, kwargs)
        if node.op == "get_attr":
            obj = self.model
            for part in node.target.split("."):
                obj = getattr(obj, part)
            return obj
        raise PagcpError(f"executor: unsupported node {node.op} {node.target}")

    # -- running -----------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, inputs: Sequence[torch.Tensor]) -> Any:
        """The whole network, compact under the current keep."""
        env: dict[fx.Node, Any] = {}
        placeholders = iter(inputs)
        for node in self.nodes:
            if node in self.skip:
                continue
            if node.op == "placeholder":
                env[node] = next(placeholders)
            elif node.op == "output":
                return _map(node.args[0], env.__getitem__)
            elif node in self.steps:
                step = self.steps[node]
                env[step.out_node] = self._run_step(step, env[node.args[0]])
            else:
                env[node] = self._generic(node, env, env.__getitem__)
        raise PagcpError("executor: the graph has no output node")

    @torch.no_grad()
    def prefix(self, inputs: Sequence[torch.Tensor], suffix: set[fx.Node]) -> dict[fx.Node, Any]:
        """Values of the prefix nodes that suffix nodes read (computed compact, N rows)."""
        env: dict[fx.Node, Any] = {}
        placeholders = iter(inputs)
        needed = {a for n in suffix for a in _nodes_in((n.args, n.kwargs)) if a not in suffix}
        last_use: dict[fx.Node, int] = {}
        for i, node in enumerate(self.nodes):
            for a in _nodes_in((node.args, node.kwargs)):
                last_use[a] = i
        for i, node in enumerate(self.nodes):
            if node in suffix or node in self.skip or node.op == "output":
                continue
            if node.op == "placeholder":
                env[node] = next(placeholders)
            elif node in self.steps:
                step = self.steps[node]
                env[step.out_node] = self._run_step(step, env[node.args[0]])
            else:
                env[node] = self._generic(node, env, env.__getitem__)
            for a in _nodes_in((node.args, node.kwargs)):  # free what no later prefix node or suffix needs
                if a not in needed and last_use.get(a, -1) <= i and a in env:
                    del env[a]
        return {n: env[n] for n in needed if n in env}

    @torch.no_grad()
    def run_candidates(
        self, unit_name: str, suffix: set[fx.Node], cached: dict[fx.Node, Any], candidates: Sequence[torch.Tensor]
    ) -> Any:
        """The suffix for R candidate keep-masks of ``unit_name`` (each over the unit's full size); the
        result has R·N rows, candidate-major."""
        unit = self.graph[unit_name]
        R = len(candidates)
        alive = self._vector[unit.offset : unit.offset + unit.size]
        cand = torch.stack([c.to(torch.bool) for c in candidates])  # R x size
        row_masks: dict[str, torch.Tensor] = {}
        for ref in (*unit.producers, *unit.depthwise):
            out_keep = self._keeps(ref.module)[0]
            c_full = out_keep.numel()
            full = torch.ones(R, c_full, dtype=torch.float32)
            full[:, ref.positions] = cand[:, ref.unit_index].float()
            row_masks[ref.module] = full[:, out_keep] if out_keep is not None else full
        if bool((cand & ~alive).any()):
            raise PagcpError(f"candidates of {unit_name} keep channels that are already pruned")
        env: dict[fx.Node, Any] = dict(cached)
        expanded: set[fx.Node] = set()
        repeated: dict[fx.Node, Any] = {}

        def fetch(n: fx.Node):  # prefix values (N rows) are repeated once to R·N rows
            if n in expanded:
                return env[n]
            if n not in repeated:
                repeated[n] = _map_tensors(env[n], lambda t: t.repeat(R, *([1] * (t.dim() - 1))))
            return repeated[n]

        for node in self.nodes:
            if node.op == "output":
                return _map(node.args[0], fetch)
            if node not in suffix or node in self.skip:
                continue
            if node in self.steps:
                step = self.steps[node]
                x_node = node.args[0]
                if step.conv_name in row_masks:
                    expand = x_node not in expanded
                    env[step.out_node] = self._run_masked_step(step, env[x_node], row_masks[step.conv_name], expand)
                else:
                    env[step.out_node] = self._run_step(step, fetch(x_node))
                expanded.add(step.out_node)
            else:
                env[node] = self._generic(node, env, fetch)
                if node.op == "call_module" and isinstance(self._module(node), nn.BatchNorm2d):
                    env[node] = self._remask_norm(node, env[node], unit, cand)
                expanded.add(node)
        raise PagcpError("executor: the graph has no output node")

    def _remask_norm(self, node: fx.Node, value: torch.Tensor, unit, cand: torch.Tensor) -> torch.Tensor:
        ref = next((r for r in unit.norms if r.module == node.target), None)
        if ref is None:
            return value
        out_keep = self._keeps(node.target)[0]
        full = torch.ones(cand.shape[0], out_keep.numel(), dtype=value.dtype)
        full[:, ref.positions] = cand[:, ref.unit_index].to(value.dtype)
        mask = full[:, out_keep].to(value.device)
        R, N = cand.shape[0], value.shape[0] // cand.shape[0]
        return (value.view(R, N, *value.shape[1:]) * mask.view(R, 1, -1, *([1] * (value.dim() - 2)))).view_as(value)


def _map_tensors(value: Any, fn) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_map_tensors(v, fn) for v in value)
    return value
