"""The GPU checks in one command, for a lent H200 (16 cores), in at most about 8 minutes:

    python benchmarks/device_suite.py [--wheels DIR] [--out device_suite.json]
    python benchmarks/device_suite.py --dry-run      # the same steps on the CPU at toy sizes (CI runs this)

Steps, each a subprocess with its own time limit (a failing step is recorded and the suite goes on):

1. ``wheels``: what the device lacks (pycocotools, onnx) installed from carried wheels in ``--wheels``;
2. ``build``: the extension for sm_90 only (``MAX_JOBS=16 PAGCP_CUDA_ARCHS=9.0``), then ``pagcp.ops.backends()``;
3. ``gpu tests``: the ``gpu``-marked tests;
4. ``kernels``: ``compare_ops.py`` on CUDA: GB/s of every op against the measured device-to-device copy
   bandwidth and against ``torch.compile`` of the eager op;
5. ``search``: ``bench_search.py`` on yolov5s at 640 with 256 oracle images: engine against naive, same
   decisions, speed-up; the engine with its suffix passes replayed from CUDA graphs (the CUDA default) and
   walked (``--suffix-replay off``), side by side;
6. ``precision``: ``bench_precision.py``: bf16/fp16 decision agreement with fp32 on yolov5s;
7. ``finetune``: one short AMP fine-tune epoch on a few demo images.

It writes one JSON file (``--out``: every step's command, exit code, seconds, result and output tail) and
prints a table. Put its figures, with the device, date and command, into ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


#: (step, command, time limit in s) on the device; {py}, {tmp}, {data}, {wheels} are filled in
DEVICE_STEPS = (
    ("wheels", "{py} -m pip install --no-index --find-links {wheels} pycocotools onnx", 120),
    ("build", "bash -c 'MAX_JOBS=16 PAGCP_CUDA_ARCHS=9.0 {py} -m pip install --no-build-isolation --no-deps -q -e . "
              "&& {py} -c \"import json, pagcp.ops as o; print(json.dumps(o.backends()))\"'", 240),
    ("gpu tests", "{py} -m pytest -q -m gpu tests -p no:cacheprovider", 180),
    ("kernels", "{py} benchmarks/compare_ops.py --device cuda --batch 16 --rs 1,8,19 --repeat 5 --copy-mib 1024 "
                "--json {tmp}/kernels.json", 150),
    ("search", "{py} benchmarks/bench_search.py --weights yolov5s --img 640 --subset 256 --batch 32 --device 0 "
               "--replays auto,off --data {data} --json", 240),
    ("precision", "{py} benchmarks/bench_precision.py --weights yolov5s --img 640 --subset 256 --batch 32 "
                  "--device 0 --data {data} --json", 180),
    ("finetune", "{py} -m pagcp.train --weights yolov5n-demo --data {data} --epochs 1 --img 320 --batch 32 "
                 "--device 0 --project {tmp}/train --json", 120),
)  # fmt: skip
#: the same steps on the CPU at toy sizes: every step's code path, none of its cost
DRY_STEPS = (
    ("wheels", "{py} -c 'import pycocotools, onnx'", 60),
    ("build", "{py} -c \"import json, pagcp.ops as o; print(json.dumps(o.backends()))\"", 120),
    ("gpu tests", "{py} -m pytest -q -m gpu tests/test_ops_bn_act.py -p no:cacheprovider", 300),
    ("kernels", "{py} benchmarks/compare_ops.py --device cpu --batch 1 --rs 1,2 --layers 8x16x16 --repeat 1 "
                "--ops bn_act,stats --copy-mib 8 --json {tmp}/kernels.json", 300),
    ("search", "{py} benchmarks/bench_search.py --weights yolov5n --img 64 --subset 4 --batch 4 "
               "--compression backbone --backbone-layers 4 --replays auto,trace --data {data} --json", 600),
    ("precision", "{py} benchmarks/bench_precision.py --weights yolov5n --img 64 --subset 8 --batch 8 --device cpu "
                  "--dtypes bf16 --compression backbone --backbone-layers 4 --data {data} --json", 600),
    ("finetune", "{py} -m pagcp.train --weights yolov5n-demo --data {data} --epochs 1 --img 96 --batch 8 "
                 "--device cpu --project {tmp}/train --json", 300),
)  # fmt: skip
DRY_DATA = "demo:train=16,val=8,img=96"


def steps(dry: bool, wheels: str | None, tmp: Path, data: str) -> list[tuple[str, list[str], int]]:
    """(name, command, time limit in s) of every step, the placeholders filled in."""
    table = DRY_STEPS if dry else DEVICE_STEPS
    fill = {"py": PY, "tmp": str(tmp), "data": DRY_DATA if dry else data, "wheels": wheels or "."}
    chosen = []
    for name, command, limit in table:
        if name == "wheels" and not dry and not wheels:
            command = "{py} -c 'import pycocotools'"
        chosen.append((name, shlex.split(command.format(**fill)), limit))
    return chosen


def run_step(name: str, command: list[str], limit: int, tmp: Path) -> dict[str, Any]:
    """Run one step; its exit code, seconds, the JSON it printed last (or wrote) and the tail of its output."""
    t0 = time.perf_counter()
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    try:
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        rc, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, output = 124, f"timed out after {limit} s\n{(e.stdout or b'')[-2000:]!r}"
    result: Any = None
    json_file = tmp / f"{name}.json"  # a step that writes its result there (kernels)
    if json_file.is_file():
        result = json.loads(json_file.read_text())
    else:
        lines = [line for line in (output or "").splitlines() if line.startswith("{")]
        result = json.loads(lines[-1]) if lines else None
    return {"step": name, "command": " ".join(command), "rc": rc, "seconds": round(time.perf_counter() - t0, 1),
            "result": result, "tail": (output or "")[-1500:]}  # fmt: skip


def summary(step: dict[str, Any]) -> str:
    """One line of figures from a step's result."""
    r = step["result"]
    if not isinstance(r, dict):
        return (step["tail"].strip().splitlines() or [""])[-1][:90]
    if step["step"] == "kernels":
        best = {}
        for row in r["rows"]:
            if row["implementation"] not in ("eager", "eager loop"):
                best[row["case"]] = max(best.get(row["case"], 0.0), row["of_copy_bandwidth"])
        worst = min(best.values()) if best else float("nan")
        return f"copy {r['copy_gb_s']:.0f} GB/s; slowest op case at {100 * worst:.0f} % of it"
    if step["step"] == "search":
        replays = ", ".join(f"{m} {s} s" for m, s in r.get("replay_seconds", {}).items())
        return (
            f"engine {r['engine_seconds']} s, naive {r.get('naive_seconds')} s, {r.get('speedup')}x, "
            f"same {r.get('same_decisions')}; replay: {replays}, same {r.get('replays_same_decisions')}"
        )
    if step["step"] == "precision":
        return "; ".join(f"{k}: {100 * v['same_ratio']:.1f} % same" for k, v in r["rows"].items() if "same_ratio" in v)
    if step["step"] == "finetune":
        return f"epoch in {r.get('seconds')} s, mAP50-95 {r.get('map50_95')}"
    return json.dumps(r)[:90]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at toy sizes")
    p.add_argument("--wheels", default=None, help="folder of carried wheels (pycocotools, onnx)")
    p.add_argument("--out", default="device_suite.json", help="the JSON file of every step")
    p.add_argument("--only", default="", help="comma list of steps to run (default: all)")
    data_help = (
        "images of search, precision and fine-tune: a data yaml (a device without scikit-image gets a demo "
        "set generated here: python -m pagcp.data.demo --out DIR --train 256 --val 256)"
    )
    p.add_argument("--data", default="demo:train=256,val=256,img=320", help=data_help)
    args = p.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        chosen = steps(args.dry_run, args.wheels, Path(tmp), args.data)
        results = []
        for name, command, limit in (s for s in chosen if not args.only or s[0] in args.only.split(",")):
            results.append(run_step(name, command, limit, Path(tmp)))
            print(f"{name}: rc {results[-1]['rc']} in {results[-1]['seconds']} s", flush=True)
    report = {"dry_run": args.dry_run, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "seconds": round(time.perf_counter() - started, 1), "steps": results}  # fmt: skip
    Path(args.out).write_text(json.dumps(report, indent=1))
    print("\n| step | rc | seconds | figures |\n|---|---:|---:|---|")
    for step in results:
        print(f"| {step['step']} | {step['rc']} | {step['seconds']} | {summary(step)} |")
    return 0 if all(s["rc"] == 0 for s in results) else 1


if __name__ == "__main__":
    sys.exit(main())
