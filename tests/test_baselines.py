"""Baseline keep-masks: uniform ratio exactness, seeded random, global ranking, matched FLOPs."""

from __future__ import annotations

import pytest
import torch

import pagcp
from pagcp.engine.baselines import (
    global_magnitude_keep,
    global_ranking,
    match_flops,
    matched_keep,
    prunable_units,
    random_keep,
    uniform_keep,
)

IMG = 64


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    model = pagcp.load_model("yolov5n", nc=3)
    return pagcp.trace(model, torch.zeros(1, 3, IMG, IMG))


def test_uniform_ratio_is_exact_per_unit(graph):
    units = prunable_units(graph)
    keep = uniform_keep(graph, 0.25, units)
    for name in units:
        width = graph[name].size
        assert int(keep[name].sum()) == width - int(0.25 * width)
    assert graph.flops(keep, IMG) < graph.flops(None, IMG)


def test_random_is_seeded_and_nested(graph):
    units = prunable_units(graph)
    a, b, c = (random_keep(graph, 0.4, units, seed=s) for s in (1, 1, 2))
    assert all(torch.equal(a[n], b[n]) for n in units)
    assert any(not torch.equal(a[n], c[n]) for n in units)
    small = random_keep(graph, 0.2, units, seed=1)
    assert all(bool((small[n] | ~a[n]).all()) for n in units)  # pruned at 0.2 => pruned at 0.4
    assert all(int(a[n].sum()) == graph[n].size - int(0.4 * graph[n].size) for n in units)


def test_global_ranking_keeps_one_channel_per_unit(graph):
    units = prunable_units(graph)
    ranking = global_ranking(graph, units)
    total = sum(graph[n].size for n in units)
    assert len(ranking) == total
    keep = global_magnitude_keep(graph, total, ranking)
    assert all(int(keep[n].sum()) == 1 for n in units)
    keep = global_magnitude_keep(graph, 10, ranking)
    assert sum(graph[n].size - int(keep[n].sum()) for n in units) == 10


@pytest.mark.parametrize("method", ["uniform", "random", "global"])
@pytest.mark.parametrize("fraction", [0.7, 0.5, 0.35])
def test_matched_flops_within_two_percent(graph, method, fraction):
    target = fraction * graph.flops(None, IMG)
    ratio, keep = matched_keep(graph, method, target, IMG, seed=0)
    # one ratio for every unit jumps by whole 16-channel steps (3 % at 0.35x); the two-ratio split lands closer
    assert graph.flops(keep, IMG) == pytest.approx(target, rel=0.005)
    if method != "global":  # each unit at one of two neighbouring counts; the mean ratio is what it reports
        units = prunable_units(graph)
        cut = [1 - int(keep[n].sum()) / graph[n].size for n in units]
        assert max(cut) - min(cut) < 0.15 and ratio == pytest.approx(sum(cut) / len(cut), abs=0.05)


def test_match_flops_bisection_on_a_line():
    x, keep = match_flops(
        lambda v: {"v": torch.tensor([v])}, lambda k: int(1000 - 10 * float(k["v"])), 400.0, 0.0, 100.0
    )
    assert x == pytest.approx(60.0, abs=0.1) and int(keep["v"]) in (59, 60)
