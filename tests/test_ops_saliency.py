"""filter_saliency: every backend against the pure-PyTorch reference."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from pagcp.errors import ConfigError
from pagcp.ops import filter_saliency, reference
from pagcp.ops.registry import availability


def _require(backend: str, device: str = "cpu") -> None:
    ok, why = availability(backend, torch.device(device))
    if not ok:
        pytest.skip(f"{backend} backend unavailable: {why}")


def _conv_zoo(channels: tuple[int, ...], device: str = "cpu", dtype=torch.float32):
    """Weights and input masks: 1x1, 3x3, 6x6 kernels, depthwise, grouped, None and empty masks."""
    weights, masks = [], []
    for i, c in enumerate(channels):
        cin = channels[i - 1]
        for k in (1, 3, 6):
            weights.append(torch.randn(c, cin, k, k, device=device, dtype=dtype))
            masks.append(torch.rand(cin, device=device) > 0.4)
        weights.append(torch.randn(c, 1, 3, 3, device=device, dtype=dtype))  # depthwise over c inputs
        masks.append(torch.rand(c, device=device) > 0.5)
    weights.append(torch.randn(6, 2, 3, 3, device=device, dtype=dtype))  # groups=3 over 6 inputs
    masks.append(torch.tensor([1, 0, 0, 0, 1, 1], dtype=torch.bool, device=device))
    weights.append(torch.randn(4, 3, 1, 1, device=device, dtype=dtype))
    masks.append(None)
    weights.append(torch.randn(5, 3, 3, 3, device=device, dtype=dtype))
    masks.append(torch.zeros(3, dtype=torch.bool, device=device))  # every input pruned
    return weights, masks


def _check(backend: str, weights, masks, device: str = "cpu", atol: float = 1e-4) -> None:
    for p in (1, 2):
        for reduce in ("sum", "mean"):
            got = filter_saliency(weights, masks, p=p, reduce=reduce, backend=backend)
            want = reference.filter_saliency(weights, masks, p=p, reduce=reduce)
            assert len(got) == len(weights)
            for g, w, ref in zip(got, weights, want):
                assert g.dtype == torch.float32 and g.shape == (w.shape[0],) and g.device.type == device
                assert_close(g, ref, rtol=1e-4, atol=atol)


def test_reference_matches_hand_computation():
    w = torch.arange(2 * 4 * 3 * 3, dtype=torch.float32).reshape(2, 4, 3, 3) - 20.0
    keep = torch.tensor([1, 0, 1, 0], dtype=torch.bool)
    alive = w[:, keep]
    l1, l2 = reference.filter_saliency([w], [keep], p=1)[0], reference.filter_saliency([w], [keep], p=2)[0]
    assert_close(l1, alive.abs().sum((1, 2, 3)))
    assert_close(l2, alive.pow(2).sum((1, 2, 3)).sqrt())
    assert_close(reference.filter_saliency([w], [keep], reduce="mean")[0], alive.abs().mean((1, 2, 3)))
    assert_close(reference.filter_saliency([w], [keep], p=2, reduce="mean")[0], alive.pow(2).mean((1, 2, 3)))
    # grouped conv: 4 filters, groups=2, 2 inputs per group; filters 2, 3 see inputs 2, 3
    wg = torch.randn(4, 2, 1, 1)
    got = reference.filter_saliency([wg], [torch.tensor([1, 1, 0, 1])])[0]
    assert_close(got, torch.cat([wg[:2].abs().sum((1, 2, 3)), wg[2:, 1].abs().sum((1, 2))]))
    empty = reference.filter_saliency([w], [torch.zeros(4, dtype=torch.bool)], reduce="mean")[0]
    assert_close(empty, torch.zeros(2))


def test_cpp_odd_shapes():
    _require("cpp")
    weights, masks = _conv_zoo((3, 1, 17, 255, 3))
    _check("cpp", weights, masks)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpp_half_precision(dtype):
    _require("cpp")
    weights, masks = _conv_zoo((3, 17, 5), dtype=dtype)
    _check("cpp", weights, masks, atol=1e-2)


def test_cpp_non_contiguous_weights():
    _require("cpp")
    base = torch.randn(17, 8, 3, 3)
    weights = [base.transpose(2, 3), base[:, ::2]]
    masks = [torch.rand(8) > 0.3, torch.rand(4) > 0.3]
    _check("cpp", weights, masks)


def test_triton_interpreter_tiny():
    _require("triton")
    weights = [torch.randn(3, 1, 3, 3), torch.randn(1, 3, 1, 1), torch.randn(4, 2, 6, 6), torch.randn(2, 1, 3, 3)]
    masks = [torch.tensor([True]), torch.tensor([1, 0, 1]), torch.tensor([0, 1, 1, 1]), torch.zeros(2)]
    _check("triton", weights, masks)


def test_single_launch_keeps_layer_order_and_split():
    _require("cpp")
    weights = [torch.randn(c, 3, 1, 1) for c in (1, 17, 3)]
    got = filter_saliency(weights, backend="cpp")
    assert [t.numel() for t in got] == [1, 17, 3]
    assert_close(torch.cat(got), torch.cat(reference.filter_saliency(weights)))


def test_bad_masks_name_the_layer():
    w = torch.randn(4, 3, 3, 3)
    with pytest.raises(ConfigError, match=r"in_keep\[1\]"):
        filter_saliency([w, w], [None, torch.ones(5, dtype=torch.bool)], backend="torch")
    with pytest.raises(ConfigError, match="groups=3"):
        filter_saliency([w], [torch.ones(9, dtype=torch.bool)], backend="torch")
    with pytest.raises(ConfigError, match="p="):
        filter_saliency([w], p=3)
    assert filter_saliency([]) == []


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_backends(backend, dtype):
    _require(backend, "cuda")
    weights, masks = _conv_zoo((3, 1, 17, 255, 3), device="cuda", dtype=dtype)
    _check(backend, weights, masks, device="cuda", atol=1e-4 if dtype == torch.float32 else 1e-2)
