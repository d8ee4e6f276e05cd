"""Data yaml: resolve split paths, class names and the built-in ``demo`` dataset."""

from __future__ import annotations

import logging
import os
from typing import Any

import yaml

from pagcp.errors import ConfigError

SPLITS = ("train", "val", "test")
_said: set[str] = set()  # data yamls whose made-up class names were already said


def is_demo_spec(spec: str) -> bool:
    """Whether a ``--data`` value names a generated demo set (``demo``, ``demo-seg``, ``demo-pose``, with or
    without ``:params``)."""
    from pagcp.data.demo_labels import KINDS

    return spec.partition(":")[0] in KINDS


def _parse_demo_spec(spec: str) -> dict[str, Any]:
    """``demo`` or ``demo-seg:train=200,val=50,img=160,seed=1`` -> keyword arguments of ``ensure_demo``."""
    name, _, rest = spec.partition(":")
    params: dict[str, Any] = {"name": name}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in ("train", "val", "img", "seed"):
            raise ConfigError(f"--data {spec!r}: expected {name}:train=N,val=M,img=S,seed=K, got {item!r}")
        try:
            params[key] = int(value)
        except ValueError as e:
            raise ConfigError(f"--data {spec!r}: {key} must be an integer, got {value!r}") from e
    return params


def _names_list(names: Any, nc: Any, source: str) -> tuple[list[str], int]:
    if names is None:
        if nc is None:
            raise ConfigError(f"{source}: needs 'names' (list or index->name dict) or 'nc'")
        if source not in _said:
            _said.add(source)
            logging.getLogger("pagcp").warning(
                "%s: no 'names'; its nc=%d classes are called class0 ... class%d in tables and reports",
                source, int(nc), int(nc) - 1,
            )  # fmt: skip
        return [f"class{i}" for i in range(int(nc))], int(nc)
    if isinstance(names, dict):
        try:
            index = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{source}: 'names' dict keys must be class indices 0..n-1") from e
        if sorted(index) != list(range(len(index))):
            raise ConfigError(f"{source}: 'names' dict keys must be 0..{len(index) - 1}, got {sorted(index)}")
        names = [index[i] for i in range(len(index))]
    elif isinstance(names, (list, tuple)):
        names = [str(n) for n in names]
    else:
        raise ConfigError(f"{source}: 'names' must be a list or a dict, got {type(names).__name__}")
    if nc is not None and int(nc) != len(names):
        raise ConfigError(f"{source}: nc={nc} but {len(names)} names are given")
    return names, len(names)


def _resolve_split(value: Any, root: str) -> Any:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [_resolve_split(v, root) for v in value]
    path = os.path.expanduser(str(value))
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(root, path))


def load_data_config(spec: str | os.PathLike | dict[str, Any]) -> dict[str, Any]:
    """Read a data yaml (or dict, or ``"demo"``) into a dict with absolute split paths.

    Returns keys ``path`` (root), ``train``, ``val``, ``test`` (absolute path, list of them, or None),
    ``nc``, ``names`` (list) and ``yaml_file``. A relative ``path`` is taken relative to the yaml's folder;
    splits are relative to ``path`` (the yaml's folder when absent). ``"demo"`` generates the demo dataset
    on first use (see ``pagcp.data.demo``); ``"demo:train=200,val=50,img=160,seed=1"`` picks its size;
    ``"demo-seg"`` and ``"demo-pose"`` are the same images with polygons, and with keypoints.
    """
    yaml_file = None
    if isinstance(spec, dict):
        raw, base = dict(spec), os.getcwd()
    else:
        spec = os.fspath(spec)
        if is_demo_spec(spec):
            from pagcp.data.demo import ensure_demo

            spec = ensure_demo(**_parse_demo_spec(spec))
        if os.path.isdir(spec) and os.path.isfile(os.path.join(spec, "data.yaml")):
            spec = os.path.join(spec, "data.yaml")
        if not os.path.isfile(spec):
            raise ConfigError(
                f"data yaml {spec} not found (pass a data yaml path, a dict, 'demo', 'demo-seg' or 'demo-pose')"
            )
        try:
            with open(spec, encoding="utf-8") as f:
                raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"data yaml {spec}: invalid yaml ({e})") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"data yaml {spec}: expected a mapping with train/val/names keys")
        yaml_file = os.path.abspath(spec)
        base = os.path.dirname(yaml_file)
    source = yaml_file or "data dict"
    root = os.path.expanduser(str(raw.get("path") or base))
    if not os.path.isabs(root):
        root = os.path.normpath(os.path.join(base, root))
    names, nc = _names_list(raw.get("names"), raw.get("nc"), source)
    cfg = dict(raw)
    cfg.update({"path": root, "names": names, "nc": nc, "yaml_file": yaml_file})
    for split in SPLITS:
        cfg[split] = _resolve_split(raw.get(split), root)
    if cfg["train"] is None and cfg["val"] is None:
        raise ConfigError(f"{source}: needs at least a 'train' or 'val' split")
    return cfg


def is_coco_dataset(cfg: dict[str, Any]) -> bool:
    """True for COCO (80 classes, a val split under a folder named like coco): its json uses the 91 ids."""
    val = cfg.get("val")
    return cfg.get("nc") == 80 and isinstance(val, str) and "coco" in val.lower()


def coco_ground_truth(cfg: dict[str, Any]) -> str | None:
    """The COCO-format ground-truth json of the val split, when one exists.

    Looked up as the yaml key ``coco_json`` (relative to ``path``), else ``annotations/instances_val2017.json``
    or ``annotations/instances_val.json`` under ``path``.
    """
    candidates = []
    if cfg.get("coco_json"):
        candidates.append(_resolve_split(cfg["coco_json"], cfg["path"]))
    candidates += [
        os.path.join(cfg["path"], "annotations", "instances_val2017.json"),
        os.path.join(cfg["path"], "annotations", "instances_val.json"),
    ]
    return next((c for c in candidates if os.path.isfile(c)), None)
