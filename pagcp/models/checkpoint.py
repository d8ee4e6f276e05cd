"""YOLOv5 checkpoint files: bundled checkpoints, official YOLOv5 ``.pt`` files, pagcp checkpoints (read and written).

pagcp's own checkpoint is a plain dict (no pickled classes, ``torch.load(weights_only=True)`` reads it)::

    {"format": "pagcp", "version": 1, "yaml": {...}, "widths": {conv name: [in, out, groups]},
     "state_dict": {...}, "names": [...], "meta": {...}}

The yaml describes the unpruned network; every conv's actual width comes from its tensors, so pruned models
round-trip (official pruned checkpoints load the same way).
"""

from __future__ import annotations

import lzma
import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pagcp.errors import CheckpointError, ConfigError, UnsafePickleError
from pagcp.models.safe_pickle import safe_pickle_module
from pagcp.models.yolo import Model

FORMAT = "pagcp"
VERSION = 1
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


#: the suffix of a bundled checkpoint shipped xz-compressed (unpacked once, on first use, by :func:`bundled_file`)
PACKED = ".pt.xz"


def bundled_weights() -> list[str]:
    """Names of the checkpoints shipped inside the package (e.g. 'yolov5n-demo')."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt"))


def bundled_file(name: str) -> Path:
    """The ``.pt`` file of the bundled checkpoint ``name``: the package's own, or one shipped as ``name.pt.xz`` (to
    keep the package small) unpacked once into ``$PAGCP_HOME/weights`` (default ``~/.cache/pagcp``), atomically.
    A name with neither gives the plain path, which does not exist (the loader names it)."""
    plain, packed = WEIGHTS_DIR / f"{name}.pt", WEIGHTS_DIR / f"{name}{PACKED}"
    if plain.is_file() or not packed.is_file():
        return plain
    home = Path(os.environ.get("PAGCP_HOME") or Path.home() / ".cache" / "pagcp") / "weights"
    out = home / f"{name}-{packed.stat().st_size}.pt"  # the packed size tells a newer bundle apart
    if not out.is_file():
        home.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=home)
        try:
            with os.fdopen(fd, "wb") as f, lzma.open(packed) as src:
                shutil.copyfileobj(src, f)
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return out


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def fit_widths(model: nn.Module, state_dict: dict[str, torch.Tensor], groups: dict[str, int] | None = None) -> None:
    """Resize every Conv2d / BatchNorm2d / Linear of ``model`` in place to the shapes found in ``state_dict`` (a
    pruned network's: a classifier's linear heads read fewer features when the trunk's last layer is pruned).

    ``groups`` (conv name -> groups) overrides the group count; otherwise a depthwise conv stays depthwise.
    """
    groups = groups or {}
    for name, module in list(model.named_modules()):
        weight = state_dict.get(f"{name}.weight")
        if weight is None:
            continue
        if isinstance(module, nn.Conv2d):
            g = groups.get(name)
            if g is None:
                depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
                g = weight.shape[0] if depthwise else module.groups
            c_out, c_in = weight.shape[0], weight.shape[1] * g
            if (c_out, c_in, g) != (module.out_channels, module.in_channels, module.groups):
                new = nn.Conv2d(
                    c_in,
                    c_out,
                    module.kernel_size,
                    module.stride,
                    module.padding,
                    module.dilation,
                    g,
                    bias=module.bias is not None,
                    padding_mode=module.padding_mode,
                )
                _set_submodule(model, name, new)
        elif isinstance(module, nn.BatchNorm2d) and weight.shape[0] != module.num_features:
            new = nn.BatchNorm2d(
                weight.shape[0], module.eps, module.momentum, module.affine, module.track_running_stats
            )
            _set_submodule(model, name, new)
        elif isinstance(module, nn.Linear) and tuple(weight.shape) != tuple(module.weight.shape):
            _set_submodule(model, name, nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None))


def conv_widths(model: nn.Module) -> dict[str, list[int]]:
    """Every Conv2d's [in_channels, out_channels, groups], by module name."""
    return {n: [m.in_channels, m.out_channels, m.groups] for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _build(
    cfg: dict, state_dict: dict[str, torch.Tensor], source: str, nc: int | None, groups: dict[str, int] | None = None
) -> Model:
    file_nc = int(cfg.get("nc", -1))
    if nc is not None and nc != file_nc:
        raise CheckpointError(
            f"{source}: the checkpoint was trained for nc={file_nc} classes but nc={nc} was requested; "
            "load it without nc (or with the data yaml that matches it)"
        )
    try:
        model = Model(cfg)
    except ConfigError as e:
        raise CheckpointError(f"{source}: its model yaml is invalid: {e}") from e
    fit_widths(model, state_dict, groups)
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith("anchor_grid")}
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()})
    except RuntimeError as e:
        raise CheckpointError(f"{source}: weights do not fit the model described by its yaml: {e}") from e
    return model


