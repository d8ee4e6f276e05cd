"""``--compat reference`` is one object (:mod:`pagcp.engine.compat`): every difference from the default lives in
it, and the command line, :class:`pagcp.pipeline.RunSettings` and ``pagcp.prune(..., compat=...)`` read it alike."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import pagcp
from pagcp.cli.prune import build_parser, settings_from_args
from pagcp.engine.compat import COMPAT, COMPAT_MODES, DEFAULT_SUBSET, RATIOS, REFERENCE_RATIOS, compat_mode
from pagcp.engine.settings import PruneSettings, pruned_count
from pagcp.errors import ConfigError
from pagcp.pipeline import OracleSettings, RunSettings

WIDTH = 20  # the first conv's channels in the tiny net below


def test_the_two_modes_and_every_field():
    default, reference = COMPAT["default"], COMPAT["reference"]
    assert COMPAT_MODES == ("default", "reference")
    assert default.ratios == RATIOS == tuple(round(0.05 * i, 2) for i in range(1, 20))
    assert reference.ratios == tuple(np.linspace(0.05, 0.95, 19).tolist())
    assert reference.ratios[7] == 0.39999999999999997 and reference.ratios[9] == 0.49999999999999994
    assert (default.exact_counts, reference.exact_counts) == (True, False)
    assert (default.all_passed_ratio_index, reference.all_passed_ratio_index) == (None, -2)
    assert (default.oracle_batch(16), reference.oracle_batch(16)) == (16, 32)
    assert (default.split(None), reference.split(None)) == ("train", "val")
    assert (default.subset("auto"), reference.subset("auto")) == (DEFAULT_SUBSET, None)  # None: the whole split
    assert reference.subset(16) == 16 and default.subset("all") is None and reference.split("val") == "val"
    with pytest.raises(ConfigError, match="--oracle-split train: --compat reference"):
        reference.split("train")
    with pytest.raises(ConfigError, match="--compat: 'paper'"):
        compat_mode("paper")


def test_channel_counts_follow_the_mode():
    """ "0.50" of 64 channels: 32 by exact decimals, 31 by the reference's float64 floor."""
    assert pruned_count(RATIOS[9], 64, exact=True) == 32
    assert pruned_count(REFERENCE_RATIOS[9], 64, exact=False) == 31 == math.floor(REFERENCE_RATIOS[9] * 64)
    assert PruneSettings().exact_counts and not PruneSettings(compat="reference").exact_counts


@pytest.mark.parametrize("compat", COMPAT_MODES)
def test_command_line_and_settings_agree(compat):
    """The flags and the typed settings give the same oracle data rules and search rules for each mode."""
    flags = settings_from_args(build_parser().parse_args(["--compat", compat]))
    typed = RunSettings(search=PruneSettings(compat=compat))
    mode = COMPAT[compat]
    for s in (flags, typed):
        assert s.search.ratios == mode.ratios and s.search.mode is mode
        assert (s.oracle_split, s.oracle_subset, s.oracle_batch) == (mode.oracle_split, mode.oracle_subset,
                                                                     mode.oracle_batch(16))  # fmt: skip
    assert flags.identity() == typed.identity()
    explicit = RunSettings(search=PruneSettings(compat=compat), oracle=OracleSettings(subset=8, split="val"))
    assert (explicit.oracle_subset, explicit.oracle_split) == (8, "val")  # given values win over the mode's


