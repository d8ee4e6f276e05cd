"""The registered torch.ops.pagcp.* ops: torch.library.opcheck and tracing under torch.compile, with the
compiled extension and in a pure-Python install (the extension blocked, the references serving every key)."""

from __future__ import annotations

import pytest
import torch
from ops_helpers import op_cases, run_without_extension
from torch.testing import assert_close

from pagcp.ops import extension, library, masked_bn_act, reference

needs_extension = pytest.mark.skipif(
    extension.EXTENSION is None, reason=f"pagcp._C extension not built: {extension.LOAD_ERROR}"
)


def _assert_opcheck_passes(op, args) -> None:
    """torch.library.opcheck raises on a failing check; every check it ran must also report success."""
    results = torch.library.opcheck(op, args)
    assert results and set(results.values()) == {"SUCCESS"}, results


def _devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() and extension.with_cuda() else ["cpu"]


def _check_op(name: str, device: str) -> None:
    cases = [args for op, args in op_cases(device) if op == name]
    assert cases
    for args in cases:
        _assert_opcheck_passes(getattr(torch.ops.pagcp, name).default, args)


@pytest.mark.parametrize("device", _devices())
def test_opcheck_filter_saliency(device):
    _check_op("filter_saliency", device)


@pytest.mark.parametrize("device", _devices())
def test_opcheck_masked_bn_act(device):
    _check_op("masked_bn_act", device)
    _check_op("masked_bn_act_out", device)


@pytest.mark.parametrize("device", _devices())
def test_opcheck_channel_activation_stats(device):
    _check_op("channel_activation_stats", device)


@needs_extension
def test_extension_only_adds_kernels_per_device():
    for name in library.SCHEMAS:
        assert library.has_kernel(name, "CPU"), name
        assert library.has_kernel(name, "CUDA") == extension.with_cuda(), name
        assert library.has_kernel(name, "CompositeExplicitAutograd"), name  # the reference, for other keys


@needs_extension
def test_extension_rejects_an_activation_it_does_not_implement():
    x, scale, shift, keep = torch.randn(1, 2, 2, 2), torch.ones(2), torch.zeros(2), torch.ones(1, 2)
    with pytest.raises(RuntimeError, match="activation 'gelu' is not implemented"):
        torch.ops.pagcp.masked_bn_act(x, scale, shift, keep, "gelu", True)


@needs_extension
def test_wrapper_under_torch_compile():
    x = torch.randn(2, 3, 4, 5)
    scale, shift = torch.rand(3), torch.randn(3)
    keep = torch.tensor([[True, False, True], [False, True, True]])

    def candidates(x: torch.Tensor) -> torch.Tensor:
        return masked_bn_act(x * 2.0, scale, shift, keep, "silu", backend="cpp") + 1.0

    compiled = torch.compile(candidates, backend="aot_eager", fullgraph=True)
    want = reference.masked_bn_act(x * 2.0, scale, shift, keep, "silu", expand=True) + 1.0
    assert_close(compiled(x), want)


PURE_PYTHON = r"""
import torch
from torch.testing import assert_close
from ops_helpers import op_cases
import pagcp.ops as ops
from pagcp.ops import library, reference

ok, why = ops.backends()["cpp"]
assert not ok and "simulated" in why, why
for name in library.SCHEMAS:
    assert hasattr(torch.ops.pagcp, name), name
    assert not library.has_kernel(name, "CPU") and not library.has_kernel(name, "CUDA"), name

for name, args in op_cases("cpu"):
    results = torch.library.opcheck(getattr(torch.ops.pagcp, name).default, args)
    assert results and set(results.values()) == {"SUCCESS"}, (name, results)
    print("opcheck", name)

def pipeline(x, scale, shift, keep, weights, flat_keep):
    y = torch.ops.pagcp.masked_bn_act(x * 2.0, scale, shift, keep, "silu", True) + 1.0
    rows = torch.empty_like(y)
    torch.ops.pagcp.masked_bn_act_out(y, scale, shift, keep, "relu", False, rows)
    mean_abs, mean_sq = torch.ops.pagcp.channel_activation_stats(rows)
    saliency = torch.ops.pagcp.filter_saliency(weights, flat_keep, [0, 2], [1, 4], 2, True)
    return y, rows, mean_abs, mean_sq, saliency

x, scale, shift = torch.randn(2, 3, 4, 5), torch.rand(3) + 0.5, torch.randn(3)
keep = torch.tensor([[1.0, 0.0, 1.0], [0.5, 1.0, 0.0]])
weights = [torch.randn(3, 2, 3, 3), torch.randn(4, 1, 1, 1)]
flat_keep = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
got = torch.compile(pipeline, backend="aot_eager", fullgraph=True)(x, scale, shift, keep, weights, flat_keep)
y = reference.masked_bn_act(x * 2.0, scale, shift, keep, "silu", True) + 1.0
rows = reference.masked_bn_act(y, scale, shift, keep, "relu", False)
want = (y, rows, *reference.channel_activation_stats(rows))
want += (reference.filter_saliency_packed(weights, flat_keep, [0, 2], [1, 4], 2, True),)
for g, w in zip(got, want, strict=True):
    assert_close(g, w)
print("compiled pipeline matches the reference")
"""


@pytest.mark.slow
def test_pure_python_install_registers_checks_and_compiles_the_ops():
    result = run_without_extension(PURE_PYTHON)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("opcheck") == len(op_cases("cpu")), result.stdout
    assert "compiled pipeline matches the reference" in result.stdout, result.stdout
