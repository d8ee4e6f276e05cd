"""Ultralytics segmentation and pose models (YOLOv8-seg, YOLO11-pose, YOLO26-seg and -pose): the oracle's tasks are
the components of Ultralytics' own loss on the same batch (masks and keypoints from Ultralytics' loader), the
engine's losses equal the naive ones, sliced == masked with the prototype and keypoint branches, a pruned
checkpoint round-trips through Ultralytics without pagcp and keeps its widths through a training epoch, and the
bundled demo checkpoints prune end to end from the command line."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")
if importlib.util.find_spec("ultralytics") is None:
    pytest.skip("needs the ultralytics package (pip install ultralytics)", allow_module_level=True)

from launch import prune_bundled_demo  # noqa: E402
from test_slicing import assert_sliced_equals_masked, random_keep, randomize_norms  # noqa: E402
from test_ultralytics import _outputs, _widths  # noqa: E402

import pagcp  # noqa: E402
from pagcp.data import load_data_config  # noqa: E402
from pagcp.data.demo import generate_demo, render_scene  # noqa: E402
from pagcp.data.demo_labels import FLIP_INDEX, extreme_points, outline  # noqa: E402
from pagcp.families import family_for_weights, problem_of  # noqa: E402
from pagcp.families.ultralytics_loss import loss_hyperparameters  # noqa: E402
from pagcp.models.checkpoint import bundled_file  # noqa: E402

IMG = 96
SEG = ("box", "seg", "cls", "dfl")
POSE = ("box", "pose", "kobj", "cls", "dfl")
SEG26 = ("box", "seg", "cls", "l1", "sem")
POSE26 = ("box", "pose", "kobj", "cls", "l1", "rle")
CASES = {
    "yolov8n-seg.yaml": ("segment", SEG),
    "yolo26n-seg.yaml": ("segment", (*SEG26, *(t + "_o2o" for t in SEG26))),
    "yolo11n-pose.yaml": ("pose", POSE),
    "yolo26n-pose.yaml": ("pose", (*POSE26, *(t + "_o2o" for t in POSE26))),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("demo")
    return {kind: generate_demo(str(root / kind), train=16, val=8, img=IMG, seed=0, workers=1, kind=kind)
            for kind in ("segment", "pose")}  # fmt: skip


def _model(cfg: str, data_yaml: str):
    family = family_for_weights(cfg)
    options = family.config_options(load_data_config(data_yaml))
    return family, randomize_norms(family.load(cfg, nc=6, **options))


def _train_files(data_yaml: str) -> list[str]:
    return sorted(str(p) for p in (Path(data_yaml).parent / "images" / "train").glob("*.jpg"))


# ------------------------------------------------------------------------------------------------ the demo sets


def test_demo_labels_are_exact_outlines_and_extreme_points():
    img, objects = render_scene(0, "val", 3, 160)
    assert len(objects) >= 2
    from PIL import Image, ImageDraw

    for _cls, _x0, _y0, mask in objects:
        poly = Image.new("L", mask.shape[::-1], 0)
        ImageDraw.Draw(poly).polygon([tuple(p) for p in outline(mask)], fill=1)  # pixel edges: centres at +0.5
        drawn = np.asarray(poly, bool)
        iou = (drawn & mask).sum() / (drawn | mask).sum()
        assert iou > 0.9, iou
        points = extreme_points(mask)
        rows, cols = np.nonzero(mask)
        assert points[0, 1] == rows.min() + 0.5 and points[2, 1] == rows.max() + 0.5
        assert points[1, 0] == cols.max() + 0.5 and points[3, 0] == cols.min() + 0.5
        flipped = extreme_points(mask[:, ::-1])  # a left-right flip maps each point to FLIP_INDEX's
        mirrored = points.copy()
        mirrored[:, 0] = mask.shape[1] - points[:, 0]
        np.testing.assert_allclose(flipped, mirrored[FLIP_INDEX])


def test_demo_kinds_share_images_and_boxes(tmp_path):
    paths = {k: Path(generate_demo(str(tmp_path / k), train=0, val=3, img=128, seed=2, kind=k)).parent
             for k in ("detect", "segment", "pose")}  # fmt: skip
    for i in range(3):
        images = {k: (p / "images" / "val" / f"{i:06d}.jpg").read_bytes() for k, p in paths.items()}
        assert images["detect"] == images["segment"] == images["pose"]
        boxes = [
            line.split()[:5]
            for line in (paths["detect"] / "labels" / "val" / f"{i:06d}.txt").read_text().split("\n")
            if line
        ]
        pose = [
            line.split() for line in (paths["pose"] / "labels" / "val" / f"{i:06d}.txt").read_text().split("\n") if line
        ]
        assert [p[:5] for p in pose] == boxes and all(len(p) == 5 + 12 for p in pose)
    cfg = load_data_config(str(paths["pose"] / "data.yaml"))
    assert cfg["kpt_shape"] == [4, 3] and cfg["flip_idx"] == FLIP_INDEX


# ------------------------------------------------------------------------------------------------- the oracle


@pytest.mark.parametrize("cfg", list(CASES))
def test_tasks_equal_ultralytics_loss_and_engine_equals_naive(cfg, data):
    task, tasks = CASES[cfg]
    family, model = _model(cfg, data[task])
    problem = problem_of(model, _train_files(data[task]), IMG, 8, 8, seed=0)
    assert problem.tasks == tasks
    images, batch = problem.batches[0]
    assert ("masks" if task == "segment" else "keypoints") in batch
    train_mode = [m for m in model.modules() if isinstance(m, family.train_mode_leaves(model))]
    for m in train_mode:
        m.training = True
    with torch.no_grad():
        raw = model(images)
    for m in train_mode:
        m.training = False
    model.args = loss_hyperparameters(model)
    reference = model.init_criterion()  # Ultralytics' own criterion, as its trainer builds it
    ours = problem.loss_fn(raw, batch)
    n = len(tasks) // 2 if "_o2o" in tasks[-1] else len(tasks)
    names = [t + "_loss" for t in tasks[:n]]
    if n < len(tasks):
        assert type(reference).__name__ == "E2ELoss"
        many = reference.one2many.loss(raw["one2many"], batch)[1]
        total, logged = reference(raw, batch)
        torch.testing.assert_close(ours[:n], torch.stack([many[k] for k in names]), rtol=0, atol=0)
        torch.testing.assert_close(ours[n:], torch.stack([logged[k] for k in names]), rtol=0, atol=0)
    else:
        total, items = reference(raw, batch)
        torch.testing.assert_close(ours, torch.stack([items[k] for k in names]), rtol=0, atol=0)
        left_out = set(items) - set(names)  # Segment's sem_loss, always 0 without the semantic branch
        assert all(items[k] == 0 for k in left_out)
        torch.testing.assert_close(ours.sum() * images.shape[0], total.detach().sum(), rtol=1e-6, atol=0)
    assert torch.all(ours > 0)

    graph = pagcp.trace(model, problem.example_input())
    keep = graph.keep(random_keep(graph, 3))
    engine, naive = problem.oracle(graph).losses(keep), problem.naive_oracle(graph).losses(keep)
    torch.testing.assert_close(engine, naive, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ graph and slicing


@pytest.mark.parametrize("cfg", list(CASES))
def test_sliced_equals_masked(cfg, data):
    _, model = _model(cfg, data[CASES[cfg][0]])
    x = torch.randn(1, 3, 64, 64)
    graph = pagcp.trace(model, x)
    for seed in (1, 2):
        assert_sliced_equals_masked(model, graph, x, random_keep(graph, seed), 64, flatten=_outputs)


def test_head_inputs_feed_every_branch_and_the_prototypes(data):
    _, v8 = _model("yolov8n-seg.yaml", data["segment"])
    graph = pagcp.trace(v8, torch.zeros(1, 3, 64, 64))
    head_inputs = {c.module for u in graph.units for c in u.consumers if c.module.startswith("model.22.")}
    expected = {f"model.22.{b}.{i}.0.conv" for b in ("cv2", "cv3", "cv4") for i in range(3)}
    assert head_inputs == expected | {"model.22.proto.cv1.conv"}
    _, v26 = _model("yolo26n-seg.yaml", data["segment"])
    graph = pagcp.trace(v26, torch.zeros(1, 3, 64, 64))
    assert any("Proto26 adds it to its feat_refine outputs" in r for r in graph.pinned)
    _, pose = _model("yolov8n-pose.yaml", data["pose"])
    graph = pagcp.trace(pose, torch.zeros(1, 3, 64, 64))
    head_inputs = {c.module for u in graph.units for c in u.consumers if c.module.startswith("model.22.")}
    assert head_inputs == {f"model.22.{b}.{i}.0.conv" for b in ("cv2", "cv3", "cv4") for i in range(3)}


# ------------------------------------------------------------------------------------ Ultralytics' own pipeline

_ALONE = """
import json, sys, numpy as np, onnxruntime
from ultralytics import YOLO
model = YOLO(sys.argv[1])
widths = {n: list(m.weight.shape) for n, m in model.model.named_modules() if type(m).__name__ == "Conv2d"}
found = model.predict(np.zeros((80, 96, 3), dtype=np.uint8), imgsz=64, verbose=False)
metrics = model.val(data=sys.argv[2], imgsz=64, batch=8, plots=False, verbose=False, project=sys.argv[3])
task_map = float((metrics.seg if model.task == "segment" else metrics.pose).map)
onnx_file = model.export(format="onnx", imgsz=64, simplify=False)
session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
outputs = session.run(None, {session.get_inputs()[0].name: np.random.rand(1, 3, 64, 64).astype(np.float32)})
print(json.dumps({"widths": widths, "predicted": len(found), "task": model.task, "map": task_map,
                  "shapes": [list(o.shape) for o in outputs], "pagcp": "pagcp" in sys.modules}))
