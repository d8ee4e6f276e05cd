"""A killed Ultralytics fine-tune continues with `python -m pagcp.prune --resume` from Ultralytics' own
``last.pt`` to exactly the weights and mAP of an uninterrupted run, keeping the pruned widths; and the trainer
itself continues exactly where Ultralytics' resume alone would not (gradients accumulated across the kill)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")  # Ultralytics: no online checks, no downloads
if importlib.util.find_spec("ultralytics") is None:
    pytest.skip("needs the ultralytics package (pip install ultralytics)", allow_module_level=True)

from launch import yolov8n_demo_args  # noqa: E402

import pagcp  # noqa: E402
from pagcp.data.demo import generate_demo  # noqa: E402
from pagcp.engine.baselines import prunable_units, uniform_keep  # noqa: E402
from pagcp.families import family_for_weights  # noqa: E402
from pagcp.families.base import FinetuneJob  # noqa: E402
from pagcp.families.ultralytics_resume import RESUME_KEY  # noqa: E402
from pagcp.families.ultralytics_train import epochs_done, last_checkpoint  # noqa: E402
from pagcp.models.checkpoint import WEIGHTS_DIR  # noqa: E402
from pagcp.models.ultralytics_io import read_checkpoint  # noqa: E402

ARGS = yolov8n_demo_args(2)

#: the prune command, SIGKILLed (no clean-up at all) as soon as its fine-tune has saved its first epoch
_KILLED = """
import os, signal, sys
from ultralytics.utils import callbacks


def kill_after_the_first_epoch(trainer):
    if trainer.epoch == 0:
        os.kill(os.getpid(), signal.SIGKILL)


callbacks.default_callbacks["on_model_save"].append(kill_after_the_first_epoch)
from pagcp.cli.prune import main

sys.exit(main())
"""


def _prune(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1", YOLO_OFFLINE="1")
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _report(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _widths(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


def test_a_killed_fine_tune_resumes_to_the_uninterrupted_weights(tmp_path):
    whole = _report(_prune([sys.executable, "-m", "pagcp.prune", *ARGS, "--project", "whole"], tmp_path))
    killed = _prune([sys.executable, "-c", _KILLED, *ARGS, "--project", "killed"], tmp_path)
    assert killed.returncode == -9, killed.stderr[-3000:]
    run = tmp_path / "killed" / "exp"
    last = read_checkpoint(run / "finetune" / "weights" / "last.pt")  # epoch 1 of 2, with pagcp's training state
    assert last["epoch"] == 0 and last[RESUME_KEY]["epoch"] == 0 and last["optimizer"] is not None
    assert not (run / "finetuned.pt").exists() and not (run / "report.json").exists()
    epoch_1 = (run / "finetune" / "results.csv").read_text().splitlines()
    assert len(epoch_1) == 1 + 1
    resumed = _prune([sys.executable, "-m", "pagcp.prune", "--resume", str(run), "--json"], tmp_path)
    again = _report(resumed)
    said = re.search(r"continuing cycle 1's fine-tune from (\S+) \(epoch 1 of 2 done\)", resumed.stderr)
    assert said and Path(said[1]).resolve() == (run / "finetune" / "weights" / "last.pt").resolve(), resumed.stderr
    assert "from epoch 2 to 2 total epochs" in resumed.stdout + resumed.stderr  # Ultralytics' resume, 1 epoch
    rows = (run / "finetune" / "results.csv").read_text().splitlines()
    assert rows[:2] == epoch_1 and len(rows) == 1 + 2  # epoch 1's row (with its time) is the killed run's
    assert again["units"] == whole["units"] and again["gflops_after"] == whole["gflops_after"]
    for key in ("map50_finetuned", "map50_95_finetuned", "map50_after", "map50_95_after"):
        assert again[key] == whole[key], key
    expected = pagcp.load_model(tmp_path / "whole" / "exp" / "finetuned.pt")
    tuned = pagcp.load_model(run / "finetuned.pt")
    assert tuned.state_dict().keys() == expected.state_dict().keys()
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in tuned.state_dict().items())
    pruned = pagcp.load_model(run / "pruned.pt")  # the resumed network kept the pruned widths
    assert _widths(tuned) == _widths(pruned) != _widths(pagcp.load_model("yolov8n-demo"))
    finished = read_checkpoint(run / "finetune" / "weights" / "last.pt")
    assert RESUME_KEY not in finished and finished["epoch"] == -1  # stripped once the fine-tune ended


def _trained(trainer) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The live and the EMA weights a trainer ended with."""
    return dict(trainer.model.state_dict()), dict(trainer.ema.ema.state_dict())


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_trainer_resumes_exactly_with_gradients_accumulated_across_the_kill(tmp_path):
    """4 batches an epoch, an optimizer step every 3: the kill after epoch 1 comes with a batch's gradients not yet
    applied. Resumed from pagcp's state the run ends with the uninterrupted weights, live and EMA; from
    Ultralytics' own state alone (fp16 EMA, no gradients, its step count restarted) it does not."""
    from pagcp.families.ultralytics_detect import PrunedDetectionTrainer

    data = generate_demo(str(tmp_path / "demo"), train=16, val=8, img=96, seed=0, workers=1)
    _resumes_exactly(str(WEIGHTS_DIR / "yolov8n-demo.pt"), PrunedDetectionTrainer, data, tmp_path)


