"""NMS, matching, AP and agreement of pagcp's mAP with pycocotools on the demo val split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pagcp.data.demo import generate_demo
from pagcp.detection.metrics import (
    COCO80_TO_91,
    ap_per_class,
    box_iou,
    category_ids_from_json,
    coco_evaluate,
    compute_ap,
    detections_to_coco,
    match_detections,
    non_max_suppression,
    scale_boxes,
    summarize,
)


def test_box_iou_numbers():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[50 / 150, 1.0, 0.0]]))


def _decoded(rows, nc):
    """rows of (cx, cy, w, h, obj, {class: score}) -> (1, n, 5 + nc)."""
    out = torch.zeros(1, len(rows), 5 + nc)
    for i, (cx, cy, w, h, obj, scores) in enumerate(rows):
        out[0, i, :5] = torch.tensor([cx, cy, w, h, obj])
        for c, s in scores.items():
            out[0, i, 5 + c] = s
    return out


def test_nms_confidence_multilabel_and_class_awareness():
    pred = _decoded(
        [
            (50, 50, 20, 20, 0.9, {0: 0.9}),  # conf 0.81, kept
            (51, 50, 20, 20, 0.8, {0: 0.9}),  # conf 0.72, overlaps the first: suppressed
            (51, 50, 20, 20, 0.8, {1: 0.5}),  # conf 0.40, class 1: kept (class-aware)
            (10, 10, 8, 8, 0.5, {0: 0.6, 2: 0.4}),  # two labels over the threshold: two rows
            (90, 90, 8, 8, 0.1, {0: 0.05}),  # conf 0.005 < 0.01: dropped
        ],
        nc=3,
    )
    det = non_max_suppression(pred, conf_thres=0.01, iou_thres=0.5)[0]
    assert det.shape == (4, 6)
    got = sorted((round(r[4], 3), int(r[5])) for r in det.tolist())
    assert got == [(0.2, 2), (0.3, 0), (0.4, 1), (0.81, 0)]
    first = det[det[:, 4].argmax()]
    torch.testing.assert_close(first[:4], torch.tensor([40.0, 40.0, 60.0, 60.0]))
    assert len(non_max_suppression(pred, 0.01, 0.5, max_det=2)[0]) == 2
    assert len(non_max_suppression(pred, 0.01, 0.5, agnostic=True)[0]) == 2  # one per location
    assert len(non_max_suppression(pred, 0.01, 0.5, multi_label=False)[0]) == 3


def test_match_detections_each_label_once():
    labels = torch.tensor([[0, 0.0, 0.0, 10.0, 10.0], [1, 20.0, 20.0, 30.0, 30.0]])
    dets = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0, 0.9, 0],  # IoU 1.0 with label 0
            [0.0, 0.0, 10.0, 8.0, 0.8, 0],  # IoU 0.8 with label 0, already taken
            [20.0, 20.0, 30.0, 27.0, 0.7, 1],  # IoU 0.7 with label 1
            [20.0, 20.0, 30.0, 30.0, 0.6, 0],  # right place, wrong class
        ]
    )
    correct = match_detections(dets, labels)
    assert correct.shape == (4, 10)
    assert correct[0].all() and not correct[1].any() and not correct[3].any()
    # 0.7 passes thresholds 0.50 .. 0.70 (five of them)
    assert correct[2].tolist() == [True] * 5 + [False] * 5


def test_compute_ap_numbers():
    # perfect detector: the sentinel (recall 1, precision 0) takes half of the last 0.01 step -> 0.995,
    # the same ceiling as YOLOv5's AP
    assert compute_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(0.995)
    # TP, FP, TP over two labels: envelope 1 up to recall 0.5, then 2/3; on the 101-point grid the two
    # steps (at 0.5 and at 1.0) are each shared by one trapezoid of width 0.01:
    # 0.49 * 1 + 0.01 * (1 + 2/3) / 2 + 0.49 * 2/3 + 0.01 * (2/3 + 0) / 2
    ap = compute_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]))
    assert ap == pytest.approx(0.49 + 0.005 * 5 / 3 + 0.49 * 2 / 3 + 0.005 * 2 / 3, rel=1e-9)
    assert compute_ap(np.array([0.0]), np.array([0.0])) == pytest.approx(0.0, abs=0.01)


def test_ap_per_class_and_summary():
    # class 0: two labels, detections TP (0.9), FP (0.8), TP (0.7); class 1: one label, one TP; class 2: missed
    tp = np.array([[1], [0], [1], [1]], dtype=bool).repeat(10, 1)
    conf = np.array([0.9, 0.8, 0.7, 0.95])
    pred_cls = np.array([0, 0, 0, 1])
    target_cls = np.array([0, 0, 1, 2])
    stats = ap_per_class(tp, conf, pred_cls, target_cls)
    assert stats["classes"].tolist() == [0, 1, 2]
    assert stats["n_labels"].tolist() == [2, 1, 1]
    assert stats["ap"][:, 0] == pytest.approx([0.828333, 0.995, 0.0], abs=1e-6)
    summary = summarize(stats)
    assert summary["map50"] == pytest.approx((0.828333 + 0.995) / 3, abs=1e-6)
    assert summary["fitness"] == pytest.approx(0.1 * summary["map50"] + 0.9 * summary["map50_95"])
    # best mean F1 at confidence 0.7 (all of class 0 found): P = (2/3 + 1 + 0) / 3, R = (1 + 1 + 0) / 3
    assert summary["precision"] == pytest.approx((2 / 3 + 1) / 3, abs=0.01)
    assert summary["recall"] == pytest.approx(2 / 3, abs=0.01)


def test_no_detection_at_all_scores_zero():
    """A model that detects nothing on any image (e.g. pruned to bits) scores 0, not an error."""
    stats = ap_per_class(np.zeros((0,), dtype=bool), np.zeros(0), np.zeros(0), np.array([0, 1, 1]))
    assert stats["classes"].tolist() == [0, 1] and stats["ap"].shape == (2, 10) and float(stats["ap"].sum()) == 0
    summary = summarize(stats)
    assert summary["map50"] == 0 and summary["map50_95"] == 0 and summary["precision"] == 0


def test_scale_boxes_undoes_letterbox():
    # a 100x50 (w x h) image letterboxed to 64x64: gain 0.64, 16 rows of padding on top
    boxes = torch.tensor([[6.4, 16.0 + 3.2, 32.0, 16.0 + 32.0]])
    back = scale_boxes(boxes, (64, 64), (50, 100))
    torch.testing.assert_close(back, torch.tensor([[10.0, 5.0, 50.0, 50.0]]))
    back = scale_boxes(boxes, (64, 64), (50, 100), ((0.64, 0.64), (0, 16)))
    torch.testing.assert_close(back, torch.tensor([[10.0, 5.0, 50.0, 50.0]]))


def test_coco80_to_91_map():
    assert len(COCO80_TO_91) == 80 and COCO80_TO_91[:3] == [1, 2, 3] and COCO80_TO_91[-1] == 90
    assert 12 not in COCO80_TO_91 and 26 not in COCO80_TO_91 and 83 not in COCO80_TO_91


@pytest.fixture(scope="module")
def demo_val(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_metrics") / "demo"
    generate_demo(str(root), train=0, val=60, img=160, seed=3)
    return root


def noisy_predictions(gt_json, seed=0):
    """Detections the way a trained detector at conf_thres 0.001 makes them, built from the ground truth.

    Confident boxes: the ground truth jittered (8% of its size), 8% of them with a wrong class, confidence
    tied to the box quality; 10% of the objects only get a low-confidence box. Then a tail of 40
    low-confidence false positives and a loose low-confidence duplicate of every object. Without such a
    tail recall stops early at high precision, and YOLOv5-style interpolation (to recall 1, precision 0)
    and pycocotools' sampling differ by the triangle beyond the last point (0.06 mAP here).
    """
    rng = np.random.default_rng(seed)
    with open(gt_json) as f:
        gt = json.load(f)
    size = gt["images"][0]["width"]
    per_image = {im["id"]: [] for im in gt["images"]}
    labels = {im["id"]: [] for im in gt["images"]}

    def jitter(x, y, w, h, sigma):
        noise = rng.normal(0, sigma, 4)
        cx, cy = x + w / 2 + noise[0] * w, y + h / 2 + noise[1] * h
        nw, nh = w * np.exp(noise[2]), h * np.exp(noise[3])
        return [cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2], float(np.exp(-np.abs(noise).sum() * 3))

    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        cls = a["category_id"] - 1
        labels[a["image_id"]].append([cls, x, y, x + w, y + h])
        box, quality = jitter(x, y, w, h, 0.08)
        if rng.random() < 0.1:
            conf = rng.uniform(0.001, 0.05)
        else:
            conf = 0.2 + 0.8 * quality * rng.uniform(0.7, 1.0)
        pred_cls = cls if rng.random() > 0.08 else int(rng.integers(6))
        per_image[a["image_id"]].append([*box, conf, pred_cls])
        loose, _ = jitter(x, y, w, h, 0.1)
        per_image[a["image_id"]].append([*loose, rng.uniform(0.001, 0.05), cls])
    for image_id in per_image:
        for k in range(40):
            x, y, s = rng.uniform(0, size - 10), rng.uniform(0, size - 10), rng.uniform(10, 50)
            conf = rng.uniform(0.05, 0.6) if k < 2 else rng.uniform(0.001, 0.05)
            per_image[image_id].append([x, y, x + s, y + s, conf, int(rng.integers(6))])
    dets = {k: torch.tensor(v, dtype=torch.float32).reshape(-1, 6) for k, v in per_image.items()}
    labs = {k: torch.tensor(v, dtype=torch.float32).reshape(-1, 5) for k, v in labels.items()}
    return dets, labs


@pytest.mark.parametrize("seed", [0, 1])
def test_map_agrees_with_pycocotools(demo_val, seed):
    gt_json = str(demo_val / "annotations" / "instances_val.json")
    dets, labels = noisy_predictions(gt_json, seed)
    stats, results = [], []
    category_ids = category_ids_from_json(gt_json, 6)
    assert category_ids == [1, 2, 3, 4, 5, 6]
    for image_id, det in dets.items():
        lab = labels[image_id]
        stats.append((match_detections(det, lab), det[:, 4], det[:, 5], lab[:, 0]))
        results += detections_to_coco(det, image_id, category_ids)
    tp, conf, pcls, tcls = (torch.cat(x).numpy() for x in zip(*stats))
    ours = summarize(ap_per_class(tp, conf, pcls, tcls))
    coco = coco_evaluate(gt_json, results, list(dets))
    assert 0.2 < ours["map50_95"] < 0.9
    assert abs(ours["map50_95"] - coco["coco_map50_95"]) < 0.01
    assert abs(ours["map50"] - coco["coco_map50"]) < 0.01


def test_matching_order_confidence_vs_iou():
    # the confident box is looser (IoU 0.8) than a later low-confidence one (IoU 1.0)
    labels = torch.tensor([[0, 0.0, 0.0, 10.0, 10.0]])
    dets = torch.tensor([[0.0, 0.0, 10.0, 8.0, 0.9, 0], [0.0, 0.0, 10.0, 10.0, 0.1, 0]])
    by_conf = match_detections(dets, labels)
    by_iou = match_detections(dets, labels, order="iou")
    assert by_conf[:, 0].tolist() == [True, False]  # pycocotools' greedy order
    assert by_iou[:, 0].tolist() == [False, True]  # YOLOv5's order
    assert by_conf[0].tolist() == [True] * 7 + [False] * 3  # IoU 0.8 passes 0.50 .. 0.80
    assert by_conf[1].tolist() == [False] * 7 + [True] * 3  # the label is free again above 0.80
