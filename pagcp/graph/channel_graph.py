"""The channel graph of a traced model: its pruning units, analytic FLOPs/params, masked execution, slicing.

Built by :func:`pagcp.graph.trace.trace`: shapes are propagated (:mod:`pagcp.graph.shapes`), channel
couplings discovered (:mod:`pagcp.graph.channels`) and grouped into pruning units (:mod:`pagcp.graph.units`).
Pruning state is a :class:`~pagcp.graph.keep.Keep` (``graph.full_keep()``, ``graph.keep({unit: mask})``):
one bool vector over every unit's channels, read per unit as ``keep[name]``.

- ``print(graph)``: each unit, its size, members and consumers (with input offsets).
- ``graph.flops(keep, img_size)`` / ``graph.params(keep)``: analytic counts equal to
  ``pagcp.model_stats`` of ``graph.slice(keep)``.
- ``with graph.masked(keep): model(x)``: the same model objects run as if pruned (pagcp.graph.masks).
- ``graph.slice(keep)``: a new, physically smaller model (pagcp.graph.slicing).
- ``graph.split_at(unit)``: prefix/suffix GraphModules for caching upstream activations (pagcp.graph.split).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager

import torch
from torch import fx, nn

from pagcp.errors import ConfigError, PagcpError
from pagcp.graph.channels import ChannelAnalysis, ModuleChannels
from pagcp.graph.counts import Counter
from pagcp.graph.heads import HeadMatcher
from pagcp.graph.keep import Keep, KeepLayout, PrunePlan
from pagcp.graph.masks import masked
from pagcp.graph.shapes import ConvCall, propagate_shapes
from pagcp.graph.slicing import slice_model
from pagcp.graph.split import Split, split_at
from pagcp.graph.units import Unit, build_units, display_name

#: What the graph's methods accept as pruning decisions: a Keep of this graph, ``{unit: mask}``, or None (all)
KeepLike = Keep | Mapping[str, torch.Tensor] | None


class ChannelGraph:
    """Pruning units of a traced model, analytic FLOPs/params, masked execution and slicing.

    Attributes: ``model`` (the traced model, never modified outside ``masked``), ``gm`` (the fx
    GraphModule sharing its submodules), ``units`` (list of Unit, in topological order of their first
    producer), ``nodes`` (fx nodes in topological order), ``modules`` (prunable module name ->
    ModuleChannels: kind conv/depthwise/bn/linear), ``out_index`` / ``in_index`` (module name -> for
    each of its output / input channels, its index in the global keep vector; 0 = never pruned),
    ``pinned`` (reason -> number of conv output channels that can never be pruned).
    """

    def __init__(
        self,
        model: nn.Module,
        gm: fx.GraphModule,
        inputs: tuple[torch.Tensor, ...],
        head_reads: HeadMatcher | None = None,
    ):
        self.model = model
        self.gm = gm
        self.input_shapes = [tuple(t.shape) for t in inputs]
        self._names = {id(m): n for n, m in model.named_modules()}
        record = propagate_shapes(gm, inputs, self._names)
        self.node_shapes = record.node_shapes
        self._conv_calls: dict[tuple, dict[str, list[ConvCall]]] = {self._shape_key(inputs): record.conv_calls}
        analysis = ChannelAnalysis(gm, record, head_reads).run()
        table = build_units(analysis)
        self.units: list[Unit] = table.units
        self.modules: dict[str, ModuleChannels] = table.modules
        self.pinned: dict[str, int] = table.pinned
        self.out_index: dict[str, torch.Tensor] = table.out_index
        self.in_index: dict[str, torch.Tensor] = table.in_index
        self._counter = Counter(model, self.modules, self.out_index, self.in_index)
        self._by_name = {u.name: u for u in self.units}
        self.layout = KeepLayout({u.name: (u.offset, u.size) for u in self.units})
        self.nodes: list[fx.Node] = list(gm.graph.nodes)
        self._splits: dict[str, Split] = {}

    # -- units ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.units)

    def __iter__(self) -> Iterator[Unit]:
        return iter(self.units)

    def __getitem__(self, name: str) -> Unit:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no unit named {name!r}; units: {', '.join(self._by_name)}") from None

    def units_of_conv(self, name: str) -> list[Unit]:
        """Units holding output channels of the Conv2d ``name`` (producer or depthwise member)."""
        return [u for u in self.units if name in u.members]

    def unit_of_conv(self, name: str) -> Unit | None:
        """The unit of a Conv2d's output channels; None if they are all pinned.

        Raises PagcpError when the conv's outputs are split over several units (see units_of_conv).
        """
        found = self.units_of_conv(name)
        if len(found) > 1:
            raise PagcpError(
                f"conv {name} feeds {len(found)} units ({', '.join(u.name for u in found)}); use graph.units_of_conv"
            )
        return found[0] if found else None

    # -- keep-masks ----------------------------------------------------------------------------
    def full_keep(self) -> Keep:
        """Every channel kept."""
        return Keep(self.layout)

    def keep(self, keep: KeepLike = None) -> Keep:
        """``keep`` as a checked :class:`Keep` of this graph: a Keep of this graph is returned as is, a
        ``{unit: mask}`` mapping is converted (units not named keep every channel), None keeps everything.

        Raises ConfigError naming the unit when a mask has the wrong size or prunes every channel.
        """
        if keep is None:
            return Keep(self.layout)
        if isinstance(keep, Keep):
            if keep.layout is not self.layout:
                raise ConfigError("this Keep belongs to another graph; build it with this graph's full_keep()")
            return keep.check()
        for name in keep:
            self[name]  # raises naming the unknown unit
        return Keep.from_masks(self.layout, keep)

    def module_keep(self, keep: KeepLike, name: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(output keep, input keep) of the prunable module ``name``; None where its channels are never pruned."""
        return self._module_keep(self.keep(keep).vector, name)

    def _module_keep(self, vector: torch.Tensor, name: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        out = vector[self.out_index[name]] if name in self.out_index else None
        inp = vector[self.in_index[name]] if name in self.in_index else None
        return out, inp

    def pruned_modules(self, keep: KeepLike) -> PrunePlan:
        """Prunable modules that lose a channel under ``keep``: name -> (output keep, input keep), None = all kept."""
        vector = self.keep(keep).vector
        plan: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        for name in self.modules:
            out, inp = self._module_keep(vector, name)
            out = None if out is None or bool(out.all()) else out
            inp = None if inp is None or bool(inp.all()) else inp
            if out is not None or inp is not None:
                plan[name] = (out, inp)
        return plan

    # -- analytic counts -----------------------------------------------------------------------
    @staticmethod
    def _shape_key(inputs: Sequence[torch.Tensor]) -> tuple:
        return tuple(tuple(t.shape[1:]) for t in inputs)

    def _calls_at(self, input_shape: Sequence[int] | None) -> tuple[tuple, dict[str, list[ConvCall]]]:
        if input_shape is None:
            return next(iter(self._conv_calls.items()))
        dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), torch.float32)
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        inputs = (torch.zeros(tuple(input_shape), dtype=dtype, device=device),)
        key = self._shape_key(inputs)
        if key not in self._conv_calls:
            self._conv_calls[key] = propagate_shapes(self.gm, inputs, self._names).conv_calls
        return key, self._conv_calls[key]

    def flops(
        self,
        keep: KeepLike = None,
        img_size: int | tuple[int, int] | None = None,
        input_shape: Sequence[int] | None = None,
    ) -> int:
        """FLOPs (2 x multiply-adds of every Conv2d, per image) of the model pruned by ``keep``.

        At the traced input size unless ``img_size`` (square int or (h, w)) or a full ``input_shape``
        is given; other sizes are shape-propagated once (on the meta device) and cached.
        ``flops / 1e9`` equals ``pagcp.model_stats(graph.slice(keep), img_size)["gflops"]``.
        """
        if img_size is not None and input_shape is None:
            h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
            input_shape = (1, self.input_shapes[0][1], h, w)
        key, calls = self._calls_at(input_shape)
        return self._counter.flops(self.keep(keep).vector, key, calls)

    def gflops(self, keep: KeepLike = None, img_size: int | tuple[int, int] | None = None) -> float:
        """``flops(keep, img_size) / 1e9``."""
        return self.flops(keep, img_size) / 1e9

    def params(self, keep: KeepLike = None) -> int:
        """Number of parameters (every parameter, BN and biases included) of the pruned model."""
        return self._counter.params(self.keep(keep).vector)

    def kept_widths(self, keep: KeepLike) -> dict[str, tuple[int | None, int | None]]:
        """Prunable module name -> (kept output width, kept input width); None where not indexed."""
        out_k, in_k = self._counter.kept(self.keep(keep).vector)
        return {
            name: (
                int(out_k[i]) if name in self.out_index else None,
                int(in_k[i]) if name in self.in_index else None,
            )
            for i, name in enumerate(self.modules)
        }

    # -- execution -----------------------------------------------------------------------------
    def masked(self, keep: KeepLike) -> AbstractContextManager[nn.Module]:
        """Context manager: inside, ``graph.model`` computes exactly what ``slice(keep)`` computes."""
        return masked(self.model, self.modules, self.pruned_modules(keep))

    def slice(self, keep: KeepLike) -> nn.Module:
        """A new model with the pruned channels physically removed; ``graph.model`` is untouched."""
        return slice_model(self.model, self.modules, self.pruned_modules(keep))

    def split_at(self, unit: Unit | str) -> Split:
        """The network cut before ``unit``'s first producer, for prefix caching (see pagcp.graph.split)."""
        unit = self[unit] if isinstance(unit, str) else unit
        if unit.name not in self._splits:
            self._splits[unit.name] = split_at(self.gm, unit)
        return self._splits[unit.name]

    # -- printing ------------------------------------------------------------------------------
    def __str__(self) -> str:
        shape = "x".join(str(s) for s in self.input_shapes[0])
        total = sum(u.size for u in self.units)
        lines = [
            f"ChannelGraph of {type(self.model).__name__} traced at {shape}: "
            f"{len(self.units)} units, {total} prunable channels"
        ]
        header = ("#", "unit", "size", "members", "consumers (input offsets)")
        rows = []
        for u in self.units:
            members = ", ".join(display_name(m) for m in u.members)
            consumers = ", ".join(c.describe(u.size) for c in u.consumers) or "-"
            rows.append((str(u.index), u.name, str(u.size), members, consumers))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
        for r in [header, *rows]:
            lines.append("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
        if self.pinned:
            pins = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.pinned.items()))
            lines.append(f"conv channels not prunable: {pins}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"ChannelGraph({type(self.model).__name__}, units={len(self.units)})"
