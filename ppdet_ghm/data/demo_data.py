"""A deterministic, generated COCO-format detection set for the CPU demo ("shapes").

Four classes of coloured shapes on a noisy, textured background, drawn with Pillow:

========  ======================  ====================================================
id  name  shape                   colour (hue jittered, lightness/saturation varied)
========  ======================  ====================================================
1         ``square``              filled axis-aligned square, red
2         ``circle``              filled disc, green
3         ``triangle``            filled isosceles triangle (4 orientations), blue
4         ``ring``                annulus (outline circle), yellow-orange
========  ======================  ====================================================

What makes it a detection problem with the hard/easy imbalance GHM targets:

- object sizes (the longer bbox side) from ``min_size`` to ``max_size`` px (8 to 128 by default),
  20 % small, 50 % medium, 30 % large in COCO's area ranges, so every range of APs / APm / APl
  is populated. COCO val2017 has about 41 / 34 / 24 %; the demo has fewer small objects because
  RetinaNet's smallest anchor is 32 px (octave scale 4 at stride 8) and the demo detector trains
  600 iterations from scratch: with 40 / 40 / 20 it reached APs 0.05 and AP 0.22, with this mix
  AP 0.40 (the same config and schedule);
- several objects per image (up to ``max_objects``), overlapping (pairwise IoU up to
  ``max_iou``, later shapes drawn over earlier ones), and a share of images (``empty_ratio``)
  without any object;
- clutter that is not annotated: distractor shapes in any colour (crosses, hollow squares, line
  segments, small blobs) and a low-frequency texture plus pixel noise on everything.

Annotation boxes are pixel-exact: each shape is first drawn into its own mask, and the box is the
mask's extent, ``[x, y, w, h]`` in COCO's pixel-edge convention (a shape covering pixel columns
``x0 .. x1`` has ``x = x0, w = x1 - x0 + 1``). ``area`` is ``w * h`` (boxes-only set).

Determinism: image ``i`` of split ``s`` is drawn from ``numpy.random.default_rng([seed, s, i])``
only, so the bytes of every file depend on ``(seed, split, index, image_size, ...)`` alone and not
on how many images are generated; JSON is written with sorted keys. Same arguments give the same
files (same SHA-256) with the same Pillow/libjpeg build.

Layout written under ``out_dir``::

    train/000000.jpg ...              val/000000.jpg ...
    annotations/instances_train.json  annotations/instances_val.json
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

logger = logging.getLogger(__name__)

__all__ = [
    "CATEGORIES",
    "DemoDataSpec",
    "DemoObject",
    "draw_image",
    "generate",
    "generate_split",
    "tree_digest",
    "validate",
]

#: COCO categories of the demo set, ids 1..4.
CATEGORIES: tuple[dict, ...] = (
    {"id": 1, "name": "square", "supercategory": "shape"},
    {"id": 2, "name": "circle", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "ring", "supercategory": "shape"},
)

# Base hue (degrees) of each class; each object's hue is jittered by +-_HUE_JITTER.
_CLASS_HUE = {1: 0.0, 2: 120.0, 3: 225.0, 4: 45.0}
_HUE_JITTER = 18.0
_SPLIT_CODE = {"train": 0, "val": 1}
_IMAGE_FORMATS = {"jpg": "JPEG", "png": "PNG"}


@dataclasses.dataclass(frozen=True)
class DemoDataSpec:
    """What to generate. Every field enters the random stream or the drawing, none is ignored.

    Args:
        seed: base seed; image ``i`` of split ``s`` uses ``default_rng([seed, s, i])``.
        num_train / num_val: number of images per split.
        image_size: images are ``image_size x image_size`` pixels, RGB.
        min_size / max_size: range of an object's longer bbox side, in pixels.
        size_mix: shares of small / medium / large objects (COCO's ranges: longer side below 32,
            32-96, above 96 px; COCO val2017 has about 41 / 34 / 24 %), log-uniform within each.
            The default 20 / 50 / 30 suits RetinaNet's >= 32 px anchors (module docstring).
        max_objects: objects per non-empty image are uniform in ``1 .. max_objects``.
        empty_ratio: probability that an image has no object (clutter only).
        max_iou: the largest IoU allowed between two objects of one image (and a shape drawn
            later may cover at most half of an earlier object's box).
        max_distractors: distractor shapes per image are uniform in ``0 .. max_distractors``.
        noise_std: standard deviation of the Gaussian pixel noise (0-255 scale).
        image_format: ``"jpg"`` (quality 92) or ``"png"``.
    """

    seed: int = 0
    num_train: int = 800
    num_val: int = 200
    image_size: int = 256
    min_size: int = 8
    max_size: int = 128
    size_mix: tuple[float, float, float] = (0.2, 0.5, 0.3)
    max_objects: int = 8
    empty_ratio: float = 0.1
    max_iou: float = 0.3
    max_distractors: int = 6
    noise_std: float = 8.0
    image_format: str = "jpg"

    def __post_init__(self):
        if self.image_format not in _IMAGE_FORMATS:
            raise ValueError(
                f"image_format={self.image_format!r} is not supported: use one of "
                f"{sorted(_IMAGE_FORMATS)}"
            )
        if not 1 <= self.min_size <= self.max_size:
            raise ValueError(
                f"min_size={self.min_size}, max_size={self.max_size}: need 1 <= min_size <= max_size"
            )
        if self.max_size > self.image_size:
            raise ValueError(
                f"max_size={self.max_size} does not fit in image_size={self.image_size}"
            )
        if not 0.0 <= self.empty_ratio <= 1.0:
            raise ValueError(f"empty_ratio={self.empty_ratio} must be in [0, 1]")
        if len(self.size_mix) != 3 or min(self.size_mix) < 0 or sum(self.size_mix) <= 0:
            raise ValueError(f"size_mix={self.size_mix} must be 3 non-negative shares, not all 0")
        if self.max_objects < 1:
            raise ValueError(f"max_objects={self.max_objects} must be >= 1")
        if self.num_train < 0 or self.num_val < 0:
            raise ValueError(f"num_train={self.num_train}, num_val={self.num_val} must be >= 0")


@dataclasses.dataclass(frozen=True)
class DemoObject:
    """One annotated object: class id (1..4) and pixel-exact box ``[x, y, w, h]`` (ints)."""

    category_id: int
    bbox: tuple[int, int, int, int]


def _hsv_to_rgb(hue_deg: float, sat: float, val: float) -> tuple[int, int, int]:
    """HSV (hue in degrees, saturation and value in [0, 1]) to an 8-bit RGB triple."""
    h = (hue_deg % 360.0) / 60.0
    c = val * sat
    x = c * (1.0 - abs(h % 2.0 - 1.0))
    sector = int(h) % 6
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][sector]
    m = val - c
    return tuple(int(round(255.0 * (ch + m))) for ch in (r, g, b))


def _class_colour(rng: np.random.Generator, category_id: int) -> tuple[int, int, int]:
    hue = _CLASS_HUE[category_id] + rng.uniform(-_HUE_JITTER, _HUE_JITTER)
    return _hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.6, 1.0))


def _any_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return _hsv_to_rgb(rng.uniform(0.0, 360.0), rng.uniform(0.0, 1.0), rng.uniform(0.3, 1.0))


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Low-frequency colour texture: a random 6x6 grid upsampled bilinearly, plus a base colour."""
    base = np.array(_hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.4), rng.uniform(0.2, 0.7)))
    grid = rng.uniform(-60.0, 60.0, size=(6, 6, 3))
    coarse = np.clip(base + grid, 0, 255).astype(np.uint8)
    return Image.fromarray(coarse, "RGB").resize((size, size), Image.BILINEAR)


