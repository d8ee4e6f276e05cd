"""Where the engine's search time goes, and how far it is from its floor (used by ``bench_search.py --profile``).

The search runs once under ``torch.profiler`` (CPU activities). Every operator's *self* time is put in one
category, by the operator and the range of the oracle it ran in (the oracle marks ``pagcp.prefix``,
``pagcp.suffix`` and ``pagcp.loss``):

- ``convolutions``: convolution kernels in the prefix and suffix passes;
- ``BN/activation/mask``: pagcp's fused ops (``pagcp::masked_bn_act*``), the activations of compact steps
  (their BN is folded into the conv) and the masks of tied norms;
- ``other layers``: the model's other operators (pooling, concatenation, upsampling, addition);
- ``engine copies``: copies the engine makes (repeating prefix values for R candidates, layout copies);
- ``loss``: every operator inside the loss;
- ``saliency, selection, counting``: operators outside the oracle's passes (filter saliency, candidate
  masks, FLOP counts, topk);
- ``graph walking and Python``: the wall time no operator accounts for. (Data: none; the oracle's images are
  decoded once before the search.)

The **floor** is the time of the network's own operators that the decisions need (convolutions,
BN/activation/mask, other layers: each unit's prefix once per batch, the suffix of every evaluated
candidate); ``engine/floor`` is the search's wall time over it, both from the same profiled run (the profiler
adds a few microseconds per operator to the Python share, so the ratio is an upper bound).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

CATEGORIES = ("convolutions", "BN/activation/mask", "other layers", "engine copies", "loss",
              "saliency, selection, counting", "graph walking and Python")  # fmt: skip
FLOOR = ("convolutions", "BN/activation/mask", "other layers")
ACTIVATIONS = ("aten::silu", "aten::relu", "aten::sigmoid", "aten::hardswish", "aten::leaky_relu", "aten::mul")
LAYERS = ("aten::max_pool", "aten::cat", "aten::upsample", "aten::add", "aten::avg_pool", "aten::adaptive")
RANGES = ("pagcp.prefix", "pagcp.suffix", "pagcp.loss")


def _names_above(event: Any) -> list[str]:
    found = []
    parent = event.cpu_parent
    while parent is not None:
        found.append(parent.name)
        parent = parent.cpu_parent
    return found


def _category(event: Any) -> str | None:
    """The category of one profiler event by its own name and the oracle ranges above it (None: a range)."""
    name = event.name
    if name in RANGES:
        return None
    above = _names_above(event)
    if "pagcp.loss" in above:
        return "loss"
    if not {"pagcp.prefix", "pagcp.suffix"} & set(above):
        return "saliency, selection, counting"
    chain = [name, *above]  # an operator called inside a convolution or a fused op counts as that
    if any(n.startswith("pagcp::") for n in chain):
        return "BN/activation/mask"
    if any("convolution" in n or "conv2d" in n for n in chain):
        return "convolutions"
    for n in chain[:2]:  # the op itself, or the layer op it runs for (e.g. max_pool2d_with_indices)
        if n.startswith(ACTIVATIONS):
            return "BN/activation/mask"
        if n.startswith(LAYERS):
            return "other layers"
    return "engine copies"


def profile_search(run: Callable[[], Any]) -> dict[str, Any]:
    """Run ``run()`` (a search) under the profiler; seconds per category, the floor and engine/floor."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        run()
        wall = time.perf_counter() - t0
    seconds = dict.fromkeys(CATEGORIES, 0.0)
    for event in prof.events():
        category = _category(event)
        if category is not None:
            seconds[category] += event.self_cpu_time_total / 1e6
    ops = sum(seconds.values())
    seconds["graph walking and Python"] = max(wall - ops, 0.0)
    floor = sum(seconds[k] for k in FLOOR)
    return {"wall_seconds": round(wall, 2), "seconds": {k: round(v, 2) for k, v in seconds.items()},
            "floor_seconds": round(floor, 2),
            "engine_over_floor": round(wall / floor, 3) if floor else None}  # fmt: skip


def print_profile(p: dict[str, Any]) -> None:
    wall = p["wall_seconds"]
    print(f"\n| where the engine's time goes (profiled run, {wall:.1f} s) | seconds | share |")
    print("|---|---:|---:|")
    for name, s in p["seconds"].items():
        print(f"| {name} | {s:.2f} | {100 * s / wall:.1f} % |")
    print(f"| floor: {', '.join(FLOOR)} | {p['floor_seconds']:.2f} | {100 * p['floor_seconds'] / wall:.1f} % |")
    print(f"engine / floor = {p['engine_over_floor']}")
