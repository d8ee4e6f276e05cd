"""The registered torch.ops.pagcp.* ops: torch.library.opcheck and tracing under torch.compile."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from pagcp.ops import extension, masked_bn_act, reference

pytestmark = pytest.mark.skipif(
    extension.EXTENSION is None, reason=f"pagcp._C extension not built: {extension.LOAD_ERROR}"
)


def _assert_opcheck_passes(op, args) -> None:
    """torch.library.opcheck raises on a failing check; every check it ran must also report success."""
    results = torch.library.opcheck(op, args)
    assert results and set(results.values()) == {"SUCCESS"}, results


def _devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() and extension.with_cuda() else ["cpu"]


@pytest.mark.parametrize("device", _devices())
def test_opcheck_filter_saliency(device):
    weights = [torch.randn(3, 2, 3, 3, device=device), torch.randn(4, 1, 1, 1, device=device)]
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0], device=device)
    for p, mean in ((1, False), (2, True)):
        _assert_opcheck_passes(torch.ops.pagcp.filter_saliency.default, (weights, keep, [0, 2], [1, 4], p, mean))


@pytest.mark.parametrize("device", _devices())
def test_opcheck_masked_bn_act(device):
    x = torch.randn(2, 3, 4, 5, device=device)
    scale, shift = torch.rand(3, device=device), torch.randn(3, device=device)
    keep = torch.tensor([[1.0, 0.0, 1.0], [0.5, 1.0, 0.0]], device=device)
    for xv in (x, x.to(memory_format=torch.channels_last)):
        _assert_opcheck_passes(torch.ops.pagcp.masked_bn_act.default, (xv, scale, shift, keep, 2, True))
        _assert_opcheck_passes(torch.ops.pagcp.masked_bn_act.default, (xv, scale, shift, keep, 1, False))
        out = torch.empty(4, 3, 4, 5, device=device)
        _assert_opcheck_passes(torch.ops.pagcp.masked_bn_act_out.default, (xv, scale, shift, keep, 0, True, out))


@pytest.mark.parametrize("device", _devices())
def test_opcheck_channel_activation_stats(device):
    x = torch.randn(2, 3, 4, 5, device=device)
    _assert_opcheck_passes(torch.ops.pagcp.channel_activation_stats.default, (x,))
    _assert_opcheck_passes(torch.ops.pagcp.channel_activation_stats.default, (x.to(memory_format=torch.channels_last),))


def test_wrapper_under_torch_compile():
    x = torch.randn(2, 3, 4, 5)
    scale, shift = torch.rand(3), torch.randn(3)
    keep = torch.tensor([[True, False, True], [False, True, True]])

    def candidates(x: torch.Tensor) -> torch.Tensor:
        return masked_bn_act(x * 2.0, scale, shift, keep, "silu", backend="cpp") + 1.0

    compiled = torch.compile(candidates, backend="aot_eager", fullgraph=True)
    want = reference.masked_bn_act(x * 2.0, scale, shift, keep, "silu", expand=True) + 1.0
    assert_close(compiled(x), want)
