"""Suffix replay: recorded candidate passes give the walk's values and decisions (CPU: traced and compiled;
CUDA: CUDA graphs), recordings are made where they pay, and the flag fails early where it cannot run."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from test_search import SMALL, _yolo_setup

import pagcp
from pagcp.engine.executor import Executor
from pagcp.engine.replay import SuffixReplay, resolve_mode
from pagcp.engine.saliency import select_keep, unit_scores
from pagcp.engine.search import Search
from pagcp.engine.settings import PruneSettings
from pagcp.errors import ConfigError
from pagcp.models.yolo import Detect


@pytest.fixture(scope="module")
def yolo():
    return _yolo_setup()


def _decided(search: Search) -> list[tuple]:
    return [(d["name"], d["ratio"], d["tripped_task"], d["selected"]) for d in search.state.decisions]


def _search(problem, graph, replay: str, chunk: int) -> Search:
    problem.replay = replay
    units = [u.name for u in graph.units if u.size > 1][::3]
    search = Search(graph, problem.oracle(graph, chunk=chunk), PruneSettings(units=units, **SMALL), 64)
    search.run()
    return search


def _candidates(graph, keep, unit: str, ratios=(0.25, 0.5, 0.75)) -> list[torch.Tensor]:
    scores = unit_scores(graph, keep, [unit])[unit]
    return [select_keep(scores, keep[unit], r) for r in ratios]


def _evaluations(problem, graph, replay: str, unit: str, chunk: int) -> tuple[list[torch.Tensor], SuffixReplay]:
    """Every candidate's loss sums on every batch, the candidates evaluated three times (walk, record, replay)."""
    problem.replay = replay
    oracle = problem.oracle(graph, chunk=chunk)
    keep = graph.full_keep()
    candidates = _candidates(graph, keep, unit)
    inf = torch.full((3,), math.inf, dtype=torch.float64)
    losses = [e.losses for _ in range(3) for e in oracle.evaluate(keep, unit, candidates, inf)]
    return losses, oracle.replay


@pytest.mark.parametrize("chunk", [1, 3])
def test_traced_replay_gives_the_walks_losses_bit_for_bit(yolo, chunk):
    _, graph, problem = yolo
    unit = [u.name for u in graph.units if len(u.producers) > 1][0]  # a coupled unit early in the backbone
    walked, off = _evaluations(problem, graph, "off", unit, chunk)
    traced, replay = _evaluations(problem, graph, "trace", unit, chunk)
    assert off.mode == "off" and off.recordings == 0
    assert replay.mode == "trace" and replay.recordings >= 1 and replay.replays >= 1
    assert len(walked) == len(traced) == 9
    assert all(torch.equal(a, b) for a, b in zip(walked, traced))


@pytest.mark.parametrize("chunk", [1, 2])
def test_traced_replay_search_decides_as_the_walk(yolo, chunk):
    _, graph, problem = yolo
    walk = _search(problem, graph, "off", chunk)
    traced = _search(problem, graph, "trace", chunk)
    assert _decided(traced) == _decided(walk)
    assert traced.state.evaluations == walk.state.evaluations
    assert traced.oracle.replay.replays > traced.oracle.replay.recordings > 0
    assert len({d["ratio"] for d in walk.state.decisions}) >= 3  # trips at several ratios


def _unpruned_executor(yolo):
    """(graph, problem, an executor under the full keep, the keep)."""
    _, graph, problem = yolo
    ex = Executor(graph, train_mode_leaves=(Detect,))
    keep = graph.full_keep()
    ex.set_keep(keep)
    return graph, problem, ex, keep


def test_recordings_are_made_at_a_shapes_second_pass_and_dropped_per_unit(yolo):
    graph, problem, ex, keep = _unpruned_executor(yolo)
    x = problem.batches[0][0]
    replay = SuffixReplay(ex, "trace", torch.device("cpu"))
    first, second = graph.units[3].name, graph.units[-2].name
    replay.begin(first)
    cands = _candidates(graph, keep, first)
    cached = ex.prefix([x], first)
    outs = [replay.run(first, cached, cands[:2]) for _ in range(3)]  # walk, record, replay
    assert (replay.recordings, replay.replays) == (1, 1)
    replay.run(first, cached, cands[:1])  # another shape (R = 1): walked, not recorded
    assert (replay.recordings, replay.replays) == (1, 1)
    for out in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(out, outs[0]))
    replay.begin(second)  # the next unit: the first unit's recordings are gone
    cached = ex.prefix([x], second)
    cands = _candidates(graph, keep, second)
    replay.run(second, cached, cands[:2])
    assert (replay.recordings, replay.replays) == (1, 1) and not replay._programs


