"""--distill: the unpruned model teaches the pruned one during fine-tuning (pagcp.training.distill).

A tiny YOLOv5 is the teacher and its uniformly pruned copy the student. The loss is zero for equal outputs and
refuses heads of another layout; a few optimizer steps on it lower it on a fixed batch; pagcp's training loop
with --distill ends closer to the teacher than the same run without it, and keeps the setting for a resume.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from test_train import IMG, settings, tiny_data, tiny_model, train  # noqa: F401 - tiny_data is a fixture

import pagcp
from pagcp.engine.baselines import prunable_units, uniform_keep
from pagcp.errors import ConfigError
from pagcp.models.checkpoint import save_model
from pagcp.training.distill import Distiller, distillation_loss, raw_outputs

pytestmark = pytest.mark.usefixtures("one_thread")


def _teacher_and_student():
    """A tiny YOLOv5 with random BatchNorm statistics (so its outputs vary with its channels) and a uniformly
    pruned copy."""
    teacher = tiny_model(seed=0).eval()
    g = torch.Generator().manual_seed(0)
    for m in teacher.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=g)
            m.bias.data = torch.randn(n, generator=g) * 0.5
            m.running_mean.data = torch.randn(n, generator=g) * 0.2
            m.running_var.data = 0.5 + torch.rand(n, generator=g)
    graph = pagcp.trace(teacher, torch.zeros(1, 3, IMG, IMG))
    student = graph.slice(uniform_keep(graph, 0.5, prunable_units(graph))).train()
    return teacher, student


def _gap(student, teacher, batch) -> float:
    """The distillation loss of ``student`` (eval mode) toward ``teacher`` on ``batch``."""
    with torch.no_grad():
        return float(distillation_loss(raw_outputs(student.eval()(batch)), raw_outputs(teacher.eval()(batch))))


def test_the_loss_is_zero_for_the_teacher_and_refuses_another_head():
    teacher, student = _teacher_and_student()
    batch = torch.rand(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(0))
    assert _gap(copy.deepcopy(teacher), teacher, batch) == 0.0
    assert _gap(student, teacher, batch) > 0
    out = raw_outputs(teacher.eval()(batch))
    assert len(out) == 3 and out[0].shape[0] == 2  # three detection layers, the batch first
    with pytest.raises(ConfigError, match="--distill: the student's head outputs"):
        distillation_loss(out[:2], out)
    with pytest.raises(ConfigError, match="--distill 0"):
        Distiller(teacher, 0.0, torch.device("cpu"))


def test_a_few_steps_lower_the_distillation_loss_on_a_fixed_batch():
    teacher, student = _teacher_and_student()
    batch = torch.rand(4, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    distiller = Distiller(teacher, 1.0, torch.device("cpu"))
    optimizer = torch.optim.Adam(student.parameters(), lr=0.01)
    before = _gap(student, teacher, batch)
    student.eval()  # BatchNorm on its running statistics: the steps change weights only
    for _ in range(10):
        optimizer.zero_grad()
        distiller.loss(batch, student(batch)).backward()
        optimizer.step()
    after = _gap(student, teacher, batch)
    assert after < 0.5 * before, (before, after)
    assert all(not p.requires_grad for p in distiller.teacher.parameters())  # the teacher never learns


def test_the_training_loop_with_distill_ends_closer_to_the_teacher(tiny_data, tmp_path):  # noqa: F811
    teacher, student = _teacher_and_student()
    teacher_file = save_model(teacher, tmp_path / "teacher.pt")
    batch = torch.rand(4, 3, IMG, IMG, generator=torch.Generator().manual_seed(2))
    gaps = {}
    for weight in (0.0, 20.0):
        s = settings(tmp_path, name=f"w{weight:g}", epochs=2, distill=weight, teacher=str(teacher_file))
        result = train(copy.deepcopy(student), tiny_data, s, teacher=teacher if weight else None)
        gaps[weight] = _gap(result["model"].float(), teacher, batch)
        saved = yaml.safe_load((Path(result["save_dir"]) / "opt.yaml").read_text())
        assert saved["distill"] == weight and saved["teacher"] == str(teacher_file)  # what a resume continues with
    assert gaps[20.0] < 0.9 * gaps[0.0], gaps
    with pytest.raises(ConfigError, match="--distill 1.*teacher"):
        train(copy.deepcopy(student), tiny_data, settings(tmp_path, name="bad", distill=1.0))


def test_a_prune_run_with_distill_fine_tunes_toward_its_weights(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    """prune_run(--distill 5): the fine-tune's saved settings name the run's --weights as teacher; a model config
    (untrained weights) and a family whose trainer does not distil are refused before any run folder exists."""
    from pagcp.engine.settings import PruneSettings
    from pagcp.pipeline import ExecutionSettings, FinetuneSettings, OracleSettings, RunSettings, prune_run

    weights = save_model(_teacher_and_student()[0], tmp_path / "teacher.pt")

    def run(spec: str, name: str):
        return prune_run(RunSettings(
            weights=spec, search=PruneSettings(initial_rate=0.0003, initial_thres=1.006),
            oracle=OracleSettings(data=tiny_data, img=IMG, batch=4, subset=4),
            finetune=FinetuneSettings(epochs=1, batch=4, distill=5.0),
            execution=ExecutionSettings(device="cpu", latency=False), project=str(tmp_path / "runs"), name=name,
        ))  # fmt: skip

    report = run(str(weights), "ok")
    saved = yaml.safe_load((Path(report["run_dir"]) / "finetune" / "opt.yaml").read_text())
    assert saved["distill"] == 5.0 and saved["teacher"] == str(weights) and saved["epochs"] == 1
    assert report["map50_95_finetuned"] is not None
    with pytest.raises(ConfigError, match="--distill: --weights yolov5n is a model config with untrained weights"):
        run("yolov5n", "refused")
    family = pagcp.families.family_for_weights(str(weights))
    monkeypatch.setattr(type(family), "distills", False)  # a family whose fine-tune does not distil
    with pytest.raises(ConfigError, match="--distill: YOLOv5 fine-tuning does not distil yet"):
        run(str(weights), "refused")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ok"]
