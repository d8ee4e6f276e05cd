"""Slicing: the physically pruned model computes what the masked model computes, and its measured
GFLOPs / parameter count equal the graph's analytic ones."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import pagcp
from pagcp.errors import ConfigError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and does not oversubscribe a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class C2fToy(nn.Module):
    """YOLOv8's C2f pattern: cv1 -> chunk(2) -> residual bottleneck on the second half -> concat -> cv2."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 2 * c, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * c), nn.SiLU())
        self.cv1 = nn.Sequential(nn.Conv2d(2 * c, 2 * c, 1, bias=False), nn.BatchNorm2d(2 * c), nn.SiLU())
        self.m1 = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.SiLU())
        self.m2 = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c), nn.SiLU())
        self.cv2 = nn.Sequential(nn.Conv2d(3 * c, 2 * c, 1, bias=False), nn.BatchNorm2d(2 * c), nn.Hardswish())
        self.split = nn.Conv2d(2 * c, 2 * c, 1)
        self.head = nn.Conv2d(c, 5, 1)
        self.fc = nn.Linear(c, 4)

    def forward(self, x: torch.Tensor):
        x = self.stem(x)
        a, b = self.cv1(x).chunk(2, 1)
        b = b + self.m2(self.m1(b))
        y = self.cv2(torch.cat([a, b, self.m2[2](b)], 1))
        p, q = self.split(y).chunk(2, 1)
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(q.sigmoid(), 1), 1)
        return self.head(p * 2.0), self.fc(pooled)


class FixedWidthToy(nn.Module):
    """Code that hard-codes channel counts (split sizes, slice bounds, x.shape[1]): those widths stay."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.Sigmoid())
        self.c = nn.Conv2d(8, 8, 1)
        self.d = nn.Conv2d(4, 8, 1)
        self.e = nn.Conv2d(8, 6, 1)
        self.f = nn.Conv2d(6, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(self.a(x))
        u, v = torch.split(y, [4, 4], dim=1)
        z = self.c(torch.cat([v, u], 1)) + self.d(y[:, :4])
        w = self.e(z)
        return self.f(w * w.shape[1] ** -0.5)


class FlattenToy(nn.Module):
    """Conv features flattened with their spatial positions into a Linear (VGG-style classifier)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 6, 3, 1, 1)
        )
        self.pool = nn.AdaptiveAvgPool2d((2, 3))
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(6 * 2 * 3, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).view(x.shape[0], -1))


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affines, so that masked/sliced comparisons mean something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
    return model.eval()


def random_keep(graph, seed: int) -> dict[str, torch.Tensor]:
    """Every unit keeps a random fraction of its channels (at least one)."""
    gen = torch.Generator().manual_seed(seed)
    keep = {}
    for u in graph.units:
        mask = torch.rand(u.size, generator=gen) < torch.rand(1, generator=gen).item()
        mask[torch.randint(u.size, (1,), generator=gen)] = True
        keep[u.name] = mask
    return keep


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in _flat(item)]


def assert_sliced_equals_masked(model, graph, x, keep, size, flatten=_flat) -> dict:
    """The sliced model's outputs equal the masked model's, and its measured FLOPs and params the graph's
    counts; returns the sliced model's stats."""
    with torch.no_grad():
        with graph.masked(keep):
            masked_out = flatten(model(x))
        sliced = graph.slice(keep)
        sliced_out = flatten(sliced(x))
    assert len(masked_out) == len(sliced_out)
    for a, b in zip(masked_out, sliced_out):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * max(1.0, a.abs().max().item()))
    stats = pagcp.model_stats(sliced, size)
    assert graph.flops(keep, size) / 1e9 == stats["gflops"]
    assert graph.params(keep) == stats["params"]
    return stats


