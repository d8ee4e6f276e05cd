"""masked_bn_act / masked_bn_act_rows: every backend against the pure-PyTorch reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ops_helpers import layouts, require_backend
from torch.testing import assert_close

from pagcp.errors import ConfigError
from pagcp.ops import masked_bn_act, masked_bn_act_rows, reference

CPU_SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (3, 17, 4, 6), (2, 255, 3, 5)]
TINY_SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (1, 17, 3, 2)]


def _layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {**layouts(x), "transposed_hw": x.transpose(2, 3).contiguous().transpose(2, 3)}


def _inputs(shape, R, device="cpu", dtype=torch.float32, keep_dtype=torch.bool):
    N, C, H, W = shape
    x = torch.randn(N, C, H, W, device=device).to(dtype)
    scale, shift = torch.rand(C, device=device) + 0.5, torch.randn(C, device=device)
    keep = torch.rand(R, C, device=device) > 0.4
    if keep_dtype != torch.bool:
        keep = keep.to(keep_dtype) * torch.rand(R, C, device=device).to(keep_dtype)  # fractional keep too
    return x, scale, shift, keep


def _check_all(backend, shapes, device="cpu", dtype=torch.float32, tol=1e-5):
    for shape in shapes:
        for R in (1, 3):
            for act in reference.ACTIVATIONS:
                keep_dtype = torch.float32 if act == "relu" else torch.bool
                x, scale, shift, keep = _inputs(shape, R, device, dtype, keep_dtype)
                want = reference.masked_bn_act(x, scale, shift, keep, act, expand=True)
                for name, xl in _layouts(x).items():
                    got = masked_bn_act(xl, scale, shift, keep, act, backend=backend)
                    assert got.shape == (R * shape[0], *shape[1:]) and got.dtype == dtype, name
                    assert_close(got, want, rtol=tol, atol=tol, msg=lambda m, tag=f"{name} {act} R={R}": f"{tag}: {m}")
                    if name == "channels_last" and shape[1] > 1 and shape[2] * shape[3] > 1:
                        assert got.is_contiguous(memory_format=torch.channels_last)
                    if name == "nchw":
                        assert got.is_contiguous()
                rows = want.contiguous()
                want_rows = reference.masked_bn_act(rows, scale, shift, keep, act, expand=False)
                for name, xl in _layouts(rows).items():
                    got = masked_bn_act_rows(xl, scale, shift, keep, act, backend=backend)
                    assert_close(
                        got, want_rows, rtol=tol, atol=tol, msg=lambda m, tag=f"rows {name} {act}": f"{tag}: {m}"
                    )


def test_reference_definition():
    x, scale, shift, keep = _inputs((2, 3, 4, 5), 2)
    y = reference.masked_bn_act(x, scale, shift, keep, "silu", expand=True)
    act = F.silu(x * scale[:, None, None] + shift[:, None, None])
    for r in range(2):
        for n in range(2):
            assert_close(y[r * 2 + n], act[n] * keep[r, :, None, None])


def test_cpp_layouts_shapes_and_activations():
    require_backend("cpp")
    _check_all("cpp", CPU_SHAPES)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpp_half_precision(dtype):
    require_backend("cpp")
    _check_all("cpp", [(2, 17, 3, 5)], dtype=dtype, tol=2e-2)


def test_cpp_large_plane_and_channels_last_rows():
    require_backend("cpp")
    x, scale, shift, keep = _inputs((2, 3, 40, 41), 4)  # planes longer than one kernel run
    want = reference.masked_bn_act(x, scale, shift, keep, "silu", expand=True)
    assert_close(masked_bn_act(x, scale, shift, keep, backend="cpp"), want)
    xcl = x.to(memory_format=torch.channels_last)
    assert_close(masked_bn_act(xcl, scale, shift, keep, backend="cpp"), want)
    # extreme inputs: silu saturates cleanly
    big = torch.tensor([-200.0, -90.0, -20.0, 0.0, 20.0, 90.0, 200.0]).view(1, 1, 1, 7)
    ones = torch.ones(1)
    got = masked_bn_act(big, ones, torch.zeros(1), torch.ones(1, 1), backend="cpp")
    assert_close(got, F.silu(big))


def test_out_buffer_reused_and_validated():
    require_backend("cpp")
    x, scale, shift, keep = _inputs((2, 3, 5, 7), 3)
    want = reference.masked_bn_act(x, scale, shift, keep, "silu", expand=True)
    for backend in ("cpp", "torch"):
        for fmt in (torch.contiguous_format, torch.channels_last):
            out = torch.full((6, 3, 5, 7), float("nan")).contiguous(memory_format=fmt)
            result = masked_bn_act(x, scale, shift, keep, out=out, backend=backend)
            assert result is out
            assert_close(out, want)
    with pytest.raises(ConfigError, match="out is"):
        masked_bn_act(x, scale, shift, keep, out=torch.empty(2, 3, 5, 7))
    with pytest.raises(ConfigError, match="out is"):
        masked_bn_act(x, scale, shift, keep, out=torch.empty(6, 3, 5, 7, dtype=torch.float64))
    with pytest.raises(ConfigError, match="keep must be"):
        masked_bn_act(x, scale, shift, torch.ones(2, 4))
    with pytest.raises(ConfigError, match="not a multiple"):
        masked_bn_act_rows(x, scale, shift, torch.ones(3, 3))
    with pytest.raises(ConfigError, match="act="):
        masked_bn_act(x, scale, shift, keep, act="gelu")


def test_one_dimensional_keep_means_one_candidate():
    require_backend("cpp")
    x, scale, shift, keep = _inputs((2, 3, 2, 2), 1)
    assert_close(
        masked_bn_act(x, scale, shift, keep[0], backend="cpp"),
        reference.masked_bn_act(x, scale, shift, keep, "silu", expand=True),
    )


def test_triton_interpreter_tiny():
    require_backend("triton")
    _check_all("triton", TINY_SHAPES)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_backends(backend, dtype):
    require_backend(backend, "cuda")
    _check_all(backend, CPU_SHAPES, device="cuda", dtype=dtype, tol=1e-5 if dtype == torch.float32 else 2e-2)
