"""A seeded detection dataset built in seconds from real images bundled in scikit-image and scikit-learn.

Backgrounds are crops of the photos and textures shipped inside the wheels (astronaut, coffee, chelsea,
rocket, stereo motorcycle, Hubble deep field, brick, grass, gravel, sklearn's china and flower); objects are
pasted with hard alpha masks so every box is exact by construction:

| id | class | source | look |
|---|---|---|---|
| 0 | coin | coins cut from ``skimage.data.coins()`` | grey metal discs |
| 1 | face | faces of ``skimage.data.lfw_subset()`` | warm-tinted ellipses |
| 2 | digit | sklearn ``load_digits`` | dark-blue digit on a white card |
| 3 | triangle | drawn | saturated solid colour |
| 4 | square | drawn | saturated solid colour |
| 5 | circle | drawn | saturated solid colour |

Output (YOLO layout): ``images/{train,val}/NNNNNN.jpg``, ``labels/{train,val}/NNNNNN.txt``, ``data.yaml``
and ``annotations/instances_val.json`` (COCO boxes, image id = int(file stem), category id = class + 1). The
labels are boxes (``--data demo``), or, on the same images, polygons (``demo-seg``) or boxes with four
keypoints (``demo-pose``), all exact from the objects' masks (:mod:`pagcp.data.demo_labels`).
Every image is drawn from its own generator seeded by (seed, split, index), so the output depends only on
the parameters. Command line:
``python -m pagcp.data.demo --out DIR [--train N --val M --img S --seed K --kind segment]``.
"""

from __future__ import annotations

import argparse
import colorsys
import functools
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import yaml
from PIL import Image, ImageDraw

from pagcp.data.demo_labels import KINDS, label_line, yaml_entries
from pagcp.errors import ConfigError, DataError

LOGGER = logging.getLogger(__name__)

CLASSES = ["coin", "face", "digit", "triangle", "square", "circle"]
FORMAT_VERSION = 1  # part of the cache key: bump when the generated images change
DEFAULTS = {"train": 2000, "val": 500, "img": 320, "seed": 0}
MIN_OBJECT, MAX_OBJECT = 16, 128
MAX_OBJECTS_PER_IMAGE = 6
_SPLIT_ID = {"train": 0, "val": 1}
_BACKGROUND_MAX_SIDE = 640


def _require_sources():
    try:
        import skimage.data
        import sklearn.datasets
    except ImportError as e:
        raise DataError(
            "the demo dataset is built from images bundled in scikit-image and scikit-learn: "
            "pip install scikit-image scikit-learn  (or pip install -e .[demo])"
        ) from e
    return skimage.data, sklearn.datasets


def _shrink(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, 2)
    h, w = img.shape[:2]
    r = _BACKGROUND_MAX_SIDE / max(h, w)
    if r < 1:
        img = np.asarray(Image.fromarray(img).resize((round(w * r), round(h * r)), Image.Resampling.BILINEAR))
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def _coin_cutouts(coins: np.ndarray) -> list[np.ndarray]:
    """RGBA cut-outs of the 24 coins: watershed on the Sobel edges from dark/bright markers."""
    from scipy import ndimage
    from skimage import filters, measure, segmentation

    markers = np.zeros_like(coins)
    markers[coins < 30], markers[coins > 150] = 1, 2
    regions = ndimage.binary_fill_holes(segmentation.watershed(filters.sobel(coins), markers) - 1)
    cutouts = []
    for region in measure.regionprops(measure.label(regions)):
        if region.area < 200:
            continue
        y0, x0, y1, x1 = region.bbox
        grey = coins[y0:y1, x0:x1]
        alpha = (region.image * 255).astype(np.uint8)
        cutouts.append(np.dstack([grey, grey, grey, alpha]))
    return cutouts


def _face_cutouts(faces: np.ndarray) -> list[np.ndarray]:
    """RGBA warm-tinted faces inside an elliptical mask."""
    yy, xx = np.mgrid[:25, :25]
    ellipse = ((xx - 12) / 11.5) ** 2 + ((yy - 12) / 12.5) ** 2 <= 1
    tint = np.array([1.0, 0.78, 0.6])
    out = []
    for f in faces:
        rgb = np.clip((0.15 + 0.85 * f[..., None]) * tint * 255, 0, 255).astype(np.uint8)
        out.append(np.dstack([rgb, (ellipse * 255).astype(np.uint8)]))
    return out


