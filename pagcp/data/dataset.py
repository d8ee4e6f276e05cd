"""YOLO-format detection dataset: image discovery, label checks, letterbox/rect batches, augmentation.

Labels live beside the images: the last ``/images/`` of an image path becomes ``/labels/`` and the
extension ``.txt``; each row is ``class cx cy w h`` normalised to 0..1; no file means no objects. Bad data
is skipped, never fatal: malformed rows are warned about by file and line, out-of-range classes and
unreadable images are counted, and one summary line reports every count.
"""

from __future__ import annotations

import glob
import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from pagcp.data.augment import augment_hsv, letterbox, mosaic4, random_affine, resize
from pagcp.errors import DataError
from pagcp.hyps import load_hyp

#: the dataset summaries already logged by this process
_SAID: set[str] = set()
LOGGER = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_MAX_ROW_WARNINGS = 20
_EXIF_ORIENTATION = 0x0112


def image_files(path: str | Sequence[str]) -> list[str]:
    """Image paths of a split: a folder (searched recursively), a ``.txt`` list, one image, or a list."""
    if isinstance(path, (list, tuple)):
        return [f for p in path for f in image_files(p)]
    path = os.path.expanduser(os.fspath(path))
    if os.path.isdir(path):
        files = glob.glob(os.path.join(path, "**", "*"), recursive=True)
    elif os.path.isfile(path) and path.lower().endswith(".txt"):
        parent = os.path.dirname(os.path.abspath(path))
        with open(path, encoding="utf-8") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
        files = [ln if os.path.isabs(ln) else os.path.normpath(os.path.join(parent, ln)) for ln in lines]
    elif os.path.isfile(path):
        files = [path]
    else:
        raise DataError(f"dataset split {path} does not exist (expected a folder, a .txt list or an image)")
    return sorted(f for f in files if f.lower().endswith(IMAGE_EXTENSIONS))


def _describe_list(paths: list[str]) -> str:
    """A short name for a list of split paths: the paths themselves, or their count and common folder."""
    if len(paths) <= 3:
        return ", ".join(paths)
    return f"{len(paths)} files under {os.path.commonpath([os.path.abspath(p) for p in paths])}"


def label_path(image_path: str) -> str:
    """Label file of an image: last ``/images/`` -> ``/labels/``, extension -> ``.txt``."""
    head, sep, tail = image_path.rpartition(f"{os.sep}images{os.sep}")
    base = f"{head}{os.sep}labels{os.sep}{tail}" if sep else image_path
    return os.path.splitext(base)[0] + ".txt"


def _image_size(path: str) -> tuple[int, int]:
    """(width, height) after EXIF rotation; raises on unreadable or truncated files."""
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    if path.lower().endswith((".jpg", ".jpeg")):
        with open(path, "rb") as f:
            f.seek(-2, os.SEEK_END)
            if f.read() != b"\xff\xd9":
                raise OSError("truncated JPEG (no end-of-image marker)")
    if w < 2 or h < 2:
        raise OSError(f"image of {w}x{h} pixels")
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


class _Problems:
    """Counts of skipped data, with a capped number of per-row warnings."""

    def __init__(self, prefix: str):
        self.prefix, self.counts, self.warned = prefix, Counter(), 0

    def row(self, kind: str, file: str, line: int, text: str, why: str) -> None:
        self.counts[kind] += 1
        if self.warned < _MAX_ROW_WARNINGS:
            LOGGER.warning("%s%s:%d: %s, row skipped: %r", self.prefix, file, line, why, text)
        elif self.warned == _MAX_ROW_WARNINGS:
            LOGGER.warning("%sfurther label warnings are not shown (see the summary)", self.prefix)
        self.warned += 1


