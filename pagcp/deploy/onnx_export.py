"""ONNX export of a pagcp YOLOv5 model, and the check that ONNX Runtime computes what PyTorch computes.

The exported graph is the model in eval mode reduced to Detect's inference output: one tensor
``output0`` of shape ``(batch, anchors, 5 + nc)`` (xywh in pixels, objectness, class scores) from the
input ``images`` ``(batch, 3, height, width)``. The exporter is torch's TorchScript-based one
(``dynamo=False``): it needs no package beyond onnx, works offline, and keeps the grids of a
``dynamic=True`` export symbolic. Files are written to a temporary name in the target folder, checked with
``onnx.checker`` and then renamed, so a failed export never leaves a file behind.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pagcp.deploy.runtime import input_array, open_session, require
from pagcp.errors import ConfigError
from pagcp.models.yolo import Detect

LOGGER = logging.getLogger(__name__)
INPUT_NAME = "images"
OUTPUT_NAME = "output0"
MIN_OPSET = 11  # Resize with nearest/asymmetric modes, as the Upsample layers need


class Prediction(nn.Module):
    """A detector whose forward returns only the decoded prediction tensor, the ONNX file's first output (Detect
    also returns raw maps; a segmentation head returns (prediction, prototypes) first)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        while isinstance(out, (tuple, list)):
            out = out[0]
        return out


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _clear_grids(model: nn.Module) -> None:
    """Detect caches its grids per shape; a cached grid traced into the graph would freeze the input size."""
    for m in model.modules():
        if isinstance(m, Detect):
            m._grids = {}


def _check_opset(opset: int | None) -> None:
    if opset is None:
        return
    top = getattr(getattr(torch.onnx, "_constants", None), "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", None)
    if opset < MIN_OPSET or (top is not None and opset > top):
        raise ConfigError(f"--opset {opset}: the exporter supports opsets {MIN_OPSET} to {top or 'its newest'}")


def _prepared(model: nn.Module, half: bool, example: torch.Tensor) -> Prediction:
    """A copy of ``model`` in eval mode (fp16 if ``half``) that returns the prediction tensor, checked once."""
    net = Prediction(copy.deepcopy(model)).eval()
    if half:
        net.half()
    for p in net.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        out = net(example)
    if not isinstance(out, torch.Tensor) or out.ndim != 3:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"export_onnx: expected a YOLOv5 model whose eval output is (batch, anchors, 5 + nc), got {shape}"
        )
    _clear_grids(net)
    return net


def _trace_to(net: Prediction, example: torch.Tensor, tmp: str, dynamic: bool, opset: int | None) -> None:
    axes = None
    if dynamic:
        axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, OUTPUT_NAME: {0: "batch", 1: "anchors"}}
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter is chosen on purpose (see the module docstring); its deprecation notices
        # (one to the caller, others from inside torch.onnx) are noise here
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        torch.onnx.export(
            net,
            (example,),
            tmp,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
        )


def _finish(tmp: str, model: nn.Module) -> None:
    """Record stride and class names in the file's metadata, then validate it with onnx.checker."""
    onnx = require("onnx")
    proto = onnx.load(tmp)
    stride = getattr(model, "stride", None)
    meta = {
        "stride": str(int(stride.max().item())) if isinstance(stride, torch.Tensor) else "",
        "names": json.dumps(list(getattr(model, "names", []))),
        "producer": "pagcp",
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, tmp)
    try:
        onnx.checker.check_model(tmp, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ConfigError(f"export_onnx: the exported graph is not valid ONNX: {e}") from e


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    img_size: int | tuple[int, int] = 640,
    half: bool = False,
    dynamic: bool = False,
    opset: int | None = None,
) -> Path:
    """Write ``model`` (a pagcp YOLOv5 model) as an ONNX file of its eval-mode prediction; returns the path.

    ``img_size``: the example input's side (or ``(h, w)``), fixed in the file unless ``dynamic`` (then batch,
    height and width are free). ``half``: fp16 weights and input; needs the model on a CUDA device.
    ``opset``: ONNX opset (None: torch's default). The model itself is left untouched (a copy is exported).
    """
    require("onnx")
    device = _device(model)
    if half and device.type != "cuda":
        raise ConfigError(f"--half: fp16 export needs the model on a CUDA device (--device 0), it is on {device}")
    _check_opset(opset)
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    example = torch.zeros(1, 3, h, w, device=device, dtype=torch.float16 if half else torch.float32)
    net = _prepared(model, half, example)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        _trace_to(net, example, tmp, dynamic, opset)
        _finish(tmp, model)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the file private to its writer
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    LOGGER.debug("ONNX export: %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


def max_abs_diff(
    path: str | os.PathLike, model: nn.Module, img_size: int | tuple[int, int], batch: int = 1, seed: int = 0
) -> float:
    """Largest absolute difference between ONNX Runtime's output for ``path`` and ``model``'s eval prediction.

    Both see the same seeded uniform [0, 1) batch; an fp16 file is compared with an fp16 copy of the model.
    ONNX Runtime runs on the CPU, or on CUDA when the model is on CUDA and onnxruntime-gpu is installed.
    """
    ort = require("onnxruntime")
    device = _device(model)
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = open_session(path, providers=providers)
    x = input_array(session, path, img_size, batch, seed)
    try:
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    except Exception as e:  # onnxruntime's pybind exceptions (e.g. no fp16 kernel for an op on the CPU)
        raise ConfigError(f"{path}: onnxruntime could not run it: {e}") from e
    reference = copy.deepcopy(model).half() if x.dtype == np.float16 else model
    training = reference.training
    try:
        with torch.no_grad():
            want = Prediction(reference).eval()(torch.from_numpy(x).to(device)).float().cpu().numpy()
    finally:
        reference.train(training)  # the caller's model keeps its mode
    if got.shape != want.shape:
        raise ConfigError(f"{path}: output shape {got.shape} differs from PyTorch's {want.shape}")
    return float(np.abs(got.astype(np.float32) - want).max())
