"""A torchrun-sharded search: 2 processes (gloo, CPU) split the oracle's batches, all-reduce the loss sums
and take the decisions of 1 process; rank 0 writes; the fine-tune after the search runs DDP in the same launch;
an interrupted sharded run resumes under torchrun to the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launch import descendants, free_port, running

ARGS = ["--weights", "yolov5n", "--data", "demo:train=16,val=24,img=96", "--img", "96", "--batch", "4",
        "--subset", "16", "--initial-rate", "0.002", "--initial-thres", "1.05",
        "--no-latency", "--device", "cpu", "--finetune-epochs", "1", "--finetune-batch", "8", "--json"]  # fmt: skip


def _command(processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "pagcp.prune"]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
            str(free_port()), "-m", "pagcp.prune"]  # fmt: skip


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")


def _run(processes: int, project: Path, extra: list[str] = ()) -> dict:
    proc = subprocess.run([*_command(processes), *ARGS, "--project", str(project), *extra], env=_env(),
                          capture_output=True, text=True, timeout=900, cwd=project.parent)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    return _run(1, tmp_path_factory.mktemp("one") / "runs")


def test_two_processes_decide_as_one(one, tmp_path):
    two = _run(2, tmp_path / "runs")
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["units"] == one["units"]
    assert two["evaluations"] == one["evaluations"] and two["gflops_after"] == one["gflops_after"]
    assert sum(u["ratio"] > 0 for u in one["units"]) >= 3  # the case prunes several units
    run = Path(two["run_dir"])
    assert (run / "finetuned.pt").is_file() and (run / "finetune" / "results.csv").is_file()
    opt = (run / "finetune" / "opt.yaml").read_text()
    assert "world_size: 2" in opt  # the fine-tune ran DDP over both processes
    assert sorted(p.name for p in run.parent.iterdir()) == ["exp"]  # one folder: rank 0 made it


def test_an_interrupted_sharded_search_resumes_under_torchrun(one, tmp_path):
    project = tmp_path / "runs"
    proc = subprocess.Popen([*_command(2), *ARGS, "--project", str(project)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    state = project / "exp" / "state.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        try:
            saved = json.loads(state.read_text())
            if saved.get("position", 0) >= 2 and saved["phase"] == "search":
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    workers = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)  # the launcher alone: its workers must follow it (die_with_launcher)
    proc.wait(timeout=60)
    assert not (project / "exp" / "report.json").exists()
    deadline = time.time() + 30
    while any(running(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert len(workers) >= 2 and not any(running(w) for w in workers)  # none runs the killed run on
    again = _run(2, project, ["--resume", str(project / "exp")])
    assert again["units"] == one["units"] and again["evaluations"] == one["evaluations"]
