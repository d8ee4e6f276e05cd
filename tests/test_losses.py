"""ComputeLoss against hand-worked numbers and an independent loop-by-loop reference."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from pagcp.detection.loss import ComputeLoss, bbox_ciou
from pagcp.hyps import SCRATCH

DEFAULT_ANCHORS_PX = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]


def fake_model(nc, anchors_grid, strides):
    anchors = torch.tensor(anchors_grid, dtype=torch.float32)
    det = SimpleNamespace(
        nc=nc,
        no=nc + 5,
        nl=anchors.shape[0],
        na=anchors.shape[1],
        anchors=anchors,
        stride=torch.tensor(strides, dtype=torch.float32),
    )
    return det  # ComputeLoss reads a Detect head


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def bce(logit, target):
    return max(logit, 0.0) - logit * target + math.log1p(math.exp(-abs(logit)))


def ciou(p, t, eps=1e-7):
    (px, py, pw, ph), (tx, ty, tw, th) = p, t
    iw = max(0.0, min(px + pw / 2, tx + tw / 2) - max(px - pw / 2, tx - tw / 2))
    ih = max(0.0, min(py + ph / 2, ty + th / 2) - max(py - ph / 2, ty - th / 2))
    inter = iw * ih
    iou = inter / (pw * ph + tw * th - inter + eps)
    cw = max(px + pw / 2, tx + tw / 2) - min(px - pw / 2, tx - tw / 2)
    ch = max(py + ph / 2, ty + th / 2) - min(py - ph / 2, ty - th / 2)
    rho2 = (px - tx) ** 2 + (py - ty) ** 2
    v = 4 / math.pi**2 * (math.atan(tw / th) - math.atan(pw / ph)) ** 2
    alpha = v / (v - iou + 1 + eps)
    return iou - rho2 / (cw**2 + ch**2 + eps) - alpha * v


def reference_loss(preds, targets, anchors, nc, img_size, smoothing=0.0):
    """Loop-by-loop YOLOv5 loss written from the spec's prose, on python floats."""
    nl = len(preds)
    balance = [4.0, 1.0, 0.4] if nl == 3 else [4.0, 1.0, 0.25, 0.06, 0.02][:nl]
    cp, cn = 1 - 0.5 * smoothing, 0.5 * smoothing
    lbox = lobj = lcls = 0.0
    for lvl, pred in enumerate(preds):
        bs, na, ny, nx, _ = pred.shape
        p = pred.tolist()
        positives = []
        for b, c, cx, cy, w, h in targets.tolist():
            gx, gy, gw, gh = cx * nx, cy * ny, w * nx, h * ny
            for a in range(na):
                aw, ah = anchors[lvl][a]
                if max(gw / aw, aw / gw, gh / ah, ah / gh) >= 4.0:
                    continue
                shifts = [(0.0, 0.0)]
                if gx % 1 < 0.5 and gx > 1:
                    shifts.append((0.5, 0.0))
                if gy % 1 < 0.5 and gy > 1:
                    shifts.append((0.0, 0.5))
                if (nx - gx) % 1 < 0.5 and nx - gx > 1:
                    shifts.append((-0.5, 0.0))
                if (ny - gy) % 1 < 0.5 and ny - gy > 1:
                    shifts.append((0.0, -0.5))
                for ox, oy in shifts:
                    i = min(max(math.floor(gx - ox), 0), nx - 1)
                    j = min(max(math.floor(gy - oy), 0), ny - 1)
                    positives.append((int(b), a, j, i, (gx - i, gy - j, gw, gh), int(c), (aw, ah)))
        tobj = {}
        if positives:
            box_sum = cls_sum = 0.0
            for b, a, j, i, tbox, c, (aw, ah) in positives:
                v = p[b][a][j][i]
                pbox = (2 * sig(v[0]) - 0.5, 2 * sig(v[1]) - 0.5, (2 * sig(v[2])) ** 2 * aw, (2 * sig(v[3])) ** 2 * ah)
                iou = ciou(pbox, tbox)
                box_sum += 1 - iou
                tobj[(b, a, j, i)] = max(iou, 0.0)
                cls_sum += sum(bce(v[5 + k], cp if k == c else cn) for k in range(nc))
            lbox += box_sum / len(positives)
            if nc > 1:
                lcls += cls_sum / (len(positives) * nc)
        obj_sum = sum(
            bce(p[b][a][j][i][4], tobj.get((b, a, j, i), 0.0))
            for b in range(bs)
            for a in range(na)
            for j in range(ny)
            for i in range(nx)
        )
        lobj += obj_sum / (bs * na * ny * nx) * balance[lvl]
    level = 3 / nl
    lbox *= SCRATCH["box"] * level
    lobj *= SCRATCH["obj"] * (img_size / 640) ** 2 * level
    lcls *= SCRATCH["cls"] * nc / 80 * level
    return lbox, lobj, lcls


