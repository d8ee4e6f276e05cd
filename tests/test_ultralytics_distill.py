"""--distill with Ultralytics models (pagcp.families.ultralytics_distill): YOLOv8 (reg_max 16) and YOLO26 (an
end-to-end head, reg_max 1).

The loss is zero toward itself and refuses another head; a few steps on it lower it on a fixed batch; one epoch
of Ultralytics' trainer with it ends closer to the teacher than the same epoch without, and the checkpoints it
writes name no pagcp class (Ultralytics alone still loads them).
"""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("ultralytics")

import torch  # noqa: E402
from test_ultralytics import randomize_norms, tiny_data  # noqa: E402, F401 - tiny_data is a fixture

import pagcp  # noqa: E402
from pagcp.engine.baselines import prunable_units, uniform_keep  # noqa: E402
from pagcp.errors import ConfigError  # noqa: E402
from pagcp.families.ultralytics_detect import load_ultralytics, save_ultralytics  # noqa: E402
from pagcp.families.ultralytics_distill import distilling_trainer, head_distillation  # noqa: E402
from pagcp.models.ultralytics_io import pickle_mentions  # noqa: E402

IMG = 64


pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(name: str):
    """A bundled demo model (trained: its outputs vary with its channels) and its uniformly pruned copy."""
    teacher = pagcp.load_model(name).eval()
    graph = pagcp.trace(teacher, torch.zeros(1, 3, IMG, IMG))
    student = pagcp.families.family_of(teacher).sliced(graph.slice(uniform_keep(graph, 0.5, prunable_units(graph))))
    return teacher, student.eval()


def _gap(student, teacher, batch) -> float:
    with torch.no_grad():
        return float(head_distillation(student.eval()(batch), teacher.eval()(batch)))


@pytest.mark.parametrize("name", ["yolov8n-demo", "yolo26n-demo", "yolov8n-seg-demo", "yolo11n-pose-demo"])
def test_a_few_steps_lower_the_distillation_loss(name):
    teacher, student = _pair(name)
    batch = torch.rand(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(0))
    assert _gap(copy.deepcopy(teacher), teacher, batch) == 0.0
    before = _gap(student, teacher, batch)
    assert before > 0
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    student.eval()  # BatchNorm on its running statistics: the steps change weights only
    for p in student.parameters():
        p.requires_grad_(True)
    with torch.no_grad():
        target = teacher(batch)
    for _ in range(10):
        optimizer.zero_grad()
        head_distillation(student(batch), target).backward()
        optimizer.step()
    after = _gap(student, teacher, batch)
    assert after < 0.5 * before, (before, after)


def test_another_head_is_refused():
    teacher, _ = _pair("yolov8n-demo")
    other = randomize_norms(load_ultralytics("yolov8n.yaml", nc=3)).eval()
    batch = torch.rand(1, 3, IMG, IMG)
    with pytest.raises(ConfigError, match="--distill: the student's head outputs differ"):
        head_distillation(other(batch), teacher(batch))
    with pytest.raises(ConfigError, match="--distill 0"):
        distilling_trainer(object, teacher, 0.0)


def test_the_trainer_adds_the_weighted_loss_and_saves_no_pagcp_class(tiny_data, tmp_path):  # noqa: F811
    """An epoch of Ultralytics' trainer with --distill 5: its training model's criterion is Ultralytics' own plus
    5 × the distillation loss on the batch (checked on a batch of its loader), and what it saved names no pagcp
    class (the teacher and the criterion live only in the training process)."""
    from ultralytics import YOLO

    from pagcp.families.ultralytics_detect import PrunedDetectionTrainer
    from pagcp.families.ultralytics_distill import DistillingCriterion

    teacher, student = _pair("yolov8n-demo")
    source = save_ultralytics(student, tmp_path / "student.pt")
    yolo = YOLO(str(source))
    yolo.train(trainer=distilling_trainer(PrunedDetectionTrainer, teacher, 5.0), data=tiny_data, epochs=1, imgsz=IMG,
               batch=8, workers=0, plots=False, device="cpu", amp=False, project=str(tmp_path), name="ft",
               exist_ok=True)  # fmt: skip
    trainer = yolo.trainer
    criterion = trainer.model.criterion
    assert isinstance(criterion, DistillingCriterion) and criterion.weight == 5.0
    batch = trainer.preprocess_batch(next(iter(trainer.train_loader)))
    model = trainer.model.train()
    with torch.no_grad():
        preds = model(batch["img"])
        total, items = criterion(preds, batch)
        own, own_items = criterion.criterion(preds, batch)
        extra = head_distillation(preds, teacher(batch["img"]))
    assert float(extra) > 0
    assert float(total) == pytest.approx(float(own.sum() + 5.0 * extra), rel=1e-6)
    assert items.keys() == own_items.keys()  # Ultralytics' loss columns are unchanged
    for path in (trainer.last, trainer.best):
        assert not pickle_mentions(path, "pagcp.")
