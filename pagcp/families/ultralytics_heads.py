"""Ultralytics' heads by task: which head classes each task has, a ``--weights`` value's task read without
unpickling anything, and the head matcher that says which convs inside a head read which of its inputs.

Tasks and heads (matched exactly: Segment, Pose and OBB subclass Detect):

| task | heads | per-input branches |
|---|---|---|
| detect | Detect, v10Detect | ``cv2`` (box), ``cv3`` (class) |
| segment | Segment, Segment26 | the same and ``cv4`` (mask coefficients), plus the prototype branch ``proto`` |
| pose | Pose, Pose26 | the same and ``cv4`` (keypoints; Pose26 ends it in ``cv4_kpts`` / ``cv4_sigma``) |

An end-to-end head (YOLO26, YOLOv10) has a ``one2one_`` copy of each branch, reading the same inputs.

Head inputs:
- input i feeds the first conv of every branch's i-th sequence: its channels are pruned for all of them at once;
- a branch that starts with a depthwise conv (the class branch of YOLO11, YOLO26, YOLOv10) pins its input: the
  engine runs a leaf head with input-sliced weights, which cannot change a depthwise conv's group count;
- Segment's ``proto`` reads input 0 through its first conv (``proto.cv1``), an ordinary reader;
- Segment26's ``Proto26`` reads inputs 1.. through ``feat_refine`` convs (ordinary readers) but adds input 0
  element-wise to their upsampled outputs, whose widths are the head's own: input 0 stays whole.

Whatever else reads an input is found by running the head once, and pins it (:mod:`pagcp.graph.heads`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from torch import nn

from pagcp.graph import HeadReads
from pagcp.graph.heads import first_conv
from pagcp.models.ultralytics_io import pickle_strings, require_ultralytics

#: Ultralytics' task -> the head class names of that task (in ``ultralytics.nn.modules.head``)
TASK_HEADS = {
    "detect": ("Detect", "v10Detect"),
    "segment": ("Segment", "Segment26"),
    "pose": ("Pose", "Pose26"),
}
#: Ultralytics' task -> the ``ultralytics.nn.tasks`` model class its yamls build
TASK_MODELS = {"detect": "DetectionModel", "segment": "SegmentationModel", "pose": "PoseModel"}
#: per-input branches of a head, one nn.ModuleList of sequences each (those a head has)
BRANCHES = ("cv2", "cv3", "cv4", "one2one_cv2", "one2one_cv3", "one2one_cv4")
#: model class names a checkpoint's pickle may name, and the task of each (others: not these tasks)
_PICKLED_TASKS = {"SegmentationModel": "segment", "PoseModel": "pose", "OBBModel": "obb",
                  "ClassificationModel": "classify", "DetectionModel": "detect"}  # fmt: skip
#: a shipped yaml name's suffix -> task, as Ultralytics names its configs (yolo11n-seg.yaml)
_NAME_SUFFIXES = {"-seg": "segment", "-pose": "pose", "-obb": "obb", "-cls": "classify"}


def head_classes(task: str) -> tuple[type, ...]:
    """The head classes of an Ultralytics task (see the module docstring)."""
    require_ultralytics()
    from ultralytics.nn.modules import head

    return tuple(getattr(head, name) for name in TASK_HEADS[task])


def model_head(model: nn.Module) -> nn.Module | None:
    """An Ultralytics model's last layer (its head), None when it has no layer list."""
    layers = getattr(model, "model", None)
    return layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None


def yaml_task(path: Path) -> str:
    """The task of an Ultralytics model yaml: by its last layer's module where the file exists, else by the
    name's suffix as Ultralytics names its configs (``yolov8n-seg.yaml``: segment)."""
    if path.is_file():
        cfg = yaml.safe_load(path.read_text()) or {}
        layers = (cfg.get("head") or cfg.get("backbone") or []) if isinstance(cfg, dict) else []
        last = str(layers[-1][2]) if layers and isinstance(layers[-1], list) and len(layers[-1]) > 2 else ""
        return next((task for task, heads in TASK_HEADS.items() if last in heads), "other" if last else "detect")
    stem = path.stem
    return next((task for suffix, task in _NAME_SUFFIXES.items() if suffix in stem), "detect")


def checkpoint_task(path: Path) -> str:
    """The task of an Ultralytics ``.pt`` by the model class its pickle names (read as strings, nothing is run);
    ``detect`` when it names none of them (the loader then says what it holds)."""
    names = pickle_strings(path)
    return next((task for cls, task in _PICKLED_TASKS.items() if cls in names), "detect")


def head_reads(name: str, module: nn.Module, inputs: list[torch.Tensor]) -> HeadReads | None:
    """The convs of a head that read its inputs (``inputs``: their channel layouts) directly, and the inputs it
    keeps whole (see the module docstring); None when the head does not have the branches its class promises."""
    reads = HeadReads()
    for attr in BRANCHES:
        branch = getattr(module, attr, None)
        if branch is None:
            continue
        if not isinstance(branch, nn.ModuleList) or len(branch) != len(inputs):
            return None
        for i, seq in enumerate(branch):
            found = first_conv(seq)
            if found is None or found[1].in_channels != len(inputs[i]):
                return None
            path, conv = found
            _add(reads, name, f"{name}.{attr}.{i}.{path}", conv, i)
    proto = getattr(module, "proto", None)
    if proto is not None:
        refine = getattr(proto, "feat_refine", None)
        if refine is not None:  # Proto26
            why = "Proto26 adds it to its feat_refine outputs, whose widths are the head's own"
            reads.pinned[0] = (
                f"{reads.pinned[0]}; and {why}" if 0 in reads.pinned else f"input 0 of leaf head {name}: {why}"
            )
            for i, block in enumerate(refine, start=1):
                _add(reads, name, f"{name}.proto.feat_refine.{i - 1}.conv", block.conv, i)
        else:
            _add(reads, name, f"{name}.proto.cv1.conv", proto.cv1.conv, 0)
    return reads


def _add(reads: HeadReads, name: str, full: str, conv: nn.Conv2d, i: int) -> None:
    """Record ``conv`` as a reader of input i of head ``name``, or pin input i when the conv is depthwise."""
    if conv.groups == 1:
        reads.convs.append((full, conv, i))
    elif i not in reads.pinned:
        reads.pinned[i] = (
            f"input {i} of leaf head {name}, read by its depthwise conv {full} (a leaf head runs with input-sliced "
            "weights, which cannot change a depthwise conv's group count)"
        )