def test_one_target_all_zero_logits_by_hand():
    """Zero logits: every BCE is log 2, predictions are (0.5, 0.5) offsets with anchor-sized boxes."""
    model = fake_model(nc=3, anchors_grid=[[[1.5, 2.0]]], strides=[8.0])
    loss_fn = ComputeLoss(model, img_size=32)
    preds = [torch.zeros(1, 1, 4, 4, 8)]
    targets = torch.tensor([[0, 2, 0.3, 0.8, 0.25, 0.3]])  # grid: gx 1.2, gy 3.2, gw 1.0, gh 1.2
    img, anc, gy, gx, tbox, tcls, _ = loss_fn.build_targets(preds, targets)[0]
    # own cell (1, 3); left neighbour since frac(1.2) < 0.5; upper neighbour since frac(3.2) < 0.5
    assert list(zip(gx.tolist(), gy.tolist())) == [(1, 3), (0, 3), (1, 2)]
    torch.testing.assert_close(tbox, torch.tensor([[0.2, 0.2, 1.0, 1.2], [1.2, 0.2, 1.0, 1.2], [0.2, 1.2, 1.0, 1.2]]))
    ious = [ciou((0.5, 0.5, 1.5, 2.0), (tx, ty, 1.0, 1.2)) for tx, ty in [(0.2, 0.2), (1.2, 0.2), (0.2, 1.2)]]
    # first pair by hand: prediction x -0.25..1.25, y -0.5..1.5; target x -0.3..0.7, y -0.4..0.8
    # intersection 0.95 x 1.2 = 1.14, union 3.0 + 1.2 - 1.14 = 3.06; enclosing 1.55 x 2.0, centres 0.3 apart
    iou = 1.14 / 3.06
    v = 4 / math.pi**2 * (math.atan(1 / 1.2) - math.atan(1.5 / 2.0)) ** 2
    assert ious[0] == pytest.approx(iou - 0.18 / (1.55**2 + 2.0**2) - v * v / (v - iou + 1), rel=1e-6)
    assert ious[0] == pytest.approx(0.344433, abs=1e-6)
    box = 0.05 * 3 * (1 - sum(ious) / 3)
    obj = 1.0 * (32 / 640) ** 2 * 3 * 4.0 * math.log(2)
    cls = 0.5 * 3 / 80 * 3 * math.log(2)
    total, parts = loss_fn(preds, targets)
    assert parts.tolist() == pytest.approx([box, obj, cls], rel=1e-5)
    assert total.item() == pytest.approx(box + obj + cls, rel=1e-5)


def test_one_target_random_logits_matches_reference():
    torch.manual_seed(1)
    anchors = [[[1.5, 2.0], [3.0, 1.0]]]
    model = fake_model(nc=3, anchors_grid=anchors, strides=[8.0])
    preds = [torch.randn(2, 2, 4, 4, 8)]
    targets = torch.tensor([[1, 2, 0.3, 0.8, 0.25, 0.3]])
    _, parts = ComputeLoss(model, img_size=32)(preds, targets)
    assert parts.tolist() == pytest.approx(list(reference_loss(preds, targets, anchors, 3, 32)), rel=1e-5)


