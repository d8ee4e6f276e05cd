"""`python -m pagcp.prune` end to end: report, checkpoint, bad input, Ctrl-C and --resume."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import pagcp
from pagcp.detection.evaluate import evaluate

DATA = "demo:train=16,val=24,img=96"
BASE = [
    "--weights",
    "yolov5n",
    "--data",
    DATA,
    "--img",
    "96",
    "--batch",
    "8",
    "--subset",
    "16",
    "--finetune-epochs",
    "0",
    "--initial-rate",
    "0.0003",
    "--initial-thres",
    "1.006",
]


def _prune(args, cwd, check=True, **kwargs):
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run(
        [sys.executable, "-m", "pagcp.prune", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        **kwargs,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune")
    proc = _prune([*BASE, "--project", str(root / "runs"), "--json"], root)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return root, report, proc.stdout, proc.stderr


def test_report_and_checkpoint_agree(finished):
    root, report, stdout, log = finished
    run_dir = root / "runs" / "exp"
    assert {p.name for p in run_dir.iterdir()} >= {
        "pruned.pt",
        "report.json",
        "report.md",
        "channels.png",
        "state.json",
        "opt.yaml",
    }
    assert json.loads((run_dir / "report.json").read_text()) == report
    assert report["map50_finetuned"] is None and report["subset"] == 16 and report["img_size"] == 96
    assert report["gflops_after"] < report["gflops_before"] and report["params_after"] < report["params_before"]
    assert len(report["units"]) == 50 and report["evaluations"] > 0 and report["lambda"] < 1
    table = stdout.split("ended by:")[0]
    assert "GFLOPs" in table and "  pruned " in table and "fine-tuned" not in table  # --finetune-epochs 0
    selected = sum(u["selected"] for u in report["units"])
    searched = sum(u["ratio"] > 0 for u in report["units"])
    said = (rf"topk 0.8: {searched} of the 50 units were searched to some ratio; the {selected} most loss-efficient "
            rf"\(at most topk x 50\) stay pruned, {searched - selected} are restored whole")  # fmt: skip
    assert re.search(said, log), log
    assert "validating the original model" in log and "validating the pruned model" in log
    assert "validating the fine-tuned model" not in log  # no epochs: nothing new to validate
    md = (run_dir / "report.md").read_text()
    assert f"python -m pagcp.val --weights {run_dir / 'pruned.pt'} --data {DATA} --img 96" in md
    for u in report["units"]:
        if u["ratio"] > 0 and not u["selected"]:
            width = u["channels_before"]
            assert (
                f"| `{u['name']}` | {width} → {width} | searched to {u['ratio']:.2f}, left unpruned by topk 0.8" in md
            )
        if u["selected"]:
            assert f"pruned {u['channels_before']} → {u['channels_after']} at ratio {u['ratio']:.2f}" in md
    model = pagcp.load_model(run_dir / "pruned.pt")
    stats = pagcp.model_stats(model, 96)
    assert stats["gflops"] == pytest.approx(report["gflops_after"], rel=1e-12)
    assert stats["params"] == report["params_after"]
    kept = {u["name"]: u["channels_after"] for u in report["units"]}
    assert model.model[1].conv.out_channels == kept["model.1"]
    result = evaluate(model, DATA, img_size=96, batch_size=32, progress=False)
    assert result["map50_95"] == pytest.approx(report["map50_95_after"], abs=1e-9)
    assert result["map50"] == pytest.approx(report["map50_after"], abs=1e-9)


def test_ctrl_c_then_resume_gives_the_same_decisions(finished, tmp_path):
    _, report, _, _ = finished
    runs = tmp_path / "runs"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pagcp.prune", *BASE, "--project", str(runs)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background job starts with SIGINT ignored, and Python keeps it so: give the run Ctrl-C back
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    state = runs / "exp" / "state.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(state.read_text()).get("position", 0) >= 5:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err
    saved = json.loads(state.read_text())
    assert saved["phase"] == "search" and 5 <= saved["position"] < 50
    resumed = _prune(["--resume", str(runs / "exp"), "--json"], tmp_path)
    again = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert again["units"] == report["units"]
    assert again["gflops_after"] == report["gflops_after"]
    assert again["evaluations"] == report["evaluations"]  # the work done before the kill is counted once
    position = saved["position"]
    pattern = rf"resuming .*state.json: round 0, {position} of (\d+) units decided, next (\S+); (\d+) evaluations done"
    said = re.search(pattern, resumed.stderr)
    assert said, resumed.stderr[-2000:]
    assert int(said[1]) == 50 and int(said[3]) == saved["evaluations"] > 0


def test_resume_of_a_finished_run_redoes_nothing(finished):
    root, report, _, _ = finished
    run_dir = root / "runs" / "exp"
    stamps = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir() if p.is_file()}
    again = _prune(["--resume", str(run_dir), "--json"], root)
    assert json.loads(again.stdout.strip().splitlines()[-1]) == report
    assert "has finished" in again.stderr and "nothing to redo" in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir() if p.is_file()} == stamps


def test_img_not_a_stride_multiple_is_rounded_and_said(caplog):
    from pagcp.cli.prune import build_parser, settings_from_args
    from pagcp.pipeline import load_job

    flags = [*BASE[:4], "--img", "100", "--subset", "16", "--device", "cpu"]
    with caplog.at_level("WARNING"):
        job = load_job(settings_from_args(build_parser().parse_args(flags)))
    assert job.img == 128
    assert caplog.messages == ["--img 100 must be a multiple of max stride 32, updating to 128"]


@pytest.mark.parametrize("command", ["prune", "train", "val", "export"])
def test_every_flag_has_help_and_its_default(command):
    parser = importlib.import_module(f"pagcp.cli.{command}").build_parser()
    text = "".join(parser.format_help().split())  # wrapping may break lines at spaces or after hyphens
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{command} {action.option_strings[0]} has no help text"
        entry = " ".join(parser._get_formatter()._format_action(action).split())
        assert entry.replace(" ", "") in text
        assert entry.count("(default: ") <= 1, entry  # the default is said once
        unset = action.default is None or action.default is False or action.default == ""
        if not unset:
            assert f"(default: {action.default})" in entry or "default" in action.help, entry


def test_bad_input_fails_before_any_work(tmp_path):
    runs = tmp_path / "runs"
    bad_flag = _prune([*BASE, "--compression", "everything", "--project", str(runs)], tmp_path, check=False)
    assert bad_flag.returncode == 2 and "--compression" in bad_flag.stderr
    assert len(bad_flag.stderr.strip().splitlines()) == 1
    too_many = _prune([*BASE, "--subset", "1000", "--project", str(runs)], tmp_path, check=False)
    assert too_many.returncode == 2
    assert "--subset 1000 is larger than the train split" in too_many.stderr
    model = pagcp.load_model("yolov5n", nc=3)
    pagcp.save_model(model, tmp_path / "three.pt")
    wrong_nc = _prune(
        [*BASE[2:], "--weights", str(tmp_path / "three.pt"), "--project", str(runs)], tmp_path, check=False
    )
    assert wrong_nc.returncode == 2 and "nc=6" in wrong_nc.stderr and "three.pt" in wrong_nc.stderr
    assert not runs.exists()  # nothing was started
    torch.manual_seed(0)
