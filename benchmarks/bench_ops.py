"""pytest-benchmark suite of the pagcp ops: each op x backend on real shapes, beside eager PyTorch.

    pytest benchmarks/bench_ops.py --benchmark-enable --benchmark-group-by=param:case

- filter_saliency over every Conv2d of yolov5x (eager baseline: per-layer masked abs-sum loop);
- masked_bn_act (silu) on representative yolov5s layer outputs at 640 (strides 2, 8, 32), R = 1, 8, 19,
  preallocated results (eager baseline: silu(x*scale+shift) times the keep masks into ``out``); on GPU
  also torch.compile of the same expression;
- channel_activation_stats on the same layer outputs.

Batch: PAGCP_BENCH_BATCH, default 16 on GPU and 2 on the CPU (memory and time). Each benchmark's
``extra_info`` carries the bytes moved and GB/s. Cases and baselines come from compare_ops.py.
"""

from __future__ import annotations

import os

import pytest
import torch
from compare_ops import (
    bn_act_impls,
    bn_act_inputs,
    saliency_impls,
    saliency_masks,
    stats_impls,
    yolov5x_conv_weights,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BATCH = int(os.environ.get("PAGCP_BENCH_BATCH", "16" if DEVICE == "cuda" else "2"))
LAYERS = [(32, 320, 320), (128, 80, 80), (512, 20, 20)]  # yolov5s at 640: strides 2, 8, 32
RS = (1, 8, 19)
SALIENCY = saliency_impls(DEVICE)
BN_ACT = bn_act_impls(DEVICE, with_compile=DEVICE == "cuda")
STATS = stats_impls(DEVICE)


def _run(benchmark, fn, nbytes: int):
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)

    def call():
        fn()
        sync()

    benchmark.pedantic(call, rounds=5, warmup_rounds=1, iterations=1)
    benchmark.extra_info["bytes"] = nbytes
    benchmark.extra_info["GB/s"] = round(nbytes / benchmark.stats.stats.min / 1e9, 2)


@pytest.fixture(scope="module")
def yolov5x_weights():
    weights = yolov5x_conv_weights(DEVICE)
    return weights, saliency_masks(weights)


@pytest.mark.parametrize("impl", list(SALIENCY))
def test_filter_saliency_yolov5x(benchmark, yolov5x_weights, impl):
    weights, masks = yolov5x_weights
    benchmark.group = "filter_saliency yolov5x"
    _run(benchmark, lambda: SALIENCY[impl](weights, masks), sum(w.nbytes for w in weights))


@pytest.mark.parametrize("impl", list(BN_ACT))
@pytest.mark.parametrize("R", RS)
@pytest.mark.parametrize("layer", LAYERS, ids=lambda s: "x".join(map(str, s)))
def test_masked_bn_act(benchmark, layer, R, impl):
    C, H, W = layer
    x, scale, shift, keep = bn_act_inputs((BATCH, C, H, W), R, DEVICE)
    out = torch.empty((R * BATCH, C, H, W), device=DEVICE, dtype=x.dtype)
    benchmark.group = f"masked_bn_act N={BATCH} C={C} {H}x{W} R={R}"
    _run(benchmark, lambda: BN_ACT[impl](x, scale, shift, keep, out), x.nbytes + out.nbytes)


@pytest.mark.parametrize("impl", list(STATS))
@pytest.mark.parametrize("layer", LAYERS, ids=lambda s: "x".join(map(str, s)))
def test_channel_activation_stats(benchmark, layer, impl):
    x = bn_act_inputs((BATCH, *layer), 1, DEVICE)[0]
    benchmark.group = f"channel_activation_stats N={BATCH} {layer}"
    _run(benchmark, lambda: STATS[impl](x), x.nbytes)
