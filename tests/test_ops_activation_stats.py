"""channel_activation_stats: every backend against the pure-PyTorch reference."""

from __future__ import annotations

import pytest
import torch
from ops_helpers import layouts, require_backend
from torch.testing import assert_close

from pagcp.errors import ConfigError
from pagcp.ops import channel_activation_stats, reference


def _check(backend, shapes, device="cpu", dtype=torch.float32, tol=1e-5):
    for shape in shapes:
        x = (torch.randn(*shape, device=device) * 3).to(dtype)
        want = reference.channel_activation_stats(x)
        for name, xv in layouts(x).items():
            got = channel_activation_stats(xv, backend=backend)
            for g, w in zip(got, want):
                assert g.dtype == torch.float32 and g.shape == (shape[1],)
                assert_close(g, w, rtol=tol, atol=tol, msg=lambda m, tag=f"{name} {shape}": f"{tag}: {m}")


def test_reference_definition():
    x = torch.randn(2, 3, 4, 5)
    mean_abs, mean_sq = reference.channel_activation_stats(x)
    assert_close(mean_abs, x.abs().mean((0, 2, 3)))
    assert_close(mean_sq, x.pow(2).mean((0, 2, 3)))
    empty_abs, empty_sq = reference.channel_activation_stats(torch.empty(0, 3, 4, 5))
    assert_close(empty_abs, torch.zeros(3))
    assert_close(empty_sq, torch.zeros(3))


def test_cpp_odd_shapes():
    require_backend("cpp")
    _check("cpp", [(1, 1, 1, 1), (2, 3, 5, 7), (3, 17, 9, 11), (2, 255, 3, 3), (1, 3, 64, 70), (0, 3, 2, 2)])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpp_half_precision(dtype):
    require_backend("cpp")
    _check("cpp", [(2, 17, 5, 6)], dtype=dtype, tol=1e-3)


def test_triton_interpreter_tiny():
    require_backend("triton")
    _check("triton", [(1, 1, 1, 1), (2, 3, 5, 7), (1, 17, 3, 2)])


def test_rejects_non_4d():
    with pytest.raises(ConfigError, match="N x C x H x W"):
        channel_activation_stats(torch.randn(3, 4))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_backends(backend, dtype):
    require_backend(backend, "cuda")
    _check(
        backend,
        [(1, 1, 1, 1), (2, 3, 5, 7), (3, 17, 9, 11), (2, 255, 3, 3)],
        device="cuda",
        dtype=dtype,
        tol=1e-4 if dtype == torch.float32 else 1e-2,
    )
