"""Helpers for tests that launch prune commands in processes of their own: a rendezvous port nothing else holds,
the small yolov8n-demo run the Ultralytics process tests share, a small command-line run of a bundled demo
checkpoint, and a launch's processes (to see them end)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    """A port no other launch holds now: a fixed one lets two test runs on one machine join each other's group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def yolov8n_demo_args(finetune_epochs: int) -> list[str]:
    """A small ``pagcp.prune`` run of yolov8n-demo on the CPU (backbone scope, 8 oracle images, 64 px)."""
    return ["--weights", "yolov8n-demo", "--data", "demo:train=16,val=24,img=96", "--img", "64", "--batch", "4",
            "--subset", "8", "--compression", "backbone", "--finetune-epochs", str(finetune_epochs),
            "--finetune-batch", "8", "--no-latency", "--device", "cpu", "--json"]  # fmt: skip


def prune_bundled_demo(weights: str, tmp_path: Path) -> dict:
    """``python -m pagcp.prune --weights <weights> --json`` on 16 train / 24 val demo images at 96 px (backbone
    scope, 8 oracle images, one fine-tuning epoch) in a process of its own; its report (it must succeed)."""
    args = ["--weights", weights, "--data", "demo:train=16,val=24,img=96", "--img", "96", "--batch", "8",
            "--subset", "8", "--compression", "backbone", "--finetune-epochs", "1", "--finetune-batch", "8",
            "--no-latency", "--project", str(tmp_path / "runs"), "--json"]  # fmt: skip
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", YOLO_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "pagcp.prune", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def descendants(pid: int) -> list[int]:
    """Every living process below ``pid`` (read from /proc: parents of all processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def running(pid: int) -> bool:
    """Whether process ``pid`` still runs (neither gone nor a zombie waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
