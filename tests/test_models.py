"""YOLOv5 model zoo, statistics and checkpoint I/O."""

from __future__ import annotations

import os
import pickle
import sys
import textwrap

import pytest
import torch
from torch import nn

import pagcp
from pagcp.errors import CheckpointError, ConfigError, UnsafePickleError
from pagcp.models import Model
from pagcp.models.checkpoint import fit_widths

SPEC_PARAMS = {
    "yolov5s-v5": 7_276_605,
    "yolov5m-v5": 21_375_645,
    "yolov5l-v5": 47_056_765,
    "yolov5x-v5": 87_775_965,
    "yolov5s": 7_235_389,
    "yolov5m": 21_190_557,
    "yolov5l": 46_563_709,
    "yolov5x": 86_749_405,
}
SPEC_GFLOPS = {
    "yolov5s-v5": 17.0,
    "yolov5m-v5": 51.2,
    "yolov5l-v5": 115.3,
    "yolov5x-v5": 218.6,
    "yolov5s": 16.4,
    "yolov5m": 48.9,
    "yolov5l": 109.0,
    "yolov5x": 205.4,
}


@pytest.mark.parametrize("name", sorted(SPEC_PARAMS))
def test_params_and_gflops_match_spec(name):
    model = pagcp.load_model(name)
    stats = pagcp.model_stats(model, 640)
    assert stats["params"] == SPEC_PARAMS[name]
    assert abs(stats["gflops"] - SPEC_GFLOPS[name]) < 0.15


@pytest.mark.parametrize("name,params", [("yolov5n", 1_872_157), ("yolov5n-v5", 1_882_525)])
def test_nano_models(name, params):
    model = pagcp.load_model(name)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.stride.tolist() == [8.0, 16.0, 32.0]


def test_widths_and_structure_yolov5s():
    model = Model("yolov5s")
    expect = {
        0: 32,
        1: 64,
        2: 64,
        3: 128,
        4: 128,
        5: 256,
        6: 256,
        7: 512,
        8: 512,
        9: 512,
        10: 256,
        13: 256,
        14: 128,
        17: 128,
        18: 128,
        20: 256,
        21: 256,
        23: 512,
    }
    for i, c in expect.items():
        layer = model.model[i]
        out = layer.cv3 if hasattr(layer, "cv3") else layer.cv2 if hasattr(layer, "cv2") else layer
        assert out.conv.out_channels == c, i
    assert [m.in_channels for m in model.model[24].m] == [128, 256, 512]
    assert model.save == [4, 6, 10, 14, 17, 20, 23]
    assert len(model.model) == 25
    assert len(model.model[4].m) == 2 and len(model.model[6].m) == 3  # 6 * 0.33, 9 * 0.33


def test_any_nc_and_outputs():
    model = pagcp.load_model("yolov5n", nc=7)
    assert model.model[-1].no == 12
    x = torch.rand(2, 3, 96, 128)
    decoded, raw = model(x)
    assert decoded.shape == (2, 3 * (12 * 16 + 6 * 8 + 3 * 4), 12)
    assert [r.shape for r in raw] == [(2, 3, 12, 16, 12), (2, 3, 6, 8, 12), (2, 3, 3, 4, 12)]
    model.train()
    train_out = model(x)
    assert isinstance(train_out, list) and len(train_out) == 3
    assert [t.shape for t in train_out] == [r.shape for r in raw]


def test_detect_decode_formula():
    model = pagcp.load_model("yolov5n", nc=2)
    detect = model.model[-1]
    x = torch.rand(1, 3, 64, 64)
    decoded, raw = model(x)
    s = raw[1].sigmoid()[0, 2, 1, 0]  # level 1 (stride 16), anchor 2, cell y=1, x=0
    anchor_px = detect.anchors[1, 2] * 16
    xy = (s[:2] * 2 - 0.5 + torch.tensor([0.0, 1.0])) * 16
    wh = (s[2:4] * 2) ** 2 * anchor_px
    row = 3 * 8 * 8 + 2 * 4 * 4 + 1 * 4 + 0
    torch.testing.assert_close(decoded[0, row, :4], torch.cat([xy, wh]))
    torch.testing.assert_close(decoded[0, row, 4:], s[4:])


