"""Channel graph: units found from the traced graph (residual groups, concat offsets, depthwise ties,
Detect inputs), analytic counts, printing, and trace errors."""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision
from torch import nn

import pagcp
from pagcp.errors import PagcpError, TraceError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and does not oversubscribe a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def _yolo_graph(name: str):
    """(model, graph) traced at 64 px, shared by the tests of this module (they only read them)."""
    model = pagcp.load_model(name).eval()
    return model, pagcp.trace(model, torch.zeros(1, 3, 64, 64))


def _groups(graph) -> dict[str, set[str]]:
    """Units with several producer convs, by YOLO layer index."""
    return {u.name.split(".")[1]: set(u.members) for u in graph.units if len(u.producers) > 1}


def _expected_group(layer: int, n: int) -> set[str]:
    return {f"model.{layer}.cv1.conv"} | {f"model.{layer}.m.{i}.cv2.conv" for i in range(n)}


@pytest.mark.parametrize(
    "name, repeats",
    [
        ("yolov5n", {2: 1, 4: 2, 6: 3, 8: 1}),
        ("yolov5s", {2: 1, 4: 2, 6: 3, 8: 1}),
        ("yolov5n-v5", {2: 1, 4: 3, 6: 3}),
        ("yolov5s-v5", {2: 1, 4: 3, 6: 3}),
    ],
)
def test_yolo_residual_groups_found(name, repeats):
    _, graph = _yolo_graph(name)
    assert _groups(graph) == {str(layer): _expected_group(layer, n) for layer, n in repeats.items()}
    assert graph["model.2.cv1+m.0.cv2"].size == graph.model.get_submodule("model.2.cv1.conv").out_channels


def test_yolo_unit_counts_and_widths():
    # v5.0 s: 52 units (the paper's L = 52); v6+ replaces SPP+C3 with C3+SPPF: 50 units for n/s
    assert len(_yolo_graph("yolov5s-v5")[1]) == 52
    model, graph = _yolo_graph("yolov5s")
    assert len(graph) == 50
    assert sum(u.size for u in graph.units) == 8_704
    for unit in graph.units:
        for ref in unit.producers:
            assert model.get_submodule(ref.module).out_channels == unit.size


def test_concat_offsets_sppf_and_detect_inputs():
    _, graph = _yolo_graph("yolov5s")
    sppf = graph["model.9.cv1"]
    (consumer,) = sppf.consumers
    assert consumer.module == "model.9.cv2.conv"
    assert consumer.offsets == [0, 256, 512, 768]  # x, m(x), m(m(x)), m(m(m(x)))
    assert consumer.positions.numel() == 4 * sppf.size
    # C3: cv2 is concatenated after the m branch; layer 4's output is concatenated into layer 17's input
    assert {c.module: c.offsets for c in graph["model.4.cv2"].consumers} == {"model.4.cv3.conv": [64]}
    offsets = {c.module: c.offsets for c in graph["model.4.cv3"].consumers}
    assert offsets == {"model.5.conv": [0], "model.17.cv1.conv": [128], "model.17.cv2.conv": [128]}
    # the convs feeding Detect are prunable; Detect reads them through its m[i] convs
    for i, layer in enumerate((17, 20, 23)):
        unit = graph[f"model.{layer}.cv3"]
        assert [c.module for c in unit.consumers][-1] == f"model.24.m.{i}"
    assert not any(name.startswith("model.24") for u in graph.units for name in u.members)
    assert graph.pinned == {"output of leaf module model.24": 3 * 255}


def test_v5_spp_and_focus():
    _, graph = _yolo_graph("yolov5s-v5")
    (consumer,) = graph["model.8.cv1"].consumers  # SPP: x and three parallel pools
    assert consumer.offsets == [0, 256, 512, 768]
    assert graph.unit_of_conv("model.0.conv.conv").name == "model.0.conv"  # Focus input stays pinned
    assert graph.units[0].consumers[0].module == "model.1.conv"


def test_resnet18_units():
    graph = pagcp.trace(torchvision.models.resnet18(weights=None), torch.zeros(1, 3, 32, 32))
    assert len(graph) == 12
    assert set(graph.units[0].members) == {"conv1", "layer1.0.conv2", "layer1.1.conv2"}
    group = graph.unit_of_conv("layer2.0.downsample.0")
    assert set(group.members) == {"layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"}
    assert [n.module for n in group.norms] == ["layer2.0.bn2", "layer2.0.downsample.1", "layer2.1.bn2"]
    last = graph.unit_of_conv("layer4.1.conv2")
    assert [(c.module, c.offsets) for c in last.consumers][-1] == ("fc", [0])  # after pool + flatten
    assert graph.pinned == {}


