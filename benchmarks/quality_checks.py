"""What every row of the quality benchmark is measured and checked by, beside mAP: its deployed latency, and
that nothing PAGCP steered by came from the val split the rows are scored on.

- :func:`row_latency`: the row's model exported by its family's ``export_onnx`` and timed by ONNX Runtime on
  the CPU at batch 1 (:func:`pagcp.deploy.compare_latency`), interleaved run by run with the unpruned model,
  so that a change of load on a shared machine hits both alike: ``latency_ms_median`` and ``latency_ms_min``
  of the row's model, ``latency_unpruned_ms_median`` of the unpruned one in the same session and the ratio
  of the two medians (``speedup_vs_unpruned``). No PyTorch timing is reported.
- :func:`check_oracle_not_val`: a PAGCP run folder's ``oracle_images.txt`` (the images its oracle read) holds
  no image of the data's val split, by path or by content; otherwise the benchmark stops, naming the image.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
from pathlib import Path
from typing import Any

from torch import nn

import pagcp
from pagcp.data.dataset import image_files
from pagcp.errors import ConfigError
from pagcp.families import family_of

#: untimed runs of every model before the interleaved timed ones
LATENCY_WARMUP = 5


def _onnx(model: nn.Module, path: Path, img: int) -> Path:
    """``model`` exported to ``path`` by its family (afresh: a file left by an earlier run may be another model)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    family_of(model).export_onnx(model, path, img)
    return path


_REFERENCES: dict[tuple[str, int, str], Path] = {}


def reference_onnx(args: argparse.Namespace) -> Path:
    """The unpruned model (``--weights``) as ONNX, the reference every row's latency is measured beside
    (exported once per process)."""
    key = (str(args.weights), args.img, str(args.project))
    if key not in _REFERENCES or not _REFERENCES[key].is_file():
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(str(args.weights)).name)
        path = Path(args.project) / "onnx" / f"unpruned-{safe}-{args.img}.onnx"
        _REFERENCES[key] = _onnx(pagcp.load_model(args.weights), path, args.img)
    return _REFERENCES[key]


def row_latency(model: nn.Module, args: argparse.Namespace, name: str) -> dict[str, Any]:
    """ONNX Runtime CPU latency of ``model`` at batch 1 (see the module docstring); ``name`` names its ONNX
    file. Where the model cannot be exported or onnxruntime is missing, the reason is the row's
    ``latency_error``."""
    from pagcp.deploy import compare_latency

    try:
        ref = reference_onnx(args)
        own = None if name == "unpruned" else _onnx(model, Path(args.project) / "onnx" / f"{name}.onnx", args.img)
        paths = {"model": ref} if own is None else {"model": own, "unpruned": ref}
        times = compare_latency(paths, args.img, runs=args.latency_runs, warmup=LATENCY_WARMUP)
    except ConfigError as e:
        return {"latency_error": str(e)}
    ours = times["model"]
    ref_median = times.get("unpruned", ours)["median_ms"]
    return {"latency_ms_median": round(ours["median_ms"], 2), "latency_ms_min": round(ours["min_ms"], 2),
            "latency_unpruned_ms_median": round(ref_median, 2),
            "speedup_vs_unpruned": round(ref_median / ours["median_ms"], 3), "latency_runs": ours["runs"],
            "latency_threads": ours["threads"]}  # fmt: skip


@functools.lru_cache(maxsize=8)
def _digests(files: tuple[str, ...]) -> dict[str, str]:
    """sha256 of every file -> the file (cached: the val split is read once per benchmark)."""
    return {_digest(f): f for f in files}


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def val_leaks(oracle_items: list[str], val_items: list[str]) -> list[tuple[str, str]]:
    """(oracle image, val image) for every oracle image that is a val image: the same file (resolved path) or
    the same bytes under another name."""
    by_path = {os.path.realpath(v): v for v in val_items}
    by_bytes = _digests(tuple(sorted(val_items)))
    leaks = []
    for item in oracle_items:
        same = by_path.get(os.path.realpath(item))
        if same is None and os.path.isfile(item):
            same = by_bytes.get(_digest(item))
        if same is not None:
            leaks.append((item, same))
    return leaks


def check_oracle_not_val(run_dir: str | Path, cfg: dict[str, Any]) -> int:
    """Stop (SystemExit naming the image) when the run folder's ``oracle_images.txt`` lists an image of the val
    split of ``cfg`` (a loaded data config), or when the list is missing or empty; returns how many oracle
    images were checked."""
    listing = Path(run_dir) / "oracle_images.txt"
    if not listing.is_file():
        raise SystemExit(f"{listing}: missing, so nothing shows which images PAGCP's oracle read")
    items = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not items:
        raise SystemExit(f"{listing}: empty, so nothing shows which images PAGCP's oracle read")
    if not cfg.get("val"):
        raise SystemExit(f"{cfg.get('yaml_file') or 'the data'}: no val split to check the oracle's images against")
    leaks = val_leaks(items, image_files(cfg["val"]))
    if leaks:
        item, same = leaks[0]
        also = f" (and {len(leaks) - 1} more)" if len(leaks) > 1 else ""
        raise SystemExit(
            f"{run_dir}: PAGCP's oracle read {item}, which is the val image {same}{also}; the val "
            "split scores the rows, so nothing may steer on it (the oracle must read train images)"
        )
    return len(items)
