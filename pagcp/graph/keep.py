"""The one representation of pruning decisions: :class:`Keep`, which channels of every pruning unit stay.

A Keep is one bool vector over the channels of all units of a graph, laid out unit after unit (index 0
stands for the channels that belong to no unit: they always stay). ``keep[unit_name]`` is a *view* of that
unit's slice, so the per-unit masks the search works with and the vector the graph counts, masks and slices
with are the same data. A Keep behaves like a read-only mapping of unit name -> bool mask, plus
``keep[name] = mask`` (checked) and :meth:`Keep.replace` for a copy with one unit changed.

Other forms exist only at the edges: plain ``{unit: mask}`` dicts a user passes in (converted by
``ChannelGraph.keep``) and the pruned-index lists of the search's state file (:meth:`Keep.pruned`,
:meth:`Keep.from_pruned`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from pagcp.errors import ConfigError

#: The per-module view of a Keep that masking and slicing apply: module name -> (output keep, input keep) of
#: every prunable module that loses a channel; None where that side keeps everything (ChannelGraph.pruned_modules).
PrunePlan = Mapping[str, tuple[torch.Tensor | None, torch.Tensor | None]]


class KeepLayout:
    """Where each unit's channels sit in the keep vector: name -> (offset, size), in unit order."""

    def __init__(self, spans: dict[str, tuple[int, int]]):
        self.spans = dict(spans)
        self.size = 1 + sum(size for _, size in self.spans.values())
        owner = torch.zeros(self.size, dtype=torch.long)
        for i, (offset, size) in enumerate(self.spans.values()):
            owner[offset : offset + size] = i + 1
        self._owner = owner  # 0 for the always-kept index, else 1 + the unit's position

    def span(self, name: str) -> slice:
        try:
            offset, size = self.spans[name]
        except KeyError:
            raise KeyError(f"no unit named {name!r}; units: {', '.join(self.spans)}") from None
        return slice(offset, offset + size)

    def kept_per_unit(self, vector: torch.Tensor) -> torch.Tensor:
        """Number of kept channels of every unit (in unit order)."""
        counts = torch.zeros(len(self.spans) + 1, dtype=torch.long).index_add_(0, self._owner, vector.long())
        return counts[1:]


class Keep(Mapping[str, torch.Tensor]):
    """Kept channels of every unit of one graph: one bool vector; ``keep[name]`` is a view of a unit's part."""

    __slots__ = ("layout", "vector")

    def __init__(self, layout: KeepLayout, vector: torch.Tensor | None = None):
        self.layout = layout
        if vector is None:
            vector = torch.ones(layout.size, dtype=torch.bool)
        if vector.dtype != torch.bool or vector.shape != (layout.size,):
            raise ConfigError(f"a keep vector must be a bool tensor of {layout.size} entries, got {vector.shape}")
        self.vector = vector

    # -- the mapping ----------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self.vector[self.layout.span(name)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layout.spans)

    def __len__(self) -> int:
        return len(self.layout.spans)

    def __setitem__(self, name: str, mask: torch.Tensor) -> None:
        span = self.layout.span(name)
        mask = torch.as_tensor(mask, dtype=torch.bool).flatten().cpu()
        if mask.numel() != span.stop - span.start:
            raise ConfigError(
                f"keep[{name!r}] has {mask.numel()} entries; the unit has {span.stop - span.start} channels"
            )
        if not bool(mask.any()):
            raise ConfigError(f"keep[{name!r}] prunes every channel; keep at least one")
        self.vector[span] = mask

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Keep):
            return NotImplemented
        return self.layout is other.layout and torch.equal(self.vector, other.vector)

    __hash__ = None  # type: ignore[assignment]  (mutable)

    def __repr__(self) -> str:
        pruned = [name for name in self if not bool(self[name].all())]
        return f"Keep({len(self)} units, {len(pruned)} pruned, {int(self.vector.sum()) - 1} channels kept)"

    # -- copies and checks ---------------------------------------------------------------------
    def copy(self) -> Keep:
        return Keep(self.layout, self.vector.clone())

    def replace(self, name: str, mask: torch.Tensor) -> Keep:
        """A copy with unit ``name`` set to ``mask``."""
        new = self.copy()
        new[name] = mask
        return new

    def kept(self, name: str) -> int:
        """Number of kept channels of unit ``name``."""
        return int(self[name].sum())

    def check(self) -> Keep:
        """Raise ConfigError naming the first unit that keeps no channel (views can be written freely)."""
        empty = torch.nonzero(self.layout.kept_per_unit(self.vector) == 0).flatten()
        if empty.numel():
            name = list(self.layout.spans)[int(empty[0])]
            raise ConfigError(f"keep[{name!r}] prunes every channel; keep at least one")
        self.vector[0] = True
        return self

    # -- the state-file form -------------------------------------------------------------------
    def pruned(self) -> dict[str, list[int]]:
        """The pruned channel indices of every unit that prunes any (the form written to state files)."""
        out = {}
        for name in self:
            mask = self[name]
            if not bool(mask.all()):
                out[name] = torch.nonzero(~mask).flatten().tolist()
        return out

    @classmethod
    def from_pruned(cls, layout: KeepLayout, pruned: Mapping[str, list[int]]) -> Keep:
        """Every channel kept but the listed ones (the inverse of :meth:`pruned`)."""
        keep = cls(layout)
        for name, index in pruned.items():
            keep.vector[layout.span(name).start + torch.tensor(index, dtype=torch.long)] = False
        return keep.check()

    @classmethod
    def from_masks(cls, layout: KeepLayout, masks: Mapping[str, torch.Tensor]) -> Keep:
        """A Keep from ``{unit name: bool mask}`` (units not named keep every channel)."""
        keep = cls(layout)
        for name, mask in masks.items():
            keep[name] = mask
        return keep
