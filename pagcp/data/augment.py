"""Image geometry and photometric augmentation on uint8 RGB numpy images (pillow + numpy, no OpenCV).

Boxes are pixel (x1, y1, x2, y2) arrays of shape (n, 4) in the coordinates of the image they go with.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

PAD_VALUE = 114
_FILL = (PAD_VALUE, PAD_VALUE, PAD_VALUE)


def resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize (pillow filters with support widened for downscaling, i.e. area-like)."""
    if img.shape[1] == width and img.shape[0] == height:
        return img
    return np.asarray(Image.fromarray(img).resize((width, height), Image.Resampling.BILINEAR))


def letterbox(
    img: np.ndarray, new_shape: tuple[int, int], scaleup: bool = True
) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize keeping the aspect ratio to fit (h, w) = ``new_shape`` and pad with grey 114.

    Returns the image, the scale applied and the (left, top) padding. ``scaleup=False`` never enlarges
    (validation), so only padding is added to small images.
    """
    h0, w0 = img.shape[:2]
    r = min(new_shape[0] / h0, new_shape[1] / w0)
    if not scaleup:
        r = min(r, 1.0)
    w, h = round(w0 * r), round(h0 * r)
    img = resize(img, w, h)
    pad_w, pad_h = int(new_shape[1]) - w, int(new_shape[0]) - h
    left, top = int(pad_w // 2), int(pad_h // 2)
    if pad_w or pad_h:
        out = np.full((h + pad_h, w + pad_w, 3), PAD_VALUE, dtype=np.uint8)
        out[top : top + h, left : left + w] = img
        img = out
    return img, r, (left, top)


def augment_hsv(img: np.ndarray, hgain: float, sgain: float, vgain: float, rng: np.random.Generator) -> np.ndarray:
    """Random hue shift and saturation/value scaling by factors drawn from 1 +/- gain."""
    if not (hgain or sgain or vgain):
        return img
    gh, gs, gv = rng.uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1
    levels = np.arange(256, dtype=np.float32)
    lut_h = ((levels * gh) % 256).astype(np.uint8)
    lut_s = np.clip(levels * gs, 0, 255).astype(np.uint8)
    lut_v = np.clip(levels * gv, 0, 255).astype(np.uint8)
    hsv = np.asarray(Image.fromarray(img).convert("HSV")).copy()
    hsv[..., 0] = lut_h[hsv[..., 0]]
    hsv[..., 1] = lut_s[hsv[..., 1]]
    hsv[..., 2] = lut_v[hsv[..., 2]]
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


def _affine_matrix(
    in_w: int,
    in_h: int,
    out_w: int,
    out_h: int,
    rng: np.random.Generator,
    degrees: float,
    translate: float,
    scale: float,
    shear: float,
    perspective: float,
) -> tuple[np.ndarray, float]:
    centre = np.eye(3)
    centre[0, 2], centre[1, 2] = -in_w / 2, -in_h / 2
    persp = np.eye(3)
    persp[2, 0], persp[2, 1] = rng.uniform(-perspective, perspective, 2)
    angle = math.radians(rng.uniform(-degrees, degrees))
    s = rng.uniform(1 - scale, 1 + scale)
    rot = np.eye(3)
    rot[:2, :2] = s * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    sh = np.eye(3)
    sh[0, 1] = math.tan(math.radians(rng.uniform(-shear, shear)))
    sh[1, 0] = math.tan(math.radians(rng.uniform(-shear, shear)))
    move = np.eye(3)
    move[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_w
    move[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_h
    return move @ sh @ rot @ persp @ centre, s


def transform_boxes(boxes: np.ndarray, matrix: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Map xyxy boxes through a 3x3 homography: box of the four transformed corners, clipped."""
    if not len(boxes):
        return boxes.reshape(0, 4)
    x1, y1, x2, y2 = boxes.T
    corners = np.stack([np.stack([x1, y1]), np.stack([x2, y1]), np.stack([x1, y2]), np.stack([x2, y2])])
    pts = np.concatenate([corners, np.ones((4, 1, len(boxes)))], 1)  # (4, 3, n)
    mapped = np.einsum("ij,kjn->kin", matrix, pts)
    xy = mapped[:, :2] / mapped[:, 2:3]
    out = np.stack([xy[:, 0].min(0), xy[:, 1].min(0), xy[:, 0].max(0), xy[:, 1].max(0)], 1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, out_w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, out_h)
    return out