def test_several_levels_and_images():
    torch.manual_seed(2)
    anchors = [[[w / s, h / s] for w, h in zip(row[::2], row[1::2])] for row, s in zip(DEFAULT_ANCHORS_PX, (8, 16, 32))]
    model = fake_model(nc=4, anchors_grid=anchors, strides=[8.0, 16.0, 32.0])
    img = 128
    preds = [torch.randn(2, 3, img // s, img // s, 9) for s in (8, 16, 32)]
    targets = torch.tensor(
        [
            [0, 0, 0.30, 0.40, 0.10, 0.12],  # small: P3
            [0, 3, 0.62, 0.55, 0.45, 0.60],  # large: P4/P5
            [1, 1, 0.81, 0.17, 0.20, 0.15],
            [1, 2, 0.05, 0.95, 0.08, 0.06],  # near the corner: neighbours clamped
        ]
    )
    loss_fn = ComputeLoss(model, img_size=img)
    total, parts = loss_fn(preds, targets)
    ref = reference_loss(preds, targets, anchors, 4, img)
    assert parts.tolist() == pytest.approx(list(ref), rel=1e-5)
    assert total.item() == pytest.approx(2 * sum(ref), rel=1e-5)  # total is scaled by the batch size
    # every level got positives
    assert all(len(level[0]) > 0 for level in loss_fn.build_targets(preds, targets))


def test_label_smoothing():
    torch.manual_seed(3)
    anchors = [[[1.5, 2.0]]]
    model = fake_model(nc=3, anchors_grid=anchors, strides=[8.0])
    preds = [torch.randn(1, 1, 4, 4, 8)]
    targets = torch.tensor([[0, 1, 0.55, 0.45, 0.3, 0.4]])
    _, plain = ComputeLoss(model, img_size=32)(preds, targets)
    _, smooth = ComputeLoss(model, img_size=32, label_smoothing=0.1)(preds, targets)
    ref = reference_loss(preds, targets, anchors, 3, 32, smoothing=0.1)
    assert smooth.tolist() == pytest.approx(list(ref), rel=1e-5)
    assert smooth[2] != plain[2] and smooth[:2].tolist() == pytest.approx(plain[:2].tolist())
    # zero logits: class BCE = log 2 for any target, so smoothing cannot change it
    _, zero = ComputeLoss(model, img_size=32, hyp={**SCRATCH, "label_smoothing": 0.1})(
        [torch.zeros(1, 1, 4, 4, 8)], targets
    )
    assert zero[2].item() == pytest.approx(0.5 * 3 / 80 * 3 * math.log(2), rel=1e-5)


def test_no_targets_and_single_class():
    model = fake_model(nc=1, anchors_grid=[[[1.0, 1.0]]], strides=[8.0])
    preds = [torch.full((1, 1, 2, 2, 6), -1.0)]
    _, parts = ComputeLoss(model, img_size=16)(preds, torch.zeros((0, 6)))
    obj = (16 / 640) ** 2 * 3 * 4.0 * bce(-1.0, 0.0)
    assert parts.tolist() == pytest.approx([0.0, obj, 0.0], rel=1e-6)
    _, parts = ComputeLoss(model, img_size=16)(preds, torch.tensor([[0, 0, 0.5, 0.5, 0.4, 0.4]]))
    assert parts[2].item() == 0.0  # no class loss with one class


def test_ciou_gradient_and_identity():
    a = torch.tensor([[0.5, 0.5, 1.0, 2.0]], requires_grad=True)
    assert bbox_ciou(a, a.detach()).item() == pytest.approx(1.0, abs=1e-6)
    b = torch.tensor([[0.7, 0.2, 1.5, 1.0]])
    val = bbox_ciou(a, b)
    assert val.item() == pytest.approx(ciou((0.5, 0.5, 1.0, 2.0), (0.7, 0.2, 1.5, 1.0)), rel=1e-5)
    val.sum().backward()
    assert torch.isfinite(a.grad).all()


def test_load_hyp(tmp_path):
    from pagcp.errors import ConfigError
    from pagcp.hyps import FINETUNE, load_hyp

    assert load_hyp() == SCRATCH and load_hyp("scratch") is not SCRATCH
    assert load_hyp("hyp.finetune.yaml") == FINETUNE and FINETUNE["lr0"] < SCRATCH["lr0"]
    assert SCRATCH["box"] == 0.05 and SCRATCH["anchor_t"] == 4.0 and SCRATCH["fliplr"] == 0.5
    f = tmp_path / "h.yaml"
    f.write_text("lr0: 0.02\nbox: 0.1\n")
    hyp = load_hyp(str(f))
    assert hyp["lr0"] == 0.02 and hyp["box"] == 0.1 and hyp["obj"] == 1.0
    f.write_text("lr0: fast\n")
    with pytest.raises(ConfigError, match="lr0 must be a number"):
        load_hyp(str(f))
    with pytest.raises(ConfigError, match="not a file"):
        load_hyp("nonsense")


def test_cached_target_matching_gives_the_same_losses():
    import pagcp
    from pagcp.detection.loss import ComputeLoss

    model = pagcp.load_model("yolov5n", nc=3)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [1, 2, 0.2, 0.7, 0.1, 0.2]])
    plain = ComputeLoss(model, img_size=128)
    cached = ComputeLoss(model, img_size=128, cache_targets=True)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # different predictions, the same targets: matching is reused, losses identical
        preds = [torch.randn(2, 3, s, s, 8, generator=g) for s in (16, 8, 4)]
        a, b = plain(preds, targets), cached(preds, targets)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert len(cached._built) == 1
