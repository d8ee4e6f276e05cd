"""The PAGCP decision rule: λ, channel selection, engine == naive, compat mode, resume, Python API."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import pagcp
from pagcp.engine.executor import Executor
from pagcp.engine.naive import naive_lambda
from pagcp.engine.oracle_data import subset_indices
from pagcp.engine.rule import solve_lambda
from pagcp.engine.saliency import select_keep, unit_scores
from pagcp.engine.search import Search
from pagcp.engine.settings import RATIOS, REFERENCE_RATIOS, PruneSettings
from pagcp.errors import ConfigError, PagcpError
from pagcp.models.yolo import Detect


@pytest.mark.parametrize("n_units,expected", [(52, 0.9769), (69, 0.9716), (86, 0.9693), (103, 0.9682)])
def test_lambda_matches_the_spec_table(n_units, expected):
    lam = solve_lambda(0.06, 6.0, n_units)
    assert lam == pytest.approx(expected, abs=5e-5)
    product = 1.0
    for i in range(n_units):
        product *= 1 + 0.06 * lam**i
    assert product == pytest.approx(6.0, rel=1e-9)
    assert naive_lambda(0.06, 6.0, n_units) == pytest.approx(lam, rel=1e-13)  # the independent check agrees


def test_lambda_without_decay_and_bad_bound():
    assert solve_lambda(0.05, 5.0, 0) == 1.0
    assert solve_lambda(0.01, 1.5, 3) > 1  # (1.01)^3 < 1.5: the thresholds must grow
    with pytest.raises(ConfigError, match="initial-thres"):
        solve_lambda(0.5, 1.2, 10)


def test_ratios_and_settings_validation():
    assert RATIOS[0] == 0.05 and RATIOS[-1] == 0.95 and len(RATIOS) == 19
    with pytest.raises(ConfigError, match="--topk"):
        PruneSettings(topk=1.5)
    with pytest.raises(ConfigError, match="--compression"):
        PruneSettings(compression="everything")
    with pytest.raises(ConfigError, match="--target-gflops"):
        PruneSettings(target_gflops=2.0)


def test_reference_ratios_are_numpys_linspace_and_count_in_float64():
    grid = np.linspace(0.05, 0.95, 19)
    assert REFERENCE_RATIOS == tuple(grid.tolist())
    assert REFERENCE_RATIOS[7] == 0.39999999999999997 and REFERENCE_RATIOS[9] == 0.49999999999999994
    reference = PruneSettings(compat="reference")
    assert reference.ratios == REFERENCE_RATIOS and PruneSettings().ratios == RATIOS
    assert PruneSettings.from_dict(reference.to_dict()) == reference
    assert reference.pruned_count(REFERENCE_RATIOS[9], 64) == 31  # "0.50" of 64 channels: 31, not 32
    assert PruneSettings().pruned_count(0.5, 64) == 32
    mismatched = 0
    for width in range(1, 513):
        expected = np.minimum(np.floor(grid * width), width - 1).astype(int).tolist()  # numpy's float64 products
        assert [reference.pruned_count(r, width) for r in REFERENCE_RATIOS] == expected, width
        decimal = [min((5 * i * width) // 100, width - 1) for i in range(1, 20)]  # exact: floor(5i/100 · width)
        assert [PruneSettings().pruned_count(r, width) for r in RATIOS] == decimal, width
        mismatched += expected != decimal
    assert mismatched > 100  # the two rules differ at many widths (e.g. every multiple of 2 at "0.50")
    scores = torch.arange(64.0)
    assert int(select_keep(scores, torch.ones(64, dtype=torch.bool), REFERENCE_RATIOS[9], exact=False).sum()) == 33


def test_select_keep_prunes_lowest_and_keeps_one():
    scores = torch.tensor([5.0, 1.0, 3.0, 1.0, 4.0, 0.5])
    keep = torch.tensor([True, True, True, True, True, False])  # channel 5 already pruned
    new = select_keep(scores, keep, 0.4)  # int(0.4 * 5) = 2: the two 1.0s, lower index first on ties
    assert new.tolist() == [True, False, True, False, True, False]
    assert select_keep(scores, keep, 0.95).sum() == 1  # int(0.95*5) = 4 -> one left
    assert select_keep(scores, keep, 0.1).equal(keep)  # int(0.5) = 0


def test_subset_indices_are_seeded_and_sorted():
    a = subset_indices(100, 16, seed=3)
    assert a == subset_indices(100, 16, seed=3) and a == sorted(a) and len(set(a)) == 16
    assert a != subset_indices(100, 16, seed=4)
    assert subset_indices(10, None) == list(range(10))


def _randomize(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.uniform_(-0.2, 0.2, generator=g)


def _yolo_setup(img: int = 64, n_batches: int = 2, batch: int = 8):
    model = pagcp.load_model("yolov5n", nc=3)
    _randomize(model)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n_batches):
        x = torch.rand(batch, 3, img, img, generator=g)
        rows = []
        for i in range(batch):
            for j in range(3):
                cx, cy = torch.rand(2, generator=g).tolist()
                w, h = (torch.rand(2, generator=g) * 0.4 + 0.1).tolist()
                rows.append([i, (i + j) % 3, cx, cy, w, h])
        batches.append((x, torch.tensor(rows)))
    graph = pagcp.trace(model, batches[0][0][:1])
    return model, graph, pagcp.families.family_of(model).problem(model, batches, img, cache_targets=False)


@pytest.fixture(scope="module")
def yolo():
    return _yolo_setup()


def _random_keep(graph, seed):
    g = torch.Generator().manual_seed(seed)
    keep = graph.full_keep()
    for u in graph.units:
        k = torch.rand(u.size, generator=g) > 0.4
        k[int(torch.randint(u.size, (1,), generator=g))] = True
        keep[u.name] = k
    return keep


def _sliced_raw(graph, keep, x):
    model = graph.slice(keep).eval()
    model.model[-1].training = True
    with torch.no_grad():
        return model(x)


def test_executor_compact_and_candidates_equal_sliced(yolo):
    _, graph, problem = yolo
    x = problem.batches[0][0][:3]
    ex = Executor(graph, train_mode_leaves=(Detect,))
    keep = _random_keep(graph, 1)
    ex.set_keep(keep)
    for got, want in zip(ex.run([x]), _sliced_raw(graph, keep, x)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    groups = [u.name for u in graph.units if len(u.producers) > 1]
    for name in [groups[0], "model.4.cv2", "model.9.cv1", "model.23.cv3"]:
        cached = ex.prefix([x], name)
        scores = unit_scores(graph, keep, [name])[name]
        cands = [select_keep(scores, keep[name], r) for r in (0.3, 0.6)]
        out = ex.run_candidates(name, cached, cands)
        for r, cand in enumerate(cands):
            trial = keep.replace(name, cand)
            for got, want in zip(out, _sliced_raw(graph, trial, x)):
                torch.testing.assert_close(got[r * 3 : (r + 1) * 3], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_executor_on_generic_cnns(arch):
    model = getattr(torchvision.models, arch)(weights=None, num_classes=10).eval()
    _randomize(model)
    x = torch.rand(2, 3, 64, 64)
    graph = pagcp.trace(model, x[:1])
    ex = Executor(graph)
    keep = _random_keep(graph, 2)
    ex.set_keep(keep)
    with torch.no_grad():
        torch.testing.assert_close(ex.run([x]), graph.slice(keep).eval()(x), rtol=1e-4, atol=1e-4)
        for unit in (graph.units[1], graph.units[len(graph.units) // 2], graph.units[-1]):
            cand = select_keep(torch.rand(unit.size), keep[unit.name], 0.5)
            out = ex.run_candidates(unit.name, ex.prefix([x], unit.name), [cand, keep[unit.name]])
            trial = keep.replace(unit.name, cand)
            torch.testing.assert_close(out[:2], graph.slice(trial).eval()(x), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(out[2:], graph.slice(keep).eval()(x), rtol=1e-4, atol=1e-4)


SMALL = {"initial_rate": 0.0003, "initial_thres": 1.006}


def _assert_same_decisions(engine: list[dict], naive: list[dict], base: list[float]) -> bool:
    """Ratios must be equal; topk selections may differ only between units whose loss efficiencies tie to
    within float rounding (their loss increases are sums of thousands of terms, computed two ways).
    Returns whether the selections are identical."""
    eng = {d["name"]: d for d in engine}
    ref = {d["name"]: d for d in naive}
    assert eng.keys() == ref.keys()
    assert {n: d["ratio"] for n, d in eng.items()} == {n: d["ratio"] for n, d in ref.items()}
    assert {n: d["tripped_task"] for n, d in eng.items()} == {n: d["tripped_task"] for n, d in ref.items()}
    disputed = [n for n in eng if eng[n]["selected"] != ref[n]["selected"]]
    assert sum(d["selected"] for d in engine) == sum(d["selected"] for d in naive)
    if disputed:
        scale = 1e-5 * sum(base)
        increases = [ref[n]["efficiency"] * ref[n]["flops_removed"] for n in disputed]
        flops = [ref[n]["flops_removed"] for n in disputed]
        effs = [ref[n]["efficiency"] for n in disputed]
        assert max(effs) - min(effs) <= 2 * scale / min(flops), (disputed, effs)
        assert all(abs(x) < 1e3 * scale for x in increases)
    return not disputed


_NAIVE: dict[str, dict] = {}  # the naive search's result per compat mode (it does not depend on the chunk)


def test_round_to_keeps_multiples_or_the_full_width():
    eight = PruneSettings(round_to=8)
    # 64 wide: what each ratio leaves, rounded up to a multiple of 8 (0.05 leaves 61 -> 64: nothing removed)
    assert [64 - eight.pruned_count(r, 64) for r in RATIOS] == [64, 64, 56, 56, 48, 48, 48, 40, 40, 32, 32, 32, 24,
                                                                 24, 16, 16, 16, 8, 8]  # fmt: skip
    assert [eight.pruned_count(r, 12) for r in (0.05, 0.3, 0.5, 0.95)] == [0, 0, 4, 4]  # 12 wide: 12 or 8
    assert [eight.pruned_count(r, 6) for r in RATIOS] == [0] * 19  # narrower than 8: never pruned
    for width in range(1, 200):
        for r in RATIOS:
            left = width - eight.pruned_count(r, width)
            assert left == width or (left % 8 == 0 and left >= width - PruneSettings().pruned_count(r, width))
    with pytest.raises(ConfigError, match="--round-to"):
        PruneSettings(round_to=0)


def test_engine_decisions_equal_naive_with_round_to(yolo):
    """--round-to 8: the engine and the independent search count channels alike, and every selected unit
    ends at a multiple of 8 channels or its full width."""
    _, graph, problem = yolo
    units = [u.name for u in graph.units if u.size > 1][::3]
    settings = PruneSettings(units=units, round_to=8, **SMALL)
    search = Search(graph, problem.oracle(graph), settings, 64)
    keep = search.run()
    truth = problem.naive(graph, settings)
    _assert_same_decisions(search.state.decisions, truth["decisions"], truth["base"])
    widths = {d["name"]: (d["channels_after"], graph[d["name"]].size) for d in search.state.decisions}
    assert all(after == size or after % 8 == 0 for after, size in widths.values()), widths
    assert any(after < size for after, size in widths.values())
    assert all(int(keep[u].sum()) in (graph[u].size, *range(8, graph[u].size, 8)) for u in units)


@pytest.mark.parametrize("chunk", [1, 2, 4, 7])
@pytest.mark.parametrize("compat", ["default", "reference"])
def test_engine_decisions_equal_naive(yolo, compat, chunk):
    """Several candidates per pass (R = chunk, through masked_bn_act) decide exactly as one per pass."""
    _, graph, problem = yolo
    units = [u.name for u in graph.units if u.size > 1][::3]  # backbone and head, a third of the units
    settings = PruneSettings(compat=compat, units=units, **SMALL)
    oracle = problem.oracle(graph, chunk=chunk)
    assert oracle.chunk == chunk
    search = Search(graph, oracle, settings, 64)
    keep = search.run()
    truth = _NAIVE.get(compat) or _NAIVE.setdefault(compat, problem.naive(graph, settings))
    assert search.state.order == truth["order"]
    if _assert_same_decisions(search.state.decisions, truth["decisions"], truth["base"]):
        assert all(torch.equal(keep[k], truth["keep"][k]) for k in keep)
    ratios = [d["ratio"] for d in search.state.decisions]
    assert len(set(ratios)) >= 3, ratios  # the case exercises trips at several ratios
    assert oracle.evaluations <= truth["evaluations"]
    if compat == "reference":
        all_pass = [d for d in truth["decisions"] if d["tripped_task"] is None and d["ratio"] > 0]
        assert all_pass and all(d["ratio"] == 0.9 for d in all_pass)


def test_activation_saliency_equals_hooks_on_the_sliced_model(yolo):
    _, graph, problem = yolo
    keep = _random_keep(graph, 3)
    engine, naive = problem.oracle(graph), problem.naive_oracle(graph)
    groups = [u.name for u in graph.units if len(u.producers) > 1]
    for name in [groups[0], "model.4.cv2", "model.9.cv1", "model.23.cv3"]:
        got, want = engine.activation_scores(keep, name), naive.activation_scores(keep, name)
        assert got.shape == (graph[name].size,) and bool((got[~keep[name]] == 0).all())
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        assert bool((got[keep[name]] > 0).all())  # SiLU outputs: every kept channel has some activity


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_activation_saliency_on_generic_cnns(arch):
    from pagcp.engine.naive import NaiveOracle
    from pagcp.engine.oracle import SubsetOracle

    model = getattr(torchvision.models, arch)(weights=None, num_classes=10).eval()
    _randomize(model)
    batches = [(torch.rand(2, 3, 64, 64), None), (torch.rand(3, 3, 48, 48), None)]
    graph = pagcp.trace(model, batches[0][0][:1])
    keep = _random_keep(graph, 4)
    loss = lambda out, _: out.abs().mean().reshape(1)  # noqa: E731
    engine, naive = SubsetOracle(graph, batches, loss, ["t"]), NaiveOracle(graph, batches, loss)
    for unit in (graph.units[1], graph.units[len(graph.units) // 2], graph.units[-1]):
        got, want = engine.activation_scores(keep, unit.name), naive.activation_scores(keep, unit.name)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        assert float(got.sum()) > 0


def test_engine_decisions_equal_naive_with_activation_saliency(yolo):
    _, graph, problem = yolo
    units = [u.name for u in graph.units if u.size > 1][::3]
    settings = PruneSettings(saliency="act", units=units, **SMALL)
    search = Search(graph, problem.oracle(graph), settings, 64)
    keep = search.run()
    truth = problem.naive(graph, settings)
    if _assert_same_decisions(search.state.decisions, truth["decisions"], truth["base"]):
        assert all(torch.equal(keep[k], truth["keep"][k]) for k in keep)
    ratios = {d["ratio"] for d in search.state.decisions}
    assert any(0 < r < 0.95 for r in ratios) and any(d["tripped_task"] for d in search.state.decisions), ratios
    weights = Search(graph, problem.oracle(graph), PruneSettings(units=units, **SMALL), 64).run()
    assert weights != keep  # activations choose other channels than weight magnitudes


def test_search_resume_gives_identical_result(tmp_path, yolo, caplog):
    _, graph, problem = yolo
    settings = PruneSettings(compression="backbone", **SMALL)

    def fresh(path):
        oracle = problem.oracle(graph)
        return Search(graph, oracle, settings, 64, state_path=path, fingerprint={"model": "test"})

    whole = fresh(tmp_path / "whole.json")
    expected = whole.run()

    class Stop(Exception):
        pass

    def stop_after_three(p):
        if p["event"] == "unit" and p["position"] == 3:
            raise Stop

    part = fresh(tmp_path / "part.json")
    part.progress = stop_after_three
    with pytest.raises(Stop):
        part.run()
    saved = json.loads((tmp_path / "part.json").read_text())
    assert saved["position"] == 3 and saved["phase"] == "search"
    resumed = fresh(tmp_path / "part.json").run(resume=True)
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    final = json.loads((tmp_path / "part.json").read_text())
    whole_state = json.loads((tmp_path / "whole.json").read_text())
    assert final["decisions"] == whole_state["decisions"]
    assert final["evaluations"] == whole_state["evaluations"] == whole.oracle.evaluations > 0
    assert final["history"][-1]["evaluations"] == whole_state["history"][-1]["evaluations"]

    # killed inside a unit: that unit's evaluations are lost with it and counted once, when it is redone
    mid = fresh(tmp_path / "mid.json")
    calls, evaluate = [], mid.oracle.evaluate

    def evaluate_then_stop(*args, **kwargs):
        calls.append(1)
        result = evaluate(*args, **kwargs)
        if len(calls) == 5:
            raise Stop
        return result

    mid.oracle.evaluate = evaluate_then_stop
    with pytest.raises(Stop):
        mid.run()
    assert json.loads((tmp_path / "mid.json").read_text())["position"] == 4
    again = fresh(tmp_path / "mid.json")
    with caplog.at_level("INFO", logger="pagcp.engine.search"):
        again.run(resume=True)
    assert json.loads((tmp_path / "mid.json").read_text())["evaluations"] == whole_state["evaluations"]
    assert any(f"round 0, 4 of {len(whole_state['order'])} units decided, next {whole_state['order'][4]}" in m
               for m in caplog.messages), caplog.messages  # fmt: skip

    other = problem.oracle(graph)
    changed = Search(
        graph,
        other,
        PruneSettings(compression="backbone", topk=0.5, **SMALL),
        64,
        state_path=tmp_path / "part.json",
        fingerprint={"model": "test"},
    )
    with pytest.raises(PagcpError, match="other settings \\(topk\\)"):
        changed.run(resume=True)


@pytest.mark.parametrize(("target", "max_rounds", "met"), [(0.6, 6, True), (0.4, 3, False)])
def test_target_gflops_runs_rounds(yolo, target, max_rounds, met):
    """topk 0.2 keeps few units pruned per round, so a target takes rounds: 0.6 is met after several (how many
    depends on float rounding of this random-weight net), from above within 2 %; 0.4 is not met within 3 rounds,
    and the stop rule says so."""
    _, graph, problem = yolo
    settings = PruneSettings(compression="backbone", target_gflops=target, max_rounds=max_rounds,
                             initial_rate=0.002, initial_thres=1.05, topk=0.2)  # fmt: skip
    search = Search(graph, problem.oracle(graph), settings, 64)
    keep = search.run()
    ratio = graph.flops(keep, 64) / graph.flops(None, 64)
    rounds = search.state.history
    assert [r["round"] for r in rounds] == list(range(len(rounds)))
    assert all(a["gflops"] > b["gflops"] for a, b in zip(rounds, rounds[1:]))
    if met:
        assert len(rounds) >= 2 and target <= ratio <= target * 1.02  # the target, from above, within 2 %
        assert search.state.stop_rule.startswith(f"target {target:g} x reached in round {len(rounds) - 1}")
    else:
        assert len(rounds) == max_rounds and ratio > target * 1.02
        assert search.state.stop_rule.startswith(f"target {target:g} x not reached (--max-rounds 3 used)")


def test_python_api_on_a_torchvision_classifier():
    model = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(4, 3, 32, 32, generator=g), torch.randint(0, 4, (4,), generator=g)) for _ in range(2)]

    def loss_fn(out, y):  # two tasks: cross-entropy and a confidence penalty
        return torch.stack([nn.functional.cross_entropy(out, y), out.softmax(1).max(1).values.mean()])

    result = pagcp.prune(
        model,
        loss_fn,
        batches,
        torch.zeros(1, 3, 32, 32),
        tasks=["ce", "conf"],
        initial_rate=0.05,
        initial_thres=3.0,
        topk=1.0,
    )
    assert len(result.decisions) == len([u for u in result.graph.units if u.size > 1])
    assert result.graph.flops(result.keep) < result.graph.flops(None)
    sliced = result.model
    assert sum(p.numel() for p in sliced.parameters()) == result.graph.params(result.keep)
    with torch.no_grad(), result.graph.masked(result.keep):
        masked = model(batches[0][0])
    torch.testing.assert_close(sliced(batches[0][0]), masked, rtol=1e-4, atol=1e-4)
    assert "unit" in result.summary()


def test_oracle_splits_candidates_when_the_device_runs_out_of_memory(yolo, monkeypatch):
    _, graph, problem = yolo
    keep = graph.full_keep()
    unit = graph.units[5].name
    scores = unit_scores(graph, keep, [unit])[unit]
    candidates = [select_keep(scores, keep[unit], r) for r in (0.2, 0.4, 0.6)]
    bound = torch.full((3,), 1e9, dtype=torch.float64)
    plain = problem.oracle(graph, chunk=3)
    expected = plain.evaluate(keep, unit, candidates, bound)
    tight = problem.oracle(graph, chunk=3)
    real = tight.executor.run_candidates

    def small_device(unit_name, cached, masks):
        if len(masks) > 1:
            raise torch.OutOfMemoryError("simulated")
        return real(unit_name, cached, masks)

    monkeypatch.setattr(tight.executor, "run_candidates", small_device)
    got = tight.evaluate(keep, unit, candidates, bound)
    assert tight.chunk == 1
    assert len(got) == len(expected) == 3
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.losses, b.losses, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("fraction", [0.9, 0.75])
def test_target_gflops_is_met_within_two_percent(yolo, fraction):
    """A round that prunes below the target is filled up to it by efficiency; the report says so."""
    _, _, problem = yolo
    loose = PruneSettings(initial_rate=0.5, initial_thres=40.0, compression="backbone", target_gflops=fraction)
    result = problem.prune(loose)
    graph = result.graph
    original = graph.flops(None, 64)
    pruned = graph.flops(result.keep, 64)
    assert fraction <= pruned / original <= fraction * 1.02
    assert result.stop_rule.startswith(f"target {fraction:g} x reached in round 0")
    assert len(result.history) == 1  # one round got there
    changed = [d for d in result.decisions if d["target_ratio"] is not None]
    assert changed and "filled up to it by efficiency" in result.stop_rule
    for d in changed:  # a smaller ratio than searched, or none at all
        assert d["target_ratio"] < d["ratio"] and d["selected"] == (d["target_ratio"] > 0)
    unconstrained = problem.prune(PruneSettings(initial_rate=0.5, initial_thres=40.0, compression="backbone"))
    assert unconstrained.graph.flops(unconstrained.keep, 64) / original < fraction  # without the target it goes further
    assert unconstrained.stop_rule.startswith("one round")


def test_target_gflops_not_reached_says_why(yolo):
    _, _, problem = yolo
    tight = PruneSettings(initial_rate=0.0001, initial_thres=1.001, compression="backbone", target_gflops=0.3,
                          max_rounds=2)  # fmt: skip
    result = problem.prune(tight)
    graph = result.graph
    assert "not reached (--max-rounds 2 used)" in result.stop_rule
    assert graph.flops(result.keep, 64) / graph.flops(None, 64) > 0.3 and len(result.history) == 2


def test_a_waypoint_ends_the_rounds_before_the_target(yolo):
    """reach_gflops (a cycle's waypoint): rounds stop once the model is at most that fraction, above the target."""
    _, _, problem = yolo
    rule = {"initial_rate": 0.5, "initial_thres": 40.0, "compression": "backbone", "max_rounds": 2}
    one = problem.prune(PruneSettings(**{**rule, "max_rounds": 1}))
    original = one.graph.flops(None, 64)
    u = one.graph.flops(one.keep, 64) / original  # where one unconstrained round ends
    target, reach = round(0.8 * u, 4), round(min(0.99, 1.01 * u), 4)
    waypoint = problem.prune(PruneSettings(**rule, target_gflops=target, reach_gflops=reach))
    assert waypoint.stop_rule.startswith(f"waypoint {reach:.4f} x reached in round 0 on the way to {target:.4f} x")
    assert len(waypoint.history) == 1 and all(torch.equal(waypoint.keep[k], one.keep[k]) for k in one.keep)
    onward = problem.prune(PruneSettings(**rule, target_gflops=target))  # no waypoint: a second round
    assert len(onward.history) == 2 and onward.graph.flops(onward.keep, 64) / original < u
    with pytest.raises(ConfigError, match="reach_gflops 0.2: needs a target_gflops <= it"):
        PruneSettings(target_gflops=0.3, reach_gflops=0.2)
