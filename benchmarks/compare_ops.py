"""Side-by-side timings of the pagcp ops against eager PyTorch (and torch.compile on GPU), in one run.

    python benchmarks/compare_ops.py                       # CPU: every op, C++ extension vs eager
    python benchmarks/compare_ops.py --device cuda         # GPU: Triton, CUDA extension, torch.compile
    python benchmarks/compare_ops.py --batch 16 --rs 1,8,19 --layers all

Cases:
- filter_saliency over every Conv2d of yolov5x (random 70 % input keep masks); eager baseline = a
  per-layer PyTorch loop ``w[:, keep].abs().sum((1, 2, 3))``; GB/s counts the weight bytes read once.
- masked_bn_act (silu) on yolov5s Conv outputs at --img, batch --batch, R candidate masks (70 % kept);
  eager baseline = ``torch.mul(silu(x * scale + shift).unsqueeze(0), keep[:, None, :, None, None], out=...)``
  with a preallocated result, as the op gets one; GB/s counts x read once plus the R*N result written once.
- channel_activation_stats on the same layer outputs; eager = ``x.abs().mean(...)``, ``x.pow(2).mean(...)``.

Times are the best of --repeat rounds after one warm-up; implementations take turns within each round
(the least disturbed run on a shared machine).
This module also provides the cases to benchmarks/bench_ops.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

import pagcp
from pagcp.ops import backends, channel_activation_stats, filter_saliency, masked_bn_act

KEEP_RATIO = 0.7


# ------------------------------------------------------------------------------------------ cases


def yolov5x_conv_weights(device: str = "cpu", dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """The weights of every Conv2d of yolov5x (86.7 M parameters in 126 convs)."""
    model = pagcp.load_model("yolov5x")
    return [m.weight.detach().to(device, dtype) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def saliency_masks(weights: list[torch.Tensor], seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.rand(w.shape[1], generator=gen) < KEEP_RATIO).to(w.device) for w in weights]


def yolov5s_layer_shapes(img: int = 640) -> list[tuple[int, int, int]]:
    """Distinct (C, H, W) outputs of the BN+SiLU convs of yolov5s at img x img, in network order."""
    from pagcp.models.blocks import Conv

    model = pagcp.load_model("yolov5s")
    shapes: list[tuple[int, int, int]] = []

    def hook(_module, _inputs, output):
        shape = tuple(output.shape[1:])
        if shape not in shapes:
            shapes.append(shape)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, Conv)]
    with torch.no_grad():
        model(torch.zeros(1, 3, img, img))
    for handle in handles:
        handle.remove()
    return shapes


def bn_act_inputs(shape: tuple[int, int, int, int], R: int, device: str = "cpu", dtype=torch.float32, seed: int = 0):
    """x, scale, shift, bool keep (R x C) and float keep for one masked_bn_act case."""
    gen = torch.Generator().manual_seed(seed)
    N, C, H, W = shape
    x = torch.randn(N, C, H, W, generator=gen).to(device, dtype)
    scale = (torch.rand(C, generator=gen) + 0.5).to(device)
    shift = torch.randn(C, generator=gen).to(device)
    keep = (torch.rand(R, C, generator=gen) < KEEP_RATIO).to(device)
    return x, scale, shift, keep


# ------------------------------------------------------------------------------------ implementations


def saliency_loop(weights: list[torch.Tensor], masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Eager baseline: one masked abs-sum per layer."""
    return [w[:, k].abs().sum((1, 2, 3)) for w, k in zip(weights, masks)]


def saliency_impls(device: str) -> dict[str, Callable]:
    impls: dict[str, Callable] = {"eager loop": saliency_loop}
    for name in _backends_for(device):
        impls[name] = lambda ws, ks, name=name: filter_saliency(ws, ks, backend=name)
    return impls


def bn_act_impls(device: str, with_compile: bool) -> dict[str, Callable]:
    """name -> fn(x, scale, shift, keep, out) writing the R*N candidate outputs into out."""

    def eager(x, scale, shift, keep, out):
        R, (N, C, H, W) = keep.shape[0], x.shape
        k = keep.to(x.dtype)[:, None, :, None, None]
        y = F.silu(x * scale.view(1, C, 1, 1) + shift.view(1, C, 1, 1))
        torch.mul(y.unsqueeze(0), k, out=out.view(R, N, C, H, W))
        return out

    impls: dict[str, Callable] = {"eager": eager}
    if with_compile:

        def expression(x, scale, shift, keep):
            R, (N, C, H, W) = keep.shape[0], x.shape
            y = F.silu(x * scale.view(1, C, 1, 1) + shift.view(1, C, 1, 1))
            return (y.unsqueeze(0) * keep.to(x.dtype)[:, None, :, None, None]).reshape(R * N, C, H, W)

        compiled = torch.compile(expression, dynamic=False)
        impls["torch.compile"] = lambda x, scale, shift, keep, out: compiled(x, scale, shift, keep)
    for name in _backends_for(device):
        impls[name] = lambda x, scale, shift, keep, out, name=name: masked_bn_act(
            x, scale, shift, keep, "silu", out=out, backend=name
        )
    return impls


def stats_impls(device: str) -> dict[str, Callable]:
    impls: dict[str, Callable] = {"eager": lambda x: (x.abs().mean((0, 2, 3)), x.pow(2).mean((0, 2, 3)))}
    for name in _backends_for(device):
        impls[name] = lambda x, name=name: channel_activation_stats(x, backend=name)
    return impls


def _backends_for(device: str) -> list[str]:
    """Compiled backends that run natively on ``device`` (the Triton interpreter is not benchmarked)."""
    table = backends()
    if device == "cuda":
        return [name for name in ("triton", "cuda") if table[name][0]]
    return ["cpp"] if table["cpp"][0] else []


