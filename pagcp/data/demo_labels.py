"""The label lines of the demo datasets' three kinds, from each pasted object's exact alpha mask.

Every demo object is pasted with a hard (0/255) alpha mask and no two objects touch, so the mask of each
instance is known exactly, and so is everything derived from it:

- ``detect`` (``--data demo``): ``class cx cy w h``, the mask's bounding box.
- ``segment`` (``--data demo-seg``): ``class x1 y1 x2 y2 ...``, the outline of the mask (its 0.5 iso-contour
  traced through pixel centres, so it runs along the pixel edges, simplified to within half a pixel).
- ``pose`` (``--data demo-pose``): the box, then four keypoints ``x y 2`` (all visible): the centres of the
  mask's topmost row, rightmost column, bottommost row and leftmost column of pixels (its extreme points,
  each the middle of its run of pixels, so a flat side gives its midpoint). A left-right flip swaps the
  rightmost and leftmost points and keeps the others: :data:`FLIP_INDEX`.

All coordinates are normalised by the image side, as the YOLO label format has them.
"""

from __future__ import annotations

import numpy as np

#: the label kinds, by the ``--data`` name of their dataset
KINDS = {"demo": "detect", "demo-seg": "segment", "demo-pose": "pose"}
#: the pose kind's keypoints, in label order
KEYPOINTS = ("top", "right", "bottom", "left")
#: where each keypoint lands after a left-right flip (Ultralytics' ``flip_idx``)
FLIP_INDEX = [0, 3, 2, 1]
#: Ultralytics' ``kpt_shape`` of the pose kind: four (x, y, visibility) points
KPT_SHAPE = [len(KEYPOINTS), 3]


def box_line(cls: int, x0: float, y0: float, x1: float, y1: float, size: int) -> str:
    """``class cx cy w h`` of a pixel box (x1, y1 exclusive), normalised."""
    return f"{cls} {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} {(x1 - x0) / size:.6f} {(y1 - y0) / size:.6f}"


def outline(mask: np.ndarray) -> np.ndarray:
    """The (x, y) polygon, in pixel units of ``mask``'s own frame, of the largest outline of a boolean mask."""
    from skimage import measure

    padded = np.pad(mask.astype(np.float32), 1)
    contours = measure.find_contours(padded, 0.5)
    contour = max(contours, key=len)
    simple = measure.approximate_polygon(contour, tolerance=0.5)[:-1]  # closed: the last point repeats the first
    # contour points are (row, col) of the padded grid through pixel centres: +0.5 - 1 gives image coordinates
    return np.stack([simple[:, 1] - 0.5, simple[:, 0] - 0.5], 1)


def extreme_points(mask: np.ndarray) -> np.ndarray:
    """The (x, y) of the top, right, bottom and left extreme points of a boolean mask (see the module
    docstring), in pixel units of its own frame (pixel centres at +0.5)."""
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    points = [
        (cols[rows == top].mean(), top),
        (right, rows[cols == right].mean()),
        (cols[rows == bottom].mean(), bottom),
        (left, rows[cols == left].mean()),
    ]
    return np.asarray(points, dtype=np.float64) + 0.5


def label_line(kind: str, cls: int, x0: int, y0: int, mask: np.ndarray, size: int) -> str:
    """The label line of one object of class ``cls`` whose boolean ``mask`` sits at pixel (x0, y0)."""
    h, w = mask.shape
    if kind == "detect":
        return box_line(cls, x0, y0, x0 + w, y0 + h, size)
    if kind == "segment":
        xy = np.clip((outline(mask) + (x0, y0)) / size, 0.0, 1.0)
        return f"{cls} " + " ".join(f"{v:.6f}" for v in xy.reshape(-1))
    if kind == "pose":
        xy = (extreme_points(mask) + (x0, y0)) / size
        points = " ".join(f"{x:.6f} {y:.6f} 2" for x, y in xy)
        return f"{box_line(cls, x0, y0, x0 + w, y0 + h, size)} {points}"
    raise ValueError(f"unknown demo label kind {kind!r}; known: {', '.join(KINDS.values())}")


def yaml_entries(kind: str, nc: int) -> dict:
    """What a data yaml of this kind adds for Ultralytics (the pose kind's keypoint shape, flip index and the
    keypoints' names for each of the ``nc`` classes)."""
    if kind == "pose":
        names = {k: list(KEYPOINTS) for k in range(nc)}
        return {"kpt_shape": list(KPT_SHAPE), "flip_idx": list(FLIP_INDEX), "kpt_names": names}
    return {}
