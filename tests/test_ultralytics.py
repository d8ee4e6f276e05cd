"""Ultralytics YOLOv8 / YOLO11 detectors: safe loading, the channel graph, slicing, the box/cls/dfl oracle,
checkpoints Ultralytics itself loads, validates, exports and fine-tunes with the pruned widths."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

os.environ.setdefault("YOLO_OFFLINE", "1")  # Ultralytics: no online checks, no downloads
# importing ultralytics patches PIL.Image.open for the whole process: check, do not import, at collection time
if importlib.util.find_spec("ultralytics") is None:
    pytest.skip("needs the ultralytics package (pip install ultralytics)", allow_module_level=True)

from test_slicing import assert_sliced_equals_masked, random_keep, randomize_norms  # noqa: E402

import pagcp  # noqa: E402
from pagcp.data.demo import generate_demo  # noqa: E402
from pagcp.detection.evaluate import evaluate  # noqa: E402
from pagcp.engine.search import Search  # noqa: E402
from pagcp.engine.settings import PruneSettings  # noqa: E402
from pagcp.errors import ConfigError, UnsafePickleError  # noqa: E402
from pagcp.families import problem_of  # noqa: E402
from pagcp.families.ultralytics_detect import (  # noqa: E402
    BUNDLED,
    YoloV5Outputs,
    fix_pruned_attributes,
    load_ultralytics,
    save_ultralytics,
)
from pagcp.families.ultralytics_loss import loss_hyperparameters, ultralytics_batch  # noqa: E402
from pagcp.models.checkpoint import WEIGHTS_DIR  # noqa: E402

IMG = 96


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> str:
    return generate_demo(str(tmp_path_factory.mktemp("demo") / "tiny"), train=16, val=8, img=IMG, seed=0, workers=1)


def _train_files(data: str) -> list[str]:
    return sorted(glob.glob(str(Path(data).parent / "images" / "train" / "*")))


def _outputs(out) -> list[torch.Tensor]:
    """Every tensor of a detector's output except Detect's ``feats`` (its inputs, narrower when sliced)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = [v for k, v in out.items() if k != "feats"]
    return [t for item in out for t in _outputs(item)]


