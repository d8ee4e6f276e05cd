"""Safe by default at a leaf head: an input is pruned only on the input side of the convs the family's head
matcher lists, and only when running the head shows nothing else reads it; otherwise it stays whole and the
trace says why (:mod:`pagcp.graph.heads`)."""

from __future__ import annotations

import torch
from torch import nn

import pagcp
from pagcp.graph import HeadReads

WIDTH = 6  # channels of each head input


class Head(nn.Module):
    """Two inputs: ``m[i]`` reads input i; ``extra`` (when on) also reads input 0, and ``gate`` input 1's mean."""

    def __init__(self, extra: bool = False, gate: bool = False) -> None:
        super().__init__()
        self.m = nn.ModuleList(nn.Conv2d(WIDTH, 4, 1) for _ in range(2))
        self.extra = nn.Conv2d(WIDTH, 2, 1) if extra else None
        self.gate = gate

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = [conv(x) for conv, x in zip(self.m, xs)]
        if self.extra is not None:
            out.append(self.extra(xs[0]))
        if self.gate:
            out[1] = out[1] * xs[1].mean()  # the head's own code reads every channel of input 1
        return out


class Net(nn.Module):
    def __init__(self, **head: bool) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, WIDTH, 3, padding=1), nn.BatchNorm2d(WIDTH), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(WIDTH, WIDTH, 3, 2, 1), nn.BatchNorm2d(WIDTH), nn.ReLU())
        self.head = Head(**head)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = self.a(x)
        return self.head([a, self.b(a)])


def lists_m(name: str, module: nn.Module, inputs: list[torch.Tensor]) -> HeadReads | None:
    """A matcher that knows only ``m[i]`` reading input i."""
    if not isinstance(module, Head):
        return None
    return HeadReads([(f"{name}.m.{i}", conv, i) for i, conv in enumerate(module.m)])


def _trace(net: Net, matcher=lists_m):
    return pagcp.trace(net.eval(), torch.zeros(1, 3, 16, 16), leaf_modules=[Head], head_reads=matcher)


def test_listed_readers_make_the_inputs_prunable():
    graph = _trace(Net())
    assert graph.pinned == {"output of leaf module head": 8}  # the head's outputs (its convs' 2 x 4) only
    assert sorted(u.name for u in graph.units) == ["a.0", "b.0"]
    assert {c.module for u in graph.units for c in u.consumers} >= {"head.m.0", "head.m.1"}


def test_an_unlisted_reader_keeps_its_input_whole_and_says_why():
    graph = _trace(Net(extra=True, gate=True))
    reasons = {reason for reason in graph.pinned if reason.startswith("input")}
    assert reasons == {
        "input 0 of leaf head head, also read by extra (conv2d), which the head matcher does not list",
        "input 1 of leaf head head, also read by its forward (mean), which the head matcher does not list",
    }
    assert graph.pinned[next(r for r in reasons if r.startswith("input 0"))] == WIDTH
    assert [u.name for u in graph.units] == []  # a.0 feeds input 0, b.0 input 1: both stay whole


def test_a_listed_conv_that_does_not_read_its_input_pins_it():
    def wrong(name, module, inputs):
        reads = lists_m(name, module, inputs)
        reads.convs.append((f"{name}.m.1", module.m[1], 0))  # m[1] reads input 1 only
        return reads

    graph = _trace(Net(), wrong)
    reason = "input 0 of leaf head head: the head matcher lists m.1, which does not read it"
    assert graph.pinned[reason] == WIDTH and [u.name for u in graph.units] == ["b.0"]


def test_a_leaf_without_a_matcher_is_opaque():
    graph = pagcp.trace(Net().eval(), torch.zeros(1, 3, 16, 16), leaf_modules=[Head])
    assert [u.name for u in graph.units] == []
    assert any(reason.startswith("leaf module head (Head)") for reason in graph.pinned)