def test_a_segmentation_fine_tune_resumes_exactly(tmp_path):
    """The same with Ultralytics' SegmentationTrainer (masks in every batch) on a pruned yolov8n-seg."""
    data = generate_demo(str(tmp_path / "demo"), train=16, val=8, img=96, seed=0, workers=1, kind="segment")
    family = family_for_weights("yolov8n-seg.yaml")
    torch.manual_seed(0)
    model = family.load("yolov8n-seg.yaml", nc=6)
    graph = pagcp.trace(model, torch.zeros(1, 3, 64, 64))
    pruned = family.sliced(graph.slice(uniform_keep(graph, 0.5, prunable_units(graph))))
    source = family.save(pruned, tmp_path / "pruned.pt")
    _resumes_exactly(str(source), family.trainer(), data, tmp_path)


def _resumes_exactly(source: str, trainer: type, data: str, tmp_path) -> None:
    from ultralytics import YOLO

    options = dict(trainer=trainer, data=data, epochs=2, imgsz=64, batch=4, nbs=12, warmup_epochs=0,
                   workers=0, device="cpu", amp=False, plots=False, seed=0, deterministic=True,
                   project=str(tmp_path / "runs"), exist_ok=True)  # fmt: skip
    whole = YOLO(source)
    whole.train(name="whole", **options)
    expected = _trained(whole.trainer)

    def interrupt(trainer):
        if trainer.epoch == 0:
            raise KeyboardInterrupt

    killed = YOLO(source)
    killed.add_callback("on_model_save", interrupt)
    with pytest.raises(KeyboardInterrupt):
        killed.train(name="killed", **options)
    last = tmp_path / "runs" / "killed" / "weights" / "last.pt"
    state = read_checkpoint(last)[RESUME_KEY]
    assert state["last_step"] == 2 and len(state["grads"]) > 100  # stepped at batch 3 of 4; batch 4 is pending
    without = tmp_path / "without.pt"
    ckpt = torch.load(last, weights_only=False)
    del ckpt[RESUME_KEY]
    torch.save(ckpt, without)

    resumed = {}
    for name, path in (("pagcp", last), ("ultralytics", without)):
        model = YOLO(str(path))
        model.train(trainer=trainer, resume=True, data=data, device="cpu", workers=0, batch=4)
        resumed[name] = _trained(model.trainer)
    assert _same(resumed["pagcp"][0], expected[0]) and _same(resumed["pagcp"][1], expected[1])
    differs = max(float((v - expected[0][k]).abs().max()) for k, v in resumed["ultralytics"][0].items())
    assert differs > 1e-4


def test_what_a_last_checkpoint_says_is_done(tmp_path):
    """Epochs a run folder's ``last.pt`` holds: none without one (or one pagcp cannot continue exactly: the
    fine-tune starts again), all once the fine-tune has finished (Ultralytics strips it to epoch -1)."""
    job = FinetuneJob(folder=tmp_path, epochs=3, source=tmp_path / "pruned.pt", data="demo", img=64, batch=8,
                      hyp="finetune", device="cpu", workers=0)  # fmt: skip
    last = last_checkpoint(job)
    assert last == tmp_path / "finetune" / "weights" / "last.pt" and epochs_done(job) == 0
    last.parent.mkdir(parents=True)
    last.write_bytes(b"half a checkpoint")  # e.g. killed while a plain Ultralytics run wrote it
    assert epochs_done(job) == 0
    done = {}
    for name, ckpt in {"stripped": {"epoch": -1}, "last epoch saved": {"epoch": 2, RESUME_KEY: {}},
                       "epoch 1, Ultralytics' state only": {"epoch": 0}, "epoch 1": {"epoch": 0, RESUME_KEY: {}},
                       "epoch 2": {"epoch": 1, RESUME_KEY: {}}}.items():  # fmt: skip
        torch.save(ckpt, last)
        done[name] = epochs_done(job)
    assert done == {"stripped": 3, "last epoch saved": 3, "epoch 1, Ultralytics' state only": 0, "epoch 1": 1,
                    "epoch 2": 2}  # fmt: skip