def test_a_failed_recording_falls_back_to_the_walk(yolo, monkeypatch, caplog):
    graph, problem, ex, keep = _unpruned_executor(yolo)
    unit = graph.units[-2].name
    cached, cands = ex.prefix([problem.batches[0][0]], unit), _candidates(graph, keep, unit, (0.5,))
    replay = SuffixReplay(ex, "trace", torch.device("cpu"))

    def cannot_record(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr("torch.fx.experimental.proxy_tensor.make_fx", cannot_record)
    outs = [replay.run(unit, cached, cands) for _ in range(3)]
    assert replay.mode == "off" and replay.recordings == 0
    assert "recording the passes of" in caplog.text and "walking the graph from now on" in caplog.text
    assert all(torch.equal(a, b) for out in outs[1:] for a, b in zip(out, outs[0]))


def test_compiled_replay_matches_the_walk_to_rounding(yolo):
    graph, problem, ex, keep = _unpruned_executor(yolo)
    x = problem.batches[0][0]
    unit = graph.units[-2].name  # a short suffix: a quick compile
    cached = ex.prefix([x], unit)
    cands = _candidates(graph, keep, unit, (0.5,))
    walked = ex.run_candidates(unit, cached, cands)
    replay = SuffixReplay(ex, "compile", torch.device("cpu"))
    replay.begin(unit)
    outs = [replay.run(unit, cached, cands) for _ in range(2)]
    assert replay.recordings == 1
    for a, b in zip(outs[1], walked):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_modes_resolve_per_device_and_fail_with_the_flag():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_mode("auto", cpu) == "off" and resolve_mode("auto", cuda) == "graph"
    assert resolve_mode("trace", cpu) == "trace" and resolve_mode("compile", cuda) == "compile"
    with pytest.raises(ConfigError, match="--suffix-replay graph: CUDA graphs need a CUDA device"):
        resolve_mode("graph", cpu)
    with pytest.raises(ConfigError, match="--suffix-replay 'fast'"):
        resolve_mode("fast", cpu)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_cli_refuses_cuda_graphs_without_a_device_before_making_a_folder(tmp_path):
    cmd = [sys.executable, "-m", "pagcp.prune", "--weights", "yolov5n", "--data", "demo:train=8,val=4,img=64",
           "--img", "64", "--subset", "4", "--device", "cpu", "--suffix-replay", "graph",
           "--project", str(tmp_path)]  # fmt: skip
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2, bad.stderr
    assert "--suffix-replay graph: CUDA graphs need a CUDA device" in bad.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.gpu
@pytest.mark.parametrize("chunk", [1, 4])
def test_cuda_graph_replay_decides_as_the_walk_on_cuda(chunk):
    model, _, cpu_problem = _yolo_setup()
    model.cuda()
    batches = [(x.cuda(), t.cuda()) for x, t in cpu_problem.batches]
    graph = pagcp.trace(model, batches[0][0][:1])
    problem = pagcp.families.family_of(model).problem(model, batches, 64, cache_targets=False)
    unit = [u.name for u in graph.units if len(u.producers) > 1][0]
    walked, _ = _evaluations(problem, graph, "off", unit, chunk)
    captured, replay = _evaluations(problem, graph, "graph", unit, chunk)
    assert replay.mode == "graph" and replay.recordings >= 1 and replay.replays >= 1
    assert all(torch.equal(a, b) for a, b in zip(walked, captured))  # the same kernels, replayed
    walk, graphs = _search(problem, graph, "off", chunk), _search(problem, graph, "graph", chunk)
    assert _decided(graphs) == _decided(walk)
    assert graphs.oracle.replay.replays > 0
