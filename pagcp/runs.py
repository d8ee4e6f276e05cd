"""Run folders and the files in them: ``runs/<task>/expN`` (YOLOv5-like), yaml settings, atomic JSON writes."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import yaml

LOGGER = logging.getLogger(__name__)


def increment_run_dir(project: str | os.PathLike, name: str = "exp", exist_ok: bool = False) -> Path:
    """``project/name`` if it is free (or ``exist_ok``), else ``project/name2``, ``name3``, ... (YOLOv5-like)."""
    base = Path(project) / name
    if exist_ok or not base.exists():
        return base
    pattern = re.compile(rf"^{re.escape(name)}(\d+)$")
    taken = [int(m.group(1)) for p in Path(project).iterdir() if (m := pattern.match(p.name))]
    return Path(project) / f"{name}{max(taken, default=1) + 1}"


def save_yaml(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write a dict as a human-readable yaml file (keys in insertion order)."""
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f, sort_keys=False)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (:func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(obj, indent=indent))