def test_detect_bias_init():
    model = Model("yolov5n", nc=3)
    b = model.model[-1].m[0].bias.view(3, -1)
    import math

    assert b[0, 4].item() == pytest.approx(math.log(8 / (640 / 8) ** 2), abs=0.5)
    assert b[1, 6].item() - b[1, 4].item() == pytest.approx(math.log(0.6 / 2.01) - math.log(8 / 80**2), abs=0.5)


def test_custom_yaml(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        textwrap.dedent("""
        nc: 4
        depth_multiple: 1.0
        width_multiple: 0.25
        anchors: 3
        backbone:
          [[-1, 1, Conv, [32, 3, 2]],
           [-1, 1, Conv, [64, 3, 2]],
           [-1, 1, C3, [64]],
           [-1, 1, Conv, [128, 3, 2]],
           [-1, 1, Conv, [128, 3, 2]],
          ]
        head:
          [[-1, 1, Conv, [128, 3, 2]],
           [[2, 3, 5], 1, Detect, [nc, anchors]],
          ]
        """)
    )
    model = pagcp.load_model(cfg)
    assert model.nc == 4 and model.stride.tolist() == [4.0, 8.0, 32.0]
    decoded, _ = model(torch.rand(1, 3, 64, 64))
    assert decoded.shape[-1] == 9


def _prune_some(model: Model) -> None:
    """Shrink a few convs consistently (what a slicer would do) to exercise width round-trips."""
    sd = model.state_dict()
    keep = torch.arange(0, model.model[2].cv2.conv.out_channels, 2)
    for k in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
        sd[f"model.2.cv2.{k}"] = sd[f"model.2.cv2.{k}"][keep]
    c_m = model.model[2].cv1.conv.out_channels
    sd["model.2.cv3.conv.weight"] = torch.cat(
        [sd["model.2.cv3.conv.weight"][:, :c_m], sd["model.2.cv3.conv.weight"][:, c_m:][:, keep]], 1
    )
    fit_widths(model, sd)
    model.load_state_dict(sd)


def _randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("name", ["yolov5n", "yolov5n-v5"])
def test_pruned_widths_round_trip(tmp_path, name):
    model = pagcp.load_model(name, nc=5)
    _randomize_bn(model)
    _prune_some(model)
    model.eval()
    assert model.model[2].cv2.conv.out_channels == 8
    path = pagcp.save_model(model, tmp_path / "pruned.pt", epoch=3, map=0.5)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["widths"]["model.2.cv2.conv"] == [32, 8, 1]
    loaded = pagcp.load_model(path)
    assert loaded.model[2].cv3.conv.in_channels == 24
    assert loaded.meta == {"epoch": 3, "map": 0.5}
    x = torch.rand(1, 3, 96, 96)
    torch.testing.assert_close(loaded(x)[0], model(x)[0], rtol=0, atol=0)
    assert not list(tmp_path.glob("*.tmp"))
    stats = pagcp.model_stats(loaded, 640)
    assert stats["params"] == sum(p.numel() for p in model.parameters())
    assert stats["gflops"] < pagcp.model_stats(pagcp.load_model(name, nc=5), 640)["gflops"]


UPSTREAM_COMMON = """
import pagcp.models.blocks as _c
class Conv(_c.Conv): pass
class Bottleneck(_c.Bottleneck): pass
class C3(_c.C3): pass
class SPP(_c.SPP): pass
class SPPF(_c.SPPF): pass
class Focus(_c.Focus): pass
class Concat(_c.Concat): pass
"""
UPSTREAM_YOLO = """
import pagcp.models.yolo as _y
class Detect(_y.Detect): pass
class Model(_y.Model): pass
class DetectionModel(_y.Model): pass
"""


@pytest.fixture
def upstream_package(tmp_path):
    """A throwaway `models` package whose classes carry YOLOv5's upstream names."""
    pkg = tmp_path / "upstream" / "models"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "common.py").write_text(UPSTREAM_COMMON)
    (pkg / "yolo.py").write_text(UPSTREAM_YOLO)
    sys.path.insert(0, str(pkg.parent))
    import models.common
    import models.yolo

    yield models
    sys.path.remove(str(pkg.parent))
    for key in [k for k in sys.modules if k == "models" or k.startswith("models.")]:
        del sys.modules[key]


