"""The device suite's dry run: every step of the GPU checks runs on the CPU at toy sizes and reports figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_device_suite_dry_run(tmp_path):
    out = tmp_path / "suite.json"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run([sys.executable, "benchmarks/device_suite.py", "--dry-run", "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1500)  # fmt: skip
    report = json.loads(out.read_text())
    steps = {s["step"]: s for s in report["steps"]}
    assert list(steps) == ["wheels", "build", "gpu tests", "kernels", "search", "precision", "finetune"]
    assert proc.returncode == 0, {name: s["tail"][-500:] for name, s in steps.items() if s["rc"]}
    assert steps["kernels"]["result"]["copy_gb_s"] > 0 and steps["kernels"]["result"]["rows"]
    assert all(0 < r["of_copy_bandwidth"] for r in steps["kernels"]["result"]["rows"])
    search = steps["search"]["result"]
    assert search["same_decisions"] is True and search["replays_same_decisions"] is True
    # the speed-up is what the two timed runs say, and the engine never evaluates more candidates than the
    # naive loop (early rejection stops a unit at its first trip); how large it is, only a device run says
    # (both times are rounded to 1 ms and the speed-up to 0.01: the tolerance is those roundings, nothing more)
    ratio = search["naive_seconds"] / search["engine_seconds"]
    rounding = 0.005 + ratio * 0.0005 * (1 / search["engine_seconds"] + 1 / search["naive_seconds"])
    assert search["speedup"] == pytest.approx(ratio, abs=rounding + 1e-9)
    assert 0 < search["engine_evaluations"] <= search["naive_evaluations"]
    assert steps["precision"]["result"]["rows"]["bf16"]["same_ratio"] >= 0.5
    assert steps["finetune"]["result"]["epochs"] == 1
    assert "| search | 0 |" in proc.stdout
