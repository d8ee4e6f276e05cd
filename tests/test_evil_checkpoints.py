"""A malicious pickle disguised as each kind of checkpoint pagcp reads is refused, and its payload never runs.

Kinds: an official YOLOv5 ``.pt``, a pagcp checkpoint (plain dict), a YOLOv5 training ``last.pt`` (optimizer
state inside), and Ultralytics checkpoints of a detection model, of YOLO26, of a segmentation and of a pose model
(the family is told by the pickle naming ``ultralytics.`` globals and the task's model class, so the disguise
carries a real Ultralytics model). The payload sits where such a
file keeps each part (the model, the EMA, the optimizer state, the training arguments, an attribute of a real
module), calls ``os.system`` or ``builtins.exec``, and would create a marker file; every load must raise
UnsafePickleError naming the file and the global, and leave no marker. Each command (prune, val, train, export)
prints one line naming the file and exits 2 before any run folder exists.
"""

from __future__ import annotations

import builtins
import importlib
import os

import pytest
import torch
from torch import nn

import pagcp
from pagcp.errors import UnsafePickleError
from pagcp.models.checkpoint import FORMAT


class _Payload:
    """Unpickling this calls ``function(*args)``."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _payload(kind: str, marker) -> _Payload:
    if kind == "system":
        return _Payload(os.system, f"touch {marker}")
    return _Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()")


def _yolov5(evil, where: str) -> dict:
    """An official YOLOv5 checkpoint's layout, ``evil`` at ``where``."""
    ckpt = {"epoch": 3, "best_fitness": 0.5, "model": nn.Sequential(nn.Conv2d(3, 4, 1)), "ema": None, "updates": 10,
            "optimizer": {"state": {}, "param_groups": []}, "opt": {"weights": "yolov5s.pt"}}  # fmt: skip
    if where == "attribute":
        ckpt["model"].payload = evil  # an attribute of the pickled module
    elif where == "optimizer":
        ckpt["optimizer"]["state"][0] = {"momentum_buffer": evil}
    elif where == "opt":
        ckpt["opt"]["hyp"] = [evil]
    else:
        ckpt[where] = evil
    return ckpt


def _pagcp(evil) -> dict:
    """pagcp's own plain-dict format, with a pickled object where a tensor belongs (the loader's weights_only read
    fails on it, so the file goes to the allow-listing unpickler, which must refuse it too)."""
    return {"format": FORMAT, "version": 1, "yaml": {"nc": 1}, "state_dict": {"w": evil}, "meta": {}}


def _ultralytics(yaml_name: str, evil, where: str) -> dict:
    model = pagcp.load_model(yaml_name, nc=2)
    ckpt = {"model": model, "ema": None, "updates": 0, "optimizer": None, "train_args": {"imgsz": 64},
            "version": "8.4.0", "date": "2026-01-01"}  # fmt: skip
    if where == "attribute":
        model.model[-1].payload = evil  # inside the head of a real Ultralytics network
    elif where == "train_args":
        ckpt["train_args"]["callbacks"] = evil
    else:
        ckpt[where] = evil
    return ckpt


KINDS = [
    *[("yolov5s.pt", "yolov5", w) for w in ("model", "ema", "attribute", "optimizer", "opt")],
    ("pruned.pt", "pagcp", "state_dict"),
    ("last.pt", "yolov5", "optimizer"),  # a YOLOv5 training checkpoint, as a resumed fine-tune reads it
    *[("yolov8n.pt", "yolov8n.yaml", w) for w in ("attribute", "ema", "train_args")],
    *[("yolo26n.pt", "yolo26n.yaml", w) for w in ("attribute", "optimizer")],
    *[("yolov8n-seg.pt", "yolov8n-seg.yaml", w) for w in ("attribute", "ema")],
    *[("yolo11n-pose.pt", "yolo11n-pose.yaml", w) for w in ("attribute", "train_args")],
]


@pytest.mark.parametrize("payload", ["system", "exec"])
@pytest.mark.parametrize(("name", "kind", "where"), KINDS)
def test_a_disguised_checkpoint_is_refused_and_never_runs(tmp_path, name, kind, where, payload):
    marker = tmp_path / "ran"
    evil = _payload(payload, marker)
    if kind == "yolov5":
        ckpt = _yolov5(evil, where)
    elif kind == "pagcp":
        ckpt = _pagcp(evil)
    else:
        ckpt = _ultralytics(kind, evil, where)
    path = tmp_path / name
    torch.save(ckpt, path)
    named = r"(posix|nt)\.system" if payload == "system" else r"(__builtin__|builtins)\.exec"
    with pytest.raises(UnsafePickleError, match=rf"{name}.*{named}"):
        pagcp.load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["prune", "val", "train", "export"])
def test_every_command_refuses_a_disguised_checkpoint_in_one_line(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "ran"
    path = tmp_path / "yolov5s.pt"
    torch.save(_yolov5(_payload("system", marker), "model"), path)
    main = importlib.import_module(f"pagcp.cli.{command}").main
    args = ["--weights", str(path)] + ([] if command == "export" else ["--data", "demo:train=16,val=8,img=64"])
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "system" in err[0], err
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_the_payload_is_live(tmp_path):
    """The control: a plain unpickler does run it (so the refusals above are what keeps the marker away)."""
    marker = tmp_path / "ran"
    path = tmp_path / "yolov5s.pt"
    torch.save(_yolov5(_payload("exec", marker), "optimizer"), path)
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.exists()
