"""The Triton kernels compile for a real GPU target (sm_90 PTX) on a machine without a GPU.

The interpreter tests check the numbers; this checks the GPU lowering (types, loops with run-time bounds,
int64 addressing, the string constexpr naming the activation) for float32, float16 and bfloat16, so that
GPU-only compile errors show up in CPU CI.
It runs in a subprocess without TRITON_INTERPRET, which would otherwise replace the compiler.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

COMPILE_ALL = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from pagcp.kernels import activation_stats, bn_act, saliency

target = GPUTarget("cuda", 90, 32)

def check(kernel, signature, constexprs, label):
    ptx = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs), target=target).asm["ptx"]
    assert ".entry " + kernel.fn.__name__ in ptx, label
    print("compiled", label)

for dt in ("fp32", "fp16", "bf16"):
    sig = {"w_ptr": "*" + dt, "keep_ptr": "*fp32", "w_start_ptr": "*i64", "keep_start_ptr": "*i64",
           "length_ptr": "*i64", "kk_ptr": "*i64", "out_ptr": "*fp32"}
    sig.update(dict.fromkeys(["P", "MEAN", "BLOCK"], "constexpr"))
    for p, mean in ((1, False), (2, True)):
        check(saliency.filter_saliency_kernel, sig, {"P": p, "MEAN": mean, "BLOCK": 256}, f"saliency {dt} {p} {mean}")
    sig = {"x_ptr": "*" + dt, "scale_ptr": "*fp32", "shift_ptr": "*fp32", "keep_ptr": "*fp32", "out_ptr": "*" + dt}
    sig.update(dict.fromkeys("N C W HW R sxn sxc sxh sxw son soc soh sow".split(), "i32"))
    sig.update(dict.fromkeys(["ACT", "EXPAND", "BLOCK_P", "BLOCK_C"], "constexpr"))
    for act, expand in (("silu", True), ("relu", False), ("identity", True)):  # ACT: the activation's name
        consts = {"ACT": act, "EXPAND": expand, "BLOCK_P": 64, "BLOCK_C": 64}
        check(bn_act.masked_bn_act_kernel, sig, consts, f"bn_act {dt} {act} {expand}")
    sig = {"x_ptr": "*" + dt, "part_abs_ptr": "*fp32", "part_sq_ptr": "*fp32"}
    sig.update(dict.fromkeys("rows C W HW sxn sxc sxh sxw rows_per_program".split(), "i32"))
    sig.update(dict.fromkeys(["BLOCK_P", "BLOCK_C"], "constexpr"))
    check(activation_stats.channel_stats_kernel, sig, {"BLOCK_P": 32, "BLOCK_C": 64}, f"stats {dt}")
"""


def test_triton_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", COMPILE_ALL], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("compiled") == 3 * (2 + 3 + 1), result.stdout
