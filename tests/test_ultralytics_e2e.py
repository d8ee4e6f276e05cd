"""Ultralytics' end-to-end detectors (YOLO26, YOLOv10): a one-to-one branch beside the one-to-many one. Both
branches read the same inputs and keep their widths; the oracle's tasks are each branch's components of
Ultralytics' own E2ELoss; a pruned checkpoint round-trips through Ultralytics without pagcp and fine-tunes with
its widths; the bundled yolo26n-demo prunes end to end from the command line."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")
if importlib.util.find_spec("ultralytics") is None:
    pytest.skip("needs the ultralytics package (pip install ultralytics)", allow_module_level=True)

from launch import prune_bundled_demo  # noqa: E402
from test_slicing import assert_sliced_equals_masked, random_keep, randomize_norms  # noqa: E402
from test_ultralytics import _outputs, _train_files, _widths, run_without_pagcp, train_an_epoch  # noqa: E402

import pagcp  # noqa: E402
from pagcp.data.demo import generate_demo  # noqa: E402
from pagcp.families import problem_of  # noqa: E402
from pagcp.families.ultralytics_detect import YoloV5Outputs, load_ultralytics, save_ultralytics  # noqa: E402
from pagcp.families.ultralytics_loss import loss_hyperparameters, ultralytics_batch  # noqa: E402
from pagcp.models.checkpoint import bundled_file  # noqa: E402

IMG = 96
E2E_TASKS = ("box", "cls", "l1", "box_o2o", "cls_o2o", "l1_o2o")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> str:
    return generate_demo(str(tmp_path_factory.mktemp("demo") / "tiny"), train=16, val=8, img=IMG, seed=0, workers=1)


@pytest.fixture(scope="module")
def pruned_yolo26(tmp_path_factory) -> tuple[Path, dict[str, tuple[int, ...]]]:
    """yolo26n (random weights, nc=6) with every unit keeping a random subset, saved in Ultralytics' format."""
    model = randomize_norms(load_ultralytics("yolo26n.yaml", nc=6))
    graph = pagcp.trace(model, torch.zeros(1, 3, 64, 64))
    sliced = graph.slice(random_keep(graph, 4))
    path = save_ultralytics(sliced, tmp_path_factory.mktemp("pruned26") / "pruned.pt", note="test")
    return path, _widths(sliced)


@pytest.mark.parametrize("cfg", ["yolo26n.yaml", "yolov10n.yaml"])
def test_sliced_equals_masked_on_both_branches(cfg):
    model = randomize_norms(load_ultralytics(cfg, nc=6))
    x = torch.randn(1, 3, 64, 64)
    graph = pagcp.trace(model, x)
    for seed in (1, 2):
        assert_sliced_equals_masked(model, graph, x, random_keep(graph, seed), 64, flatten=_outputs)
    head = model.model[-1]
    # the class branches open with a depthwise conv: every head input stays whole, and the trace says why
    reasons = [r for r in graph.pinned if r.startswith("input ") and "depthwise conv" in r]
    assert len(reasons) == head.nl and all(f"{len(model.model) - 1}.cv3." in r for r in reasons)


def test_tasks_are_each_branch_of_ultralytics_e2e_loss(tiny_data):
    model = randomize_norms(load_ultralytics("yolo26n.yaml", nc=6))
    problem = problem_of(model, _train_files(tiny_data), IMG, 8, 8, seed=0)
    assert problem.tasks == E2E_TASKS
    images, targets = problem.batches[0]
    head = model.model[-1]
    head.training = True
    with torch.no_grad():
        raw = model(images)
    head.training = False
    model.args = loss_hyperparameters(model)
    reference = model.init_criterion()  # Ultralytics' own E2ELoss, as its trainer builds it
    assert type(reference).__name__ == "E2ELoss"
    batch = ultralytics_batch(targets)
    total, logged = reference(raw, batch)
    many = torch.stack(list(reference.one2many.loss(raw["one2many"], batch)[1].values()))
    ours = problem.loss_fn(raw, targets)
    torch.testing.assert_close(ours[3:], torch.stack(list(logged.values())), rtol=0, atol=0)  # what it logs
    torch.testing.assert_close(ours[:3], many, rtol=0, atol=0)
    mixed = (reference.o2m * ours[:3] + reference.o2o * ours[3:]) * images.shape[0]
    torch.testing.assert_close(mixed, total.detach(), rtol=1e-6, atol=0)  # the loss it trains on, per component

    graph = pagcp.trace(model, problem.example_input())
    keep = graph.keep(random_keep(graph, 3))
    engine, naive = problem.oracle(graph).losses(keep), problem.naive_oracle(graph).losses(keep)
    torch.testing.assert_close(engine, naive, rtol=1e-5, atol=1e-6)


def test_validation_reads_the_one_to_many_branch_either_way():
    """pagcp's box mAP scores the one-to-many predictions (Ultralytics' default, NMS), also of a head switched
    to its NMS-free output."""
    model = randomize_norms(load_ultralytics("yolo26n.yaml", nc=6))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        plain, _ = YoloV5Outputs(model)(x)
        model.end2end = True
        switched, _ = YoloV5Outputs(model)(x)
    assert plain.shape == (2, 84, 5 + 6)
    torch.testing.assert_close(switched, plain, rtol=0, atol=0)


def test_pruned_yolo26_round_trips_through_ultralytics_without_pagcp(pruned_yolo26, tiny_data, tmp_path):
    path, widths = pruned_yolo26
    run_without_pagcp(path, tiny_data, tmp_path, widths)
    assert any(k.startswith("model.23.one2one_cv2.") for k in widths)  # both branches came through


def test_pruned_yolo26_keeps_its_widths_through_e2e_training(pruned_yolo26, tiny_data, tmp_path):
    path, widths = pruned_yolo26
    model = train_an_epoch(path, tiny_data, tmp_path, widths)
    assert type(model.trainer.model.init_criterion()).__name__ == "E2ELoss"


def test_the_prune_command_on_yolo26n_demo(tmp_path):
    """`python -m pagcp.prune --weights yolo26n-demo --json`: the six tasks guard the search, the report's GFLOPs
    are the saved model's, and box mAP is reported before, after pruning and after fine-tuning."""
    if not bundled_file("yolo26n-demo").is_file():
        pytest.skip("the bundled yolo26n-demo checkpoint is not there")
    report = prune_bundled_demo("yolo26n-demo", tmp_path)
    assert tuple(report["tasks"]) == E2E_TASKS
    assert sum(u["selected"] and u["channels_after"] < u["channels_before"] for u in report["units"]) >= 3
    run = Path(report["run_dir"])
    pruned = pagcp.load_model(run / "pruned.pt")
    assert pagcp.model_stats(pruned, 96)["gflops"] == pytest.approx(report["gflops_after"], rel=1e-9)
    assert report["gflops_after"] < report["gflops_before"]
    for stage in ("before", "after", "finetuned"):
        assert 0 <= report[f"map50_95_{stage}"] <= 1, stage
    assert _widths(pagcp.load_model(run / "finetuned.pt")) == _widths(pruned)
