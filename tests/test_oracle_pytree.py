"""The subset oracle on a model whose output is a pytree (a dict holding a tensor, a nested list and an int).

Candidate passes split every tensor leaf per candidate (R·N rows, candidate-major), the out-of-memory
fallback joins dict outputs leaf by leaf, the prefix cache keeps entries only while they fit, and an output
with no tensor at all is a ConfigError.

The forward passes run in float32 (the fused BN/activation kernels take float32/16/bf16 only); the oracle
sums the per-batch losses in float64. Losses of different chunk sizes (R = 1, 2, 4) are compared with
``torch.equal``: the candidate pass runs the same float32 kernels on every image whatever R is (R only
changes how many images a kernel loops over; BN, activation, masks and the head are per image), and the
loss reads each candidate's own rows, so the sums are bit for bit the same (they are on the CPU this was
written on). An ``allclose`` at 1e-12 would be no looser (a float32 rounding step is ~1e-7 relative), and a
candidate fed another candidate's rows, or all R·N of them, would be off by far more. Against the sliced
model (BN unfolded, so float32 rounding differs) the sums agree to 1e-5.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree

from pagcp.engine.oracle import Evaluation, SubsetOracle
from pagcp.engine.saliency import select_keep
from pagcp.errors import ConfigError
from pagcp.graph.trace import trace

TASKS = ["fit", "feat"]
UNIT = "c2"  # its prefix holds p1(a), an output leaf: a candidate pass repeats it to R·N rows
N_BATCHES, N_IMAGES = 4, 3
NEAR = {"rtol": 1e-5, "atol": 1e-6}  # oracle (BN folded) vs the sliced model, float32 passes


class DictNet(nn.Module):
    """Conv-BN-ReLU x3; the output is a dict: logits, a nested list of feature maps, and an int."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
        self.c3, self.b3 = nn.Conv2d(12, 10, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(10)
        self.head = nn.Conv2d(10, 5, 1)
        self.p1, self.p2 = nn.Conv2d(8, 2, 1), nn.Conv2d(12, 3, 1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> dict:
        a = self.act(self.b1(self.c1(x)))
        b = self.act(self.b2(self.c2(a)))
        c = self.act(self.b3(self.c3(b)))
        y = self.head(c)
        return {"logits": y.mean((2, 3)), "feats": [self.p1(a), [self.p2(b), y]], "stride": 2}


class NoTensorNet(DictNet):
    """Its output is the shape of a feature map only: no tensor to split per candidate."""

    def forward(self, x: torch.Tensor) -> dict:
        return {"shape": self.act(self.b2(self.c2(self.act(self.b1(self.c1(x)))))).size()}


def _randomize(model: nn.Module, seed: int = 0) -> None:
    """BatchNorm statistics and affines that keep every channel alive (positive scales), so that pruning any
    channel moves the losses."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.uniform_(-0.2, 0.2, generator=g)


def loss_fn(out: dict, target: dict) -> torch.Tensor:
    """fit: squared error to the unpruned model's outputs; feat: stride x mean |p2(b)| (reads the int leaf)."""
    n = target["logits"].shape[0]
    leaves = [out["logits"], *pytree.tree_leaves(out["feats"])]
    assert all(t.shape[0] == n for t in leaves), "a candidate's output must hold exactly its batch's rows"
    assert out["stride"] == 2
    wanted = [target["logits"], *pytree.tree_leaves(target["feats"])]
    fit = sum(((o - w) ** 2).mean() for o, w in zip(leaves, wanted))
    return torch.stack([fit, out["stride"] * out["feats"][1][0].abs().mean()])


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = DictNet().eval()
    _randomize(model)
    g = torch.Generator().manual_seed(1)
    inputs = [torch.rand(N_IMAGES, 3, 16, 16, generator=g) for _ in range(N_BATCHES)]
    with torch.no_grad():
        batches = [(x, model(x)) for x in inputs]
    graph = trace(model, inputs[0][:1])
    keep = graph.full_keep()
    scores = model.c2.weight.detach().abs().sum((1, 2, 3)).float()  # L1 per output channel of the unit
    candidates = [keep[UNIT].clone()] + [select_keep(scores, keep[UNIT], r) for r in (0.1, 0.75, 0.5)]
    per_batch = []  # candidate x batch x task: loss sums of the sliced (really pruned) model
    for cand in candidates:
        sliced = graph.slice(keep.replace(UNIT, cand)).eval()
        with torch.no_grad():
            per_batch.append(torch.stack([loss_fn(sliced(x), t) * x.shape[0] for x, t in batches]))
    return graph, batches, keep, candidates, torch.stack(per_batch).double()


def _oracle(setup, chunk: int, **kwargs) -> SubsetOracle:
    graph, batches, *_ = setup
    return SubsetOracle(graph, batches, loss_fn, TASKS, chunk=chunk, **kwargs)


def _run(setup, chunk: int, bound: torch.Tensor, **kwargs) -> tuple[list[Evaluation], list[int], SubsetOracle]:
    _, _, keep, candidates, _ = setup
    oracle = _oracle(setup, chunk, **kwargs)
    progress: list[int] = []
    oracle.on_candidates = progress.append
    return oracle.evaluate(keep, UNIT, candidates, bound), progress, oracle


NO_BOUND = torch.full((2,), float("inf"), dtype=torch.float64)


@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_dict_output_is_split_per_candidate_and_matches_the_sliced_model(setup, chunk):
    *_, per_batch = setup
    results, progress, oracle = _run(setup, chunk, NO_BOUND)
    assert len(results) == 4 and all(r.complete for r in results)
    assert oracle.evaluations == 4
    assert progress == list(range(chunk, 5, chunk))
    # the oracle folds BN; the sliced model does not: float32 rounding apart, the same sums
    for r, want in zip(results, per_batch.sum(1)):
        torch.testing.assert_close(r.losses, want, **NEAR)
    assert results[2].losses[0] > results[1].losses[0] > 1e-6 > results[0].losses[0]  # pruning costs fit


def test_chunk_sizes_give_the_same_losses(setup):
    by_chunk = {chunk: _run(setup, chunk, NO_BOUND)[0] for chunk in (1, 2, 4)}
    assert {len(r) for r in by_chunk.values()} == {4}
    for chunk in (2, 4):
        for a, b in zip(by_chunk[chunk], by_chunk[1]):
            assert torch.equal(a.losses, b.losses)


def test_early_rejection_stops_at_the_same_candidate_for_every_chunk(setup):
    *_, per_batch = setup
    cum = per_batch.cumsum(1)  # candidate x batches seen x task
    full = cum[:, -1]
    # a fit bound above candidates 0 and 1 (all batches) that candidate 2 exceeds before its last batch
    assert full[1, 0] < cum[2, N_BATCHES - 2, 0]
    bound = torch.tensor([(full[1, 0] + cum[2, N_BATCHES - 2, 0]) / 2, float("inf")], dtype=torch.float64)
    trip_batch = int((cum[2, :, 0] > bound[0]).nonzero()[0])
    assert trip_batch < N_BATCHES - 1
    runs = {chunk: _run(setup, chunk, bound) for chunk in (1, 2, 4)}
    for chunk, (results, progress, oracle) in runs.items():
        assert [r.complete for r in results] == [True, True, False], chunk
        assert progress == {1: [1, 2, 3], 2: [2, 3], 4: [3]}[chunk]
        assert oracle.evaluations == {1: 3, 2: 4, 4: 4}[chunk]
        torch.testing.assert_close(results[0].losses, full[0], **NEAR)
        torch.testing.assert_close(results[1].losses, full[1], **NEAR)
        # the tripped candidate's partial sums: exactly the batches up to the trip
        torch.testing.assert_close(results[2].losses, cum[2, trip_batch], **NEAR)
        assert results[2].losses[0] > bound[0] and results[2].losses[0] < full[2, 0]
        for a, b in zip(results, runs[1][0]):
            assert torch.equal(a.losses, b.losses)


def test_oom_fallback_joins_dict_outputs(setup, monkeypatch):
    _, batches, keep, candidates, _ = setup
    expected, _, _ = _run(setup, 4, NO_BOUND)
    tight = _oracle(setup, 4)
    real = tight.executor.run_candidates
    calls: list[int] = []

    def small_device(unit_name, cached, masks):
        calls.append(len(masks))
        if len(masks) > 1:
            raise torch.OutOfMemoryError("simulated")
        return real(unit_name, cached, masks)

    monkeypatch.setattr(tight.executor, "run_candidates", small_device)
    got = tight.evaluate(keep, UNIT, candidates, NO_BOUND)
    assert tight.chunk == 1
    assert calls[:7] == [4, 2, 1, 1, 2, 1, 1]  # batch 0: 4 -> 2 + 2 -> 1 + 1 + 1 + 1; then one per candidate
    assert len(got) == len(expected) == 4
    for a, b in zip(got, expected):
        assert torch.equal(a.losses, b.losses)

    # the joined output itself: same dict/list structure, int leaf intact, every tensor leaf R·N rows
    cached = tight.executor.prefix([batches[0][0]], UNIT)
    joined = tight._run_candidates(UNIT, cached, candidates)
    whole = real(UNIT, cached, candidates)
    assert pytree.tree_structure(joined) == pytree.tree_structure(whole)
    assert joined["stride"] == 2 and sorted(joined) == ["feats", "logits", "stride"]
    tensors = [(a, b) for a, b in zip(pytree.tree_leaves(joined), pytree.tree_leaves(whole)) if torch.is_tensor(a)]
    assert len(tensors) == 4
    for a, b in tensors:
        assert a.shape[0] == 4 * N_IMAGES
        assert torch.equal(a, b)


def test_prefix_cache_is_kept_only_while_it_fits(setup, monkeypatch):
    counts = {}
    for name, cache_bytes in (("fits", 1 << 30), ("too_big", 1)):
        oracle = _oracle(setup, 1, cache_bytes=cache_bytes)
        real = oracle.executor.prefix
        counts[name] = 0

        def counting(inputs, unit, real=real, name=name):
            counts[name] += 1
            return real(inputs, unit)

        monkeypatch.setattr(oracle.executor, "prefix", counting)
        _, _, keep, candidates, _ = setup
        results = oracle.evaluate(keep, UNIT, candidates, NO_BOUND)
        assert len(results) == 4
    assert counts == {"fits": N_BATCHES, "too_big": 4 * N_BATCHES}  # once per batch, or once per batch and chunk


def test_bf16_oracle_hands_the_loss_float32_dict_leaves(setup):
    graph, batches, keep, candidates, _ = setup
    seen: set[torch.dtype] = set()

    def recording_loss(out, target):
        seen.update(t.dtype for t in pytree.tree_leaves(out) if torch.is_tensor(t))
        return loss_fn(pytree.tree_map_only(torch.Tensor, torch.Tensor.double, out), target)

    oracle = SubsetOracle(graph, batches, recording_loss, TASKS, chunk=2, dtype=torch.bfloat16)
    results = oracle.evaluate(keep, UNIT, candidates, NO_BOUND)
    assert len(results) == 4 and seen == {torch.float32}
    exact = _run(setup, 2, NO_BOUND)[0]
    for a, b in zip(results, exact):  # bf16 convolutions: close to the float32 pass's losses, not equal
        torch.testing.assert_close(a.losses[1], b.losses[1], rtol=0.05, atol=0.0)


def test_an_output_without_a_tensor_is_a_config_error():
    model = NoTensorNet().eval()
    x = torch.rand(2, 3, 8, 8)
    graph = trace(model, x[:1])
    keep = graph.full_keep()
    assert [u.name for u in graph.units] == ["c1"]
    oracle = SubsetOracle(graph, [(x, None)], lambda out, t: torch.zeros(1), ["t"], chunk=2)
    with pytest.raises(ConfigError, match="output holds no tensor to split per candidate"):
        oracle.evaluate(keep, "c1", [keep["c1"], keep["c1"]], torch.full((1,), float("inf"), dtype=torch.float64))