def test_mobilenet_v2_depthwise_tied():
    graph = pagcp.trace(torchvision.models.mobilenet_v2(weights=None), torch.zeros(1, 3, 32, 32))
    assert len(graph) == 25
    unit = graph["features.2.conv.0.0+1.0"]
    assert [r.module for r in unit.depthwise] == ["features.2.conv.1.0"]
    assert unit.members == ["features.2.conv.0.0", "features.2.conv.1.0"]
    assert set(graph["features.4.conv.2+5.conv.2+6.conv.2"].members) == {
        "features.4.conv.2",
        "features.5.conv.2",
        "features.6.conv.2",
    }


class ChunkToy(nn.Module):
    def __init__(self):
        super().__init__()
        self.cv1 = nn.Conv2d(3, 8, 1)
        self.m = nn.Conv2d(4, 4, 3, 1, 1)
        self.cv2 = nn.Conv2d(12, 6, 1)

    def forward(self, x):
        a, b = self.cv1(x).chunk(2, 1)
        b = b + self.m(b)
        return self.cv2(torch.cat([a, b, b], 1))


def test_chunk_ties_pieces_and_concat_offsets():
    graph = pagcp.trace(ChunkToy(), torch.zeros(1, 3, 8, 8))
    (unit,) = graph.units
    assert (unit.name, unit.size, unit.members) == ("cv1+m", 4, ["cv1", "m"])
    cv1 = next(r for r in unit.producers if r.module == "cv1")
    assert cv1.offsets == [0, 4]  # both chunk pieces: re-split evenly after slicing
    assert [(c.module, c.offsets) for c in unit.consumers] == [("m", [0]), ("cv2", [0, 4, 8])]
    assert graph.unit_of_conv("cv2") is None  # model output