@functools.lru_cache(maxsize=1)
def _sources() -> dict[str, list[np.ndarray]]:
    data, datasets = _require_sources()
    backgrounds = [
        data.astronaut(),
        data.coffee(),
        data.chelsea(),
        data.rocket(),
        data.stereo_motorcycle()[0],
        data.hubble_deep_field(),
        data.brick(),
        data.grass(),
        data.gravel(),
        datasets.load_sample_image("china.jpg"),
        datasets.load_sample_image("flower.jpg"),
    ]
    return {
        "backgrounds": [_shrink(b) for b in backgrounds],
        "coins": _coin_cutouts(data.coins()),
        "faces": _face_cutouts(data.lfw_subset()[:100]),  # the first 100 of the subset are faces
        "digits": list(datasets.load_digits().images / 16.0),
    }


def _resize_rgba(patch: np.ndarray, w: int, h: int) -> np.ndarray:
    rgb = Image.fromarray(np.ascontiguousarray(patch[..., :3])).resize((w, h), Image.Resampling.BILINEAR)
    alpha = Image.fromarray(np.ascontiguousarray(patch[..., 3])).resize((w, h), Image.Resampling.BILINEAR)
    hard = (np.asarray(alpha) >= 128).astype(np.uint8) * 255
    return np.dstack([np.asarray(rgb), hard])