def parse_labels(path: str, nc: int | None, problems: _Problems) -> np.ndarray:
    """Rows ``class cx cy w h`` of one label file -> (n, 5) float32; bad rows skipped and counted."""
    if not os.path.isfile(path):
        return np.zeros((0, 5), dtype=np.float32)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        problems.row("malformed label rows", path, 0, "", f"unreadable label file ({e})")
        return np.zeros((0, 5), dtype=np.float32)
    rows, seen = [], set()
    for number, text in enumerate(lines, 1):
        fields = text.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            values = []
        if len(values) != 5 or not all(math.isfinite(v) for v in values):
            problems.row("malformed label rows", path, number, text, "expected 5 numbers 'class cx cy w h'")
            continue
        cls, cx, cy, w, h = values
        if cls < 0 or cls != int(cls):
            problems.row("malformed label rows", path, number, text, "class must be a non-negative integer")
            continue
        if nc is not None and cls >= nc:
            problems.row("out-of-range classes", path, number, text, f"class {int(cls)} >= nc={nc}")
            continue
        if w <= 0 or h <= 0 or min(cx, cy) < 0 or max(cx, cy) > 1 or w > 1.001 or h > 1.001:
            problems.row("malformed label rows", path, number, text, "box not normalised to 0..1")
            continue
        key = tuple(values)
        if key in seen:
            problems.counts["duplicate label rows"] += 1
            continue
        seen.add(key)
        rows.append([cls, cx, cy, min(w, 1.0), min(h, 1.0)])
    return np.array(rows, dtype=np.float32).reshape(-1, 5)


def load_rgb(path: str) -> np.ndarray:
    """Decode an image file to uint8 RGB (H, W, 3), EXIF rotation applied."""
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


