"""``--resume`` continues a run with the settings it was started with: a flag that would change the results is
refused (naming it, with both values), an execution flag (device, chunk, replay, workers, latency) is used and
said, and nothing is replaced silently. Execution knobs are not part of a search's identity."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from pagcp.cli.prune import build_parser, main, resumed_settings
from pagcp.engine.settings import PruneSettings
from pagcp.errors import ConfigError
from pagcp.pipeline import ExecutionSettings, FinetuneSettings, OracleSettings, RunSettings
from pagcp.pipeline.resume import SETTINGS_FILE, new_run_dir, reconcile, saved_settings


@pytest.fixture
def run_dir(tmp_path):
    """A run folder made with non-default settings (nothing has run in it yet)."""
    settings = RunSettings(
        weights="yolov5n", search=PruneSettings(initial_rate=0.03, target_gflops=0.5),
        oracle=OracleSettings(data="demo:train=16,val=8,img=64", img=64, subset=16),
        finetune=FinetuneSettings(epochs=0, cycles=3), execution=ExecutionSettings(device="cpu", chunk=1, json=True),
        project=str(tmp_path / "runs"),
    )  # fmt: skip
    return new_run_dir(settings)


def test_saved_settings_round_trip(run_dir):
    saved = saved_settings(run_dir)
    assert (run_dir / SETTINGS_FILE).is_file() and run_dir.name == "exp"
    assert saved.search.initial_rate == 0.03 and saved.finetune.cycles == 3 and saved.oracle.subset == 16
    assert reconcile(run_dir, None) == saved


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"search": PruneSettings(initial_rate=0.5, target_gflops=0.5)}, "--initial-rate 0.5 (the run has 0.03)"),
        ({"finetune": FinetuneSettings(epochs=0, cycles=2)}, "--cycles 2 (the run has 3)"),
        ({"weights": "yolov5s"}, "--weights 'yolov5s' (the run has 'yolov5n')"),
    ],
)
def test_a_results_deciding_change_is_refused_naming_it(run_dir, change, named):
    given = dataclasses.replace(saved_settings(run_dir), **change)
    with pytest.raises(ConfigError, match="--resume") as e:
        reconcile(run_dir, given)
    assert named in str(e.value) and "start a new run" in str(e.value)


def test_an_execution_change_is_used_and_said(run_dir, caplog):
    execution = ExecutionSettings(device="cpu", chunk=4, suffix_replay="trace", workers=2, latency=False, json=True)
    given = dataclasses.replace(saved_settings(run_dir), execution=execution)
    with caplog.at_level(logging.INFO, logger="pagcp.prune"):
        resumed = reconcile(run_dir, given)
    assert resumed.execution == execution and resumed.identity() == saved_settings(run_dir).identity()
    said = "\n".join(caplog.messages)
    for flag, new, old in (("--chunk", 4, 1), ("--suffix-replay", "trace", "auto"), ("--workers", 2, 0),
                           ("--latency", False, True)):  # fmt: skip
        assert f"--resume: {flag} {new} instead of the run's {old}" in said
    assert "--device" not in said  # unchanged: not mentioned


def test_the_command_line_resumes_with_the_saved_settings_and_the_given_flags_on_top(run_dir):
    """Flags the command line does not give keep the run's values (not the parser's defaults)."""
    argv = ["--resume", str(run_dir), "--chunk", "2"]
    resumed = resumed_settings(build_parser().parse_args(argv), argv)
    saved = saved_settings(run_dir)
    assert resumed.identity() == saved.identity() and resumed.execution.chunk == 2
    assert resumed.execution.json  # the run was started with --json: a resumed one prints it too
    argv = ["--resume", str(run_dir), "--initial-rate", "0.03", "--subset", "16"]  # the run's own values
    assert resumed_settings(build_parser().parse_args(argv), argv).identity() == saved.identity()


def test_the_command_refuses_a_changed_flag_before_running(run_dir, capsys):
    before = sorted(p.name for p in run_dir.iterdir())
    code = main(["--resume", str(run_dir), "--initial-rate", "0.5", "--cycles", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--initial-rate 0.5 (the run has 0.03)" in err and "--cycles 2 (the run has 3)" in err
    assert sorted(p.name for p in run_dir.iterdir()) == before  # nothing written
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["exp"]  # no new run folder


def test_execution_knobs_are_not_in_a_searchs_identity():
    assert not {"chunk", "device", "suffix_replay", "replay"} & set(PruneSettings().to_dict())
    older = {**PruneSettings().to_dict(), "chunk": 4}  # a state file written before chunk left the settings
    assert PruneSettings.from_dict(older) == PruneSettings()
    a = RunSettings(execution=ExecutionSettings(chunk=4, device="cpu", suffix_replay="trace"))
    assert a.identity() == RunSettings().identity()
