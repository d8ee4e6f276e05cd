"""Training: parameter groups, warmup/lr schedule, EMA, exact resume, DDP (gloo, 2 processes), pruned widths."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from launch import free_port
from torch import nn

from pagcp.cli.train import main as train_main
from pagcp.data.demo import generate_demo
from pagcp.families import family_of
from pagcp.hyps import load_hyp
from pagcp.models.checkpoint import conv_widths, fit_widths, load_checkpoint_file, save_model
from pagcp.models.yolo import Model, read_config
from pagcp.training import loop
from pagcp.training.ema import ModelEMA
from pagcp.training.loop import TrainSettings, read_train_state
from pagcp.training.optim import Schedule, build_optimizer, one_cycle, split_parameters


def train(model: nn.Module, data, settings: TrainSettings, **options):
    """pagcp's training loop at the model's stride, as the YOLOv5 family runs it."""
    return loop.train(model, data, settings, stride=family_of(model).stride(model), **options)


IMG = 64


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg() -> dict:
    cfg, _ = read_config("yolov5n")
    cfg.update(width_multiple=0.125, nc=6)
    return cfg


def tiny_model(seed: int = 0) -> Model:
    torch.manual_seed(seed)
    return Model(tiny_cfg())


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> str:
    return generate_demo(str(tmp_path_factory.mktemp("demo") / "tiny"), train=8, val=4, img=IMG, seed=0, workers=1)


def settings(tmp_path, **kw) -> TrainSettings:
    base = dict(epochs=2, img_size=IMG, batch_size=4, workers=0, seed=3, project=str(tmp_path / "runs"))
    return TrainSettings(**{**base, **kw})


def state_dicts_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------- optimizer, schedule


def test_three_parameter_groups_and_scaled_decay():
    model = tiny_model()
    hyp = load_hyp("scratch")
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    n_conv = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    groups = split_parameters(model)
    assert len(groups["bn_weights"]) == n_bn
    assert len(groups["weights"]) == n_conv
    assert len(groups["biases"]) == n_bn + 3  # BN biases + the three Detect convs
    assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))
    for batch, accumulate in ((16, 4), (48, 1), (32, 2), (128, 1)):
        opt = build_optimizer(model, hyp, batch)
        decay = {g["name"]: g["weight_decay"] for g in opt.param_groups}
        assert decay["bn_weights"] == 0.0 and decay["biases"] == 0.0
        assert decay["weights"] == pytest.approx(0.0005 * batch * accumulate / 64)
        assert all(g["nesterov"] and g["momentum"] == 0.937 for g in opt.param_groups)


def test_warmup_and_one_cycle_schedule():
    hyp = load_hyp("scratch")
    sched = Schedule(hyp, epochs=10, batches_per_epoch=50, batch_size=16)
    assert sched.warmup == 150 and sched.accumulate == 4  # max(3 * 50, 100); 64 / 16
    assert Schedule(hyp, 10, 20, 16).warmup == 100  # never fewer than 100 iterations
    f = one_cycle(0.2, 10)
    assert f(0) == 1.0 and f(10) == pytest.approx(0.2) and f(5) == pytest.approx(0.6)
    # iteration 0: bias lr starts at warmup_bias_lr, the others at 0, momentum at warmup_momentum
    assert sched.values(0, 0, "biases") == (pytest.approx(0.1), pytest.approx(0.8))
    assert sched.values(0, 0, "weights") == (0.0, pytest.approx(0.8))
    # iteration 75 lies in epoch 1 (50 per epoch): half way from the start values to lr0 * f(1)
    target = 0.01 * (1 + (0.2 - 1) * (1 - math.cos(math.pi / 10)) / 2)
    assert target == pytest.approx(0.0098042, abs=1e-7)
    assert sched.values(1, 75, "biases")[0] == pytest.approx(0.1 + 0.5 * (target - 0.1))
    assert sched.values(1, 75, "bn_weights")[0] == pytest.approx(0.5 * target)
    assert sched.values(1, 75, "weights")[1] == pytest.approx(0.8 + 0.5 * 0.137)
    # after warmup: lr0 * f(epoch) for all groups, full momentum
    assert sched.values(5, 260, "biases") == (pytest.approx(0.006), 0.937)
    assert sched.values(9, 499, "weights")[0] == pytest.approx(0.01 * (1 - 0.8 * (1 - math.cos(0.9 * math.pi)) / 2))
    # accumulation ramps from 1 to 64 / 16 during warmup
    assert [sched.accumulation(i) for i in (0, 20, 75, 149, 150, 400)] == [1, 1, 2, 4, 4, 4]


def test_ema_decay_ramp():
    model = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = ModelEMA(model, decay=0.9999, tau=2000)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    d1 = 0.9999 * (1 - math.exp(-1 / 2000))
    assert ema.updates == 1
    assert ema.module.weight[0, 0].item() == pytest.approx(1 - d1, rel=1e-6)
    ema.updates = 10_000
    assert ema.current_decay() == pytest.approx(0.9999 * (1 - math.exp(-10_001 / 2000)))


# ----------------------------------------------------------------------------------------- training runs


def test_lr_in_a_real_run_follows_the_warmup(tiny_data, tmp_path):
    results = train(tiny_model(), tiny_data, settings(tmp_path))
    assert results["finished"] and results["epochs"] == 2
    run = results["save_dir"]
    assert os.path.isfile(os.path.join(run, "opt.yaml")) and os.path.isfile(os.path.join(run, "results.png"))
    with open(os.path.join(run, "results.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    # 8 images / batch 4 = 2 iterations per epoch, all inside the 100-iteration warmup; the logged lr is the
    # one of the last iteration of the epoch (global iteration 3 in epoch 1, whose target is 0.01 * f(1) = 0.006)
    last = rows[1]
    assert float(last["lr/biases"]) == pytest.approx(0.1 + 3 / 100 * (0.006 - 0.1), rel=1e-5)
    assert float(last["lr/weights"]) == pytest.approx(3 / 100 * 0.006, rel=1e-5)
    assert float(last["lr/bn_weights"]) == pytest.approx(3 / 100 * 0.006, rel=1e-5)
    assert float(rows[0]["lr/weights"]) == pytest.approx(1 / 100 * 0.01, rel=1e-5)
    # two logging steps per epoch (one per batch here); each epoch's steps average to its results.csv loss
    with open(os.path.join(run, "steps.csv"), newline="") as f:
        steps = list(csv.DictReader(f))
    assert [float(r["epoch"]) for r in steps] == [0.5, 1.0, 1.5, 2.0]
    for epoch, row in enumerate(rows):
        mine = steps[2 * epoch : 2 * epoch + 2]
        mean = sum(float(r["train/box_loss"]) for r in mine) / 2
        assert mean == pytest.approx(float(row["train/box_loss"]), rel=1e-4)
    # a finished run keeps no training state; best.pt and last.pt load as models
    last_model = load_checkpoint_file(results["last"])
    assert "train_state" not in last_model.meta and last_model.meta["epoch"] == 1
    assert load_checkpoint_file(results["best"]).nc == 6


def test_loader_workers_do_not_change_the_result(tiny_data, tmp_path):
    """The same run with 0 and 2 data-loader workers ends with the same weights (augmentations are drawn per image,
    not per worker process)."""
    runs = {w: train(tiny_model(), tiny_data, settings(tmp_path, epochs=1, workers=w, name=f"w{w}")) for w in (0, 2)}
    a, b = (load_checkpoint_file(runs[w]["last"]).state_dict() for w in (0, 2))
    assert state_dicts_equal(a, b) and not state_dicts_equal(a, tiny_model().state_dict())


def test_resume_gives_the_weights_of_an_uninterrupted_run(tiny_data, tmp_path):
    full = train(tiny_model(), tiny_data, settings(tmp_path, epochs=3, name="full"))
    stopped = train(
        tiny_model(),
        tiny_data,
        settings(tmp_path, epochs=3, name="cut"),
        on_epoch_end=lambda epoch, metrics: epoch == 0,
    )
    assert stopped["epochs"] == 1 and not stopped["finished"]
    model, state = read_train_state(stopped["save_dir"])
    assert state["epoch"] == 0 and set(state["optimizer"]["state"])
    assert train_main(["--resume", stopped["last"], "--json"]) == 0  # the CLI continues the run in its folder
    a = load_checkpoint_file(full["last"]).state_dict()
    b = load_checkpoint_file(stopped["last"]).state_dict()
    assert state_dicts_equal(a, b)
    assert not state_dicts_equal(a, tiny_model().state_dict())  # it did train
    with open(os.path.join(stopped["save_dir"], "results.csv"), newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2]
    with open(os.path.join(stopped["save_dir"], "steps.csv"), newline="") as f:
        resumed_steps = [r["epoch"] for r in csv.DictReader(f)]
    with open(os.path.join(full["save_dir"], "steps.csv"), newline="") as f:
        assert resumed_steps == [r["epoch"] for r in csv.DictReader(f)]  # each step once


def test_pruned_checkpoint_fine_tunes_with_its_widths(tiny_data, tmp_path, capsys):
    model = tiny_model()
    sd = model.state_dict()
    keep = 5  # layer 0 has 8 output channels: keep 5 (and the matching inputs of layer 1)
    pruned_sd = dict(sd)
    for k in (
        "model.0.conv.weight",
        "model.0.bn.weight",
        "model.0.bn.bias",
        "model.0.bn.running_mean",
        "model.0.bn.running_var",
    ):
        pruned_sd[k] = sd[k][:keep].clone()
    pruned_sd["model.1.conv.weight"] = sd["model.1.conv.weight"][:, :keep].clone()
    pruned = copy.deepcopy(model)
    fit_widths(pruned, pruned_sd)
    pruned.load_state_dict(pruned_sd)
    src = save_model(pruned, tmp_path / "pruned.pt")
    widths = conv_widths(pruned)
    assert widths["model.0.conv"][1] == keep and widths["model.1.conv"][0] == keep
    code = train_main(
        [
            "--weights",
            str(src),
            "--data",
            tiny_data,
            "--epochs",
            "1",
            "--img",
            str(IMG),
            "--batch",
            "4",
            "--workers",
            "0",
            "--project",
            str(tmp_path / "runs"),
            "--json",
        ]
    )
    assert code == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tuned = load_checkpoint_file(results["last"])
    assert conv_widths(tuned) == widths
    assert tuned.meta["settings"]["hyp"] == "finetune"
    assert not torch.equal(tuned.state_dict()["model.0.conv.weight"], pruned_sd["model.0.conv.weight"])


# ----------------------------------------------------------------------------------------- distributed


def _ddp_worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    model = tiny_model(seed=rank)  # different starting weights: DDP must broadcast rank 0's
    results = train(
        model,
        data,
        TrainSettings(epochs=2, img_size=IMG, batch_size=4, workers=0, seed=1, project=os.path.join(out, "runs")),
    )
    torch.save(
        {"model": model.state_dict(), "ema": results["model"].state_dict(), "epochs": results["epochs"]},
        os.path.join(out, f"rank{rank}.pt"),
    )


def test_two_process_gloo_run_ends_with_identical_weights(tiny_data, tmp_path):
    mp.spawn(_ddp_worker, args=(2, free_port(), tiny_data, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["epochs"] == r1["epochs"] == 2
    assert state_dicts_equal(r0["model"], r1["model"])
    assert state_dicts_equal(r0["ema"], r1["ema"])
    assert not state_dicts_equal(r0["model"], tiny_model(seed=0).state_dict())
    saved = load_checkpoint_file(tmp_path / "runs" / "exp" / "weights" / "last.pt")
    assert state_dicts_equal(saved.state_dict(), r0["ema"])
    assert saved.meta["epoch"] == 1


def test_torchrun_cli_trains_on_two_cpu_processes(tiny_data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "pagcp.train",
        "--cfg",
        "yolov5n",
        "--data",
        tiny_data,
        "--epochs",
        "1",
        "--img",
        str(IMG),
        "--batch",
        "4",
        "--workers",
        "0",
        "--project",
        str(tmp_path / "runs"),
        "--json",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])  # rank 0 prints, the others stay quiet
    assert results["epochs"] == 1 and results["finished"]
    with open(os.path.join(results["save_dir"], "opt.yaml")) as f:
        assert "world_size: 2" in f.read()
    assert load_checkpoint_file(results["last"]).meta["settings"]["batch_size"] == 4