class YoloDataset(Dataset):
    """Images and labels of one split; items are ``(uint8 CHW tensor, labels (n, 6), path, shapes)``.

    ``labels`` rows are ``[0, class, cx, cy, w, h]`` normalised to the returned image (column 0 becomes the
    index in the batch in ``collate``); ``shapes`` is ``((h0, w0), ((gain_y, gain_x), (pad_x, pad_y)))`` to
    map boxes back to the original image. With ``rect`` the files are ordered by aspect ratio and every
    batch of ``batch_size`` gets the smallest stride-multiple shape that fits (plus ``pad`` strides).
    ``cache`` (True or "ram") decodes and resizes every image once and keeps it in memory.
    """

    def __init__(
        self,
        path: str | Sequence[str],
        img_size: int = 640,
        batch_size: int = 16,
        augment: bool = False,
        hyp: dict | str | None = None,
        rect: bool = False,
        stride: int = 32,
        pad: float = 0.0,
        cache: bool | str = False,
        nc: int | None = None,
        seed: int = 0,
        prefix: str = "",
    ):
        self.img_size, self.augment, self.rect, self.stride = int(img_size), augment, rect, int(stride)
        self.hyp = load_hyp(hyp) if not isinstance(hyp, dict) else {**load_hyp(None), **hyp}
        self.mosaic = augment and not rect and self.hyp["mosaic"] > 0
        #: augmentations of image i are drawn from a generator seeded with (stream, i): the same whichever worker
        #: process loads it, so results do not depend on --workers; a trainer sets a new stream every epoch
        self.stream = int(seed)
        self.rng = np.random.default_rng([self.stream, 0])
        self.prefix = prefix
        self.source = path if isinstance(path, str) else _describe_list([str(p) for p in path])
        files = image_files(path)
        if not files:
            raise DataError(f"{prefix}no images found in {self.source} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
        self._scan(files, nc)
        if rect:
            self._make_rect_batches(batch_size, pad)
        self.images: list[np.ndarray | None] = [None] * len(self.files)
        if cache:
            self._cache_images()

    def _scan(self, files: list[str], nc: int | None) -> None:
        problems = _Problems(self.prefix)
        self.files, self.labels, sizes = [], [], []
        for f in tqdm(files, desc=f"{self.prefix}scanning", unit="img", disable=None, leave=False):
            try:
                size = _image_size(f)
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError, ImportError) as e:
                # ImportError: Ultralytics, once imported, retries unreadable images with an optional HEIF
                # plugin and raises when that is not installed; the image is unreadable either way
                problems.counts["unreadable images"] += 1
                LOGGER.warning("%s%s: unreadable image skipped (%s)", self.prefix, f, e)
                continue
            self.files.append(f)
            self.labels.append(parse_labels(label_path(f), nc, problems))
            sizes.append(size)
        self.sizes = np.array(sizes, dtype=np.int64).reshape(-1, 2)  # (w, h)
        n_boxes = sum(len(lb) for lb in self.labels)
        empty = sum(1 for lb in self.labels if not len(lb))
        kinds = ("unreadable images", "malformed label rows", "out-of-range classes", "duplicate label rows")
        skipped = ", ".join(f"{problems.counts[k]} {k}" for k in kinds)
        summary = (
            f"{self.prefix}{self.source}: {len(self.files)} images, {n_boxes} boxes, {empty} without labels;"
            f" skipped: {skipped}"
        )
        if sum(problems.counts.values()):
            LOGGER.warning(summary)
        elif summary not in _SAID:  # a clean split scanned again in this process (another validation): said once
            _SAID.add(summary)
            LOGGER.info(summary)
        self.problems = {k: problems.counts[k] for k in kinds}
        if not self.files:
            raise DataError(f"{self.prefix}no readable images in {self.source} ({len(files)} files failed to decode)")

    def _make_rect_batches(self, batch_size: int, pad: float) -> None:
        aspect = self.sizes[:, 1] / self.sizes[:, 0]  # h / w
        order = np.argsort(aspect, kind="stable")
        self.files = [self.files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.sizes, aspect = self.sizes[order], aspect[order]
        n_batches = math.ceil(len(order) / batch_size)
        self.batch_index = np.arange(len(order)) // batch_size
        shapes = []
        for b in range(n_batches):
            ar = aspect[self.batch_index == b]
            lo, hi = ar.min(), ar.max()
            shape = [hi, 1.0] if hi < 1 else [1.0, 1.0 / lo] if lo > 1 else [1.0, 1.0]  # (h, w) relative
            shapes.append(np.ceil(np.array(shape) * self.img_size / self.stride + pad).astype(int) * self.stride)
        self.batch_shapes = np.array(shapes)

    def _cache_images(self) -> None:
        total = 0
        for i in tqdm(range(len(self.files)), desc=f"{self.prefix}caching", unit="img", disable=None, leave=False):
            self.images[i] = self._decode(i)
            total += self.images[i].nbytes
        LOGGER.info("%scached %d images in RAM (%.2f GB)", self.prefix, len(self.files), total / 1e9)

    def __len__(self) -> int:
        return len(self.files)

    def _decode(self, i: int) -> np.ndarray:
        img = load_rgb(self.files[i])
        h0, w0 = img.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            img = resize(img, max(1, round(w0 * r)), max(1, round(h0 * r)))
        return img

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Image ``i`` resized so its long side is ``img_size``, and its original (h0, w0)."""
        img = self.images[i] if self.images[i] is not None else self._decode(i)
        w0, h0 = self.sizes[i]
        return img, (int(h0), int(w0))

    def _pixel_boxes(self, i: int, w: int, h: int, gain: float = 1.0, pad: tuple[int, int] = (0, 0)):
        lb = self.labels[i]
        cx, cy, bw, bh = lb[:, 1] * w, lb[:, 2] * h, lb[:, 3] * w, lb[:, 4] * h
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1) * gain
        return boxes + np.array([pad[0], pad[1], pad[0], pad[1]]), lb[:, 0]

    def _load_mosaic(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        picks = [i, *self.rng.integers(0, len(self), 3).tolist()]
        images, boxes, classes = [], [], []
        for k in picks:
            img, _ = self.load_image(k)
            b, c = self._pixel_boxes(k, img.shape[1], img.shape[0])
            images.append(img)
            boxes.append(b)
            classes.append(c)
        canvas, all_boxes, _ = mosaic4(images, boxes, self.img_size, self.rng)
        return canvas, all_boxes, np.concatenate(classes)

    def __getitem__(self, index: int):
        self.rng = np.random.default_rng([self.stream, index])  # see __init__: independent of the worker
        h = self.hyp
        if self.mosaic and self.rng.random() < h["mosaic"]:
            img, boxes, classes = self._load_mosaic(index)
            img, boxes, keep = random_affine(
                img,
                boxes,
                self.rng,
                h["degrees"],
                h["translate"],
                h["scale"],
                h["shear"],
                h["perspective"],
                border=-self.img_size // 2,
            )
            classes = classes[keep]
            shapes = None
        else:
            img, (h0, w0) = self.load_image(index)
            shape = tuple(self.batch_shapes[self.batch_index[index]]) if self.rect else (self.img_size,) * 2
            lh, lw = img.shape[:2]
            img, r, pad = letterbox(img, shape, scaleup=self.augment)
            boxes, classes = self._pixel_boxes(index, lw, lh, r, pad)
            shapes = ((h0, w0), ((lh * r / h0, lw * r / w0), pad))
            if self.augment:
                img, boxes, keep = random_affine(
                    img, boxes, self.rng, h["degrees"], h["translate"], h["scale"], h["shear"], h["perspective"]
                )
                classes = classes[keep]
        if self.augment:
            img = augment_hsv(img, h["hsv_h"], h["hsv_s"], h["hsv_v"], self.rng)
            if self.rng.random() < h["flipud"]:
                img = img[::-1]
                boxes[:, [1, 3]] = img.shape[0] - boxes[:, [3, 1]]
            if self.rng.random() < h["fliplr"]:
                img = img[:, ::-1]
                boxes[:, [0, 2]] = img.shape[1] - boxes[:, [2, 0]]
        height, width = img.shape[:2]
        labels = torch.zeros((len(boxes), 6))
        if len(boxes):
            b = torch.as_tensor(np.asarray(boxes, dtype=np.float32))
            labels[:, 1] = torch.as_tensor(np.asarray(classes, dtype=np.float32))
            labels[:, 2] = (b[:, 0] + b[:, 2]) / 2 / width
            labels[:, 3] = (b[:, 1] + b[:, 3]) / 2 / height
            labels[:, 4] = (b[:, 2] - b[:, 0]) / width
            labels[:, 5] = (b[:, 3] - b[:, 1]) / height
        chw = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        return chw, labels, self.files[index], shapes

    @staticmethod
    def collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...], tuple[Any, ...]]:
        """Stack images; concatenate labels with column 0 set to each row's index in the batch."""
        images, labels, paths, shapes = zip(*batch)
        for i, lb in enumerate(labels):
            lb[:, 0] = i
        return torch.stack(images, 0), torch.cat(labels, 0), paths, shapes


def create_dataloader(
    path: str | Sequence[str],
    img_size: int,
    batch_size: int,
    stride: int = 32,
    hyp: dict | str | None = None,
    augment: bool = False,
    rect: bool = False,
    pad: float = 0.0,
    cache: bool | str = False,
    workers: int = 0,
    shuffle: bool = False,
    sampler: Sampler | None = None,
    seed: int = 0,
    nc: int | None = None,
    prefix: str = "",
) -> tuple[DataLoader, YoloDataset]:
    """A DataLoader over ``YoloDataset`` (see there) and the dataset itself.

    Validation uses ``rect=True, pad=0.5``; training ``augment=True, shuffle=True`` (shuffling is turned off
    with ``rect``, whose batches must stay in aspect-ratio order). Seeded: the same ``seed`` gives the same
    batches and augmentations whatever ``workers`` is (an image's augmentations are drawn from its own
    generator, seeded with the dataset's stream and its index).
    """
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    if rect and shuffle:
        LOGGER.warning("%srectangular batches keep the aspect-ratio order: shuffle is turned off", prefix)
    dataset = YoloDataset(path, img_size, batch_size, augment, hyp, rect, stride, pad, cache, nc, seed, prefix)
    workers = max(0, min(int(workers), os.cpu_count() or 1, len(dataset)))
    generator = torch.Generator()
    generator.manual_seed(seed)
    loader = DataLoader(
        dataset,
        batch_size=min(batch_size, len(dataset)),
        shuffle=shuffle and not rect and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        collate_fn=YoloDataset.collate,
        generator=generator,
        persistent_workers=False,
    )
    return loader, dataset
