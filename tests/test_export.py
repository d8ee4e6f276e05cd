"""ONNX export (``python -m pagcp.export``, :mod:`pagcp.deploy`): ONNX Runtime computes what PyTorch computes
for original, pruned and dynamic-shape exports; bad input writes nothing; latency is measured interleaved.

Tolerance: the prediction tensor holds box xywh in pixels (up to about the image size) and objectness/class
scores in [0, 1]. Measured here (torch 2.14, onnxruntime 1.32, CPU): box coordinates differ by at most
2.0e-4 px at 320 px (yolov5n-demo; 6e-7 of the largest output, a few float32 ulps), 1.5e-4 px for yolov5s at
160 px and 7.6e-5 px for a pruned yolov5n-demo at 160 px; scores by at most 1.2e-6. The tests allow
``BOX_REL_TOL`` times the largest output for boxes (about 1e-3 px at 320 px) and ``SCORE_TOL`` for scores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pagcp
from pagcp.cli.export import default_output, main
from pagcp.errors import ConfigError

onnx = pytest.importorskip("onnx", reason="ONNX export tests need onnx: pip install 'pagcp[export]'")
ort = pytest.importorskip("onnxruntime", reason="ONNX export tests need onnxruntime: pip install 'pagcp[export]'")

from pagcp.deploy import compare_latency, export_onnx, max_abs_diff, onnx_latency  # noqa: E402

BOX_REL_TOL = 3e-6
SCORE_TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small models: one intra-op thread for PyTorch does not oversubscribe a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def demo():
    return pagcp.load_model("yolov5n-demo")


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BatchNorm statistics and affines, so that random-weight and pruned outputs mean something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
    return model.eval()


def pruned_demo(size: int, seed: int = 3) -> torch.nn.Module:
    """yolov5n-demo with every pruning unit keeping a random subset (at least one) of its channels."""
    model = pagcp.load_model("yolov5n-demo")
    graph = pagcp.trace(model, torch.zeros(1, 3, size, size))
    keep = graph.full_keep()
    gen = torch.Generator().manual_seed(seed)
    for unit in graph.units:
        mask = torch.rand(unit.size, generator=gen) < 0.6
        mask[torch.randint(unit.size, (1,), generator=gen)] = True
        keep[unit.name] = mask
    return graph.slice(keep).eval()


def run_onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["output0"]
    return session.run(None, {"images": x.numpy()})[0]


def assert_matches(path: Path, model: torch.nn.Module, x: torch.Tensor, shape: tuple[int, ...]) -> None:
    got = run_onnx(path, x)
    with torch.no_grad():
        want = model(x)[0].numpy()
    assert got.shape == want.shape == shape
    scale = float(np.abs(want).max())
    assert np.abs(got[..., :4] - want[..., :4]).max() <= BOX_REL_TOL * scale
    assert np.abs(got[..., 4:] - want[..., 4:]).max() <= SCORE_TOL


def test_demo_and_random_yolov5s_match_pytorch(tmp_path, demo):
    x = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(1))
    path = export_onnx(demo, tmp_path / "demo.onnx", img_size=320)
    onnx.checker.check_model(str(path))
    assert_matches(path, demo, x, (1, 3 * (40 * 40 + 20 * 20 + 10 * 10), 5 + 6))
    assert max_abs_diff(path, demo, 320) < 1e-3
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["stride"] == "32" and json.loads(props["names"]) == list(demo.names)

    model = randomize_norms(pagcp.load_model("yolov5s"))
    path = export_onnx(model, tmp_path / "s.onnx", img_size=160)
    assert_matches(path, model, torch.rand(1, 3, 160, 160), (1, 3 * (20 * 20 + 10 * 10 + 5 * 5), 85))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.onnx", "s.onnx"]  # no temp files left


def test_pruned_checkpoint_exports_through_the_cli(tmp_path, capsys):
    model = pruned_demo(160)
    widths = [m.weight.shape[0] for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    full = [m.weight.shape[0] for m in pagcp.load_model("yolov5n-demo").modules() if isinstance(m, torch.nn.Conv2d)]
    assert sum(widths) < 0.8 * sum(full)  # really pruned
    ckpt = pagcp.save_model(model, tmp_path / "runs" / "pruned.pt")
    out = tmp_path / "pruned.onnx"
    assert main(["--weights", str(ckpt), "--img", "160", "--output", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["path"] == str(out) and result["img"] == 160 and result["size_mb"] > 0
    assert result["max_abs_diff"] < 1e-3  # measured 7.6e-5
    assert_matches(out, model, torch.rand(1, 3, 160, 160), (1, 1575, 11))


def test_dynamic_export_runs_at_other_batch_and_sizes(tmp_path, demo):
    with torch.no_grad():
        demo(torch.zeros(1, 3, 160, 160))  # a grid cached at the export size must not end up in the graph
    path = export_onnx(demo, tmp_path / "dyn.onnx", img_size=160, dynamic=True)
    for h, w in ((160, 160), (224, 320), (96, 128)):
        x = torch.rand(2, 3, h, w)
        anchors = 3 * sum((h // s) * (w // s) for s in (8, 16, 32))
        assert_matches(path, demo, x, (2, anchors, 11))
    assert max_abs_diff(path, demo, (224, 320), batch=2) < 1e-3
    static = export_onnx(demo, tmp_path / "static.onnx", img_size=160)
    with pytest.raises(ConfigError, match="--dynamic"):
        onnx_latency(static, 224)


def test_default_output_is_beside_the_checkpoint_or_in_the_current_folder(tmp_path, monkeypatch, capsys):
    run = tmp_path / "runs" / "prune" / "exp"
    run.mkdir(parents=True)
    (run / "finetuned.pt").write_bytes(b"")
    assert default_output(str(run / "finetuned.pt")) == run / "finetuned.onnx"  # not into the working tree
    assert default_output("yolov5n-demo") == Path("yolov5n-demo.onnx")
    assert default_output("yolov5s") == Path("yolov5s.onnx")
    monkeypatch.chdir(tmp_path)
    assert main(["--weights", "yolov5n-demo", "--img", "50", "--no-check"]) == 0
    assert (tmp_path / "yolov5n-demo.onnx").is_file()
    shape = onnx.load("yolov5n-demo.onnx").graph.input[0].type.tensor_type.shape
    assert [d.dim_value for d in shape.dim] == [1, 3, 64, 64]  # --img 50 rounded up to the stride
    assert "max abs difference" not in capsys.readouterr().out


def test_bad_input_writes_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out.onnx"
    missing = tmp_path / "missing.pt"
    assert main(["--weights", str(missing), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.pt" in err[0]
    assert main(["--weights", "yolov5n-demo", "--half", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--half" in err[0] and "CUDA" in err[0]
    with pytest.raises(SystemExit) as e:
        main(["--weights", "yolov5n-demo", "--format", "tflite", "--output", str(out)])
    assert e.value.code == 2 and "--format" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    assert main(["--weights", "yolov5n-demo", "--output", str(out)]) == 2
    assert 'pip install "pagcp[export]"' in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_failed_export_keeps_the_old_file(tmp_path, demo, monkeypatch):
    path = tmp_path / "model.onnx"
    path.write_text("old")

    def broken(model, args, f, **kwargs):
        Path(f).write_text("half a file")
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="exporter failed"):
        export_onnx(demo, path, img_size=64)
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]
    with pytest.raises(ConfigError, match="--half"):
        export_onnx(demo, tmp_path / "h.onnx", img_size=64, half=True)


def test_import_without_onnx_packages():
    code = (
        "import sys\n"
        "sys.modules['onnx'] = sys.modules['onnxruntime'] = None\n"
        "import pagcp.deploy, pagcp.cli.export, pagcp.export\n"
        "from pagcp.errors import ConfigError\n"
        "try:\n"
        "    pagcp.deploy.onnx_latency('x.onnx', 64)\n"
        "except ConfigError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "'onnxruntime' package" in out.stdout and 'pip install "pagcp[export]"' in out.stdout


def test_compare_latency_interleaved(tmp_path, demo):
    paths = {
        "original": export_onnx(demo, tmp_path / "a.onnx", img_size=128),
        "pruned": export_onnx(pruned_demo(128), tmp_path / "b.onnx", img_size=128),
    }
    result = compare_latency(paths, 128, runs=20, warmup=2)
    assert set(result) == {"original", "pruned"}
    for summary in result.values():
        assert summary["runs"] >= 20 and summary["threads"] >= 1
        assert 0 < summary["min_ms"] <= summary["median_ms"] <= summary["p90_ms"]
    single = onnx_latency(paths["original"], 128, runs=20, warmup=1, threads=1)
    assert single["median_ms"] > 0 and single["runs"] == 20 and single["threads"] == 1
    with pytest.raises(ConfigError, match="runs=0"):
        compare_latency(paths, 128, runs=0)
