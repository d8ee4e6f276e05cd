"""The quality benchmark's rules, on hand-made rows and fakes (no training, no search): the ±2 % GFLOPs match,
seed statistics and verdicts, the iterative baseline's waypoints and epochs, resumable rows, the val-leak
check of PAGCP's oracle and the smaller network's width bisection."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import pagcp
from pagcp.models.yolo import Model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_quality as bq  # noqa: E402
import quality_checks as qc  # noqa: E402
import quality_methods as qm  # noqa: E402
import quality_smaller as qsm  # noqa: E402
import quality_stats as qs  # noqa: E402


def _row(method: str, schedule: str, seed: int, map5095: float, target: float = 0.5, epochs: int = 3, vs=1.0):
    return {"method": method, "schedule": schedule, "target": target, "seed": seed, "epochs": epochs,
            "gflops": 0.5 * vs, "params": 1000, "gflops_vs_pagcp": vs, "map50_95_finetuned": map5095,
            "map50_finetuned": map5095 + 0.2, "latency_ms_median": 10.0 + seed, "latency_ms_min": 9.0}  # fmt: skip


# -- the GFLOPs match -------------------------------------------------------------------------------------


def test_a_row_2_5_percent_off_fails_and_1_5_percent_passes():
    rows = [_row("uniform", "oneshot", 0, 0.4, vs=1.025), _row("random", "oneshot", 0, 0.4, vs=0.985),
            _row("tp-global", "iterative", 1, 0.4, vs=1.015), _row("pagcp", "cycles", 0, 0.5)]  # fmt: skip
    failed = qs.unmatched(rows)
    assert len(failed) == 1
    assert failed[0].startswith("uniform (oneshot) at 0.5x, seed 0, 3 epochs: 1.0250")
    assert qs.unmatched([_row("uniform", "oneshot", 0, 0.4, vs=0.975)]) != []
    assert qs.unmatched([_row("uniform", "oneshot", 0, 0.4, vs=0.98)]) == []  # the edge itself passes


def test_the_benchmark_exits_non_zero_on_an_unmatched_row(monkeypatch, tmp_path):
    def grid(args, cfg, model, result, add):
        add(_row("pagcp", "cycles", 0, 0.5))
        add(_row("uniform", "oneshot", 0, 0.45, vs=0.97))

    monkeypatch.setattr(bq, "run_grid", grid)
    monkeypatch.setattr(pagcp, "load_model", lambda weights: None)
    monkeypatch.setattr(bq, "family_of", lambda model: SimpleNamespace(data_config=lambda data: {}))
    with pytest.raises(SystemExit, match=r"uniform \(oneshot\) at 0.5x, seed 0, 3 epochs: 0.9700"):
        bq.main(["--out", str(tmp_path / "q.json"), "--plot", ""])
    saved = json.loads((tmp_path / "q.json").read_text())
    assert [r["method"] for r in saved["rows"]] == ["pagcp", "uniform"]  # the rows are kept all the same


# -- seeds, spreads, verdicts -----------------------------------------------------------------------------


def test_seed_statistics_mean_and_range():
    s = qs.seed_stats([0.50, 0.53, 0.56])
    assert (s.mean, s.lo, s.hi, s.n) == (pytest.approx(0.53), 0.50, 0.56, 3)
    assert s.spread == pytest.approx(0.06)
    assert s.text() == "0.5300 (0.5000–0.5600)"
    assert qs.seed_stats([0.4]).text() == "0.4000"


def test_verdicts_pick_the_better_schedule_and_call_ties():
    rows = [_row("pagcp", "cycles", 0, 0.50), _row("pagcp", "cycles", 1, 0.52),
            _row("uniform", "oneshot", 0, 0.45), _row("uniform", "oneshot", 1, 0.46),
            _row("uniform", "iterative", 0, 0.47), _row("uniform", "iterative", 1, 0.49),
            _row("tp-global", "oneshot", 0, 0.50), _row("tp-global", "oneshot", 1, 0.53),
            _row("random", "oneshot", 0, 0.60), _row("random", "oneshot", 1, 0.61),
            _row("random", "iterative", 0, 0.70, vs=1.05), _row("random", "iterative", 1, 0.70, vs=1.05)]  # fmt: skip
    got = {v["baseline"]: v for v in qs.verdicts(rows)}
    assert set(got) == {"uniform", "tp-global", "random"}
    # uniform: iterative (mean 0.48) beats oneshot (0.455); PAGCP 0.51, gap 0.03 > the larger range 0.02
    assert got["uniform"]["schedule"] == "iterative" and got["uniform"]["verdict"] == "ahead"
    assert got["uniform"]["theirs"].mean == pytest.approx(0.48) and got["uniform"]["pagcp"].mean == pytest.approx(0.51)
    # tp-global: 0.515 against 0.51, a gap of 0.005 within the range 0.03
    assert got["tp-global"]["verdict"] == "tie"
    # random: its iterative rows do not match PAGCP's GFLOPs, so its oneshot (0.605) is the one compared
    assert got["random"]["schedule"] == "oneshot" and got["random"]["verdict"] == "behind"
    table = qs.verdict_table(rows)
    assert "| 3 | 0.5× | uniform | iterative | 0.4800 (0.4700–0.4900) | 0.5100 (0.5000–0.5200) | +0.0300 |" in table


def test_a_gap_equal_to_the_range_is_a_tie_and_one_seed_gives_no_verdict():
    ours, theirs = qs.seed_stats([0.50, 0.52]), qs.seed_stats([0.47, 0.49])
    assert qs.verdict(ours, theirs) == "ahead"  # gap 0.03 > 0.02
    assert qs.verdict(qs.seed_stats([0.50, 0.54]), theirs) == "tie"  # gap 0.04, range 0.04
    assert qs.verdict(qs.seed_stats([0.9]), qs.seed_stats([0.1])) == "no spread"
    rows = [_row("pagcp", "cycles", 0, 0.5), _row("pagcp", "cycles", 1, 0.5), _row("uniform", "oneshot", 1, 0.4)]
    (v,) = qs.verdicts(rows)
    assert (v["verdict"], v["pagcp"].n, v["theirs"].n) == ("no spread", 1, 1)  # only seed 1 is common


def test_older_rows_read_as_seed_0_and_one_shot():
    legacy = {"method": "uniform", "target": 0.7, "epochs": 3, "gflops": 0.7, "params": 5, "gflops_vs_pagcp": 1.0,
              "map50_95_finetuned": 0.55, "map50_finetuned": 0.78, "latency_ms": 43.66}  # fmt: skip
    assert qs.row_key(legacy) == ("uniform", "oneshot", 0.7, 0, 3)
    assert qs.row_key({**legacy, "method": "pagcp"}) == ("pagcp", "cycles", 0.7, 0, 3)
    assert qs.row_key({**legacy, "method": "global"})[0] == "tp-global"  # tp-global's fallback
    line = qs.markdown_table([legacy]).splitlines()[-1]
    assert line == "| 3 | 0.7× | uniform | oneshot | 0 | 0.700 (1.000) | 5 | 0.5500 | 0.7800 | PyTorch 43.7 |  |"


# -- the iterative baseline -------------------------------------------------------------------------------


@pytest.mark.parametrize("cycles", [1, 2, 3, 4])
def test_waypoints_multiply_to_the_target_and_end_on_pagcps_gflops(cycles):
    start, final = 1.0374656, 0.3631704
    goals = qm.waypoint_schedule(start, final, cycles)
    fractions = [g / p for g, p in zip(goals, [start, *goals])]
    assert math.prod(fractions) == pytest.approx(final / start, rel=1e-12)
    assert fractions == pytest.approx([(final / start) ** (1 / cycles)] * cycles, rel=1e-12)
    assert goals[-1] == final  # exactly, not approximately


class _Net:
    def __init__(self, gflops: float):
        self.gflops = gflops


def test_the_iterative_baseline_follows_pagcps_cycles_and_budget(monkeypatch):
    steps, tunes = [], []

    def prune_step(method, model, goal, img, seed):
        steps.append((model.gflops, goal, seed))
        return _Net(goal * 1.004), {"ratio": 0.3}, method  # lands 0.4 % above its goal, as matching does

    def finetune(model, args, epochs, name, seed=0, hyp=None):
        tunes.append((epochs, name, seed))
        return model

    monkeypatch.setattr(qm, "prune_step", prune_step)
    monkeypatch.setattr(qm, "finetune", finetune)
    monkeypatch.setattr(qm, "validate", lambda model, cfg, img: {"map50": 0.7, "map50_95": 0.5})
    monkeypatch.setattr(qm, "row_latency", lambda model, args, name: {})
    monkeypatch.setattr(pagcp, "model_stats", lambda model, img: {"params": 1, "gflops": model.gflops})
    args = bq.parse_args(["--tag=-t"])
    ours = {"target": 0.35, "seed": 1, "epochs": 5, "gflops": 0.36, "cycles": 3, "cycle_epochs": 3}
    row = qm.iterative_row(args, {}, _Net(1.04), "random", ours)
    g1 = 1.04 * (0.36 / 1.04) ** (1 / 3)
    g2 = g1 * 1.004 * (0.36 / (g1 * 1.004)) ** (1 / 2)
    assert [s[1] for s in steps] == [pytest.approx(g1), pytest.approx(g2), 0.36]
    assert [s[2] for s in steps] == [1000, 1001, 1002]  # the random rule's seed per cycle
    assert [t[0] for t in tunes] == [1, 1, 1, 2] and sum(t[0] for t in tunes) == ours["epochs"]
    assert {t[2] for t in tunes} == {1}
    assert tunes[-1][1] == "target0.35-t-seed1-e5-random-iterative/final"
    assert (row["schedule"], row["cycles"], row["gflops_vs_pagcp"]) == ("iterative", 3, pytest.approx(1.004))
    assert qm.iterative_row(args, {}, _Net(1.04), "random", {**ours, "cycle_epochs": 0}) is None


def test_pagcp_spends_its_budget_in_cycles_and_final_epochs(monkeypatch, tmp_path):
    runs, tunes = [], []
    (tmp_path / "oracle_images.txt").write_text("/nowhere/train/1.jpg\n")

    def pagcp_run(args, target, seed, cycles):
        runs.append((target, seed, cycles))
        return {
            "run_dir": str(tmp_path),
            "cycles": [{"gflops": 0.7}, {"gflops": 0.5}][:cycles],
            "pruned": "p.pt",
            "map50_95_after": 0.3,
            "stop_rule": "met",
            "search_seconds": 1.0,
            "evaluations": 9,
        }

    monkeypatch.setattr(bq, "pagcp_run", pagcp_run)
    monkeypatch.setattr(bq, "finetune", lambda model, args, epochs, name, seed: tunes.append((epochs, name)) or model)
    monkeypatch.setattr(bq, "validate", lambda model, cfg, img: {"map50": 0.7, "map50_95": 0.5})
    monkeypatch.setattr(bq, "row_latency", lambda model, args, name: {"latency_ms_median": 1.0})
    monkeypatch.setattr(pagcp, "load_model", lambda path: _Net(0.5))
    monkeypatch.setattr(pagcp, "model_stats", lambda model, img: {"params": 1, "gflops": model.gflops})
    args = bq.parse_args(["--cycles", "2"])
    val = tmp_path / "val"
    val.mkdir()
    cfg = {"val": str(val)}
    row, flops = bq.pagcp_row(args, cfg, 0.5, seed=1, epochs=3)
    assert runs[-1] == (0.5, 1, 2) and tunes[-1] == (1, "target0.5-seed1-e3-pagcp")
    assert (row["cycle_epochs"], row["final_epochs"], row["epochs"], flops) == (2, 1, 3, 0.5e9)
    row, _ = bq.pagcp_row(args, cfg, 0.5, seed=0, epochs=1)  # a 1-epoch budget: one cycle, which fine-tunes nothing
    assert runs[-1] == (0.5, 0, 1) and tunes[-1] == (1, "target0.5-seed0-e1-pagcp")
    assert (row["cycle_epochs"], row["final_epochs"]) == (0, 1)


# -- resuming ---------------------------------------------------------------------------------------------


def _fake_grid(monkeypatch) -> list[tuple]:
    calls: list[tuple] = []

    def pagcp_row(args, cfg, target, seed, epochs):
        calls.append(("pagcp", target, seed, epochs))
        return _row("pagcp", "cycles", seed, 0.5, target, epochs), 0.5e9

    def baseline_row(args, cfg, model, method, schedule, ours):
        calls.append((method, schedule, ours["target"], ours["seed"], ours["epochs"]))
        return _row(method, schedule, ours["seed"], 0.4, ours["target"], ours["epochs"])

    def smaller_row(args, cfg, model, ours):
        calls.append(("smaller-stock", ours["target"], ours["seed"], ours["epochs"]))
        return {**_row("smaller-stock", "scratch", ours["seed"], 0.3, ours["target"], ours["epochs"]),
                "scratch_epochs": qsm.scratch_epochs(args, ours["epochs"])}  # fmt: skip

    monkeypatch.setattr(bq, "pagcp_row", pagcp_row)
    monkeypatch.setattr(bq, "unpruned_row", lambda args, cfg, model: calls.append(("unpruned",)) or
                        {"method": "unpruned", "target": None, "seed": None, "epochs": None})  # fmt: skip
    monkeypatch.setattr(qm, "baseline_row", baseline_row)
    monkeypatch.setattr(qsm, "smaller_row", smaller_row)
    return calls


def test_a_rerun_skips_done_rows_and_a_new_seed_or_budget_adds_only_its_own(monkeypatch):
    calls = _fake_grid(monkeypatch)
    result = {"rows": []}
    grid = ["--targets", "0.5,0.35", "--methods", "uniform,random", "--seeds", "0,1", "--smaller"]
    bq.run_grid(bq.parse_args(grid), {}, None, result, result["rows"].append)
    assert len(calls) == 1 + 2 * 2 * (1 + 2 * 2 + 1) == len(result["rows"])
    calls.clear()
    bq.run_grid(bq.parse_args(grid), {}, None, result, result["rows"].append)
    assert calls == []
    bq.run_grid(bq.parse_args([*grid, "--seeds", "0,1,2"]), {}, None, result, result["rows"].append)
    assert len(calls) == 2 * (1 + 2 * 2 + 1) and {c[-2] for c in calls if c[0] != "smaller-stock"} == {2}
    calls.clear()
    bq.run_grid(bq.parse_args([*grid, "--epochs", "3,5"]), {}, None, result, result["rows"].append)
    assert len(calls) == 2 * 2 * (1 + 2 * 2 + 1) and {c[-1] for c in calls} == {5}
    calls.clear()
    bq.run_grid(bq.parse_args([*grid, "--scratch-epochs", "40"]), {}, None, result, result["rows"].append)
    assert calls == [("smaller-stock", t, s, 3) for s in (0, 1) for t in (0.5, 0.35)]  # another scratch count


def test_a_result_file_of_other_settings_is_refused_not_overwritten(tmp_path):
    out = tmp_path / "q.json"
    args = bq.parse_args(["--seeds", "0"])
    bq._save(out, {"settings": bq._identity(args), "rows": [_row("pagcp", "cycles", 0, 0.5)], "runs": []})
    assert len(bq._load(out, bq.parse_args(["--seeds", "0,1", "--epochs", "1,3"]))["rows"]) == 1  # axes, not settings
    with pytest.raises(SystemExit, match="subset differ"):
        bq._load(out, bq.parse_args(["--subset", "32"]))
    legacy = {"settings": {"weights": "yolov5n-demo", "epochs": 3, "seed": 0}, "rows": [], "runs": []}
    bq._save(out, legacy)
    with pytest.raises(SystemExit, match="protocol"):
        bq._load(out, args)
    assert json.loads(out.read_text()) == legacy


def test_flags_come_back_as_lists_and_bench_levers_reads_the_first():
    args = bq.parse_args(["--epochs", "1,3,10", "--seeds", "0,1", "--targets", "0.5"])
    assert (args.budgets, args.epochs, args.seeds, args.seed, args.targets) == ([1, 3, 10], 1, [0, 1], 0, [0.5])
    assert bq.parse_args(["--seed", "4"]).seeds == [4]
    assert [bq.pagcp_cycles(bq.parse_args(["--cycles", "3"]), e) for e in (1, 2, 3, 10)] == [1, 2, 3, 3]
    assert qsm.scratch_epochs(bq.parse_args([]), 3) == 24
    with pytest.raises(SystemExit):
        bq.parse_args(["--schedules", "oneshot,twice"])


# -- nothing steers on val --------------------------------------------------------------------------------


@pytest.fixture
def layout(tmp_path):
    for split, names in (("train", ("a", "b", "c")), ("val", ("v1", "v2"))):
        folder = tmp_path / "images" / split
        folder.mkdir(parents=True)
        for n in names:
            (folder / f"{n}.jpg").write_bytes(f"{split}/{n}".encode())
    (tmp_path / "run").mkdir()
    return tmp_path, {"train": str(tmp_path / "images" / "train"), "val": str(tmp_path / "images" / "val")}


def test_the_val_leak_check_passes_train_images(layout):
    root, cfg = layout
    (root / "run" / "oracle_images.txt").write_text("".join(f"{root}/images/train/{n}.jpg\n" for n in "abc"))
    assert qc.check_oracle_not_val(root / "run", cfg) == 3


def test_the_val_leak_check_refuses_a_val_image(layout):
    root, cfg = layout
    (root / "run" / "oracle_images.txt").write_text(f"{root}/images/train/a.jpg\n{root}/images/val/v2.jpg\n")
    with pytest.raises(SystemExit, match=r"oracle read .*images/val/v2\.jpg, which is the val image"):
        qc.check_oracle_not_val(root / "run", cfg)


def test_the_val_leak_check_refuses_a_val_image_copied_under_another_name(layout):
    root, cfg = layout
    (root / "images" / "train" / "copy.jpg").write_bytes(b"val/v1")
    (root / "run" / "oracle_images.txt").write_text(f"{root}/images/train/copy.jpg\n")
    with pytest.raises(SystemExit, match=r"train/copy\.jpg, which is the val image .*v1\.jpg"):
        qc.check_oracle_not_val(root / "run", cfg)


def test_the_val_leak_check_refuses_a_run_without_its_list(layout):
    root, cfg = layout
    with pytest.raises(SystemExit, match="oracle_images.txt: missing"):
        qc.check_oracle_not_val(root / "run", cfg)


# -- the smaller stock network ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def yolov5n():
    return qsm.stock_config(pagcp.load_model("yolov5n", nc=6))


@pytest.mark.parametrize("fraction", [0.7, 0.5, 0.35])
def test_the_width_bisection_lands_within_2_percent(yolov5n, fraction):
    img = 128
    goal = fraction * qsm.config_gflops(yolov5n, img)
    net = qsm.smaller_config(yolov5n, goal, img)
    built = Model(net)
    assert abs(pagcp.model_stats(built, img)["gflops"] / goal - 1) <= qs.MATCH_TOLERANCE
    assert 0 < net["width_multiple"] < yolov5n["width_multiple"]
    assert net["channel_multiple"] in qsm.DIVISORS and net["depth_multiple"] == yolov5n["depth_multiple"]


def test_the_stock_width_keeps_the_stock_channel_multiple(yolov5n):
    net = qsm.smaller_config(yolov5n, qsm.config_gflops(yolov5n, 128), 128)
    assert (net["width_multiple"], net["channel_multiple"]) == (0.25, 8)


# -- fine-tune folders, latency ---------------------------------------------------------------------------


def test_a_fine_tune_folder_of_another_job_is_refused(tmp_path):
    job = {"weights": "yolov5n-demo", "epochs": 3, "seed": 0, "source_checksum": 1234.5}
    qm._claim(tmp_path / "ft", job)
    qm._claim(tmp_path / "ft", dict(job))  # the same job continues
    with pytest.raises(SystemExit, match=r"holds another fine-tune \(seed, source_checksum differ\)"):
        qm._claim(tmp_path / "ft", {**job, "seed": 1, "source_checksum": 99.0})
    assert json.loads((tmp_path / "ft" / "job.json").read_text()) == job


def test_latency_is_measured_beside_the_unpruned_model(monkeypatch, tmp_path):
    sessions = []

    def compare_latency(paths, img, runs, warmup):
        sessions.append(sorted(Path(p).name for p in paths.values()))
        medians = {"model": 8.0, "unpruned": 12.0}
        return {k: {"median_ms": medians[k], "min_ms": medians[k] - 1, "runs": runs, "threads": 2} for k in paths}

    monkeypatch.setattr(qc, "_onnx", lambda model, path, img: path)
    monkeypatch.setattr(pagcp, "load_model", lambda weights: None)
    monkeypatch.setattr("pagcp.deploy.compare_latency", compare_latency)
    args = bq.parse_args(["--project", str(tmp_path), "--latency-runs", "7"])
    row = qc.row_latency(None, args, "target0.5-seed0-e3-pagcp")
    assert sessions[-1] == ["target0.5-seed0-e3-pagcp.onnx", "unpruned-yolov5n-demo-320.onnx"]
    assert (row["latency_ms_median"], row["latency_ms_min"], row["latency_unpruned_ms_median"]) == (8.0, 7.0, 12.0)
    assert (row["speedup_vs_unpruned"], row["latency_runs"]) == (1.5, 7)
    assert qc.row_latency(None, args, "unpruned")["speedup_vs_unpruned"] == 1.0
    assert sessions[-1] == ["unpruned-yolov5n-demo-320.onnx"]


def test_torch_pruning_prunes_a_model_with_frozen_weights():
    pytest.importorskip("torch_pruning")
    model = pagcp.load_model("yolov5n", nc=6).requires_grad_(False)  # as a fine-tune's EMA model comes back
    goal = 0.6 * pagcp.model_stats(model, 64)["gflops"]
    pruned, ratio = qm.tp_global(model, goal, 64, steps=12)
    assert abs(pagcp.model_stats(pruned, 64)["gflops"] / goal - 1) <= qs.MATCH_TOLERANCE
    assert 0 < ratio < 0.95 and not any(p.requires_grad for p in model.parameters())  # the original is untouched
