"""An Ultralytics model under torchrun: 2 processes (gloo, CPU) search as 1 process does (the same keep-masks,
decisions and evaluations in state.json), then in the same launch the main process fine-tunes (Ultralytics'
trainer, in a child process outside torchrun) while the other waits, and every process ends with the
fine-tuned model and the report of 1 process; a segmentation model searches and validates as in 1 process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from launch import free_port, yolov8n_demo_args

if importlib.util.find_spec("ultralytics") is None:
    pytest.skip("needs the ultralytics package (pip install ultralytics)", allow_module_level=True)

import pagcp  # noqa: E402

ARGS = yolov8n_demo_args(1)

#: the prune command, each process also writing its report and its fine-tuned model's weights to argv[1]
_RANKS = """
import json, os, sys
import torch
import pagcp.pipeline
from pagcp.families.ultralytics_detect import UltralyticsDetectFamily

out, rank = sys.argv.pop(1), os.environ["RANK"]
finetune, prune_run = UltralyticsDetectFamily.finetune, pagcp.pipeline.prune_run


def finetune_and_keep(self, model, job):
    tuned = finetune(self, model, job)
    torch.save(tuned.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    return tuned


def prune_run_and_keep(*args, **kwargs):
    report = prune_run(*args, **kwargs)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({k: v for k, v in report.items() if k != "latency"}, f)  # the main process measures latency
    return report


UltralyticsDetectFamily.finetune, pagcp.pipeline.prune_run = finetune_and_keep, prune_run_and_keep
from pagcp.cli.prune import main

sys.exit(main())
"""


def _run(command: list[str], project: Path, args: list[str] = ARGS) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1", YOLO_OFFLINE="1")
    project.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([*command, *args, "--project", str(project)], env=env, capture_output=True, text=True,
                          timeout=900, cwd=project.parent)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _state(run: Path) -> dict:
    return {k: v for k, v in json.loads((run / "state.json").read_text()).items() if k != "seconds"}


def _untimed(report: dict) -> dict:
    """A report without the seconds each process measured for itself."""
    cycles = [{**c, "search_seconds": 0} for c in report["cycles"]]
    return {**report, "search_seconds": 0, "cycles": cycles}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_processes_search_and_fine_tune_as_one(tmp_path):
    one = _run([sys.executable, "-m", "pagcp.prune"], tmp_path / "one" / "runs")
    script, ranks = tmp_path / "ranks.py", tmp_path / "ranks"
    script.write_text(_RANKS)
    ranks.mkdir()
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
              str(free_port()), str(script), str(ranks)]  # fmt: skip
    two = _run(launch, tmp_path / "two" / "runs")
    assert one["processes"] == 1 and two["processes"] == 2
    run_one, run_two = Path(one["run_dir"]), Path(two["run_dir"])  # absolute: --project is
    # the search: keep-masks, decisions, losses and evaluations of 1 process, state file and report alike
    assert _state(run_two) == _state(run_one)
    assert two["units"] == one["units"] and sum(u["selected"] for u in one["units"]) >= 3
    assert two["evaluations"] == one["evaluations"] > 0 and two["gflops_after"] == one["gflops_after"]
    # the fine-tune: one Ultralytics run of 1 epoch, in the run folder, the weights of 1 process on both processes
    assert len((run_two / "finetune" / "results.csv").read_text().splitlines()) == 1 + 1
    tuned = pagcp.load_model(run_one / "finetuned.pt").state_dict()
    assert _equal(pagcp.load_model(run_two / "finetuned.pt").state_dict(), tuned)
    for rank in (0, 1):
        assert _equal(torch.load(ranks / f"rank{rank}.pt"), tuned)
    assert two["map50_95_finetuned"] == one["map50_95_finetuned"] and two["map50_finetuned"] == one["map50_finetuned"]
    reports = [_untimed(json.loads((ranks / f"rank{rank}.json").read_text())) for rank in (0, 1)]
    assert reports[0] == reports[1] == _untimed({k: v for k, v in two.items() if k != "latency"})
    assert sorted(p.name for p in run_two.parent.iterdir()) == ["exp"]  # one folder: the main process made it


def test_a_segmentation_model_searches_and_validates_under_torchrun_as_in_one_process(tmp_path):
    """yolov8n-seg-demo: the oracle's masks come from Ultralytics' loader in every process, and its validator runs
    in the main process alone (it would otherwise wait for the other process at its gathers): the same search,
    GFLOPs and box and mask mAP as 1 process."""
    args = ["--weights", "yolov8n-seg-demo", "--data", "demo-seg:train=16,val=8,img=96", "--img", "64", "--batch",
            "4", "--subset", "8", "--compression", "backbone", "--finetune-epochs", "0", "--no-latency", "--device",
            "cpu", "--json"]  # fmt: skip
    one = _run([sys.executable, "-m", "pagcp.prune"], tmp_path / "one" / "runs", args)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
              str(free_port()), "-m", "pagcp.prune"]  # fmt: skip
    two = _run(launch, tmp_path / "two" / "runs", args)
    assert one["processes"] == 1 and two["processes"] == 2
    assert _state(Path(two["run_dir"])) == _state(Path(one["run_dir"]))
    assert two["units"] == one["units"] and two["evaluations"] == one["evaluations"] > 0
    for key in ("gflops_after", "map50_95_after", "mask_map50_95_after", "mask_map50_after"):
        assert two[key] == one[key], key