def _as_upstream(model: Model, models, model_cls: str, anchor_grid: bool) -> nn.Module:
    for m in model.modules():
        for mod in (models.common, models.yolo):
            cls = getattr(mod, type(m).__name__, None)
            if cls is not None and m is not model:
                m.__class__ = cls
    model.__class__ = getattr(models.yolo, model_cls)
    detect = model.model[-1]
    if anchor_grid:  # v5.0 registered the pixel anchors as a buffer
        detect.register_buffer("anchor_grid", (detect.anchors * detect.stride.view(-1, 1, 1)).view(3, 1, 3, 1, 1, 2))
    else:
        detect.anchor_grid = [torch.empty(0)] * 3
    detect.inplace = True
    return model


@pytest.mark.parametrize(
    "name,model_cls,anchor_grid,pruned",
    [
        ("yolov5n", "DetectionModel", False, False),
        ("yolov5n-v5", "Model", True, False),
        ("yolov5n", "Model", False, True),
    ],
)
def test_official_checkpoint_loads(tmp_path, upstream_package, name, model_cls, anchor_grid, pruned):
    source = pagcp.load_model(name, nc=3)
    _randomize_bn(source)
    if pruned:
        _prune_some(source)
    source.names = ["cat", "dog", "coin"]
    reference = Model(source.yaml)
    fit_widths(reference, source.state_dict())
    reference.load_state_dict(source.state_dict())
    reference = reference.half().float().eval()
    upstream = _as_upstream(source, upstream_package, model_cls, anchor_grid).half()
    path = tmp_path / f"{name}-official.pt"
    torch.save(
        {
            "model": upstream,
            "ema": None,
            "epoch": -1,
            "optimizer": None,
            "best_fitness": None,
            "updates": None,
            "date": "2022-11-22",
        },
        path,
    )
    import zipfile

    with zipfile.ZipFile(path) as z:
        pickled = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert f"models.yolo\n{model_cls}".encode() in pickled and b"models.common\nC3" in pickled
    with pytest.raises(pickle.UnpicklingError):  # plain weights_only loading refuses such files
        torch.load(path, weights_only=True)
    sys.modules.pop("models.yolo")  # the loader must not need the upstream code
    loaded = pagcp.load_model(path)
    assert loaded.names == ["cat", "dog", "coin"]
    assert next(loaded.parameters()).dtype == torch.float32
    x = torch.rand(1, 3, 96, 96)
    torch.testing.assert_close(loaded(x)[0], reference(x)[0], rtol=0, atol=0)
    with pytest.raises(CheckpointError, match=r"official.pt.*nc=3.*nc=80"):
        pagcp.load_model(path, nc=80)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Evil(marker), "epoch": 1}, path)
    with pytest.raises(UnsafePickleError, match=r"evil\.pt.*system"):
        pagcp.load_model(path)
    assert not marker.exists()


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"missing\.pt: no such checkpoint file"):
        pagcp.load_model(tmp_path / "missing.pt")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "nc: 2\ndepth_multiple: 1\nwidth_multiple: 1\nanchors: 3\n"
        "backbone: [[-1, 1, Conv, [16, 3, 2]], [-1, 1, Frobnicate, [32]]]\nhead: []\n"
    )
    with pytest.raises(ConfigError, match=r"bad\.yaml: layer 1: unknown module 'Frobnicate'"):
        pagcp.load_model(bad)
    with pytest.raises(ConfigError, match=r"nothere\.yaml: model yaml not found"):
        pagcp.load_model(tmp_path / "nothere.yaml")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"junk\.pt"):
        pagcp.load_model(junk)
    with pytest.raises(CheckpointError, match=r"yolov9z: no such file, and not a bundled model"):
        pagcp.load_model("yolov9z")


def test_save_model_rejects_unsafe_meta(tmp_path):
    model = pagcp.load_model("yolov5n")
    with pytest.raises(TypeError, match="metadata 'bad'"):
        pagcp.save_model(model, tmp_path / "m.pt", bad=object())
    assert not (tmp_path / "m.pt").exists()
