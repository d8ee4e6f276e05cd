"""Compact weights: the network's parameters with the channels a Keep prunes gathered out, cached per keep.

The executor runs the traced model on these instead of the model's own tensors, so every decided unit costs
what it would cost after physical slicing:

- a :class:`ConvStep` is a Conv2d together with the BatchNorm2d and activation that follow it alone (found
  once from the fx graph); its weights come *folded* (BN scale multiplied into the filters, BN shift as the
  bias) or *unfolded* (filters, plus BN scale and shift for ``pagcp.ops.masked_bn_act``);
- standalone BatchNorms, Linears and the convs inside leaf heads (YOLO's Detect) get their pruned
  statistics, inputs or in-channels removed.

Everything is gathered lazily and cached; :meth:`CompactWeights.set_keep` drops only the entries whose
channels changed, so moving from one unit's decision to the next re-gathers just the convs around it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from pagcp.errors import PagcpError
from pagcp.graph import ChannelGraph, Keep

#: activation modules masked_bn_act fuses; other activations with act(0) == 0 run after an identity mask
FUSED_ACTS = {nn.SiLU: "silu", nn.ReLU: "relu", nn.Identity: "identity"}
_ZERO_PRESERVING = (nn.ReLU6, nn.Hardswish, nn.LeakyReLU, nn.GELU, nn.Mish, nn.Hardtanh, nn.ELU, nn.SELU, nn.Tanh)


@dataclass
class ConvStep:
    """A Conv2d, optionally with the BatchNorm2d and activation that follow it alone.

    ``conv_node`` runs the whole step; its value is stored under ``out_node`` (the last fused node).
    """

    conv_node: fx.Node
    out_node: fx.Node
    conv_name: str
    conv: nn.Conv2d
    bn: nn.BatchNorm2d | None = None
    act: nn.Module | None = None
    bn_name: str | None = None
    fused_nodes: list[fx.Node] = field(default_factory=list)

    @property
    def input(self) -> fx.Node:
        return self.conv_node.args[0]

    @property
    def act_kind(self) -> str:
        """The activation masked_bn_act applies ("identity" when the activation runs after it)."""
        return FUSED_ACTS.get(type(self.act), "identity") if self.act is not None else "identity"

    @property
    def act_after(self) -> nn.Module | None:
        """An activation masked_bn_act cannot fuse (it runs on the masked result), else None."""
        return self.act if self.act is not None and type(self.act) not in FUSED_ACTS else None


@dataclass
class ConvParams:
    """A conv's compact parameters: folded (``bias`` set, no scale) or unfolded (``scale``/``shift`` set)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    groups: int
    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def find_conv_steps(graph: ChannelGraph) -> dict[fx.Node, ConvStep]:
    """Every Conv2d node of the traced graph, each with the BN and activation it may absorb."""

    def module(node: fx.Node | None) -> nn.Module | None:
        return graph.model.get_submodule(node.target) if node is not None and node.op == "call_module" else None

    steps: dict[fx.Node, ConvStep] = {}
    for node in graph.gm.graph.nodes:
        conv = module(node)
        if not isinstance(conv, nn.Conv2d):
            continue
        step = ConvStep(node, node, node.target, conv)
        nxt = _single_user(node)
        bn = module(nxt)
        if isinstance(bn, nn.BatchNorm2d) and nxt.args[0] is node and len(nxt.args) == 1 and bn.track_running_stats:
            step.bn, step.bn_name, step.out_node = bn, nxt.target, nxt
            step.fused_nodes.append(nxt)
            nxt2 = _single_user(nxt)
            act = module(nxt2)
            if act is not None and (type(act) in FUSED_ACTS or isinstance(act, _ZERO_PRESERVING)):
                step.act, step.out_node = act, nxt2
                step.fused_nodes.append(nxt2)
        steps[node] = step
    return steps


