"""Pruning units: equivalence classes of channels grouped by the convs that produce them.

Each union-find class is one channel that must be kept or pruned as a whole (e.g. channel k of a C3's
cv1 and channel k of every bottleneck's cv2). Classes produced by the same set of convs form one unit;
the unit's channel i is the class holding its first producer's i-th channel (in channel order).

A unit's channels get consecutive places in the graph's keep vector (``Unit.offset``), which is how
:class:`pagcp.graph.keep.Keep` holds every unit's mask in one tensor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from pagcp.graph.channels import ChannelAnalysis, ModuleChannels


@dataclass(frozen=True)
class ChannelRef:
    """Which channels of one module belong to a unit.

    ``positions[j]`` is a channel index of ``module`` (an output channel for producers, norms and
    depthwise convs; an input channel / in-feature for consumers) and ``unit_index[j]`` the unit
    channel it holds. A consumer reading the unit several times (SPPF's fourfold concat) lists
    every occurrence.
    """

    module: str
    positions: torch.Tensor
    unit_index: torch.Tensor

    def runs(self) -> list[tuple[int, int, int]]:
        """Contiguous pieces as (first position, first unit channel, length)."""
        out: list[tuple[int, int, int]] = []
        for p, u in zip(self.positions.tolist(), self.unit_index.tolist()):
            if out and p == out[-1][0] + out[-1][2] and u == out[-1][1] + out[-1][2]:
                out[-1] = (out[-1][0], out[-1][1], out[-1][2] + 1)
            else:
                out.append((p, u, 1))
        return out

    @property
    def offsets(self) -> list[int]:
        """Positions where a whole copy of the unit starts (several for a repeated concat)."""
        return [p for p, u, _ in self.runs() if u == 0]

    def as_slice(self) -> slice | None:
        """The positions as one slice when they are a single contiguous copy of the unit, else None."""
        runs = self.runs()
        if len(runs) == 1 and runs[0][1] == 0:
            return slice(runs[0][0], runs[0][0] + runs[0][2])
        return None

    def describe(self, size: int) -> str:
        parts = []
        for p, u, n in self.runs():
            parts.append(f"@{p}" if (u, n) == (0, size) else f"[{p}:{p + n}]<-{u}:{u + n}")
        return f"{self.module}{','.join(parts)}"


@dataclass
class Unit:
    """A set of channels pruned together; a keep-mask for it is a bool tensor of length ``size``.

    ``members`` are the Conv2d names whose output channels the unit is (producers, then depthwise
    convs tied to them); ``producers``/``depthwise``/``norms`` say which of their channels;
    ``consumers`` are the convs and linears (and the convs inside leaf heads such as Detect) that read
    the unit, with the input positions.
    """

    name: str
    size: int
    index: int
    offset: int  # first index of this unit in the graph's global keep vector (after the always-kept 0)
    members: list[str]
    producers: list[ChannelRef] = field(default_factory=list)
    depthwise: list[ChannelRef] = field(default_factory=list)
    norms: list[ChannelRef] = field(default_factory=list)
    consumers: list[ChannelRef] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Unit({self.name!r}, size={self.size}, members={len(self.members)})"


def display_name(conv_name: str) -> str:
    """A conv's readable name: a trailing '.conv' (the YOLO Conv wrapper) is dropped."""
    return conv_name[: -len(".conv")] if conv_name.endswith(".conv") else conv_name


def unit_name(members: list[str]) -> str:
    """First member's path, then the other members relative to the common prefix: 'model.2.cv1+m.0.cv2'."""
    shown = [display_name(m) for m in members]
    if len(shown) == 1:
        return shown[0]
    prefix = os.path.commonprefix([s.split(".") for s in shown])
    rest = [".".join(s.split(".")[len(prefix) :]) or s for s in shown[1:]]
    return "+".join([shown[0], *rest])


@dataclass
class UnitTable:
    """Units plus the maps from every module channel to its place in the global keep vector."""

    units: list[Unit]
    modules: dict[str, ModuleChannels]
    out_index: dict[str, torch.Tensor]  # module -> global keep index of each output channel (0 = always kept)
    in_index: dict[str, torch.Tensor]  # module -> global keep index of each input channel
    pinned: dict[str, int]  # reason -> number of conv output channels (classes) that can never be pruned


def build_units(analysis: ChannelAnalysis) -> UnitTable:
    """Group the analysed channel classes into units and index every module channel."""
    uf = analysis.uf
    roots = uf.roots()
    n = len(roots)
    pinned = torch.zeros(n, dtype=torch.bool)
    reasons: dict[int, str] = {}
    for ids, reason in uf.pins:
        fresh = roots[ids].unique()
        fresh = fresh[~pinned[fresh]]
        pinned[fresh] = True
        reasons.update(dict.fromkeys(fresh.tolist(), reason))

    order = {name: i for i, name in enumerate(analysis.modules)}
    producers = [m for m in analysis.modules.values() if m.kind == "conv"]
    class_refs: dict[int, list[tuple[str, int]]] = {}
    is_pinned = pinned.tolist()
    for m in producers:
        for pos, r in enumerate(roots[m.out_ids].tolist()):
            if not is_pinned[r]:
                class_refs.setdefault(r, []).append((m.name, pos))
    by_key: dict[tuple[str, ...], list[tuple[int, int]]] = {}
    for r, refs in class_refs.items():
        key = tuple(name for name, _ in refs)  # a conv appears twice when chunk(n) ties its pieces
        by_key.setdefault(key, []).append((refs[0][1], r))

    global_index = torch.zeros(n, dtype=torch.long)
    keyed = sorted(by_key.items(), key=lambda kv: (order[kv[0][0]], min(p for p, _ in kv[1])))
    units: list[Unit] = []
    offset = 1
    for key, classes in keyed:
        classes.sort()
        class_roots = torch.tensor([r for _, r in classes], dtype=torch.long)
        global_index[class_roots] = torch.arange(offset, offset + len(classes))
        members = list(dict.fromkeys(key))
        units.append(Unit(name="", size=len(classes), index=len(units), offset=offset, members=members))
        offset += len(classes)

    out_index = {name: global_index[roots[m.out_ids]] for name, m in analysis.modules.items() if m.out_ids is not None}
    in_index = {name: global_index[roots[m.in_ids]] for name, m in analysis.modules.items() if m.in_ids is not None}
    _attach_refs(units, analysis.modules, out_index, in_index, offset)
    seen: set[str] = set()
    for u in units:
        name = unit_name(u.members)
        u.name = name if name not in seen else f"{name}#{u.index}"
        seen.add(u.name)

    pin_counts: dict[str, int] = {}
    conv_roots = torch.zeros(n, dtype=torch.bool)
    for m in analysis.modules.values():
        if m.kind in ("conv", "depthwise"):
            conv_roots[roots[m.out_ids]] = True
    for r in torch.nonzero(pinned & conv_roots).flatten().tolist():
        reason = reasons.get(r, "pinned")
        pin_counts[reason] = pin_counts.get(reason, 0) + 1
    return UnitTable(units, analysis.modules, out_index, in_index, pin_counts)


def _attach_refs(
    units: list[Unit],
    modules: dict[str, ModuleChannels],
    out_index: dict[str, torch.Tensor],
    in_index: dict[str, torch.Tensor],
    total: int,
) -> None:
    unit_of = torch.full((total,), -1, dtype=torch.long)
    for u in units:
        unit_of[u.offset : u.offset + u.size] = u.index
    for table, attr_of_kind in ((out_index, "out"), (in_index, "in")):
        for name, gidx in table.items():
            kind = modules[name].kind
            owner = unit_of[gidx]
            for ui in owner.unique().tolist():
                if ui < 0:
                    continue
                unit = units[ui]
                positions = torch.nonzero(owner == ui).flatten()
                ref = ChannelRef(name, positions, gidx[positions] - unit.offset)
                if attr_of_kind == "in":
                    unit.consumers.append(ref)
                elif kind == "conv":
                    unit.producers.append(ref)
                elif kind == "depthwise":
                    unit.depthwise.append(ref)
                    unit.members.append(name)
                else:
                    unit.norms.append(ref)
