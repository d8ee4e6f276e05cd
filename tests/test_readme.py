"""Every Python block of README.md runs as written (each in its own process, in an empty folder).

Blocks that would take minutes run at a smaller size: ``SMALLER`` lists, per block, the exact text that is
swapped for a smaller value; a swap whose text is no longer in the README fails the test, so the list
cannot silently fall out of date.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)

#: text in a block -> its smaller stand-in (the YOLO oracle on the full demo set takes minutes on a CPU)
SMALLER = {
    'load_data_config("demo")': 'load_data_config("demo:train=16,val=24,img=96")',
    "subset=64": "subset=16",
    "imgsz=320": "imgsz=96",
    "img=320": "img=96",
    'data="demo"': 'data="demo:train=16,val=24,img=96"',
}


def _first_line(block: str) -> str:
    return next(line for line in block.splitlines() if line.strip() and not line.startswith("import"))[:60]


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("block", BLOCKS, ids=[_first_line(b) for b in BLOCKS])
def test_readme_block_runs(block: str, tmp_path):
    if "load_digits" in block:
        pytest.skip("run, with its figures checked, by test_the_digits_example_prunes_and_recovers")
    if "ultralytics" in block and importlib.util.find_spec("ultralytics") is None:
        pytest.skip("needs the ultralytics package (pip install 'pagcp[ultralytics]')")
    for text, small in SMALLER.items():
        if text in block:
            block = block.replace(text, small)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_every_smaller_swap_still_matches_the_readme():
    text = README.read_text(encoding="utf-8")
    assert [t for t in SMALLER if t not in text] == []


def test_the_digits_example_prunes_and_recovers(tmp_path):
    """The README's example means something: units are pruned, some stopped by each task, accuracy recovers."""
    block = next(b for b in BLOCKS if "load_digits" in b)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    gflops = re.search(r"GFLOPs ([0-9.]+) -> ([0-9.]+)", out)
    assert float(gflops[2]) < 0.9 * float(gflops[1])
    rows = [line.split() for line in out.splitlines() if line.startswith("features.")]
    assert len(rows) == 4 and {r[4] for r in rows} == {"digit", "parity"}  # both tasks stop some unit
    accuracies = [[float(v) for v in re.findall(r"[0-9.]+", part)] for part in re.findall(r"\[([^]]*)\]", out)]
    original, pruned, tuned = accuracies
    assert min(tuned[0] - original[0], tuned[1] - original[1]) > -0.02  # fine-tuning recovers the accuracy
    assert "after 2 epochs of fine-tuning" in out


def test_the_results_summary_is_what_the_benchmark_json_says():
    root = README.parent
    proc = subprocess.run([sys.executable, "benchmarks/summary.py", "--check"], cwd=root, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
