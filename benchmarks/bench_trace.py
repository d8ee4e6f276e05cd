"""Time to build the channel graph of a model: pagcp.trace vs torch-pruning's DependencyGraph.

    python benchmarks/bench_trace.py [--model yolov5x] [--img 640] [--repeat 3]

torch-pruning is optional (``pip install --no-deps torch-pruning``); without it only pagcp is timed.
Both get the same model object and the same 1x3xSxS input; the best of ``--repeat`` runs is shown,
with one plain forward pass of the model for scale.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch

import pagcp


def best_of(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolov5x", help="pagcp.load_model spec")
    parser.add_argument("--img", type=int, default=640, help="input size in pixels")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    model = pagcp.load_model(args.model).eval()
    x = torch.zeros(1, 3, args.img, args.img)
    pagcp.trace(model, x)  # warm-up: imports and first-use costs of torch.fx and meta kernels
    rows = [("pagcp.trace", best_of(lambda: pagcp.trace(model, x), args.repeat))]
    graph = pagcp.trace(model, x)
    with torch.no_grad():
        rows.append(("one forward pass (reference)", best_of(lambda: model(x), args.repeat)))
    try:
        import torch_pruning as tp
    except ImportError:
        tp = None
    if tp is not None:

        def build() -> object:
            return tp.DependencyGraph().build_dependency(model, example_inputs=x)

        rows.append((f"torch_pruning {tp.__version__} DependencyGraph", best_of(build, args.repeat)))
    print(
        f"{args.model} @ {args.img}: {len(graph)} units; torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    for name, seconds in rows:
        print(f"  {name:<40} {seconds * 1000:10.1f} ms")
    if tp is None:
        print("  torch_pruning not installed: pip install --no-deps torch-pruning")


if __name__ == "__main__":
    main()