# ------------------------------------------------------------------------------------------ timing


def best_ms(fns: dict[str, Callable[[], object]], repeat: int, device: str) -> dict[str, float]:
    """Best wall time in ms of each callable over ``repeat`` rounds after one warm-up.

    The callables take turns within every round, so that a noisy neighbour on a shared machine
    disturbs all of them alike.
    """
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    best = dict.fromkeys(fns, float("inf"))
    for fn in fns.values():
        fn()
        sync()
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: seconds * 1e3 for name, seconds in best.items()}


#: every row measured in this run (``--json`` writes them)
ROWS: list[dict] = []


def copy_bandwidth(device: str, repeat: int, mib: int) -> float:
    """GB/s of a device-to-device copy of ``mib`` MiB (bytes read plus bytes written), best of ``repeat``."""
    src = torch.empty(mib * 2**18, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = best_ms({"copy": lambda: dst.copy_(src)}, repeat, device)["copy"]
    return 2 * src.nbytes / (ms * 1e-3) / 1e9


def _report(case: str, fns: dict[str, Callable[[], object]], nbytes: int, repeat: int, device: str) -> None:
    times = best_ms(fns, repeat, device)
    base = next(iter(times.values()))
    for name, ms in times.items():
        print(_row(case, name, ms, nbytes, base), flush=True)


def _row(case: str, name: str, ms: float, nbytes: int, base_ms: float) -> str:
    gbs = nbytes / (ms * 1e-3) / 1e9
    ROWS.append({"case": case, "implementation": name, "best_ms": ms, "gb_s": gbs, "vs_eager": base_ms / ms})
    return f"| {case} | {name} | {ms:9.2f} | {gbs:7.1f} | {base_ms / ms:6.2f}x |"


def _layer_list(spec: str, img: int) -> list[tuple[int, int, int]]:
    """Layer output shapes: 'representative' = the first yolov5s conv output at strides 2, 8 and 32."""
    if spec in ("representative", "all"):
        shapes = yolov5s_layer_shapes(img)
        if spec == "all":
            return shapes
        return [next(s for s in shapes if s[1] == img // stride) for stride in (2, 8, 32)]
    return [tuple(int(v) for v in item.split("x")) for item in spec.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=16 if torch.cuda.is_available() else 4)
    parser.add_argument("--img", type=int, default=640)
    parser.add_argument("--rs", default="1,8,19", help="candidate counts R, comma separated")
    parser.add_argument("--layers", default="representative", help="'representative', 'all' (yolov5s), or CxHxW,CxHxW")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--max-gib", type=float, default=6.0, help="skip masked_bn_act cases needing more memory")
    parser.add_argument("--compile", action="store_true", help="add torch.compile rows (default on GPU)")
    parser.add_argument("--ops", default="saliency,bn_act,stats")
    parser.add_argument("--copy-mib", type=int, default=256, help="size of the copy that measures bandwidth")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the rows and the copy bandwidth here")
    args = parser.parse_args(argv)
    device, ops = args.device, set(args.ops.split(","))
    with_compile = args.compile or device == "cuda"
    print(
        f"# pagcp ops, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, "
        f"device {device} ({torch.cuda.get_device_name() if device == 'cuda' else platform.processor() or 'cpu'}, "
        f"{torch.get_num_threads()} threads), command: python {' '.join(sys.argv)}"
    )
    copy = copy_bandwidth(device, args.repeat, args.copy_mib)
    print(f"device-to-device copy of {args.copy_mib} MiB: {copy:.1f} GB/s (read + write)")
    print("| case | implementation | best ms | GB/s | vs eager |\n|---|---|---:|---:|---:|")
    if "saliency" in ops:
        weights = yolov5x_conv_weights(device)
        masks = saliency_masks(weights)
        nbytes = sum(w.nbytes for w in weights)
        case = f"filter_saliency yolov5x ({len(weights)} convs, {nbytes / 1e6:.0f} MB)"
        fns = {name: partial(fn, weights, masks) for name, fn in saliency_impls(device).items()}
        _report(case, fns, nbytes, args.repeat, device)
        del weights
    shapes = _layer_list(args.layers, args.img)
    if "bn_act" in ops:
        impls = bn_act_impls(device, with_compile)
        for C, H, W in shapes:
            for R in (int(r) for r in args.rs.split(",")):
                shape = (args.batch, C, H, W)
                x, scale, shift, keep = bn_act_inputs(shape, R, device)
                need = x.nbytes * (R + 4)
                if need > args.max_gib * 2**30:
                    print(f"| masked_bn_act {shape} R={R} | skipped: needs {need / 2**30:.1f} GiB | | | |")
                    continue
                out = torch.empty((R * args.batch, C, H, W), device=device, dtype=x.dtype)
                nbytes = x.nbytes + out.nbytes
                case = f"masked_bn_act N={args.batch} C={C} {H}x{W} R={R}"
                fns = {name: partial(fn, x, scale, shift, keep, out) for name, fn in impls.items()}
                _report(case, fns, nbytes, args.repeat, device)
                del x, out
    if "stats" in ops:
        for C, H, W in shapes:
            x = bn_act_inputs((args.batch, C, H, W), 1, device)[0]
            case = f"channel_activation_stats N={args.batch} C={C} {H}x{W}"
            fns = {name: partial(fn, x) for name, fn in stats_impls(device).items()}
            _report(case, fns, x.nbytes, args.repeat, device)
    if args.json:
        for row in ROWS:
            row["of_copy_bandwidth"] = row["gb_s"] / copy
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"device": device, "copy_gb_s": copy, "rows": ROWS, "torch": torch.__version__}, f, indent=1)


if __name__ == "__main__":
    main()