def test_flops_params_analytic():
    model, graph = _yolo_graph("yolov5n")
    assert graph.params() == 1_872_157 == sum(p.numel() for p in model.parameters())
    assert graph.flops(img_size=128) / 1e9 == pagcp.model_stats(model, 128)["gflops"]
    assert graph.flops(img_size=(96, 160)) / 1e9 == pagcp.model_stats(model, (96, 160))["gflops"]
    unit = graph["model.9.cv1"]
    half = {unit.name: torch.arange(unit.size) < unit.size // 2}
    cv1, cv2 = model.get_submodule("model.9.cv1.conv"), model.get_submodule("model.9.cv2.conv")
    removed_macs = 2 * 2 * (unit.size // 2) * cv1.in_channels + 2 * 2 * cv2.out_channels * 4 * (unit.size // 2)
    assert graph.flops() - graph.flops(half) == 2 * removed_macs  # 2x2 output map at 64 px, stride 32
    removed_params = (unit.size // 2) * (cv1.in_channels + 2) + cv2.out_channels * 4 * (unit.size // 2)
    assert graph.params() - graph.params(half) == removed_params
    widths = graph.kept_widths(half)
    assert widths["model.9.cv1.conv"] == (unit.size // 2, cv1.in_channels)
    assert widths["model.9.cv2.conv"] == (cv2.out_channels, 4 * (unit.size // 2))
    assert widths["model.9.cv1.bn"] == (unit.size // 2, None)


def test_print_shows_units_members_consumers():
    _, graph = _yolo_graph("yolov5n")
    text = str(graph)
    assert text.splitlines()[0].startswith("ChannelGraph of Model traced at 1x3x64x64: 50 units")
    line = next(ln for ln in text.splitlines() if "model.9.cv1 " in ln)
    assert "model.9.cv2.conv@0,@128,@256,@384" in line
    assert "model.2.cv1+m.0.cv2" in text and "conv channels not prunable: output of leaf module model.24: 765" in text


def test_unit_lookup():
    _, graph = _yolo_graph("yolov5n")
    assert graph.unit_of_conv("model.6.m.2.cv2.conv").name == "model.6.cv1+m.0.cv2+m.1.cv2+m.2.cv2"
    assert graph.unit_of_conv("model.24.m.0") is None
    assert graph.full_keep()["model.0"].tolist() == [True] * 16
    with pytest.raises(KeyError, match="no unit named"):
        graph["model.99"]
    toy = pagcp.trace(ChunkToy(), torch.zeros(1, 3, 8, 8))
    assert [u.name for u in toy.units_of_conv("cv1")] == ["cv1+m"]
    # the fx nodes, in topological order, for prefix/suffix execution
    assert [n.op for n in graph.nodes][0] == "placeholder" and graph.nodes[-1].op == "output"


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return self.conv(x)
        return x


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.block = nn.Sequential(nn.ReLU(), Untraceable())
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.out(self.block(self.stem(x)))


def test_trace_error_names_module_and_leaf_modules_fix():
    with pytest.raises(TraceError, match=r"'block\.1' \(Untraceable\).*leaf_modules=\['block\.1'\]"):
        pagcp.trace(Net(), torch.zeros(1, 3, 8, 8))
    assert issubclass(TraceError, PagcpError)
    graph = pagcp.trace(Net(), torch.zeros(1, 3, 8, 8), leaf_modules=["block.1"])
    assert len(graph) == 0  # stem feeds an opaque leaf: its channels cannot be pruned
    assert graph.pinned == {"leaf module block.1 (Untraceable) (block_1)": 4, "model output": 2}
    graph = pagcp.trace(Net(), torch.zeros(1, 3, 8, 8), leaf_modules=[Untraceable])
    assert len(graph) == 0
    with pytest.raises(TraceError, match="forward of Untraceable itself"):
        pagcp.trace(Untraceable(), torch.zeros(1, 4, 8, 8))


@pytest.mark.parametrize("unit_name", ["model.0", "model.4.cv1+m.0.cv2+m.1.cv2", "model.9.cv1", "model.23.cv3"])
def test_prefix_suffix_split_reproduces_masked_model(unit_name):
    model, graph = _yolo_graph("yolov5n")
    x = torch.randn(1, 3, 64, 64)
    unit = graph[unit_name]
    split = graph.split_at(unit)
    with torch.no_grad():
        frontier = split.run_prefix(x)  # computed once, unmasked
        keep = {unit.name: torch.arange(unit.size) % 3 != 1}
        with graph.masked(keep):
            expected = model(x)
            got = split.run_suffix(frontier)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    producers = {n.name for n in split.suffix.graph.nodes if n.op == "call_module"}
    assert {r.module.replace(".", "_") for r in unit.producers} <= producers
    assert not any(n.op == "call_module" for n in split.prefix.graph.nodes if n.target in unit.members)
    if unit_name == "model.23.cv3":
        assert len([n for n in split.suffix.graph.nodes if n.op == "call_module"]) == 4  # cv3 conv/bn/act, Detect


class ShapeReader(nn.Module):
    """Reads spatial sizes (harmless) and returns a dict (its tensors are model outputs)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, 2, 1)
        self.b = nn.Conv2d(8, 8, 3, 1, 1)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.b(self.a(x))
        _, ch, h, w = y.shape  # ch unused: the width is not read
        up = nn.functional.interpolate(y, size=x.shape[2:], mode="nearest")
        return {"small": self.c(y) * (h * w), "up": up.sum(1)}


def test_spatial_shape_reads_do_not_pin_and_dict_outputs_do():
    graph = pagcp.trace(ShapeReader(), torch.zeros(1, 3, 16, 16))
    assert [u.name for u in graph.units] == ["a"]  # b feeds a channel sum (opaque): pinned; c is an output
    assert graph.pinned == {"reduction over channels (sum_1)": 8, "model output": 4}
    assert graph.unit_of_conv("c") is None and graph.unit_of_conv("b") is None


class RealOnly(nn.Module):
    """Copies to the CPU (impossible from the meta device): the real fallback is used."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, 1, 1)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(self.a(x).cpu())


def test_shape_propagation_falls_back_to_a_real_forward(caplog):
    with caplog.at_level("INFO", logger="pagcp.graph.shapes"):
        graph = pagcp.trace(RealOnly(), torch.zeros(2, 3, 8, 8))
    assert "real forward pass" in caplog.text
    assert [u.name for u in graph.units] == ["a"]
    assert graph.flops() == 2 * 8 * 8 * (8 * 3 * 9 + 4 * 8)
