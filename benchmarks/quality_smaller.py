"""The ``smaller-stock`` row: the question every pruning paper must answer, whether pruning beats training a
smaller network of the same family from scratch at the same cost.

The network is the unpruned model's own YOLOv5 config with a smaller ``width_multiple``, bisected so that its
GFLOPs land within ±2 % of PAGCP's at that target and seed (:func:`smaller_config`). A stock config rounds
every width up to a multiple of 8 (``channel_multiple``), whose GFLOPs move in steps too coarse for that at
most targets (yolov5n at 320 px: 0.636 -> 0.785 GFLOPs between widths 0.18 and 0.19); the bisection then
tries multiples of 4, 2 and 1, and the row says which it took.

It is trained from random weights by pagcp's training loop with ``--hyp scratch``, on the same train split,
batch and seed as every other row, for ``--scratch-epochs`` epochs. A fair count is what the pruned models
had in all: the unpruned checkpoint's own training plus the fine-tuning budget. ``auto`` (the default) takes
``--original-epochs`` + the budget; yolov5n-demo was trained 14 epochs from scratch and fine-tuned 7 (its
checkpoint's ``command``), so ``--original-epochs 21`` and a 3-epoch budget train it 24 epochs. Rows with the
same width, seed and epoch count share one training run.
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import torch
from quality_checks import row_latency
from quality_methods import finetune, validate
from quality_stats import MATCH_TOLERANCE
from torch import nn

import pagcp
from pagcp.families import family_of

#: channel multiples tried in turn: the stock one first
DIVISORS = (8, 4, 2, 1)


def stock_config(model: nn.Module) -> dict[str, Any]:
    """The YOLOv5 config (yaml dict) of ``model``; only YOLOv5 models have one pagcp can rebuild at any width."""
    if family_of(model).name != "yolov5" or not isinstance(getattr(model, "yaml", None), dict):
        raise SystemExit(f"--smaller: needs a YOLOv5 model (its width_multiple is bisected); got a "
                         f"{family_of(model).title} model")  # fmt: skip
    cfg = copy.deepcopy(model.yaml)
    cfg.pop("yaml_file", None)
    return cfg


def width_config(base: dict[str, Any], width: float, divisor: int) -> dict[str, Any]:
    """``base`` at ``width_multiple`` ``width`` with widths rounded up to multiples of ``divisor``."""
    return {**copy.deepcopy(base), "width_multiple": round(width, 6), "channel_multiple": divisor}


def config_gflops(cfg: dict[str, Any], img: int) -> float:
    """GFLOPs at ``img`` px of the network ``cfg`` builds."""
    from pagcp.models.yolo import Model

    return pagcp.model_stats(Model(cfg), img)["gflops"]


def _bisect_width(base: dict[str, Any], divisor: int, goal: float, img: int, steps: int) -> tuple[float, float]:
    """(width, GFLOPs) closest to ``goal`` at this divisor (GFLOPs never fall as the width grows)."""
    lo, hi = 0.0, float(base["width_multiple"])
    best = (hi, config_gflops(width_config(base, hi, divisor), img))
    for _ in range(steps):
        mid = (lo + hi) / 2
        g = config_gflops(width_config(base, mid, divisor), img)
        if abs(g - goal) < abs(best[1] - goal):
            best = (mid, g)
        lo, hi = (lo, mid) if g > goal else (mid, hi)
        if abs(g - goal) <= goal * MATCH_TOLERANCE / 4:
            break
    return best


def smaller_config(base: dict[str, Any], goal_gflops: float, img: int, steps: int = 24) -> dict[str, Any]:
    """The config of ``base``'s family at the width whose GFLOPs are within ±MATCH_TOLERANCE of
    ``goal_gflops``: the coarsest channel multiple (8, the stock one, then 4, 2, 1) that lands within half of
    it, else the closest that lands within it; SystemExit when none does."""
    found = []
    for divisor in DIVISORS:
        width, g = _bisect_width(base, divisor, goal_gflops, img, steps)
        found.append((abs(g / goal_gflops - 1), divisor, width, g))
        if found[-1][0] <= MATCH_TOLERANCE / 2:
            break
    off, divisor, width, _ = min(found)
    if off > MATCH_TOLERANCE:
        closest = ", ".join(f"{g:.4f} (multiple of {d})" for _, d, _, g in found)
        raise SystemExit(f"--smaller: no width lands within {MATCH_TOLERANCE:.0%} of {goal_gflops:.4f} GFLOPs; "
                         f"closest: {closest}")  # fmt: skip
    return width_config(base, width, divisor)


def scratch_epochs(args: argparse.Namespace, budget: int) -> int:
    """``--scratch-epochs``, or with ``auto`` ``--original-epochs`` + the fine-tuning budget."""
    if args.scratch_epochs == "auto":
        return args.original_epochs + budget
    return int(args.scratch_epochs)


def smaller_row(args: argparse.Namespace, cfg: dict, model: nn.Module, ours: dict[str, Any]) -> dict[str, Any]:
    """The smaller stock network matched to PAGCP's row ``ours``, trained from scratch (module docstring)."""
    t0 = time.perf_counter()
    seed, epochs = ours["seed"], scratch_epochs(args, ours["epochs"])
    net = smaller_config(stock_config(model), ours["gflops"], args.img)
    from pagcp.models.yolo import Model

    torch.manual_seed(seed)
    fresh = Model(net).float().eval()
    name = f"smaller-w{net['width_multiple']:g}-m{net['channel_multiple']}-seed{seed}-scratch{epochs}"
    trained = finetune(fresh, args, epochs, name, seed, hyp="scratch")
    stats = pagcp.model_stats(trained, args.img)
    return {"method": "smaller-stock", "schedule": "scratch", "target": ours["target"], "seed": seed,
            "epochs": ours["epochs"], "scratch_epochs": epochs, "width_multiple": net["width_multiple"],
            "channel_multiple": net["channel_multiple"], **stats,
            "gflops_vs_pagcp": round(stats["gflops"] / ours["gflops"], 4), "map50_95_pruned": None,
            **{f"{k}_finetuned": v for k, v in validate(trained, cfg, args.img).items()},
            **row_latency(trained, args, name), "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
