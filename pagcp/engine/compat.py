"""The compatibility modes: every difference between pagcp's defaults and the reference implementation, in one
object per mode.

``--compat reference`` (``PruneSettings(compat="reference")``, ``pagcp.prune(..., compat="reference")``,
``pagcp.prune_run`` with that setting) reads one :class:`Compat` from :data:`COMPAT`; nothing else tests the
mode's name. Its fields are of two kinds:

- the search's: the ratios, how a ratio turns into a channel count, and what happens to a unit every ratio of
  which passes. They apply wherever the search runs (:class:`pagcp.engine.search.Search`, ``pagcp.prune``).
- the oracle's data: the split its images come from, how many, and the batch size. They apply where pagcp draws
  the data itself (``python -m pagcp.prune``, ``pagcp.prune_run``); ``pagcp.prune`` takes the caller's batches
  as they are, so there the caller chooses them (:meth:`Compat.oracle_batch` and friends say how).

docs/algorithm.md lists every field with the reference's behaviour; ``tests/test_compat.py`` checks each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pagcp.errors import ConfigError

#: The 19 candidate ratios, fractions of a unit's current width, as exact decimals 0.05 ... 0.95.
RATIOS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
#: The reference's ratios: numpy's 19-point linspace from 0.05 to 0.95 in float64, where e.g. the 8th is
#: 0.39999999999999997 and the 10th 0.49999999999999994.
REFERENCE_RATIOS: tuple[float, ...] = tuple(float(r) for r in np.linspace(0.05, 0.95, 19))
#: the oracle's images by default: a seeded subset of this many
DEFAULT_SUBSET = 64


@dataclass(frozen=True)
class Compat:
    """What one compatibility mode decides (see the module docstring for where each field applies)."""

    name: str
    #: the candidate ratios when the settings name none of their own
    ratios: tuple[float, ...]
    #: channels a ratio removes: floor(decimal ratio × width) exactly (True) or floor in float64 (False)
    exact_counts: bool
    #: a unit that passes every ratio: None accepts the last ratio at once; an index i leaves it unpruned
    #: during the search (no threshold decay, no ratchet) and prunes it at ``ratios[i]`` in the round's result
    all_passed_ratio_index: int | None
    #: topk's loss efficiency of a unit: (its accepted total loss - this) / FLOPs removed, where this is "start"
    #: (the network's total loss when the unit's search began) or "ratcheted" (the round's ratcheted total: the
    #: largest of the round's starting total and every total accepted before the unit)
    efficiency_base: str
    #: the FLOPs topk charges a unit: "search" (what it removed from the search network when it was decided) or
    #: "progressive" (recomputed on the round's starting network pruned, in search order, by every unit with a
    #: passing ratio at its recorded ratio, itself included: so a unit left unpruned during the search counts)
    topk_flops: str
    #: the oracle's batch is this many times ``--batch`` (the reference's validation loader doubles it)
    oracle_batch_factor: int
    #: the split the oracle's images come from unless ``--oracle-split`` says otherwise
    oracle_split: str
    #: the oracle's images unless ``--subset`` says otherwise: a seeded subset of this many, None for all
    oracle_subset: int | None
    #: splits ``--oracle-split`` may not name in this mode, with the reason
    refused_splits: tuple[tuple[str, str], ...] = ()

    def oracle_batch(self, batch: int) -> int:
        """The oracle's batch size for ``--batch``."""
        return self.oracle_batch_factor * batch

    def split(self, requested: str | None) -> str:
        """The oracle's split for ``--oracle-split`` (None: this mode's default); refuses what the mode forbids."""
        for split, why in self.refused_splits:
            if requested == split:
                raise ConfigError(f"--oracle-split {split}: --compat {self.name} {why}")
        return requested or self.oracle_split

    def subset(self, requested: int | str | None) -> int | None:
        """The oracle's image count for ``--subset`` ("auto" or None-as-unset: this mode's; "all": every image)."""
        if requested == "auto":
            return self.oracle_subset
        if requested == "all":
            return None
        return requested


COMPAT: dict[str, Compat] = {
    "default": Compat(
        name="default", ratios=RATIOS, exact_counts=True, all_passed_ratio_index=None, efficiency_base="start",
        topk_flops="search", oracle_batch_factor=1, oracle_split="train", oracle_subset=DEFAULT_SUBSET,
    ),
    "reference": Compat(
        name="reference", ratios=REFERENCE_RATIOS, exact_counts=False, all_passed_ratio_index=-2,
        efficiency_base="ratcheted", topk_flops="progressive", oracle_batch_factor=2, oracle_split="val",
        oracle_subset=None,
        refused_splits=(("train", "prunes on the val split, as the reference does"),),
    ),
}  # fmt: skip
COMPAT_MODES = tuple(COMPAT)


def compat_mode(name: str) -> Compat:
    """The :class:`Compat` of a mode name; ConfigError naming ``--compat`` for an unknown one."""
    try:
        return COMPAT[name]
    except KeyError:
        raise ConfigError(f"--compat: {name!r}; use one of {', '.join(COMPAT_MODES)}") from None
