"""Leaf detection heads: which convs inside an opaque head read which of its inputs.

A detection head is traced as a leaf (its forward decodes boxes with shape-dependent code fx cannot follow),
so the channel analysis cannot see inside it. The functions here look at a leaf's submodules instead and
say, for each input tensor i, which Conv2d inside the head reads it (those are pruned on their input side,
like any consumer; their outputs, and everything after them inside the head, keep their widths) and which
inputs must stay whole (:class:`HeadReads`).

- YOLOv5's Detect (pagcp's and upstream's): input i feeds the 1x1 conv ``m[i]``.
- Ultralytics' Detect (YOLOv8, YOLO11, YOLO26, ...): input i feeds the first conv of ``cv2[i]`` (box branch),
  ``cv3[i]`` (class branch) and, in end-to-end heads, of ``one2one_cv2[i]`` / ``one2one_cv3[i]``. YOLO11's
  class branch starts with a depthwise conv; the engine runs a leaf with input-sliced weights only, which
  cannot change a depthwise conv's group count, so an input read that way is pinned (the reason says so).

A head of any other shape is opaque: all its inputs are pinned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

#: Ultralytics Detect's per-input branches (one nn.Sequential per input in each)
ULTRALYTICS_BRANCHES = ("cv2", "cv3", "one2one_cv2", "one2one_cv3")


@dataclass
class HeadReads:
    """What a leaf head does with its inputs: ``convs`` are (qualified name, Conv2d, input index) of the
    convs that read an input directly; ``pinned`` maps an input index to the reason it cannot be pruned."""

    convs: list[tuple[str, nn.Conv2d, int]] = field(default_factory=list)
    pinned: dict[int, str] = field(default_factory=dict)


def detect_like_consumers(name: str, module: nn.Module, inputs: list[torch.Tensor]) -> HeadReads | None:
    """YOLOv5-style head: input i feeds the 1x1 Conv2d ``m[i]``; None if the head is not that shape."""
    convs = getattr(module, "m", None)
    if not isinstance(convs, nn.ModuleList) or len(convs) != len(inputs):
        return None
    if not all(isinstance(c, nn.Conv2d) and c.groups == 1 for c in convs):
        return None
    if any(c.in_channels != len(ids) for c, ids in zip(convs, inputs)):
        return None
    return HeadReads([(f"{name}.m.{i}", c, i) for i, c in enumerate(convs)])


def _first_conv(branch: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The first Conv2d of a branch in module order (the one its input reaches first), with its path."""
    for path, sub in branch.named_modules():
        if isinstance(sub, nn.Conv2d):
            return path, sub
    return None


def ultralytics_detect_consumers(name: str, module: nn.Module, inputs: list[torch.Tensor]) -> HeadReads | None:
    """Ultralytics-style head: input i feeds the first conv of ``cv2[i]``, ``cv3[i]`` (and the one-to-one
    copies); None if the head is not that shape."""
    branches = [(a, b) for a in ULTRALYTICS_BRANCHES if isinstance(b := getattr(module, a, None), nn.ModuleList)]
    if not branches or any(len(b) != len(inputs) for _, b in branches):
        return None
    reads = HeadReads()
    for attr, branch in branches:
        for i, seq in enumerate(branch):
            found = _first_conv(seq)
            if found is None or found[1].in_channels != len(inputs[i]):
                return None
            path, conv = found
            full = f"{name}.{attr}.{i}.{path}"
            if conv.groups == 1:
                reads.convs.append((full, conv, i))
            elif i not in reads.pinned:
                reads.pinned[i] = f"input {i} of leaf head {name}, read by its depthwise conv {full}"
    return reads


def leaf_head_consumers(name: str, module: nn.Module, inputs: list[torch.Tensor]) -> HeadReads | None:
    """The convs of a leaf detection head that read its inputs (YOLOv5 or Ultralytics style); None if neither."""
    reads = detect_like_consumers(name, module, inputs)
    return reads if reads is not None else ultralytics_detect_consumers(name, module, inputs)
