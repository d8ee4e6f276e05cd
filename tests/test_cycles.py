"""`python -m pagcp.prune` as the paper runs it: the oracle on the train split, prune -> fine-tune cycles,
an exact GFLOPs target, and a multi-cycle run killed anywhere and resumed to the identical result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import pagcp
from pagcp.data import image_files, load_data_config

DATA = "demo:train=16,val=24,img=96"
SMALL = ["--weights", "yolov5n", "--data", DATA, "--img", "96", "--batch", "8", "--subset", "12", "--no-latency"]
#: two cycles, each one round of the backbone then two epochs of fine-tuning, then one final epoch
CYCLES = [*SMALL, "--compression", "backbone", "--initial-rate", "0.02", "--initial-thres", "1.3", "--cycles", "2",
          "--cycle-epochs", "2", "--finetune-epochs", "1", "--finetune-batch", "8"]  # fmt: skip


def _prune(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run([sys.executable, "-m", "pagcp.prune", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=1200)  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _report(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _kill_when(args: list[str], cwd: Path, ready: Callable[[], bool]) -> None:
    """Start a prune run and SIGKILL it (no clean-up at all) as soon as ``ready()`` holds."""
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen([sys.executable, "-m", "pagcp.prune", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before the kill point: {proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def _position(state: Path) -> int:
    try:
        return json.loads(state.read_text()).get("position", 0)
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


@pytest.fixture(scope="module")
def cycled(tmp_path_factory):
    root = tmp_path_factory.mktemp("cycles")
    report = _report(_prune([*CYCLES, "--project", str(root / "runs"), "--json"], root))
    return root / "runs" / "exp", report


def test_the_oracle_reads_train_images_and_map_is_scored_on_val(cycled):
    run_dir, report = cycled
    assert report["oracle_split"] == "train" and report["subset"] == 12
    oracle = (run_dir / "oracle_images.txt").read_text().split()
    cfg = load_data_config(DATA)
    assert len(oracle) == 12 and set(oracle) <= set(image_files(cfg["train"]))
    assert not set(oracle) & set(image_files(cfg["val"]))  # disjoint from the images mAP is measured on


def test_cycles_prune_the_fine_tuned_model_and_report_a_row_each(cycled):
    run_dir, report = cycled
    rows = report["cycles"]
    assert [r["cycle"] for r in rows] == [1, 2] and [r["round"] for r in rows] == [0, 1]
    assert rows[0]["gflops"] > rows[1]["gflops"] == pytest.approx(report["gflops_after"])
    for k in (1, 2):
        folder = run_dir / f"cycle{k}"
        assert {"state.json", "pruned.pt", "finetuned.pt", "finetune"} <= {p.name for p in folder.iterdir()}
        steps = (folder / "finetune" / "results.csv").read_text().splitlines()
        assert len(steps) == 1 + 2  # header + the two cycle epochs
    # cycle 2 searched the fine-tuned cycle-1 model, re-traced: its widths start where cycle 1 ended
    first, second = (json.loads((run_dir / f"cycle{k}" / "state.json").read_text()) for k in (1, 2))
    tuned_1 = pagcp.load_model(run_dir / "cycle1" / "finetuned.pt")
    assert second["fingerprint"]["weights_checksum"] == pytest.approx(
        float(sum(p.detach().double().abs().sum() for p in tuned_1.parameters())), rel=1e-12
    )
    assert second["settings"]["round"] == 1 and first["settings"]["round"] == 0
    assert report["evaluations"] == first["evaluations"] + second["evaluations"]
    final = pagcp.load_model(run_dir / "finetuned.pt")
    assert pagcp.model_stats(final, 96)["gflops"] == pytest.approx(report["gflops_after"], rel=1e-12)
    assert (run_dir / "cycles.png").is_file() and "## Cycles" in (run_dir / "report.md").read_text()
    assert report["stop_rule"].startswith("2 cycles (no --target-gflops)")


def test_a_multi_cycle_run_killed_anywhere_resumes_to_the_same_result(cycled, tmp_path):
    run_dir, report = cycled
    expected = pagcp.load_model(run_dir / "finetuned.pt").state_dict()
    points = {
        "mid-search of cycle 2": lambda d: _position(d / "cycle2" / "state.json") >= 2,
        "mid-fine-tune of cycle 1": lambda d: (d / "cycle1" / "finetune" / "weights" / "last.pt").is_file(),
    }
    for i, (where, ready) in enumerate(points.items()):
        project = tmp_path / f"runs{i}"
        _kill_when([*CYCLES, "--project", str(project)], tmp_path, lambda r=ready, d=project / "exp": r(d))
        assert not (project / "exp" / "report.json").exists(), where
        again = _report(_prune(["--resume", str(project / "exp"), "--json"], tmp_path))
        assert again["units"] == report["units"], where
        for mine, theirs in zip(again["cycles"], report["cycles"]):
            assert {**mine, "search_seconds": 0} == {**theirs, "search_seconds": 0}, where
        assert again["map50_95_finetuned"] == report["map50_95_finetuned"], where
        got = pagcp.load_model(project / "exp" / "finetuned.pt").state_dict()
        assert all(torch.equal(got[k], expected[k]) for k in expected), where


def test_target_gflops_with_cycles_ends_within_two_percent(tmp_path):
    args = [
        *SMALL,
        "--compression",
        "backbone",
        "--initial-rate",
        "0.3",
        "--initial-thres",
        "20",
        "--cycles",
        "3",
        "--cycle-epochs",
        "1",
        "--finetune-epochs",
        "0",
        "--target-gflops",
        "0.8",
        "--project",
        str(tmp_path),
    ]
    report = _report(_prune([*args, "--json"], tmp_path))  # fmt: skip
    fraction = report["gflops_after"] / report["gflops_before"]
    assert 0.8 <= fraction <= 0.8 * 1.02, report["stop_rule"]
    assert "target 0.8 x reached" in report["stop_rule"] or "reached in round" in report["stop_rule"]
    assert len(report["cycles"]) <= 3


def test_compat_reference_prunes_on_val_and_refuses_train(tmp_path):
    bad = _prune([*SMALL, "--compat", "reference", "--oracle-split", "train", "--project", str(tmp_path)], tmp_path,
                 check=False)  # fmt: skip
    assert bad.returncode == 2 and "--oracle-split train" in bad.stderr and not (tmp_path / "exp").exists()
    from pagcp.cli.prune import build_parser, settings_from_args

    reference = settings_from_args(build_parser().parse_args(["--compat", "reference"]))
    assert (reference.oracle_split, reference.oracle_subset, reference.oracle_batch) == ("val", None, 32)
    default = settings_from_args(build_parser().parse_args([]))
    assert (default.oracle_split, default.oracle_subset, default.oracle_batch) == ("train", 64, 16)


def test_cycles_share_a_target_by_waypoints():
    """Cycle c of N is sent to g·(F/g)^(1/(N−c)) of the original (g: its start), never below F, so the last one
    ends at F and none carries what the others left; fractions reach the engine relative to the cycle's model."""
    from pagcp.engine.settings import PruneSettings
    from pagcp.pipeline.cycles import cycle_settings, target_met

    shared = PruneSettings(target_gflops=0.35)
    starts = [1.0, 0.72, 0.49]  # where each cycle starts, as fractions of the original
    got = [cycle_settings(shared, c, 3, g) for c, g in enumerate(starts)]
    assert [s.round for s in got] == [0, 1, 2]
    assert [round(s.target_gflops, 6) for s in got] == [0.35, round(0.35 / 0.72, 6), round(0.35 / 0.49, 6)]
    waypoints = [g * s.reach_gflops for g, s in zip(starts, got)]  # back in the original's terms
    expected = [0.35 ** (1 / 3), 0.72 * (0.35 / 0.72) ** (1 / 2), 0.35]
    assert waypoints == pytest.approx(expected, rel=1e-9)
    assert target_met(shared, 0.35 * 1.02) and not target_met(shared, 0.35 * 1.021)
    one = cycle_settings(PruneSettings(), 1, 3, 0.75)  # no target: one round per cycle
    assert one.max_rounds == 1 and one.reach_gflops is None and one.round == 1
