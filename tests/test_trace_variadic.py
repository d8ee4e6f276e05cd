"""Tracing Python that fx alone refuses: a forward taking ``*args, **kwargs`` and ``list(x.chunk(2, 1))``
(Ultralytics' DetectionModel and C2f write both), without ultralytics installed."""

from __future__ import annotations

import torch
from test_slicing import random_keep, randomize_norms
from torch import nn

import pagcp


class ListChunkToy(nn.Module):
    """C2f as Ultralytics writes it: ``y = list(cv1(x).chunk(2, 1))``, blocks appended, all concatenated."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 2 * c, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * c), nn.SiLU())
        self.cv1 = nn.Sequential(nn.Conv2d(2 * c, 2 * c, 1, bias=False), nn.BatchNorm2d(2 * c), nn.SiLU())
        self.m = nn.ModuleList(nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c), nn.SiLU()) for _ in range(2))
        self.cv2 = nn.Conv2d(4 * c, 5, 1)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if isinstance(x, dict):  # Ultralytics: a dict input means "compute the loss"; tracing never takes it
            raise TypeError("this toy computes no loss")
        return self.predict(x, *args, **kwargs)

    def predict(self, x: torch.Tensor, profile: bool = False) -> torch.Tensor:
        y = list(self.cv1(self.stem(x)).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def test_variadic_forward_and_list_chunk_trace_and_slice():
    model = randomize_norms(ListChunkToy())
    x = torch.randn(1, 3, 16, 16)
    graph = pagcp.trace(model, x)
    unit = graph.unit_of_conv("cv1.0")
    assert unit is not None and unit.size == 8  # the two halves are tied: channel i of each goes together
    keep = random_keep(graph, 1)
    with torch.no_grad(), graph.masked(keep):
        masked = model(x)
    sliced = graph.slice(keep)
    assert sliced.cv1[0].out_channels == 2 * int(keep[unit.name].sum())
    with torch.no_grad():
        torch.testing.assert_close(sliced(x), masked, rtol=1e-4, atol=1e-4)
    assert type(graph.model) is ListChunkToy and "forward" not in vars(model)  # the model itself is untouched