def _load_pagcp(ckpt: dict, source: str, nc: int | None) -> Model:
    version = ckpt.get("version", 0)
    if version > VERSION:
        raise CheckpointError(f"{source}: pagcp checkpoint version {version} is newer than this pagcp ({VERSION})")
    groups = {k: int(v[2]) for k, v in ckpt.get("widths", {}).items()}
    model = _build(ckpt["yaml"], ckpt["state_dict"], source, nc, groups)
    model.names = list(ckpt.get("names") or model.names)
    model.meta = dict(ckpt.get("meta") or {})
    return model


def _load_official(path: Path, nc: int | None) -> Model:
    try:
        ckpt = torch.load(path, map_location="cpu", pickle_module=safe_pickle_module, weights_only=False)
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("model") is None and ckpt.get("ema") is None:
        raise CheckpointError(f"{path}: not a YOLOv5 checkpoint (expected a dict with 'model' or 'ema')")
    src = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(src, nn.Module):
        raise CheckpointError(f"{path}: its 'model' entry is a {type(src).__name__}, not a pickled YOLOv5 model")
    cfg = getattr(src, "yaml", None)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: the pickled model carries no yaml dict; cannot rebuild its architecture")
    model = _build(cfg, src.state_dict(), str(path), nc)
    names = getattr(src, "names", None)
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if names:
        model.names = [str(n) for n in names]
    model.meta = {"source": "yolov5", "epoch": ckpt.get("epoch")}
    return model


#: how every torch file begins: a zip archive (torch.save since 1.6) or a pickle (protocol 2 or later)
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def check_torch_file(path: str | Path) -> Path:
    """``path`` if it can be a torch checkpoint; otherwise one CheckpointError naming the file and what it is (no
    such file, a directory, an empty file, text or another format), before anything tries to unpickle it."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        raise CheckpointError(f"{path}: an empty file (0 bytes), not a checkpoint (an interrupted download or copy?)")
    if not head.startswith(_TORCH_MAGIC):
        try:
            text = head[:24].decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and all(c.isprintable() or c.isspace() for c in text):
            raise CheckpointError(f"{path}: a text file (it begins {text!r}), not a torch checkpoint")
        raise CheckpointError(f"{path}: not a torch checkpoint (its first bytes are {head[:8].hex(' ')})")
    return path


def load_checkpoint_file(path: str | Path, nc: int | None = None) -> Model:
    """Load a pagcp checkpoint or an official YOLOv5 ``.pt`` file (through the allow-listing unpickler)."""
    path = check_torch_file(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError):
        ckpt = None  # not a pure-tensor file: an official checkpoint goes through the safe unpickler
    except (EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or not a torch file: {e})") from e
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        return _load_pagcp(ckpt, str(path), nc)
    return _load_official(path, nc)


def _check_meta(value: Any, key: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, (list, tuple)):
        return [_check_meta(v, key) for v in value]
    if isinstance(value, dict):
        return {str(k): _check_meta(v, f"{key}.{k}") for k, v in value.items()}
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    raise TypeError(
        f"save_model: metadata '{key}' has type {type(value).__name__}; use plain numbers, "
        "strings, lists, dicts or tensors"
    )


def save_model(model: nn.Module, path: str | Path, **meta: Any) -> Path:
    """Write ``model`` as a pagcp checkpoint (atomic: temp file + rename). Returns the path."""
    cfg = getattr(model, "yaml", None)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: save_model needs a pagcp YOLOv5 model (one with a .yaml config dict)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "yaml": cfg,
        "widths": conv_widths(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "names": list(getattr(model, "names", [])),
        "meta": {k: _check_meta(v, k) for k, v in meta.items()},
    }
    torch_save_atomic(ckpt, path)
    return path


def torch_save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and a rename, with the usual file mode (not mkstemp's 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make checkpoints private to their writer
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
