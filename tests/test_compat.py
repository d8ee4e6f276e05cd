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