def _vivid(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.75, 1.0), rng.uniform(0.7, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _object(cls: int, size: int, rng: np.random.Generator, src: dict) -> np.ndarray:
    """RGBA patch of class ``cls`` whose long side is about ``size``; alpha is 0 or 255."""
    aspect = rng.uniform(0.8, 1.25)
    w, h = (size, max(4, round(size / aspect))) if aspect >= 1 else (max(4, round(size * aspect)), size)
    if cls == 0:
        coin = src["coins"][rng.integers(len(src["coins"]))]
        patch = _resize_rgba(np.rot90(coin, rng.integers(4)), w, h)
    elif cls == 1:
        face = src["faces"][rng.integers(len(src["faces"]))]
        patch = _resize_rgba(face[:, ::-1] if rng.random() < 0.5 else face, w, h)
    elif cls == 2:
        digit = src["digits"][rng.integers(len(src["digits"]))]
        ink = np.asarray(Image.fromarray((digit * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR))
        ink = ink[..., None] / 255.0
        rgb = (1 - ink) * np.array([245, 245, 240]) + ink * np.array([20, 40, 160])
        patch = np.dstack([rgb.astype(np.uint8), np.full((h, w), 255, np.uint8)])
    else:
        mask = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(mask)
        if cls == 3:
            apex_up = rng.random() < 0.5
            pts = [(w / 2, 0), (0, h - 1), (w - 1, h - 1)] if apex_up else [(0, 0), (w - 1, 0), (w / 2, h - 1)]
            draw.polygon(pts, fill=255)
        elif cls == 4:
            draw.rectangle([0, 0, w - 1, h - 1], fill=255)
        else:
            draw.ellipse([0, 0, w - 1, h - 1], fill=255)
        shade = np.linspace(1.0, rng.uniform(0.7, 1.0), h)[:, None, None]
        rgb = np.clip(np.array(_vivid(rng)) * shade, 0, 255).astype(np.uint8) * np.ones((1, w, 1), np.uint8)
        patch = np.dstack([rgb, np.asarray(mask)])
    return _crop_to_alpha(patch)


def _crop_to_alpha(patch: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(patch[..., 3])
    return patch[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def _background(rng: np.random.Generator, size: int, src: dict) -> np.ndarray:
    bg = src["backgrounds"][rng.integers(len(src["backgrounds"]))]
    h, w = bg.shape[:2]
    side = int(rng.uniform(0.4, 1.0) * min(h, w))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = np.asarray(Image.fromarray(bg[y : y + side, x : x + side]).resize((size, size), Image.Resampling.BILINEAR))
    return crop[:, ::-1].copy() if rng.random() < 0.5 else crop.copy()


Box = tuple[int, int, int, int, int]  # class, x0, y0, x1, y1 (pixels, x1 and y1 exclusive)
Pasted = tuple[int, int, int, np.ndarray]  # class, x0, y0, the object's boolean mask (its box's size)


def render_scene(seed: int, split: str, index: int, size: int) -> tuple[np.ndarray, list[Pasted]]:
    """One demo image and its objects ``(class, x0, y0, mask)``: each object's exact mask at pixel (x0, y0)."""
    src = _sources()
    rng = np.random.default_rng([seed, _SPLIT_ID[split], index])
    img = _background(rng, size, src)
    objects: list[Pasted] = []
    largest = max(MIN_OBJECT + 1, min(MAX_OBJECT, int(0.45 * size)))
    for _ in range(int(rng.integers(1, MAX_OBJECTS_PER_IMAGE + 1))):
        cls = int(rng.integers(len(CLASSES)))
        patch = _object(cls, int(math.exp(rng.uniform(math.log(MIN_OBJECT), math.log(largest)))), rng, src)
        ph, pw = patch.shape[:2]
        for _attempt in range(20):
            x0, y0 = int(rng.integers(0, size - pw + 1)), int(rng.integers(0, size - ph + 1))
            if all(
                x0 >= bx0 + m.shape[1] + 2 or bx0 >= x0 + pw + 2 or y0 >= by0 + m.shape[0] + 2 or by0 >= y0 + ph + 2
                for _, bx0, by0, m in objects
            ):
                region = img[y0 : y0 + ph, x0 : x0 + pw]
                region[patch[..., 3] > 0] = patch[..., :3][patch[..., 3] > 0]
                objects.append((cls, x0, y0, patch[..., 3] > 0))
                break
    return img, objects


def _write_split_chunk(args: tuple[str, int, str, int, range, str]) -> list[list[Box]]:
    out, seed, split, size, indices, kind = args
    all_boxes = []
    for i in indices:
        img, objects = render_scene(seed, split, i, size)
        Image.fromarray(img).save(os.path.join(out, "images", split, f"{i:06d}.jpg"), quality=90)
        with open(os.path.join(out, "labels", split, f"{i:06d}.txt"), "w", encoding="utf-8") as f:
            for cls, x0, y0, mask in objects:
                f.write(label_line(kind, cls, x0, y0, mask, size) + "\n")
        all_boxes.append([(cls, x0, y0, x0 + m.shape[1], y0 + m.shape[0]) for cls, x0, y0, m in objects])
    return all_boxes


def _coco_json(boxes_per_image: list, size: int) -> dict:
    images, annotations = [], []
    for i, boxes in enumerate(boxes_per_image):
        images.append({"id": i, "file_name": f"{i:06d}.jpg", "width": size, "height": size})
        for cls, x0, y0, x1, y1 in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": cls + 1,
                    "iscrowd": 0,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                }
            )
    categories = [{"id": k + 1, "name": name, "supercategory": "demo"} for k, name in enumerate(CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def generate_demo(
    out: str,
    train: int = 2000,
    val: int = 500,
    img: int = 320,
    seed: int = 0,
    workers: int | None = None,
    kind: str = "detect",
) -> str:
    """Write the demo dataset to ``out`` (built in a temporary sibling folder, then renamed) -> data.yaml path.

    ``kind``: the labels (``detect``: boxes; ``segment``: polygons; ``pose``: boxes and four keypoints, see
    :mod:`pagcp.data.demo_labels`); the images are the same for every kind.

    If ``out`` already holds a complete dataset (another process won the race) it is kept.
    """
    if train < 0 or val < 1 or img < 2 * MIN_OBJECT + 4:
        raise ConfigError(
            f"demo dataset: need train >= 0, val >= 1 and img >= {2 * MIN_OBJECT + 4} "
            f"(got train={train}, val={val}, img={img})"
        )
    if kind not in KINDS.values():
        raise ConfigError(f"demo dataset: unknown kind {kind!r}; known: {', '.join(KINDS.values())}")
    out = os.path.abspath(os.path.expanduser(out))
    wanted = {"train": train, "val": val, "img": img, "seed": seed, "version": FORMAT_VERSION}
    if kind != "detect":
        wanted["kind"] = kind
    if os.path.exists(out) and os.listdir(out):
        existing = _existing(out)
        if existing == wanted:
            return os.path.join(out, "data.yaml")
        held = "other files"
        if existing:
            held = (f"a {existing.get('kind', 'detect')} demo dataset of {existing['train']} train + "
                    f"{existing['val']} val images at {existing['img']} px (seed {existing['seed']})")  # fmt: skip
        raise ConfigError(
            f"demo dataset: --out {out} already holds {held}, not the {kind} one of {train} train + {val} val images "
            f"at {img} px (seed {seed}) asked for; remove it or pick another folder"
        )
    _sources()  # load once before forking workers
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    try:
        for split in ("train", "val"):
            os.makedirs(os.path.join(tmp, "images", split))
            os.makedirs(os.path.join(tmp, "labels", split))
        workers = workers if workers is not None else min(2, os.cpu_count() or 1)
        val_boxes = []
        for split, n in (("train", train), ("val", val)):
            chunks = [(tmp, seed, split, img, range(s, min(s + 100, n)), kind) for s in range(0, n, 100)]
            if workers > 1 and n >= 200:
                with ProcessPoolExecutor(workers) as pool:
                    results = list(pool.map(_write_split_chunk, chunks))
            else:
                results = [_write_split_chunk(c) for c in chunks]
            if split == "val":
                val_boxes = [b for r in results for b in r]
        os.makedirs(os.path.join(tmp, "annotations"))
        with open(os.path.join(tmp, "annotations", "instances_val.json"), "w", encoding="utf-8") as f:
            json.dump(_coco_json(val_boxes, img), f)
        config = {
            "path": out,
            "train": "images/train",
            "val": "images/val",
            "nc": len(CLASSES),
            "names": CLASSES,
            "coco_json": "annotations/instances_val.json",
            **yaml_entries(kind, len(CLASSES)),
            "demo": wanted,
        }
        with open(os.path.join(tmp, "data.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        try:
            os.rename(tmp, out)
        except OSError:
            if not os.path.isfile(os.path.join(out, "data.yaml")):
                raise
            LOGGER.info("demo dataset %s was written concurrently by another process; using it", out)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return os.path.join(out, "data.yaml")


def _existing(out: str) -> dict | None:
    """The parameters of the demo dataset in ``out`` (its data.yaml's ``demo`` entry), None if it holds none."""
    try:
        with open(os.path.join(out, "data.yaml"), encoding="utf-8") as f:
            params = (yaml.safe_load(f) or {}).get("demo")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return params if isinstance(params, dict) else None


def demo_home() -> str:
    """Folder of generated demo datasets: ``$PAGCP_HOME/datasets`` or ``~/.cache/pagcp/datasets``."""
    home = os.environ.get("PAGCP_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "pagcp")
    return os.path.join(home, "datasets")


def ensure_demo(
    train: int = DEFAULTS["train"],
    val: int = DEFAULTS["val"],
    img: int = DEFAULTS["img"],
    seed: int = DEFAULTS["seed"],
    name: str = "demo",
) -> str:
    """data.yaml of the demo dataset ``name`` (``demo``, ``demo-seg``, ``demo-pose``: its labels' kind) with
    these parameters, generated on first use in ``demo_home()``."""
    out = os.path.join(demo_home(), f"{name}-v{FORMAT_VERSION}-train{train}-val{val}-img{img}-seed{seed}")
    if os.path.isfile(os.path.join(out, "data.yaml")):
        return os.path.join(out, "data.yaml")
    LOGGER.info("generating the %s dataset (%d train, %d val images at %d px) in %s", name, train, val, img, out)
    return generate_demo(out, train, val, img, seed, kind=KINDS[name])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pagcp.data.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--train", type=int, default=DEFAULTS["train"],
                        help=f"number of train images (default: {DEFAULTS['train']})")  # fmt: skip
    parser.add_argument("--val", type=int, default=DEFAULTS["val"],
                        help=f"number of val images (default: {DEFAULTS['val']})")  # fmt: skip
    parser.add_argument("--img", "--img-size", type=int, default=DEFAULTS["img"],
                        help=f"image side in pixels (default: {DEFAULTS['img']})")  # fmt: skip
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"],
                        help=f"seed of the images and objects (default: {DEFAULTS['seed']})")  # fmt: skip
    parser.add_argument("--workers", type=int, default=None, help="processes (default min(2, cores))")
    parser.add_argument("--kind", choices=sorted(KINDS.values()), default="detect",
                        help="labels: detect (boxes, default), segment (polygons), pose (4 keypoints)")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    there = _existing(os.path.abspath(os.path.expanduser(args.out)))
    try:
        path = generate_demo(args.out, args.train, args.val, args.img, args.seed, args.workers, args.kind)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    made = "already there" if there else f"written in {time.perf_counter() - start:.1f} s"
    print(f"demo dataset ({args.kind}): {args.train} train + {args.val} val images at {args.img} px, {made} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