def _widths(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.fixture(scope="module")
def pruned_checkpoint(tmp_path_factory) -> tuple[Path, dict[str, tuple[int, ...]]]:
    """yolov8n (random weights, nc=6) with every unit keeping a random subset, saved in Ultralytics' format."""
    model = randomize_norms(load_ultralytics("yolov8n.yaml", nc=6))
    graph = pagcp.trace(model, torch.zeros(1, 3, 64, 64))
    sliced = graph.slice(random_keep(graph, 4))
    path = save_ultralytics(sliced, tmp_path_factory.mktemp("pruned") / "pruned.pt", note="test")
    return path, _widths(sliced)


# ------------------------------------------------------------------------------------------------ safe loading


class _Payload:
    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize(
    ("function", "named"), [(os.system, r"'(posix|nt)\.system'"), (eval, r"'(__builtin__|builtins)\.eval'")]
)
def test_disguised_checkpoint_is_refused_before_anything_runs(tmp_path, function, named):
    marker = tmp_path / "ran"
    command = f"touch {marker}" if function is os.system else f"open({str(marker)!r}, 'w')"
    path = tmp_path / "yolov8n.pt"
    torch.save({"model": _Payload(function, command), "train_args": {}, "version": "8.4.0"}, path)
    with pytest.raises(UnsafePickleError, match=named):
        load_ultralytics(path)
    assert not marker.exists()


def test_yaml_checkpoint_round_trip_and_bundled_names(tmp_path):
    model = load_ultralytics("yolo11n.yaml", nc=3)
    assert not model.training and next(model.parameters()).dtype == torch.float32 and model.model[-1].nc == 3
    path = save_ultralytics(model, tmp_path / "m.pt", source="yaml")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    assert {"model", "train_args", "date", "version", "license"} <= set(ckpt)
    assert ckpt["model"].model[0].conv.weight.dtype == torch.float16 and ckpt["pagcp"] == {"source": "yaml"}
    loaded = load_ultralytics(path)
    assert _widths(loaded) == _widths(model)
    with pytest.raises(pagcp.PagcpError, match="nc=4"):
        load_ultralytics(path, nc=4)
    with pytest.raises(ConfigError, match="nosuch.yaml"):
        load_ultralytics("nosuch.yaml")
    assert "yolov8n-demo" in BUNDLED
    if (WEIGHTS_DIR / "yolov8n-demo.pt").is_file():
        assert load_ultralytics("yolov8n-demo").model[-1].nc == 6


# ------------------------------------------------------------------------------------------- graph and slicing


@pytest.mark.parametrize("cfg", ["yolo11n.yaml", "yolov8s.yaml"])
def test_sliced_equals_masked_and_counts_match(cfg):
    model = randomize_norms(load_ultralytics(cfg, nc=6))
    x = torch.randn(1, 3, 64, 64)
    graph = pagcp.trace(model, x)
    for seed in (1, 2):
        assert_sliced_equals_masked(model, graph, x, random_keep(graph, seed), 64, flatten=_outputs)


def test_units_of_c2f_c3k2_c2psa_and_detect():
    v8 = pagcp.trace(load_ultralytics("yolov8n.yaml", nc=6), torch.zeros(1, 3, 64, 64))
    c2f = v8["model.2.cv1+m.0.cv2"]  # cv1's two halves (chunk) and the bottleneck's residual: one unit
    (cv1,) = [r for r in c2f.producers if r.module == "model.2.cv1.conv"]
    assert (
        c2f.size == 16 and cv1.positions.tolist() == list(range(32)) and cv1.unit_index.tolist() == 2 * list(range(16))
    )
    head_inputs = {c.module for u in v8.units for c in u.consumers if c.module.startswith("model.22.")}
    assert head_inputs == {f"model.22.{b}.{i}.0.conv" for b in ("cv2", "cv3") for i in range(3)}

    v11 = pagcp.trace(load_ultralytics("yolo11n.yaml", nc=6), torch.zeros(1, 3, 64, 64))
    assert v11.unit_of_conv("model.10.cv1.conv") is None  # C2PSA: split((c, c)) and attention reshapes by heads
    assert v11.unit_of_conv("model.10.m.0.attn.qkv.conv") is None
    assert v11.unit_of_conv("model.10.m.0.ffn.0.conv") is not None
    assert v11.unit_of_conv("model.16.cv2.conv") is None  # read by Detect's depthwise conv
    assert any("depthwise conv model.23.cv3.0.0.0.conv" in reason for reason in v11.pinned)
    assert "split with fixed sizes (split)" in v11.pinned


def test_sliced_model_exports_with_forward_split():
    """C2f's forward_split (what Ultralytics' ONNX export runs) reads ``c``: the fix-up keeps it right."""
    from ultralytics.nn.modules.block import C2f

    model = randomize_norms(load_ultralytics("yolo11n.yaml", nc=6))
    x = torch.randn(1, 3, 64, 64)
    graph = pagcp.trace(model, x)
    unit = graph["model.2.cv1+m.0.cv2"]
    sliced = graph.slice({unit.name: torch.arange(unit.size) % 2 == 0})
    fix_pruned_attributes(sliced)
    block = sliced.model[2]
    assert isinstance(block, C2f) and block.c == 8
    with torch.no_grad():
        torch.testing.assert_close(block.forward_split(torch.randn(1, 32, 16, 16)).shape, torch.Size([1, 64, 16, 16]))


# --------------------------------------------------------------------------------------------------- the oracle


def test_loss_equals_ultralytics_and_engine_equals_naive(tiny_data):
    model = randomize_norms(load_ultralytics("yolov8n.yaml", nc=6))
    problem = problem_of(model, _train_files(tiny_data), IMG, 8, 8, seed=0)
    assert problem.tasks == ("box", "cls", "dfl") and len(problem.batches) == 1
    images, targets = problem.batches[0]
    head = model.model[-1]
    head.training = True
    with torch.no_grad():
        raw = model(images)
    head.training = False
    reference = _with_args(model).init_criterion()  # Ultralytics' own v8DetectionLoss
    total, items = reference(raw, ultralytics_batch(targets))
    items = torch.stack(list(items.values())) if isinstance(items, dict) else items
    ours = problem.loss_fn(raw, targets)
    torch.testing.assert_close(ours, items, rtol=0, atol=0)
    torch.testing.assert_close(ours * images.shape[0], total.detach(), rtol=1e-6, atol=0)

    graph = pagcp.trace(model, problem.example_input())
    keep = graph.keep(random_keep(graph, 3))
    engine, naive = problem.oracle(graph).losses(keep), problem.naive_oracle(graph).losses(keep)
    torch.testing.assert_close(engine, naive, rtol=1e-5, atol=1e-6)


def _with_args(model: nn.Module) -> nn.Module:
    model.args = loss_hyperparameters(model)
    return model


def test_backbone_prune_runs_and_prunes(tiny_data):
    model = load_ultralytics("yolov8n.yaml", nc=6)
    problem = problem_of(model, _train_files(tiny_data), IMG, 8, 8, seed=0)
    result = problem.prune(PruneSettings(compression="backbone", ratios=(0.25, 0.5), topk=1.0))
    pruned = [d for d in result.decisions if d["selected"] and d["channels_after"] < d["channels_before"]]
    assert pruned and all(int(d["name"].split(".")[1]) < 10 for d in result.decisions)
    assert pagcp.model_stats(result.model, IMG)["params"] < pagcp.model_stats(model, IMG)["params"]
    with torch.no_grad():
        result.model(problem.example_input())


def test_traced_replay_decides_as_the_walk(tiny_data):
    """The suffix replay records Ultralytics' Detect (a dict of outputs) and gives the walk's decisions."""
    model = load_ultralytics("yolov8n.yaml", nc=6)
    problem = problem_of(model, _train_files(tiny_data), IMG, 4, 8, seed=0)
    settings = PruneSettings(compression="backbone", ratios=(0.25, 0.5, 0.75), topk=1.0)
    results = {}
    for mode in ("off", "trace"):
        problem.replay = mode
        graph = pagcp.trace(model, problem.example_input())
        search = Search(graph, problem.oracle(graph), settings, IMG)
        search.run()
        results[mode] = [(d["name"], d["ratio"], d["tripped_task"]) for d in search.state.decisions]
        replays = search.oracle.replay.replays
    assert results["trace"] == results["off"]
    assert replays > 0


def _decisions_at(problem, graph, settings: PruneSettings, chunk: int) -> tuple[list[tuple], list[list[float]], int]:
    """What a search with ``chunk`` candidates per pass decided per unit, its accepted losses, and its passes."""
    search = Search(graph, problem.oracle(graph, chunk=chunk), settings, IMG)
    search.run()
    decided = [(d["name"], d["ratio"], d["tripped_task"], d["selected"], d["channels_after"])
               for d in search.state.decisions]  # fmt: skip
    return decided, [d["losses_accepted"] or d["losses_start"] for d in search.state.decisions], search.oracle.chunk


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml"])
def test_candidates_per_pass_decide_identically(cfg, tiny_data):
    """Detect's training output is a dict: the oracle splits it per candidate along the pytree, so R = 2 and 4
    candidates per pass take the decisions of R = 1 with the same losses (to float32 rounding: a convolution over
    R·N images may block its sums differently than over N; a candidate fed another's rows would be far off).
    Random weights barely react to pruning, so the bounds are tight (rate 1e-5) to make units trip, and every unit
    is kept pruned (topk 1): the units' loss efficiencies nearly tie, and topk's ranking of near-ties would follow
    the rounding."""
    model = randomize_norms(load_ultralytics(cfg, nc=6))
    problem = problem_of(model, _train_files(tiny_data), IMG, 8, 8, seed=0)
    graph = pagcp.trace(model, problem.example_input())
    units = [u.name for u in graph.units if u.size > 1][::6]
    settings = PruneSettings(units=units, initial_rate=1e-5, initial_thres=1.0001, topk=1.0)
    runs = {r: _decisions_at(problem, graph, settings, r) for r in (1, 2, 4)}
    assert [runs[r][2] for r in (1, 2, 4)] == [1, 2, 4]
    decided, losses, _ = runs[1]
    assert any(d[2] is not None for d in decided) and any(d[4] < graph[d[0]].size for d in decided if d[3])
    for r in (2, 4):
        assert runs[r][0] == decided
        torch.testing.assert_close(torch.tensor(runs[r][1]), torch.tensor(losses), rtol=1e-6, atol=0)


# ------------------------------------------------------------------------------------ Ultralytics' own pipeline

_ALONE = """
import json, sys, numpy as np
from ultralytics import YOLO
model = YOLO(sys.argv[1])
widths = {n: list(m.weight.shape) for n, m in model.model.named_modules() if type(m).__name__ == "Conv2d"}
found = model.predict(np.zeros((80, 96, 3), dtype=np.uint8), imgsz=64, verbose=False)
metrics = model.val(data=sys.argv[2], imgsz=64, batch=8, plots=False, verbose=False, project=sys.argv[3])
onnx_file = model.export(format="onnx", imgsz=64, simplify=False)
print(json.dumps({"widths": widths, "predicted": len(found), "map": float(metrics.box.map), "onnx": str(onnx_file),
                  "pagcp": "pagcp" in sys.modules}))
"""


def run_without_pagcp(path: Path, data: str, tmp_path: Path, widths: dict[str, tuple[int, ...]]) -> dict:
    """Load, predict, validate and export ``path`` with Ultralytics alone (a subprocess that never imports pagcp);
    checks the widths it sees and the ONNX file's output shape; returns what it printed."""
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    cmd = [sys.executable, "-c", textwrap.dedent(_ALONE), str(path), data, str(tmp_path / "val")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert not report["pagcp"] and report["predicted"] == 1
    assert {k: tuple(v) for k, v in report["widths"].items()} == widths
    import onnxruntime

    session = onnxruntime.InferenceSession(report["onnx"], providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: torch.rand(1, 3, 64, 64).numpy()})
    assert output.shape == (1, 4 + 6, 84)
    return report


def train_an_epoch(path: Path, data: str, tmp_path: Path, widths: dict[str, tuple[int, ...]]):
    """One epoch of Ultralytics' trainer with pagcp's width-keeping model; checks the widths; returns the YOLO."""
    from ultralytics import YOLO

    from pagcp.families.ultralytics_detect import PrunedDetectionTrainer

    model = YOLO(str(path))
    model.train(trainer=PrunedDetectionTrainer, data=data, epochs=1, imgsz=64, batch=8, workers=0, plots=False,
                device="cpu", amp=False, project=str(tmp_path), name="ft", exist_ok=True)  # fmt: skip
    assert _widths(model.model) == widths
    assert _widths(load_ultralytics(model.trainer.best)) == widths
    return model


def test_pruned_checkpoint_loads_predicts_validates_exports_without_pagcp(pruned_checkpoint, tiny_data, tmp_path):
    path, widths = pruned_checkpoint
    run_without_pagcp(path, tiny_data, tmp_path, widths)


def test_widths_survive_a_training_epoch(pruned_checkpoint, tiny_data, tmp_path):
    path, widths = pruned_checkpoint
    train_an_epoch(path, tiny_data, tmp_path, widths)


def test_pagcp_validation_matches_ultralytics(tmp_path):
    """mAP50-95 of pagcp's validation (through YoloV5Outputs) and of Ultralytics' on the same trained model."""
    if not (WEIGHTS_DIR / "yolov8n-demo.pt").is_file():
        pytest.skip("the bundled yolov8n-demo checkpoint is not there")
    from ultralytics import YOLO

    data = generate_demo(str(tmp_path / "val320"), train=1, val=24, img=320, seed=5, workers=1)
    theirs = YOLO(str(WEIGHTS_DIR / "yolov8n-demo.pt")).val(data=data, imgsz=320, batch=8, plots=False,
                                                            verbose=False, project=str(tmp_path / "val"))  # fmt: skip
    ours = evaluate(YoloV5Outputs(load_ultralytics("yolov8n-demo")), data, img_size=320, batch_size=8,
                    iou_thres=0.7, progress=False)  # fmt: skip
    assert theirs.box.map > 0.3
    assert abs(ours["map50_95"] - theirs.box.map) < 0.01


def test_engine_decisions_equal_naive_on_the_trained_demo(tiny_data):
    """On a trained detector (losses trip), the engine's search and the straightforward one decide alike."""
    if not (WEIGHTS_DIR / "yolov8n-demo.pt").is_file():
        pytest.skip("the bundled yolov8n-demo checkpoint is not there")
    model = load_ultralytics("yolov8n-demo")
    problem = problem_of(model, _train_files(tiny_data), IMG, 8, 8, seed=0)
    units = ["model.2.cv1+m.0.cv2", "model.4.cv2", "model.9.cv1", "model.15.cv2"]
    settings = PruneSettings(units=units, ratios=(0.1, 0.3, 0.5, 0.7), initial_rate=0.02, initial_thres=1.5)
    engine = problem.prune(settings).decisions
    naive = problem.naive(pagcp.trace(model, problem.example_input()), settings)["decisions"]
    fields = ("name", "ratio", "tripped_task", "selected", "channels_after")
    assert [[d[f] for f in fields] for d in engine] == [[d[f] for f in fields] for d in naive]
    assert any(d["tripped_task"] for d in engine)


def test_the_prune_command_on_yolov8n_demo_writes_ultralytics_checkpoints(tmp_path):
    """`python -m pagcp.prune --weights yolov8n-demo`: search, Ultralytics checkpoints that keep their widths
    through Ultralytics' own fine-tuning, and a report whose GFLOPs are the pruned model's."""
    data = "demo:train=16,val=24,img=96"
    args = ["--weights", "yolov8n-demo", "--data", data, "--img", "96", "--batch", "8", "--subset", "8",
            "--compression", "backbone", "--finetune-epochs", "1", "--finetune-batch", "8", "--no-latency",
            "--project", "runs", "--json"]  # fmt: skip
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", YOLO_OFFLINE="1")  # --project relative, as users give it
    proc = subprocess.run([sys.executable, "-m", "pagcp.prune", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    run = tmp_path / report["run_dir"]
    assert (run / "finetune" / "weights" / "last.pt").is_file()  # the fine-tune's files in the run folder
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["exp"]  # not under Ultralytics' runs/detect
    assert report["search_seconds"] > 0 and report["evaluations"] > 0
    assert sum(u["selected"] for u in report["units"]) >= 3
    pruned = pagcp.load_model(run / "pruned.pt")  # an Ultralytics file, read through the allow-listing unpickler
    assert type(pruned).__module__.startswith("ultralytics.")
    assert pagcp.model_stats(pruned, 96)["gflops"] == pytest.approx(report["gflops_after"], rel=1e-9)
    assert report["gflops_after"] < report["gflops_before"]
    code = textwrap.dedent(f"""
        import json, torch
        from ultralytics import YOLO
        widths = {{}}
        for name in ("pruned", "finetuned"):
            model = YOLO(r"{run}/" + name + ".pt").model
            widths[name] = {{n: list(m.weight.shape) for n, m in model.named_modules()
                             if isinstance(m, torch.nn.Conv2d)}}
        print(json.dumps(widths))
    """)  # without pagcp: what an Ultralytics user runs
    shown = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-2000:]
    widths = json.loads(shown.stdout.strip().splitlines()[-1])
    assert widths["pruned"] == widths["finetuned"] == {k: list(v) for k, v in _widths(pruned).items()}
