"""Masked execution: pruned channels are exactly zero, the result equals the sliced model, and the
model is restored bit-exactly on exit (also after an exception)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import pagcp


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and does not oversubscribe a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


def _assert_restored(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert now.keys() == snapshot.keys()
    for k, v in snapshot.items():
        assert torch.equal(now[k], v), k


def _half_keep(graph) -> dict[str, torch.Tensor]:
    return {u.name: torch.arange(u.size) % 2 == 0 for u in graph.units}


@pytest.mark.parametrize("name", ["yolov5n", "resnet18"])
def test_restores_bit_exactly_on_exit_and_after_exception(name):
    model = pagcp.load_model(name) if name.startswith("yolo") else torchvision.models.resnet18(weights=None)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    graph = pagcp.trace(model, x)
    snapshot = _snapshot(model)
    params = {k: id(p) for k, p in model.named_parameters()}
    with torch.no_grad(), graph.masked(_half_keep(graph)) as inside:
        assert inside is model
        model(x)
        assert not torch.equal(model.state_dict()[next(iter(snapshot))], snapshot[next(iter(snapshot))])
    _assert_restored(model, snapshot)
    with pytest.raises(RuntimeError, match="boom"):
        with graph.masked(_half_keep(graph)):
            raise RuntimeError("boom")
    _assert_restored(model, snapshot)
    assert {k: id(p) for k, p in model.named_parameters()} == params  # same objects, no copies


def test_pruned_channels_are_zero_after_activation():
    model = pagcp.load_model("yolov5n").eval()
    x = torch.randn(1, 3, 64, 64)
    graph = pagcp.trace(model, x)
    keep = _half_keep(graph)
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(f"{name}.act").register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, o))
        for name in ("model.2.cv1", "model.2.m.0.cv2", "model.9.cv1")
    ]
    with torch.no_grad(), graph.masked(keep):
        model(x)
    for h in hooks:
        h.remove()
    pruned = ~keep["model.2.cv1+m.0.cv2"]
    assert seen["model.2.cv1"][:, pruned].abs().max() == 0
    assert seen["model.2.m.0.cv2"][:, pruned].abs().max() == 0
    assert seen["model.9.cv1"][:, ~keep["model.9.cv1"]].abs().max() == 0
    assert seen["model.9.cv1"][:, keep["model.9.cv1"]].abs().max() > 0


class SigmoidNet(nn.Module):
    """act(0) != 0: a pruned channel holds sigmoid(0) = 0.5 after its activation; nobody may read it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.Sigmoid())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.Hardsigmoid())
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        return self.head(self.b(y) + y * 2 + 1)


def test_masked_equals_sliced_with_nonzero_activation_at_zero():
    model = SigmoidNet().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 16, 16)
    graph = pagcp.trace(model, x)
    (unit,) = graph.units
    assert unit.members == ["a.0", "b.0"]  # y and b(y) are added: one unit
    keep = {unit.name: torch.tensor([1, 0, 1, 1, 0, 0, 1, 0], dtype=torch.bool)}
    with torch.no_grad():
        with graph.masked(keep):
            masked = model(x)
        sliced = graph.slice(keep)(x)
        full = model(x)
    torch.testing.assert_close(sliced, masked, rtol=1e-5, atol=1e-5)
    assert (full - masked).abs().max() > 1e-2  # the mask did change the result


def test_nested_masks_and_partial_keep():
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 32, 32)
    graph = pagcp.trace(model, x)
    snapshot = _snapshot(model)
    first, second = graph.units[1].name, graph.units[3].name
    k1 = {first: torch.arange(graph[first].size) < 10}
    k2 = {second: torch.arange(graph[second].size) < 20}
    with torch.no_grad():
        with graph.masked(k1), graph.masked(k2):
            nested = model(x)
        both = graph.slice({**k1, **k2})(x)
    torch.testing.assert_close(both, nested, rtol=1e-4, atol=1e-5)
    _assert_restored(model, snapshot)