def _take(t: torch.Tensor | None, keep: torch.Tensor | None, dim: int = 0) -> torch.Tensor | None:
    """``t`` without the channels ``keep`` drops along ``dim`` (t itself when nothing is dropped)."""
    if t is None or keep is None or bool(keep.all()):
        return t
    return t.index_select(dim, torch.nonzero(keep).flatten().to(t.device))


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of an eval-mode BatchNorm: y = x * scale + shift."""
    weight = bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_var)
    bias = bn.bias.detach() if bn.bias is not None else torch.zeros_like(bn.running_mean)
    scale = weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bias - bn.running_mean * scale


class CompactWeights:
    """Parameters of the network pruned by the current keep, gathered lazily and cached."""

    def __init__(self, graph: ChannelGraph):
        self.graph = graph
        self.keep: Keep | None = None
        self._cache: dict[tuple[str, str], tuple[torch.Tensor, Any]] = {}  # key -> (keep indices read, value)
        #: changes whenever the keep does (and with it, possibly, the tensors cached): recordings of passes
        #: that read these tensors are valid while it stays the same
        self.version = 0

    def set_keep(self, keep: Keep) -> None:
        """Use ``keep`` from now on; cached entries whose channels it changes are dropped."""
        keep = self.graph.keep(keep).copy()
        if self.keep is None:
            self.version += 1
        elif bool((changed := keep.vector != self.keep.vector).any()):
            self.version += 1
            self._cache = {k: v for k, v in self._cache.items() if not bool(changed[v[0]].any())}
        self.keep = keep

    def module_keep(self, name: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(output keep, input keep) of a prunable module under the current keep; None where never pruned."""
        if self.keep is None:
            raise PagcpError("executor: set_keep() must be called before running")
        return self.graph.module_keep(self.keep, name)

    def _cached(self, kind: str, name: str, reads: Callable[[], list[str]], build: Callable[[], Any]) -> Any:
        """The cached value of (kind, name), else ``build()``, remembered with the keep indices of ``reads()``."""
        hit = self._cache.get((kind, name))
        if hit is not None:
            return hit[1]
        reads = reads()
        index = [self.graph.out_index[m] for m in reads if m in self.graph.out_index]
        index += [self.graph.in_index[m] for m in reads if m in self.graph.in_index]
        value = build()
        self._cache[(kind, name)] = (torch.cat(index) if index else torch.zeros(0, dtype=torch.long), value)
        return value

    # -- convs -------------------------------------------------------------------------------------
    def conv(self, step: ConvStep, fold: bool) -> ConvParams:
        """A step's compact parameters, folded (conv + bias only) or unfolded (for masked_bn_act)."""
        kind = "folded" if fold else "unfolded"
        reads = [step.conv_name] + ([step.bn_name] if step.bn_name else [])
        return self._cached(kind, step.conv_name, lambda: reads, lambda: self._gather(step, fold))

    def _gather(self, step: ConvStep, fold: bool) -> ConvParams:
        out_keep, in_keep = self.module_keep(step.conv_name)
        conv = step.conv
        w = _take(conv.weight.detach(), out_keep)
        b = _take(conv.bias.detach() if conv.bias is not None else None, out_keep)
        groups = conv.groups
        record = self.graph.modules.get(step.conv_name)
        if record is not None and record.kind == "depthwise":
            groups = w.shape[0]
        elif in_keep is not None and not bool(in_keep.all()):
            if groups != 1:
                raise PagcpError(f"{step.conv_name}: input channels of a grouped conv cannot be pruned")
            w = _take(w, in_keep, 1)
        scale = shift = None
        if step.bn is not None:
            scale, shift = _bn_affine(step.bn)
            bn_keep = self.module_keep(step.bn_name)[0]
            bn_keep = bn_keep if bn_keep is not None else out_keep
            scale, shift = _take(scale, bn_keep), _take(shift, bn_keep)
            if b is not None:  # a conv bias before the BN
                shift, b = shift + b * scale, None
        elif b is not None:
            scale, shift = torch.ones_like(b), b
        if fold and scale is not None:
            return ConvParams((w * scale.view(-1, 1, 1, 1)).contiguous(), shift.contiguous(), groups)
        return ConvParams(w.contiguous(), None, groups, scale, shift)

    # -- other modules -----------------------------------------------------------------------------
    def norm(self, name: str, bn: nn.BatchNorm2d) -> tuple[torch.Tensor | None, ...]:
        """(running mean, running var, weight, bias) of a standalone BatchNorm without its pruned channels."""

        def build():
            keep = self.module_keep(name)[0]
            return tuple(_take(t, keep) for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias))

        return self._cached("norm", name, lambda: [name], build)

    def linear(self, name: str, linear: nn.Linear) -> torch.Tensor:
        """A Linear's weight without the in-features of pruned channels."""
        return self._cached("linear", name, lambda: [name], lambda: _take(linear.weight, self.module_keep(name)[1], 1))

    def leaf_overrides(self, name: str, leaf: nn.Module) -> dict[str, torch.Tensor]:
        """Weights of the convs/linears inside a leaf module (e.g. Detect) whose input channels are pruned."""

        def inner() -> dict[str, tuple[str, nn.Module]]:
            found = {f"{name}.{sub}": (sub, m) for sub, m in leaf.named_modules() if sub}
            return {full: v for full, v in found.items() if full in self.graph.modules}

        def build():
            overrides = {}
            for full, (sub, module) in inner().items():
                in_keep = self.module_keep(full)[1]
                if isinstance(module, (nn.Conv2d, nn.Linear)) and in_keep is not None and not bool(in_keep.all()):
                    overrides[f"{sub}.weight"] = _take(module.weight.detach(), in_keep, 1)
            return overrides

        return self._cached("leaf", name, lambda: list(inner()), build)
