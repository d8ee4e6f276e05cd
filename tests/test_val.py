"""evaluate() end to end (against pycocotools) and the python -m pagcp.val command line."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import pagcp
from pagcp.cli.val import main
from pagcp.data import create_dataloader
from pagcp.data.demo import generate_demo
from pagcp.detection.evaluate import evaluate
from pagcp.detection.loss import ComputeLoss

NC = 6


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_val") / "demo"
    generate_demo(str(root), train=0, val=40, img=160, seed=11)
    return root


def _key(img: torch.Tensor) -> str:
    return hashlib.sha1(img.contiguous().numpy().tobytes()).hexdigest()


class ReplayDetector(nn.Module):
    """Stands in for a trained detector: returns prepared decoded rows for each known input image."""

    def __init__(self, rows_by_image: dict[str, torch.Tensor]):
        super().__init__()
        self.rows = rows_by_image
        self.weight = nn.Parameter(torch.zeros(1))
        head = nn.Module()
        head.nc, head.stride = NC, torch.tensor([8.0, 16.0, 32.0])
        self.model = nn.ModuleList([head])

    def forward(self, x):
        keys = [_key((img * 255).round().to(torch.uint8)) for img in x]
        n = max(len(self.rows[k]) for k in keys)
        out = torch.zeros(len(x), n, 5 + NC)
        for b, k in enumerate(keys):
            out[b, : len(self.rows[k])] = self.rows[k]
        return out, None


def replay_rows(labels_px: torch.Tensor, rng: np.random.Generator, size: int) -> torch.Tensor:
    """Decoded rows (cx, cy, w, h, obj, one-hot class) for one image: jittered ground truth with a few misses
    and class confusions, a loose low-confidence duplicate per object and a low-confidence false-positive tail
    (as a real detector at conf 0.001 produces)."""
    rows = []
    for cls, cx, cy, w, h in labels_px.tolist():
        for sigma, confident in ((0.08, rng.random() > 0.1), (0.12, False)):
            noise = rng.normal(0, sigma, 4)
            quality = float(np.exp(-np.abs(noise).sum() * 3))
            conf = 0.2 + 0.8 * quality * rng.uniform(0.7, 1.0) if confident else rng.uniform(0.002, 0.05)
            c = int(cls) if rng.random() > 0.08 else int(rng.integers(NC))
            rows.append([cx + noise[0] * w, cy + noise[1] * h, w * np.exp(noise[2]), h * np.exp(noise[3]), conf, c])
    for k in range(40):
        s = rng.uniform(10, 50)
        conf = rng.uniform(0.05, 0.6) if k < 2 else rng.uniform(0.002, 0.05)
        cx, cy = rng.uniform(s / 2, size - s / 2, 2)
        rows.append([cx, cy, s, s, conf, int(rng.integers(NC))])
    out = torch.zeros(len(rows), 5 + NC)
    for i, (cx, cy, w, h, conf, c) in enumerate(rows):
        out[i, :5] = torch.tensor([cx, cy, w, h, conf])
        out[i, 5 + c] = 1.0
    return out


def test_evaluate_agrees_with_pycocotools(demo, tmp_path):
    loader, _ = create_dataloader(str(demo / "images" / "val"), 160, 8, rect=True, pad=0.5, nc=NC)
    rng = np.random.default_rng(0)
    rows = {}
    for imgs, targets, _, shapes in loader:
        h, w = imgs.shape[2:]
        assert (h, w) == (192, 192) and shapes[0][1][1] == (16, 16)  # letterbox padding is exercised
        for b, img in enumerate(imgs):
            lab = targets[targets[:, 0] == b, 1:].clone()
            lab[:, 1:] *= torch.tensor([w, h, w, h])
            rows[_key(img)] = replay_rows(lab, rng, w)
    result = evaluate(
        ReplayDetector(rows),
        loader,
        160,
        iou_thres=0.65,
        names=[str(i) for i in range(NC)],
        json_path=str(tmp_path / "pred.json"),
        coco_gt=str(demo / "annotations/instances_val.json"),
    )
    assert result["images"] == 40 and result["instances"] > 100
    assert 0.2 < result["map50_95"] < 0.9 and result["map50"] > result["map50_95"]
    assert abs(result["map50_95"] - result["coco_map50_95"]) < 0.01
    assert abs(result["map50"] - result["coco_map50"]) < 0.01
    assert 0 < result["precision"] <= 1 and 0 < result["recall"] <= 1
    with open(tmp_path / "pred.json") as f:
        preds = json.load(f)
    assert {p["category_id"] for p in preds} <= set(range(1, NC + 1))
    assert max(p["bbox"][0] + p["bbox"][2] for p in preds) <= 160.001  # original pixels, not letterboxed


def test_evaluate_real_model_with_loss(demo):
    model = pagcp.load_model("yolov5n", nc=NC)
    model.train()
    files = sorted(str(p) for p in (demo / "images" / "val").iterdir())[:8]
    loader, _ = create_dataloader(files, 160, 8, rect=True, pad=0.5, nc=NC)
    result = evaluate(model, loader, 160, compute_loss=ComputeLoss(model, img_size=160))
    assert model.training  # mode restored
    assert result["images"] == 8 and 0.0 <= result["map50_95"] <= result["map50"] <= 1.0
    assert set(result["loss"]) == {"box", "obj", "cls"} and all(v > 0 for v in result["loss"].values())
    assert result["seconds"] > 0 and len(result["per_class"]) == NC


def test_val_cli_json(tmp_path):
    env = {**os.environ, "PAGCP_HOME": str(tmp_path / "home")}
    cmd = [
        sys.executable,
        "-m",
        "pagcp.val",
        "--weights",
        "yolov5n",
        "--data",
        "demo:train=0,val=8,img=128",
        "--img",
        "128",
        "--batch",
        "16",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--json",
        "--coco-eval",
        "--project",
        str(tmp_path / "runs"),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[0].split() == ["Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95"]
    assert lines[1].split()[:2] == ["all", "8"]
    result = json.loads(lines[-1])
    for key in ("map50", "map50_95", "precision", "recall", "images", "seconds", "coco_map50", "coco_map50_95"):
        assert key in result
    assert result["images"] == 8 and result["iou_thres"] == 0.65
    assert (tmp_path / "runs" / "exp" / "predictions.json").is_file()


def test_val_cli_on_bad_data_reports_and_runs(tmp_path):
    root = tmp_path / "bad"
    generate_demo(str(root), train=0, val=8, img=128, seed=4)
    (root / "images/val/000000.jpg").write_bytes(b"garbage")
    (root / "labels/val/000001.txt").write_text("0 0.5 0.5 0.2\n7 0.5 0.5 0.2 0.2\n")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pagcp.val",
            "--weights",
            "yolov5n",
            "--data",
            str(root / "data.yaml"),
            "--img",
            "128",
            "--batch",
            "16",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert "1 unreadable images, 1 malformed label rows, 1 out-of-range classes" in run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1])["images"] == 7


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--img", "16"], "--img 16: must be at least 32"),
        (["--batch", "0"], "--batch 0: must be at least 1"),
        (["--conf-thres", "2"], "--conf-thres 2.0: must lie in [0, 1]"),
        (["--device", "gpu7"], "--device 'gpu7'"),
        (["--data", "/nonexistent/data.yaml"], "/nonexistent/data.yaml not found"),
        (["--weights", "/nonexistent/w.pt"], "/nonexistent/w.pt"),
    ],
)
def test_val_cli_bad_flags(argv, message, demo, capsys):
    base = ["--weights", "yolov5n", "--data", str(demo / "data.yaml"), "--device", "cpu"]
    assert main(base + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_val_cli_unknown_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unrecognized arguments: --bogus" in err[0]
