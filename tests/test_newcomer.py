"""What a newcomer trips on: bad files and data get one line naming the file or flag and what is wrong, before
any run folder exists; bounds on the decision rule; what the demo generator says; ``pagcp.ops`` after a plain
``import pagcp``."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys

import pytest

from pagcp.data import load_data_config
from pagcp.data.demo import generate_demo
from pagcp.data.demo import main as demo_main
from pagcp.engine.settings import PruneSettings
from pagcp.errors import ConfigError
from pagcp.pipeline import FinetuneSettings, RunSettings

COMMANDS = ("prune", "val", "train", "export")


def _checkpoints(tmp_path):
    """A text file, a folder and an empty file, each named like a checkpoint, with what the error must say."""
    text, folder, empty = tmp_path / "text.pt", tmp_path / "folder.pt", tmp_path / "empty.pt"
    text.write_text("version https://git-lfs.github.com/spec/v1\n")  # a Git LFS pointer, a classic
    folder.mkdir()
    empty.write_bytes(b"")
    return [
        (text, "a text file (it begins 'version https://git-l"),
        (folder, "is a directory, not a checkpoint file"),
        (empty, "an empty file (0 bytes), not a checkpoint"),
    ]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_checkpoint_file_is_one_line_naming_it(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(f"pagcp.cli.{command}").main
    for path, said in _checkpoints(tmp_path):
        assert (
            main(["--weights", str(path), "--data", "demo:train=16,val=8,img=64"][: 2 if command == "export" else 4])
            == 2
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{path}: {said}" in err[0], err
    assert not (tmp_path / "runs").exists()


def test_an_empty_train_split_is_named_before_any_run_folder(tmp_path, capsys):
    from pagcp.cli.prune import main

    root = tmp_path / "data"
    (root / "images" / "train").mkdir(parents=True)
    demo = load_data_config("demo:train=16,val=8,img=64")
    (root / "images" / "val").symlink_to(demo["val"] if isinstance(demo["val"], str) else demo["val"][0])
    yaml_file = tmp_path / "data.yaml"
    yaml_file.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: {demo['names']}\n")
    for subset in ([], ["--subset", "all"]):
        flags = ["--data", str(yaml_file), "--img", "64", *subset, "--project", str(tmp_path / "runs")]
        assert main(flags) == 2
        err = capsys.readouterr().err
        assert f"the train split of --data {yaml_file} ({root / 'images' / 'train'}) holds no images" in err
        assert "--subset all" not in err  # it would not help
    assert not (tmp_path / "runs").exists()


def test_a_data_yaml_without_names_says_what_it_calls_the_classes(tmp_path, caplog):
    yaml_file = tmp_path / "nameless.yaml"
    yaml_file.write_text(f"path: {tmp_path}\ntrain: images\nval: images\nnc: 3\n")
    with caplog.at_level(logging.WARNING, logger="pagcp"):
        cfg = load_data_config(str(yaml_file))
        load_data_config(str(yaml_file))  # said once per file
    assert cfg["names"] == ["class0", "class1", "class2"]
    assert caplog.messages == [f"{yaml_file}: no 'names'; its nc=3 classes are called class0 ... class2 in tables and "
                               "reports"]  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ({"initial_rate": 2.0}, "--initial-rate: 2.0 must be in (0, 1)"),
        ({"initial_rate": 1.0}, "--initial-rate: 1.0 must be in (0, 1)"),
        ({"rate_slope": 0.2, "target_gflops": 0.5}, "--rate-slope 0.2: round 5's rate 1.06 leaves (0, 1)"),
        ({"thres_slope": -2.0, "round": 3}, "--thres-slope -2.0: round 3's threshold 0 is <= 1"),
    ],
)
def test_the_decision_rule_flags_are_bounded(settings, said):
    with pytest.raises(ConfigError) as e:
        PruneSettings(**settings)
    assert said in str(e.value)


def test_slopes_are_bounded_over_every_cycle_before_anything_runs():
    PruneSettings(rate_slope=0.3)  # one round: rate 0.06 only
    with pytest.raises(ConfigError, match=r"--rate-slope 0.3: round 4's rate 1.26 leaves \(0, 1\)"):
        RunSettings(search=PruneSettings(rate_slope=0.3), finetune=FinetuneSettings(cycles=5))


def test_the_demo_generator_says_what_is_there(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo_main(["--out", str(out), "--train", "4", "--val", "2", "--img", "64"]) == 0
    assert "4 train + 2 val images at 64 px, written in" in capsys.readouterr().out
    assert demo_main(["--out", str(out), "--train", "4", "--val", "2", "--img", "64"]) == 0
    assert "4 train + 2 val images at 64 px, already there" in capsys.readouterr().out
    assert demo_main(["--out", str(out), "--train", "100", "--val", "2", "--img", "64"]) == 2
    assert (
        "already holds a detect demo dataset of 4 train + 2 val images at 64 px (seed 0), not the detect one of "
        "100 train" in capsys.readouterr().err
    )
    assert demo_main(["--out", str(out), "--train", "4", "--val", "2", "--img", "64", "--kind", "pose"]) == 2
    assert "holds a detect demo dataset of 4 train + 2 val images at 64 px (seed 0), not the pose one of 4 train" in (
        capsys.readouterr().err
    )
    with pytest.raises(ConfigError, match="already holds other files"):
        generate_demo(str(tmp_path), train=4, val=2, img=64)


def test_pagcp_ops_after_a_plain_import():
    code = "import pagcp; print(pagcp.ops.backends()['torch'][0], pagcp.families.family_named('yolov5').name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "yolov5"]


def test_channels_plot_tells_a_first_ratio_trip_from_a_pruned_unit(tmp_path):
    from pagcp.pipeline.report import plot_channels

    def unit(name, after, ratio, tripped, selected):
        return {"name": name, "channels_before": 64, "channels_after": after, "ratio": ratio, "tripped_task": tripped,
                "selected": selected}  # fmt: skip

    pruned = [unit("model.1", 32, 0.5, "box", True)]
    assert plot_channels(tmp_path / "a.png", pruned) == ["kept", "removed"]
    tripped = [*pruned, unit("model.2", 64, 0.0, "cls", False), unit("model.3", 64, 0.3, None, False)]
    assert plot_channels(tmp_path / "b.png", tripped) == [
        "kept", "removed", "kept whole: its first ratio tripped a loss", "searched, left unpruned by topk"
    ]  # fmt: skip
    assert (tmp_path / "b.png").stat().st_size > 1000


@pytest.mark.parametrize(("code", "warned"), [("import torch, pagcp", True), ("import pagcp, torch", False)])
def test_importing_torch_first_is_said(code, warned):
    """OpenMP reads its wait policy when torch loads: pagcp can set it only when imported first, and says so
    otherwise (unless the user set the policy)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    err = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stderr
    assert ("torch was imported before pagcp" in err) is warned
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    err = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stderr
    assert "torch was imported before pagcp" not in err


def test_a_resumed_search_bar_starts_at_its_position():
    """Units decided before a resume are where the bar starts, not units done at once (its rate and ETA)."""
    import io

    from tqdm import tqdm

    from pagcp.engine.progress import SearchProgress

    with SearchProgress() as bar:
        bar.bar = tqdm(file=io.StringIO(), disable=False)  # as on a terminal
        bar({"event": "start", "unit": "model.9", "position": 30, "total": 50, "candidates": 19})
        assert (bar.bar.initial, bar.bar.n, bar.bar.total) == (30, 30, 50)
        bar({"event": "unit", "unit": "model.9", "position": 31, "total": 50, "ratio": 0.2, "gflops": 1.0,
             "tripped": "box"})  # fmt: skip
        assert (bar.bar.initial, bar.bar.n) == (30, 31)