"""


@pytest.fixture(scope="module", params=["yolov8n-seg.yaml", "yolo11n-pose.yaml"])
def pruned(request, data, tmp_path_factory):
    """A random-weights model with every unit keeping a random subset, saved by its family."""
    cfg = request.param
    task = CASES[cfg][0]
    family, model = _model(cfg, data[task])
    graph = pagcp.trace(model, torch.zeros(1, 3, 64, 64))
    sliced = graph.slice(random_keep(graph, 4))
    path = family.save(sliced, tmp_path_factory.mktemp("pruned") / "pruned.pt", note="test")
    return task, path, _widths(sliced), family


def test_pruned_checkpoint_round_trips_through_ultralytics_without_pagcp(pruned, data, tmp_path):
    task, path, widths, _ = pruned
    cmd = [sys.executable, "-c", textwrap.dedent(_ALONE), str(path), data[task], str(tmp_path / "val")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, YOLO_OFFLINE="1"),
                         cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert not report["pagcp"] and report["predicted"] == 1 and report["task"] == task
    assert {k: tuple(v) for k, v in report["widths"].items()} == widths
    assert 0 <= report["map"] <= 1
    extra = 32 if task == "segment" else 12  # mask coefficients, or 4 keypoints x (x, y, visibility)
    assert report["shapes"][0] == [1, 4 + 6 + extra, 84]
    if task == "segment":
        assert report["shapes"][1] == [1, 32, 16, 16]  # the prototypes


def test_widths_survive_a_training_epoch(pruned, data, tmp_path):
    from ultralytics import YOLO

    task, path, widths, family = pruned
    model = YOLO(str(path))
    model.train(trainer=family.trainer(), data=data[task], epochs=1, imgsz=64, batch=8, workers=0, plots=False,
                device="cpu", amp=False, project=str(tmp_path), name="ft", exist_ok=True)  # fmt: skip
    assert _widths(model.model) == widths
    assert _widths(pagcp.load_model(model.trainer.best)) == widths


@pytest.mark.parametrize("weights", ["yolov8n-seg-demo", "yolo11n-pose-demo"])
def test_the_prune_command_on_the_bundled_demo(weights, tmp_path):
    """`python -m pagcp.prune --weights <demo> --json`: the task's losses guard the search, the report's GFLOPs are
    the saved model's, and box and task mAP are reported before, after pruning and after fine-tuning."""
    if not bundled_file(weights).is_file():
        pytest.skip(f"the bundled {weights} checkpoint is not there")
    report = prune_bundled_demo(weights, tmp_path)
    task = "segment" if "seg" in weights else "pose"
    assert tuple(report["tasks"]) == (SEG if task == "segment" else POSE)
    prefix = "mask" if task == "segment" else "pose"
    assert report["metrics"] == ["map50", "map50_95", f"{prefix}_map50", f"{prefix}_map50_95"]
    run = Path(report["run_dir"])
    pruned = pagcp.load_model(run / "pruned.pt")
    assert pagcp.model_stats(pruned, 96)["gflops"] == pytest.approx(report["gflops_after"], rel=1e-9)
    assert report["gflops_after"] < report["gflops_before"]
    for metric in report["metrics"]:
        for stage in ("before", "after", "finetuned"):
            assert 0 <= report[f"{metric}_{stage}"] <= 1, (metric, stage)
    assert report[f"{prefix}_map50_95_before"] > 0.1  # a trained checkpoint
    assert _widths(pagcp.load_model(run / "finetuned.pt")) == _widths(pruned)
