"""Data yaml, YOLO-format dataset checks, letterbox/rect batches, augmentation, the demo generator."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pagcp.data import YoloDataset, create_dataloader, image_files, label_path, load_data_config
from pagcp.data.augment import letterbox, mosaic4, random_affine
from pagcp.data.demo import CLASSES, ensure_demo, generate_demo
from pagcp.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_data") / "demo"
    generate_demo(str(root), train=8, val=16, img=128, seed=0)
    return root


def read_rows(path):
    with open(path) as f:
        return [[float(v) for v in line.split()] for line in f if line.strip()]


# ---------------------------------------------------------------- demo generator


def test_demo_layout_and_exact_boxes(demo):
    cfg = load_data_config(str(demo / "data.yaml"))
    assert cfg["nc"] == len(CLASSES) >= 5 and cfg["names"] == CLASSES
    assert len(image_files(cfg["train"])) == 8 and len(image_files(cfg["val"])) == 16
    with open(demo / "annotations" / "instances_val.json") as f:
        gt = json.load(f)
    assert [im["id"] for im in gt["images"]] == list(range(16))
    boxes_json = {}
    for a in gt["annotations"]:
        boxes_json.setdefault(a["image_id"], []).append([a["category_id"] - 1, *a["bbox"]])
    seen_classes = set()
    for i in range(16):
        rows = read_rows(demo / "labels" / "val" / f"{i:06d}.txt")
        assert 1 <= len(rows) <= 6
        for (c, cx, cy, w, h), (jc, x, y, jw, jh) in zip(rows, boxes_json[i]):
            assert c == jc and (cx - w / 2) * 128 == pytest.approx(x, abs=1e-3)
            assert (cy - h / 2) * 128 == pytest.approx(y, abs=1e-3)
            assert w * 128 == pytest.approx(jw, abs=1e-3) and h * 128 == pytest.approx(jh, abs=1e-3)
            assert 16 <= max(jw, jh) <= 128
            seen_classes.add(int(c))
    assert len(seen_classes) >= 5
    img = np.asarray(Image.open(demo / "images" / "val" / "000000.jpg"))
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8


def test_demo_is_deterministic(tmp_path, demo):
    again = tmp_path / "again"
    generate_demo(str(again), train=8, val=16, img=128, seed=0)
    for sub in ("labels/val/000003.txt", "labels/train/000007.txt", "images/val/000005.jpg"):
        assert (again / sub).read_bytes() == (demo / sub).read_bytes()
    other = tmp_path / "other"
    generate_demo(str(other), train=0, val=2, img=128, seed=1)
    assert (other / "labels/val/000000.txt").read_bytes() != (demo / "labels/val/000000.txt").read_bytes()


def test_demo_cli_and_bad_out(tmp_path):
    out = tmp_path / "cli"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pagcp.data.demo",
            "--out",
            str(out),
            "--train",
            "2",
            "--val",
            "2",
            "--img",
            "64",
            "--seed",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "2 train + 2 val images" in run.stdout and (out / "data.yaml").is_file()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match="already holds other files"):
        generate_demo(str(tmp_path / "busy"), train=1, val=1, img=64)


def test_demo_cache_is_safe_against_concurrent_writers(tmp_path):
    env = {**os.environ, "PAGCP_HOME": str(tmp_path / "home")}
    code = "from pagcp.data.demo import ensure_demo; print(ensure_demo(train=3, val=3, img=64, seed=2))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    paths = {o[0].strip() for o in outs}
    assert len(paths) == 1
    datasets = tmp_path / "home" / "datasets"
    assert [p.name for p in datasets.iterdir()] == ["demo-v1-train3-val3-img64-seed2"]  # no temp dirs left
    os.environ["PAGCP_HOME"], saved = str(tmp_path / "home"), os.environ.get("PAGCP_HOME")
    try:
        assert ensure_demo(train=3, val=3, img=64, seed=2) == paths.pop()
        assert load_data_config("demo:train=3,val=3,img=64,seed=2")["nc"] == 6
    finally:
        os.environ.pop("PAGCP_HOME") if saved is None else os.environ.update(PAGCP_HOME=saved)
    with pytest.raises(ConfigError, match="demo:train=N"):
        load_data_config("demo:size=3")


# ---------------------------------------------------------------- data yaml


def test_data_yaml_forms(tmp_path, demo):
    (tmp_path / "lists").mkdir()
    val_list = tmp_path / "lists" / "val.txt"
    val_list.write_text(
        "\n".join(os.path.relpath(p, tmp_path / "lists") for p in image_files(str(demo / "images" / "val"))[:5])
    )
    spec = {
        "path": str(demo),
        "train": ["images/train", "images/val"],
        "val": str(val_list),
        "names": {0: "coin", 1: "face", 2: "digit", 3: "triangle", 4: "square", 5: "circle"},
    }
    y = tmp_path / "d.yaml"
    y.write_text(yaml.safe_dump(spec))
    cfg = load_data_config(str(y))
    assert cfg["nc"] == 6 and cfg["names"][2] == "digit"
    assert cfg["train"] == [str(demo / "images/train"), str(demo / "images/val")]
    assert len(image_files(cfg["train"])) == 24 and len(image_files(cfg["val"])) == 5
    # relative 'path' is taken relative to the yaml's folder
    (tmp_path / "rel.yaml").write_text(
        yaml.safe_dump({"path": os.path.relpath(demo, tmp_path), "val": "images/val", "names": ["a"] * 6})
    )
    assert load_data_config(str(tmp_path / "rel.yaml"))["val"] == str(demo / "images/val")
    with pytest.raises(ConfigError, match="nc=3 but 6 names"):
        load_data_config({**spec, "nc": 3})
    with pytest.raises(ConfigError, match="not found"):
        load_data_config(str(tmp_path / "missing.yaml"))
    assert (
        label_path(f"{os.sep}a{os.sep}images{os.sep}x{os.sep}images{os.sep}b.jpg")
        == f"{os.sep}a{os.sep}images{os.sep}x{os.sep}labels{os.sep}b.txt"
    )


def test_empty_split_is_a_clear_error(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=str(tmp_path / "images")):
        YoloDataset(str(tmp_path / "images"))
    with pytest.raises(DataError, match="does not exist"):
        YoloDataset(str(tmp_path / "nowhere"))


def test_bad_data_is_counted_not_fatal(tmp_path, demo, caplog):
    root = tmp_path / "bad"
    shutil.copytree(demo, root)
    val = root / "images" / "val"
    (val / "000001.jpg").write_bytes(b"this is not a jpeg")
    (val / "000002.jpg").write_bytes((demo / "images/val/000002.jpg").read_bytes()[:-200])  # truncated
    with open(root / "labels" / "val" / "000003.txt", "a") as f:
        f.write("1 0.5 0.5\n")  # malformed: four numbers
    with open(root / "labels" / "val" / "000004.txt", "a") as f:
        f.write("9 0.5 0.5 0.1 0.1\n")  # class 9 >= nc 6
    with caplog.at_level(logging.INFO, logger="pagcp.data.dataset"):
        ds = YoloDataset(str(val), img_size=128, nc=6)
    assert len(ds) == 14
    assert ds.problems == {
        "unreadable images": 2,
        "malformed label rows": 1,
        "out-of-range classes": 1,
        "duplicate label rows": 0,
    }
    text = caplog.text
    assert "000003.txt:" in text and "expected 5 numbers" in text and "class 9 >= nc=6" in text
    summary = [r.getMessage() for r in caplog.records if "without labels; skipped:" in r.getMessage()]
    assert len(summary) == 1
    assert (
        "14 images" in summary[0]
        and "2 unreadable images, 1 malformed label rows, 1 out-of-range classes" in summary[0]
    )
    loader, _ = create_dataloader(str(val), 128, 4, rect=True, pad=0.5, nc=6)
    assert sum(len(b[0]) for b in loader) == 14


# ---------------------------------------------------------------- geometry


def test_letterbox_numbers():
    img = np.zeros((50, 100, 3), np.uint8)
    out, r, (left, top) = letterbox(img, (64, 64))
    assert out.shape == (64, 64, 3) and r == pytest.approx(0.64) and (left, top) == (0, 16)
    assert (out[:16] == 114).all() and (out[16:48] == 0).all() and (out[48:] == 114).all()
    out, r, pad = letterbox(img, (128, 128), scaleup=False)
    assert r == 1.0 and pad == (14, 39) and out.shape == (128, 128, 3)


def test_rect_batches_and_collate(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for name, (w, h) in {"a": (200, 100), "b": (100, 200), "c": (150, 150), "d": (210, 100)}.items():
        Image.new("RGB", (w, h), (200, 10, 10)).save(images / f"{name}.png")
        (labels / f"{name}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    loader, ds = create_dataloader(str(images), 128, 2, rect=True, pad=0.5, nc=1)
    # sorted by h/w: d (0.476), a (0.5) | c (1.0), b (2.0)
    assert [os.path.basename(f) for f in ds.files] == ["d.png", "a.png", "c.png", "b.png"]
    # batch 0: h/w up to 0.5 -> (ceil(0.5*128/32 + 0.5), ceil(4 + 0.5)) * 32; batch 1: w/h down to 0.5
    assert ds.batch_shapes.tolist() == [[96, 160], [160, 160]]
    batches = list(loader)
    assert [tuple(b[0].shape) for b in batches] == [(2, 3, 96, 160), (2, 3, 160, 160)]
    imgs, targets, paths, shapes = batches[0]
    assert imgs.dtype == torch.uint8 and targets[:, 0].tolist() == [0.0, 1.0]
    # a.png (200x100) -> 128x64 inside 160x96: pad (16, 16), box 64x32 centred
    (h0, w0), ((gy, gx), pad) = shapes[1]
    assert (h0, w0) == (100, 200) and gx == pytest.approx(0.64) and pad == (16, 16)
    torch.testing.assert_close(targets[1, 2:], torch.tensor([0.5, 0.5, 64 / 160, 32 / 96]))
    cached = YoloDataset(str(images), 128, 2, rect=True, pad=0.5, nc=1, cache=True)
    assert torch.equal(cached[1][0], ds[1][0])


def test_random_affine_and_mosaic_keep_boxes_consistent():
    rng = np.random.default_rng(0)
    img = np.zeros((100, 100, 3), np.uint8)
    img[20:40, 30:70] = 255
    boxes = np.array([[30.0, 20.0, 70.0, 40.0]])
    out, new, keep = random_affine(img, boxes, rng, translate=0.0, scale=0.0)  # identity
    assert keep.tolist() == [True] and new == pytest.approx(boxes)
    assert (out == img).all()
    out, new, keep = random_affine(img, boxes, rng, degrees=0, translate=0.1, scale=0.5)
    x1, y1, x2, y2 = np.round(new[0]).astype(int)
    inside = out[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1]
    assert inside.size and inside.mean() > 240  # the white box moved with its label
    canvas, mboxes, owner = mosaic4([img] * 4, [boxes] * 4, 100, rng)
    assert canvas.shape == (200, 200, 3) and len(owner) == 4
    for x1, y1, x2, y2 in mboxes.astype(int):
        if x2 - x1 > 2 and y2 - y1 > 2:
            assert canvas[y1:y2, x1:x2].mean() > 240


def test_augmented_loader_is_seeded_and_valid(demo):
    kw = dict(augment=True, shuffle=True, hyp="scratch", nc=6, seed=7)
    loader, ds = create_dataloader(str(demo / "images" / "train"), 128, 4, **kw)
    imgs, targets, _, _ = next(iter(loader))
    assert imgs.shape == (4, 3, 128, 128) and imgs.dtype == torch.uint8
    assert len(targets) and targets[:, 2:].min() >= 0 and targets[:, 2:].max() <= 1
    assert set(targets[:, 1].tolist()) <= set(range(6))
    again, _ = create_dataloader(str(demo / "images" / "train"), 128, 4, **kw)
    imgs2, targets2, _, _ = next(iter(again))
    assert torch.equal(imgs, imgs2) and torch.equal(targets, targets2)
    workers, _ = create_dataloader(str(demo / "images" / "train"), 128, 4, workers=2, **kw)
    assert sum(len(b[0]) for b in workers) == 8


def test_augmentations_do_not_depend_on_workers(demo):
    """Each image's augmentations come from (stream, its index): 0 and 2 worker processes give the same batches,
    bit for bit, and another stream (the trainer's next epoch) draws other augmentations of the same images."""
    kw = dict(augment=True, shuffle=True, hyp="scratch", nc=6, seed=3)
    batches = {}
    for workers in (0, 2):
        loader, _ = create_dataloader(str(demo / "images" / "train"), 128, 4, workers=workers, **kw)
        batches[workers] = [(b[0], b[1]) for b in loader]
    assert len(batches[0]) == 2
    for (a, ta), (b, tb) in zip(batches[0], batches[2]):
        assert torch.equal(a, b) and torch.equal(ta, tb)
    loader, ds = create_dataloader(str(demo / "images" / "train"), 128, 4, **kw)
    first = ds[0][0]
    ds.stream += 1
    assert not torch.equal(first, ds[0][0]) and torch.equal(ds[0][0], ds[0][0])