def _shape_mask(
    size: int, category_id: int, x0: int, y0: int, side: int, rng: np.random.Generator
) -> Image.Image:
    """Binary mask ('L', 0/255) of one class shape whose bbox is about ``[x0, y0, side, side]``."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    x1, y1 = x0 + side - 1, y0 + side - 1
    if category_id == 1:  # square
        draw.rectangle([x0, y0, x1, y1], fill=255)
    elif category_id == 2:  # circle
        draw.ellipse([x0, y0, x1, y1], fill=255)
    elif category_id == 3:  # triangle: apex up/down/left/right
        orientation = int(rng.integers(4))
        pts = {
            0: [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)],
            1: [(x0, y0), (x1, y0), ((x0 + x1) / 2, y1)],
            2: [(x0, (y0 + y1) / 2), (x1, y0), (x1, y1)],
            3: [(x0, y0), (x1, (y0 + y1) / 2), (x0, y1)],
        }[orientation]
        draw.polygon(pts, fill=255)
    elif category_id == 4:  # ring
        width = max(2, int(round(side * rng.uniform(0.12, 0.22))))
        draw.ellipse([x0, y0, x1, y1], outline=255, width=width)
    else:
        raise ValueError(f"category_id={category_id} is not a demo class (1..4)")
    return mask


def _distractor_mask(size: int, rng: np.random.Generator, min_size: int, max_size: int):
    """Mask of an unannotated clutter shape: cross, hollow square, line segment or small blob."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    side = int(round(math.exp(rng.uniform(math.log(min_size), math.log(max_size)))))
    x0 = int(rng.integers(0, size - side + 1))
    y0 = int(rng.integers(0, size - side + 1))
    x1, y1 = x0 + side - 1, y0 + side - 1
    kind = int(rng.integers(4))
    thick = max(1, side // 6)
    if kind == 0:  # cross
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        draw.rectangle([x0, cy - thick // 2, x1, cy + thick // 2], fill=255)
        draw.rectangle([cx - thick // 2, y0, cx + thick // 2, y1], fill=255)
    elif kind == 1:  # hollow square (a square outline, not a ring)
        draw.rectangle([x0, y0, x1, y1], outline=255, width=max(1, thick // 2))
    elif kind == 2:  # line segment
        draw.line([(x0, y0), (x1, int(rng.integers(y0, y1 + 1)))], fill=255, width=max(1, thick))
    else:  # small irregular blob (a few overlapping small ellipses)
        for _ in range(3):
            r = max(1, side // 5)
            cx = int(rng.integers(x0, x1 + 1))
            cy = int(rng.integers(y0, y1 + 1))
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    return mask


# COCO's area ranges (small < 32^2 <= medium < 96^2 <= large) as ranges of the longer side
_SIZE_RANGES = ((0, 32), (32, 96), (96, 10**6))


def _object_side(rng: np.random.Generator, spec: DemoDataSpec) -> int:
    """Longer side of an object: a size range drawn with ``spec.size_mix`` (small / medium /
    large, clipped to ``[min_size, max_size]``; empty ranges dropped), log-uniform inside it."""
    ranges, weights = [], []
    for (lo, hi), weight in zip(_SIZE_RANGES, spec.size_mix, strict=True):
        lo, hi = max(lo, spec.min_size), min(hi, spec.max_size + 1)
        if lo < hi and weight > 0:
            ranges.append((lo, hi))
            weights.append(weight)
    lo, hi = ranges[int(rng.choice(len(ranges), p=np.asarray(weights) / sum(weights)))]
    return min(spec.max_size, int(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def _intersection(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    iw = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return iw * ih


def _overlap_ok(new, old, max_iou: float) -> bool:
    """IoU(new, old) <= max_iou, and ``new`` (drawn on top) hides at most half of ``old``'s box."""
    inter = _intersection(new, old)
    union = new[2] * new[3] + old[2] * old[3] - inter
    return inter <= max_iou * union and inter <= 0.5 * old[2] * old[3]


def _mask_bbox(mask: Image.Image) -> tuple[int, int, int, int] | None:
    box = mask.getbbox()  # (left, upper, right, lower), right/lower exclusive
    if box is None:
        return None
    return box[0], box[1], box[2] - box[0], box[3] - box[1]


def draw_image(spec: DemoDataSpec, split: str, index: int) -> tuple[Image.Image, list[DemoObject]]:
    """Draw image ``index`` of ``split`` ("train" or "val"): the RGB image and its objects."""
    if split not in _SPLIT_CODE:
        raise ValueError(f"split={split!r} is not one of {sorted(_SPLIT_CODE)}")
    rng = np.random.default_rng([spec.seed, _SPLIT_CODE[split], index])
    size = spec.image_size
    image = _background(rng, size)

    # clutter under the objects
    num_distractors = int(rng.integers(0, spec.max_distractors + 1))
    for _ in range(num_distractors):
        mask = _distractor_mask(size, rng, max(3, spec.min_size // 2), spec.max_size // 2)
        image.paste(_any_colour(rng), (0, 0), mask)

    objects: list[DemoObject] = []
    if rng.uniform() >= spec.empty_ratio:
        num_objects = int(rng.integers(1, spec.max_objects + 1))
        for _ in range(num_objects):
            for _attempt in range(20):  # rejection sampling on the overlap limit
                category_id = int(rng.integers(1, len(CATEGORIES) + 1))
                side = _object_side(rng, spec)
                x0 = int(rng.integers(0, size - side + 1))
                y0 = int(rng.integers(0, size - side + 1))
                mask = _shape_mask(size, category_id, x0, y0, side, rng)
                bbox = _mask_bbox(mask)
                if bbox is None or max(bbox[2], bbox[3]) < spec.min_size:
                    continue
                if all(_overlap_ok(bbox, o.bbox, spec.max_iou) for o in objects):
                    image.paste(_class_colour(rng, category_id), (0, 0), mask)
                    objects.append(DemoObject(category_id, bbox))
                    break

    # a thin line or two over everything (occluders), then pixel noise and a slight blur
    for _ in range(int(rng.integers(0, 3))):
        pts = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2)]
        ImageDraw.Draw(image).line(pts, fill=_any_colour(rng), width=1)
    pixels = np.asarray(image, dtype=np.float64)
    pixels = pixels + rng.normal(0.0, spec.noise_std, size=pixels.shape)
    image = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "RGB")
    image = image.filter(ImageFilter.GaussianBlur(radius=0.5))
    return image, objects


def generate_split(
    spec: DemoDataSpec,
    out_dir: str | Path,
    split: str,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write the images of ``split`` and its COCO JSON; returns the JSON path.

    ``progress`` (optional) is called with 1 after every image (e.g. ``tqdm.update``).
    """
    out_dir = Path(out_dir)
    num = spec.num_train if split == "train" else spec.num_val
    image_dir = out_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    ext = spec.image_format
    images, annotations = [], []
    for index in range(num):
        image, objects = draw_image(spec, split, index)
        file_name = f"{index:06d}.{ext}"
        save_kwargs = {"quality": 92} if ext == "jpg" else {"optimize": False}
        image.save(image_dir / file_name, _IMAGE_FORMATS[ext], **save_kwargs)
        image_id = index + 1
        images.append(
            {"id": image_id, "file_name": file_name, "width": image.width, "height": image.height}
        )
        for obj in objects:
            x, y, w, h = obj.bbox
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj.category_id,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        if progress is not None:
            progress(1)
    coco = {
        "info": {
            "description": "ppdet-ghm demo shapes",
            "spec": dataclasses.asdict(spec),
            "split": split,
        },
        "images": images,
        "annotations": annotations,
        "categories": [dict(c) for c in CATEGORIES],
    }
    json_path = out_dir / "annotations" / f"instances_{split}.json"
    json_path.write_text(json.dumps(coco, sort_keys=True, indent=1) + "\n")
    return json_path


def generate(
    spec: DemoDataSpec,
    out_dir: str | Path,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Path]:
    """Write both splits under ``out_dir``; returns ``{"train": json_path, "val": json_path}``."""
    return {split: generate_split(spec, out_dir, split, progress) for split in ("train", "val")}


def validate(out_dir: str | Path, spec: DemoDataSpec) -> dict[str, dict[str, int]]:
    """Check what :func:`generate` wrote; raise ValueError naming the first problem found.

    Checks per split: the number of images, every image file exists with the recorded size,
    every box lies inside its image with its longer side in ``[min_size, max_size]``, category
    ids are 1..4, and at least one image has no object when ``empty_ratio > 0`` and the split
    has 50 images or more. Returns per split ``{"images", "objects", "empty_images"}``.
    """
    out_dir = Path(out_dir)
    valid_ids = {c["id"] for c in CATEGORIES}
    summary = {}
    for split, expected in (("train", spec.num_train), ("val", spec.num_val)):
        json_path = out_dir / "annotations" / f"instances_{split}.json"
        coco = json.loads(json_path.read_text())
        if len(coco["images"]) != expected:
            raise ValueError(f"{json_path}: {len(coco['images'])} images, expected {expected}")
        sizes = {}
        for record in coco["images"]:
            path = out_dir / split / record["file_name"]
            if not path.is_file():
                raise ValueError(f"{json_path}: image {record['id']} file {path} is missing")
            with Image.open(path) as im:
                if im.size != (record["width"], record["height"]):
                    raise ValueError(f"{path}: size {im.size} != recorded")
            sizes[record["id"]] = (record["width"], record["height"])
        with_objects = set()
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            width, height = sizes[ann["image_id"]]
            where = f"{json_path}: annotation {ann['id']} (image {ann['image_id']})"
            if ann["category_id"] not in valid_ids:
                raise ValueError(f"{where}: category_id {ann['category_id']} unknown")
            if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > width or y + h > height:
                raise ValueError(f"{where}: bbox {ann['bbox']} not inside {width}x{height}")
            if not spec.min_size <= max(w, h) <= spec.max_size:
                raise ValueError(
                    f"{where}: bbox {ann['bbox']} longer side outside "
                    f"[{spec.min_size}, {spec.max_size}]"
                )
            with_objects.add(ann["image_id"])
        empty = len(sizes) - len(with_objects)
        if spec.empty_ratio > 0 and expected >= 50 and empty == 0:
            raise ValueError(f"{json_path}: no image without objects (empty_ratio > 0)")
        summary[split] = {
            "images": len(sizes),
            "objects": len(coco["annotations"]),
            "empty_images": empty,
        }
    return summary


def tree_digest(out_dir: str | Path) -> str:
    """SHA-256 over every file under ``out_dir`` (relative path and bytes, sorted by path)."""
    out_dir = Path(out_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in out_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(out_dir).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()