def test_reference_mode_refuses_the_train_split_before_anything_runs():
    with pytest.raises(ConfigError, match="--oracle-split train"):
        RunSettings(search=PruneSettings(compat="reference"), oracle=OracleSettings(split="train"))


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, WIDTH, 3, padding=1, bias=False), nn.BatchNorm2d(WIDTH)
        self.c2, self.b2 = nn.Conv2d(WIDTH, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        return self.fc(y.mean((2, 3)))


def _prune_passing_everything(**options) -> dict:
    """PAGCP on a unit every ratio of which passes (the loss ignores the network): the all-passed rule decides."""
    torch.manual_seed(0)
    model = _Tiny().eval()
    batches = [(torch.rand(4, 3, 8, 8), None)]

    def loss_fn(out: torch.Tensor, _targets) -> torch.Tensor:
        return torch.ones(1) + 0 * out.sum()

    example = torch.zeros(1, 3, 8, 8)
    result = pagcp.prune(model, loss_fn, batches, example, tasks=["t"], units=["c1"], topk=1.0, exp=False, **options)
    (decision,) = result.decisions
    return decision


def test_python_api_takes_the_reference_quirks():
    """``pagcp.prune(..., compat="reference")``: the reference's ratios, its float64 counts and its all-passed
    rule (unpruned while searching, pruned at the ratio before the last at the end), as the CLI gets them; their
    channel counts follow :func:`test_channel_counts_follow_the_mode`."""
    default = _prune_passing_everything()
    assert (default["ratio"], default["channels_after"]) == (0.95, WIDTH - 19)  # floor(0.95 * 20) = 19 removed
    reference = _prune_passing_everything(compat="reference")
    assert reference["ratio"] == REFERENCE_RATIOS[-2] == 0.9  # searched unpruned, pruned at the 18th at the end
    assert reference["channels_after"] == WIDTH - math.floor(REFERENCE_RATIOS[-2] * WIDTH) == 2  # 18 removed


def test_reference_charges_topk_the_flops_of_the_progressively_pruned_network():
    """The reference measures a unit's FLOPs for topk on the round's network pruned unit by unit in search order,
    every unit with a passing ratio at its ratio (one left unpruned during the search included); the default
    charges what the unit removed from the search network. Here c2 (searched first) passes every ratio: the
    reference leaves it whole while searching and prunes it at 0.9 for topk, so c1 is charged less."""
    torch.manual_seed(0)
    model = _Tiny().eval()
    batches = [(torch.rand(4, 3, 8, 8), None)]

    def loss_fn(out: torch.Tensor, _targets) -> torch.Tensor:  # pruning lowers |out|: every ratio passes
        return (1 + 1e-3 * out.abs().mean()).reshape(1)

    example, options = torch.zeros(1, 3, 8, 8), {"units": ["c1", "c2"], "topk": 1.0, "initial_rate": 0.5}
    graph = pagcp.trace(model, example)
    charged = {}
    for compat in COMPAT_MODES:
        result = pagcp.prune(model, loss_fn, batches, example, tasks=["t"], compat=compat, **options)
        by_name = {d["name"]: d for d in result.decisions}
        assert [d["name"] for d in result.decisions] == ["c2", "c1"] and by_name["c1"]["tripped_task"] is None
        c1 = by_name["c1"]
        base = sum(c1["losses_start"])  # default: c1's start; reference: the ratchet, unmoved (c2 not applied)
        charged[compat] = (sum(c1["losses_accepted"]) - base) / c1["efficiency"], c1["flops_removed"]
    c2_at_90 = graph.full_keep()
    c2_at_90["c2"][1:] = False  # 0.9 of 8 channels: 7 removed (which ones does not change the FLOPs)
    both = c2_at_90.copy()
    both["c1"][2:] = False  # 0.9 of 20: 18 removed
    progressive = graph.flops(c2_at_90, 8) - graph.flops(both, 8)
    assert charged["default"][0] == pytest.approx(charged["default"][1], rel=1e-6)  # what it removed
    assert charged["reference"][0] == pytest.approx(progressive, rel=1e-6)
    assert progressive < charged["reference"][1]  # c1 removed more from the search network, c2 whole there


def test_reference_measures_efficiency_from_its_ratcheted_total():
    """Loss efficiency = (accepted total − a base) / FLOPs: the default's base is the total when the unit's search
    began; the reference's is its ratchet of the total (the round's start, raised by each accepted total, never
    lowered; a unit left unpruned during the search does not move it)."""
    from pagcp.engine.search import Search
    from pagcp.engine.state import UnitDecision

    def decided(name, start, accepted, tripped="t"):
        return UnitDecision(name=name, channels_before=8, channels_after=4, ratio=0.5, tripped_task=tripped,
                            losses_start=[start], losses_accepted=[accepted], flops_removed=10,
                            evaluations=1)  # fmt: skip

    decisions = [decided("a", 4.0, 3.0), decided("b", 3.0, 3.5), decided("c", 3.5, 6.0, tripped=None),
                 decided("d", 3.5, 3.6), decided("e", 4.5, 4.6)]  # fmt: skip
    bases = {}
    for compat in COMPAT_MODES:
        search = object.__new__(Search)
        search.settings = PruneSettings(compat=compat)
        bases[compat] = search._efficiency_bases(decisions)
    assert bases["default"] == {"a": 4.0, "b": 3.0, "c": 3.5, "d": 3.5, "e": 4.5}
    assert bases["reference"] == {"a": 4.0, "b": 4.0, "c": 4.0, "d": 4.0, "e": 4.0}