MODELS = {  # name -> (constructor, input size in pixels)
    "yolov5n": (lambda: pagcp.load_model("yolov5n"), 64),
    "yolov5s": (lambda: pagcp.load_model("yolov5s"), 64),
    "yolov5n-v5": (lambda: pagcp.load_model("yolov5n-v5"), 64),
    "yolov5s-v5": (lambda: pagcp.load_model("yolov5s-v5"), 64),
    "resnet18": (lambda: torchvision.models.resnet18(weights=None), 32),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(weights=None), 32),
    "c2f_toy": (C2fToy, 32),
    "fixed_width_toy": (FixedWidthToy, 32),
    "flatten_toy": (FlattenToy, 32),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_sliced_equals_masked_and_counts_match(name):
    build, size = MODELS[name]
    model = randomize_norms(build())
    x = torch.randn(1, 3, size, size)
    graph = pagcp.trace(model, x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for seed in (1, 2, 3):
        stats = assert_sliced_equals_masked(model, graph, x, random_keep(graph, seed), size)
        assert stats["params"] < graph.params()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the original is untouched


def test_full_keep_counts_match_unpruned_model():
    model = pagcp.load_model("yolov5s")
    graph = pagcp.trace(model, torch.zeros(1, 3, 64, 64))
    assert graph.params(graph.full_keep()) == 7_235_389
    stats = pagcp.model_stats(model, 640)
    assert graph.flops(None, 640) / 1e9 == stats["gflops"]  # another size: shape-propagated, no forward
    assert round(graph.flops(None, 640) / 1e9, 1) == 16.4


def test_sliced_widths_and_standard_modules():
    model = randomize_norms(pagcp.load_model("yolov5n"))
    graph = pagcp.trace(model, torch.zeros(1, 3, 64, 64))
    unit = graph["model.2.cv1+m.0.cv2"]
    keep = {unit.name: torch.arange(unit.size) % 4 != 0}  # 16 -> 12 channels
    sliced = graph.slice(keep)
    for conv in ("model.2.cv1.conv", "model.2.m.0.cv2.conv"):
        assert sliced.get_submodule(conv).weight.shape[0] == 12
        assert type(sliced.get_submodule(conv)) is nn.Conv2d
    assert sliced.get_submodule("model.2.cv1.bn").running_mean.shape == (12,)
    assert sliced.get_submodule("model.2.m.0.cv1.conv").weight.shape[1] == 12
    assert sliced.get_submodule("model.2.cv3.conv").weight.shape[1] == 12 + 16
    assert model.get_submodule("model.2.cv1.conv").weight.shape[0] == 16


def test_sliced_yolo_saves_and_loads(tmp_path):
    model = randomize_norms(pagcp.load_model("yolov5n"))
    x = torch.randn(1, 3, 64, 64)
    graph = pagcp.trace(model, x)
    sliced = graph.slice(random_keep(graph, 7))
    path = tmp_path / "pruned.pt"
    pagcp.save_model(sliced, path)
    loaded = pagcp.load_model(str(path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], sliced(x)[0], rtol=1e-5, atol=1e-3)
    assert pagcp.model_stats(loaded, 64) == pagcp.model_stats(sliced, 64)


def test_depthwise_slice_keeps_groups_equal_to_channels():
    model = randomize_norms(torchvision.models.mobilenet_v2(weights=None))
    graph = pagcp.trace(model, torch.zeros(1, 3, 32, 32))
    unit = graph.unit_of_conv("features.2.conv.1.0")  # the depthwise conv is tied to the expansion
    assert unit is not None and "features.2.conv.0.0" in unit.members
    keep = {unit.name: torch.arange(unit.size) < 10}
    dw = graph.slice(keep).get_submodule("features.2.conv.1.0")
    assert (dw.in_channels, dw.out_channels, dw.groups, dw.weight.shape[0]) == (10, 10, 10, 10)


def test_keep_that_prunes_a_whole_unit_is_refused():
    graph = pagcp.trace(C2fToy(), torch.zeros(1, 3, 16, 16))
    unit = graph.units[0]
    with pytest.raises(ConfigError, match="keep at least one"):
        graph.slice({unit.name: torch.zeros(unit.size, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="entries"):
        graph.slice({unit.name: torch.ones(unit.size + 1, dtype=torch.bool)})