def box_candidates(
    before: np.ndarray,
    after: np.ndarray,
    gain: float,
    min_wh: float = 2,
    min_area_ratio: float = 0.1,
    max_aspect: float = 20,
) -> np.ndarray:
    """Boxes worth keeping after a warp: not tiny, not mostly cut off, not degenerate slivers."""
    w1, h1 = (before[:, 2] - before[:, 0]) * gain, (before[:, 3] - before[:, 1]) * gain
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    aspect = np.maximum(w2 / (h2 + 1e-16), h2 / (w2 + 1e-16))
    return (w2 > min_wh) & (h2 > min_wh) & (w2 * h2 / (w1 * h1 + 1e-16) > min_area_ratio) & (aspect < max_aspect)


def random_affine(
    img: np.ndarray,
    boxes: np.ndarray,
    rng: np.random.Generator,
    degrees: float = 0.0,
    translate: float = 0.1,
    scale: float = 0.5,
    shear: float = 0.0,
    perspective: float = 0.0,
    border: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random rotation/scale/shear/translation (and perspective) of an image and its boxes.

    The output is the input size plus ``2 * border`` (a negative border crops, as after a mosaic).
    Returns the image, the kept boxes and the boolean keep mask over the input boxes.
    """
    in_h, in_w = img.shape[:2]
    out_h, out_w = in_h + 2 * border, in_w + 2 * border
    matrix, gain = _affine_matrix(in_w, in_h, out_w, out_h, rng, degrees, translate, scale, shear, perspective)
    inv = np.linalg.inv(matrix)
    pil = Image.fromarray(img)
    if perspective:
        inv = inv / inv[2, 2]
        warped = pil.transform(
            (out_w, out_h),
            Image.Transform.PERSPECTIVE,
            tuple(inv.reshape(-1)[:8]),
            Image.Resampling.BILINEAR,
            fillcolor=_FILL,
        )
    else:
        warped = pil.transform(
            (out_w, out_h),
            Image.Transform.AFFINE,
            tuple(inv[:2].reshape(-1)),
            Image.Resampling.BILINEAR,
            fillcolor=_FILL,
        )
    new_boxes = transform_boxes(boxes, matrix, out_w, out_h)
    keep = box_candidates(boxes, new_boxes, gain) if len(boxes) else np.zeros(0, dtype=bool)
    return np.asarray(warped), new_boxes[keep], keep


def mosaic4(
    images: list[np.ndarray], boxes: list[np.ndarray], size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tile four images around a random centre of a 2size x 2size grey canvas.

    Returns the canvas, the concatenated shifted boxes (clipped to the canvas) and the source image index
    of every box.
    """
    canvas = np.full((2 * size, 2 * size, 3), PAD_VALUE, dtype=np.uint8)
    xc, yc = (int(v) for v in rng.uniform(size / 2, 3 * size / 2, 2))
    out_boxes, owner = [], []
    for k, (img, b) in enumerate(zip(images, boxes)):
        h, w = img.shape[:2]
        if k == 0:  # top-left: its bottom-right corner at the centre
            cx1, cy1, cx2, cy2 = max(xc - w, 0), max(yc - h, 0), xc, yc
            sx1, sy1 = w - (cx2 - cx1), h - (cy2 - cy1)
        elif k == 1:  # top-right: its bottom-left corner at the centre
            cx1, cy1, cx2, cy2 = xc, max(yc - h, 0), min(xc + w, 2 * size), yc
            sx1, sy1 = 0, h - (cy2 - cy1)
        elif k == 2:  # bottom-left: its top-right corner at the centre
            cx1, cy1, cx2, cy2 = max(xc - w, 0), yc, xc, min(yc + h, 2 * size)
            sx1, sy1 = w - (cx2 - cx1), 0
        else:  # bottom-right: its top-left corner at the centre
            cx1, cy1, cx2, cy2 = xc, yc, min(xc + w, 2 * size), min(yc + h, 2 * size)
            sx1, sy1 = 0, 0
        canvas[cy1:cy2, cx1:cx2] = img[sy1 : sy1 + (cy2 - cy1), sx1 : sx1 + (cx2 - cx1)]
        if len(b):
            shifted = b + np.array([cx1 - sx1, cy1 - sy1, cx1 - sx1, cy1 - sy1], dtype=b.dtype)
            out_boxes.append(shifted)
            owner.append(np.full(len(b), k))
    if out_boxes:
        all_boxes = np.concatenate(out_boxes).clip(0, 2 * size)
        return canvas, all_boxes, np.concatenate(owner)
    return canvas, np.zeros((0, 4)), np.zeros(0, dtype=int)
