"""Settings of a PAGCP search: the reference's hyper-parameters plus this engine's extensions.

:class:`PruneSettings` is what decides the search's outcome (and what a resumed search must share); how a
search is executed (candidates per pass, device, replay) is not in it. Its ``compat`` names a
:class:`pagcp.engine.compat.Compat`, the one object holding every difference from the reference.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pagcp.engine.compat import COMPAT, COMPAT_MODES, RATIOS, REFERENCE_RATIOS, Compat, compat_mode
from pagcp.errors import ConfigError

__all__ = ["COMPAT_MODES", "COMPRESSIONS", "RATIOS", "REFERENCE_RATIOS", "SALIENCIES", "PruneSettings", "pruned_count"]

COMPRESSIONS = ("global", "backbone")
#: keys that older state files may hold in their settings but that never decide a search (how it is executed)
EXECUTION_KEYS = ("chunk",)
#: filter weights (l1: mean |w|, l2: RMS w) or activations on the oracle's data (act: mean |output|)
SALIENCIES = ("l1", "l2", "act")


@dataclass
class PruneSettings:
    """The decision rule's parameters (docs/algorithm.md). Defaults are the paper's README command."""

    initial_rate: float = 0.06
    initial_thres: float = 6.0
    exp: bool = True
    topk: float = 0.8
    round: int = 0
    rate_slope: float = 0.0
    thres_slope: float = 0.0
    ratios: tuple[float, ...] = RATIOS
    compression: str = "global"
    saliency: str = "l1"
    compat: str = "default"
    target_gflops: float | None = None
    #: with target_gflops: rounds run back to back until the model has at most this fraction (>= the target;
    #: None: the target itself); a cycle's waypoint when prune -> fine-tune cycles share a target
    reach_gflops: float | None = None
    max_rounds: int = 8
    #: every unit keeps a multiple of this many channels, or its full width (GPUs and NPUs run such widths
    #: fastest); a ratio's count is rounded toward keeping more channels
    round_to: int = 1
    #: every unit keeps at least this fraction of its original width (0: down to one channel, the paper's rule);
    #: a floor for deep targets, where rounds back to back would otherwise empty the units the loss barely needs
    min_width: float = 0.0
    #: the widths ``min_width`` is a fraction of, by unit name (prune -> fine-tune cycles pass the first cycle's;
    #: None, or a unit not named: the searched model's own width)
    original_widths: dict[str, int] | None = field(default=None)
    backbone_layers: int = 10
    units: list[str] | None = field(default=None)  # explicit unit names (Python API); None = by compression

    def __post_init__(self) -> None:
        self.ratios = tuple(float(r) for r in self.ratios)
        if self.ratios == RATIOS:  # no ratios of its own: the mode's
            self.ratios = compat_mode(self.compat).ratios
        self.validate()

    @property
    def mode(self) -> Compat:
        """The compatibility mode's :class:`~pagcp.engine.compat.Compat` (every difference from the reference)."""
        return COMPAT[self.compat]

    @property
    def exact_counts(self) -> bool:
        """Channel counts from the ratios as exact decimals (default), or float64 products (the reference)."""
        return self.mode.exact_counts

    def validate(self) -> None:
        def bad(flag: str, why: str) -> ConfigError:
            return ConfigError(f"--{flag.replace('_', '-')}: {why}")

        if not 0 < self.initial_rate < 1:
            raise bad("initial_rate", f"{self.initial_rate} must be in (0, 1): the fraction by which the first unit "
                      "may raise a task's loss (1 would let it double; the paper uses 0.06)")  # fmt: skip
        if not self.initial_thres > 1:
            raise bad("initial_thres", f"{self.initial_thres} must be > 1 (the product of (1 + rate) factors)")
        if not 0 < self.topk <= 1:
            raise bad("topk", f"{self.topk} must be in (0, 1]")
        if self.round < 0:
            raise bad("round", f"{self.round} must be >= 0")
        if not self.ratios or any(not 0 < r < 1 for r in self.ratios) or list(self.ratios) != sorted(self.ratios):
            raise bad("ratios", f"{self.ratios} must be ascending values in (0, 1)")
        if self.compression not in COMPRESSIONS:
            raise bad("compression", f"{self.compression!r}; use one of {', '.join(COMPRESSIONS)}")
        if self.saliency not in SALIENCIES:
            raise bad("saliency", f"{self.saliency!r}; use one of {', '.join(SALIENCIES)}")
        compat_mode(self.compat)
        if self.target_gflops is not None and not 0 < self.target_gflops < 1:
            raise bad("target_gflops", f"{self.target_gflops} must be a fraction of the original GFLOPs in (0, 1)")
        if self.reach_gflops is not None and not (
            self.target_gflops is not None and self.target_gflops <= self.reach_gflops < 1
        ):
            raise ConfigError(f"reach_gflops {self.reach_gflops}: needs a target_gflops <= it and must be < 1")
        if self.max_rounds < 1:
            raise bad("max_rounds", f"{self.max_rounds} must be >= 1")
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise bad("round_to", f"{self.round_to!r} must be a whole number >= 1 (1: any width; 8 or 32 suit GPUs)")
        if not 0 <= self.min_width < 1:
            raise bad("min_width", f"{self.min_width} must be in [0, 1): the fraction of a unit's original width it "
                      "always keeps (0: the paper's rule, down to one channel)")  # fmt: skip
        for r in range(self.round, self.round + self.rounds_at_most):  # every round this search may run
            self.rate_and_bound(r)

    @property
    def rounds_at_most(self) -> int:
        """Rounds one search may run: ``max_rounds`` back to back with a target, else one."""
        return self.max_rounds if self.target_gflops is not None else 1

    def rate_and_bound(self, round_index: int) -> tuple[float, float]:
        """(a, T) of a round: a = initial_rate + rate_slope·round; T = initial_thres + thres_slope·round; both
        bounded as --initial-rate and --initial-thres are, naming the slope that carried them out."""
        rate = self.initial_rate + self.rate_slope * round_index
        bound = self.initial_thres + self.thres_slope * round_index
        if not 0 < rate < 1:
            raise ConfigError(f"--rate-slope {self.rate_slope}: round {round_index}'s rate {rate:g} leaves (0, 1); "
                              "lower it, or the rounds a run may reach (--max-rounds, --cycles)")  # fmt: skip
        if not bound > 1:
            raise ConfigError(f"--thres-slope {self.thres_slope}: round {round_index}'s threshold {bound:g} is <= 1; "
                              "raise it, or lower the rounds a run may reach (--max-rounds, --cycles)")  # fmt: skip
        return rate, bound

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ratios"] = list(self.ratios)
        return d

    def pruned_count(self, ratio: float, width: int, floor: int = 1) -> int:
        """Channels a ratio removes from ``width`` alive ones, by this mode's rule, ``round_to`` and a unit's
        ``floor`` (:func:`pruned_count`)."""
        return pruned_count(ratio, width, self.exact_counts, self.round_to, floor)

    def floor(self, unit: str, width: int) -> int:
        """The fewest channels unit ``unit`` (``width`` channels in the searched model) may keep: ceil(min_width ×
        its original width), at least one."""
        original = (self.original_widths or {}).get(unit, width)
        return max(1, math.ceil(Decimal(repr(float(self.min_width))) * original))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PruneSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k not in EXECUTION_KEYS}  # written by older versions
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown pruning settings: {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**d)


def pruned_count(ratio: float, width: int, exact: bool = True, round_to: int = 1, floor: int = 1) -> int:
    """floor(ratio × width), at most width − ``floor`` (one channel always stays; ``floor`` > 1: that many).

    ``exact``: the ratio is read as the decimal it prints as (0.3 is 3/10, so 0.3 × 10 = 3 exactly);
    otherwise the product is taken in float64 as the reference does (0.49999999999999994 × 64 → 31).
    ``round_to`` N > 1: the channels left are rounded up to a multiple of N, and all ``width`` stay (none is
    removed) where that reaches them; so a unit keeps its full width or a multiple of N, round after round.
    """
    n = int(Decimal(repr(float(ratio))) * width) if exact else int(float(ratio) * width)
    n = max(0, min(n, width - max(floor, 1)))
    if round_to > 1 and n > 0:
        left = -(-(width - n) // round_to) * round_to
        n = max(0, width - left)
    return n
