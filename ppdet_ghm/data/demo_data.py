"""A deterministic, generated COCO-format detection set for the CPU demo, of two kinds.

``kind="shapes"`` (the default, the demo's set): four classes of coloured shapes on a noisy,
textured background, drawn with Pillow:

========  ======================  ====================================================
id  name  shape                   colour (hue jittered, lightness/saturation varied)
========  ======================  ====================================================
1         ``square``              filled axis-aligned square, red
2         ``circle``              filled disc, green
3         ``triangle``            filled isosceles triangle (4 orientations), blue
4         ``ring``                annulus (outline circle), yellow-orange
========  ======================  ====================================================

``kind="marks"``: a set unlike the demo's, to see what the demo config does on other data.
Other shapes, in dark, desaturated colours where two classes share a hue (so the shape, not the
colour, tells them apart), mostly small objects and none large:

========  ======================  ====================================================
id  name  shape                   colour (hue jittered, dark and desaturated)
========  ======================  ====================================================
1         ``star``                filled 5-point star, random rotation, dark teal
2         ``cross``               filled plus sign (arms 25-36 % of its side), dark plum
3         ``diamond``             filled rhombus, height/width 0.55-0.85 or its inverse, teal
4         ``ellipse``             filled ellipse, aspect 2-3, random orientation, plum
========  ======================  ====================================================

Its defaults: object sides 8 to 64 px, 70 % small and 30 % medium (``size_mix`` (0.7, 0.3, 0));
the same background, noise, occluding lines and empty images as shapes; the clutter is hollow
squares, line segments, small filled triangles and thin rings (none of them a marks class).
:data:`KIND_DEFAULTS` holds each kind's defaults: ``DemoDataSpec(kind="marks")`` uses them for
``max_size`` and ``size_mix`` unless given.

What makes shapes a detection problem with the hard/easy imbalance GHM targets:

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
(shapes; ``[seed, s, i, 1]`` for marks) only, so the bytes of every file depend on
``(kind, seed, split, index, image_size, ...)`` alone and not on how many images are generated;
JSON is written with sorted keys. Same arguments give the same files (same SHA-256) with the same
Pillow/libjpeg build. Each JSON records the spec under ``info.spec`` (:func:`spec_record`: every
field, the kind included unless it is the default ``"shapes"``, whose files thus stay the same as
those written before there were kinds).

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
    "KINDS",
    "KIND_DEFAULTS",
    "MARKS_CATEGORIES",
    "DemoDataSpec",
    "DemoObject",
    "draw_image",
    "generate",
    "generate_split",
    "spec_record",
    "tree_digest",
    "validate",
]

#: COCO categories of the demo set (``kind="shapes"``), ids 1..4.
CATEGORIES: tuple[dict, ...] = (
    {"id": 1, "name": "square", "supercategory": "shape"},
    {"id": 2, "name": "circle", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "ring", "supercategory": "shape"},
)

#: COCO categories of ``kind="marks"``, ids 1..4.
MARKS_CATEGORIES: tuple[dict, ...] = (
    {"id": 1, "name": "star", "supercategory": "shape"},
    {"id": 2, "name": "cross", "supercategory": "shape"},
    {"id": 3, "name": "diamond", "supercategory": "shape"},
    {"id": 4, "name": "ellipse", "supercategory": "shape"},
)


@dataclasses.dataclass(frozen=True)
class _Kind:
    """How one kind draws: its classes, their colours, its clutter and its random stream."""

    categories: tuple[dict, ...]
    hues: dict[int, float]  # base hue (degrees) per class id, jittered by +-_HUE_JITTER
    saturation: tuple[float, float]
    value: tuple[float, float]
    distractors: tuple[str, ...]  # clutter shapes, one drawn uniformly per distractor
    stream: tuple[int, ...]  # appended to the random key [seed, split, index]


_KINDS: dict[str, _Kind] = {
    "shapes": _Kind(
        categories=CATEGORIES,
        hues={1: 0.0, 2: 120.0, 3: 225.0, 4: 45.0},
        saturation=(0.65, 1.0),
        value=(0.6, 1.0),
        distractors=("cross", "hollow_square", "line", "blob"),
        stream=(),
    ),
    "marks": _Kind(
        categories=MARKS_CATEGORIES,
        hues={1: 175.0, 2: 300.0, 3: 175.0, 4: 300.0},  # star/diamond, cross/ellipse share hues
        saturation=(0.2, 0.55),
        value=(0.12, 0.4),
        distractors=("hollow_square", "line", "triangle", "thin_ring"),
        stream=(1,),
    ),
}

#: The data set kinds, ``DemoDataSpec.kind``.
KINDS: tuple[str, ...] = tuple(_KINDS)

#: Per kind, the defaults of the fields left as None (``max_size``, ``size_mix``).
KIND_DEFAULTS: dict[str, dict] = {
    "shapes": {"max_size": 128, "size_mix": (0.2, 0.5, 0.3)},
    "marks": {"max_size": 64, "size_mix": (0.7, 0.3, 0.0)},
}

_HUE_JITTER = 18.0
_SPLIT_CODE = {"train": 0, "val": 1}
_IMAGE_FORMATS = {"jpg": "JPEG", "png": "PNG"}


@dataclasses.dataclass(frozen=True)
class DemoDataSpec:
    """What to generate. Every field enters the random stream or the drawing, none is ignored.

    Args:
        kind: ``"shapes"`` (the demo's set) or ``"marks"`` (other classes, colours and sizes;
            module docstring). ``max_size`` and ``size_mix`` left as None take the kind's
            defaults (:data:`KIND_DEFAULTS`), so ``DemoDataSpec(kind="marks")`` is the marks set.
        seed: base seed; image ``i`` of split ``s`` uses ``default_rng([seed, s, i])``.
        num_train / num_val: number of images per split.
        image_size: images are ``image_size x image_size`` pixels, RGB.
        min_size / max_size: range of an object's longer bbox side, in pixels (``max_size``
            default: 128 for shapes, 64 for marks).
        size_mix: shares of small / medium / large objects (COCO's ranges: longer side below 32,
            32-96, above 96 px; COCO val2017 has about 41 / 34 / 24 %), log-uniform within each;
            a share may be 0. The shapes default 20 / 50 / 30 suits RetinaNet's >= 32 px anchors
            (module docstring); the marks default is 70 / 30 / 0.
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
    max_size: int | None = None  # the kind's default (KIND_DEFAULTS)
    size_mix: tuple[float, float, float] | None = None  # the kind's default (KIND_DEFAULTS)
    max_objects: int = 8
    empty_ratio: float = 0.1
    max_iou: float = 0.3
    max_distractors: int = 6
    noise_std: float = 8.0
    image_format: str = "jpg"
    kind: str = "shapes"

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"kind={self.kind!r} is not known: use one of {list(KINDS)}")
        for name, default in KIND_DEFAULTS[self.kind].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        object.__setattr__(self, "size_mix", tuple(self.size_mix))
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

    @property
    def categories(self) -> tuple[dict, ...]:
        """The COCO categories of this spec's kind (ids 1..4)."""
        return _KINDS[self.kind].categories


def spec_record(spec: DemoDataSpec) -> dict:
    """``spec`` as written to each JSON's ``info.spec`` (JSON types): every field, ``kind``
    included unless it is ``"shapes"`` (so the shapes set's files are the same as those written
    before there were kinds, and are recognised as the same set)."""
    record = json.loads(json.dumps(dataclasses.asdict(spec)))
    if spec.kind == "shapes":
        del record["kind"]
    return record


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


def _class_colour(
    rng: np.random.Generator, category_id: int, kind: str = "shapes"
) -> tuple[int, int, int]:
    style = _KINDS[kind]
    hue = style.hues[category_id] + rng.uniform(-_HUE_JITTER, _HUE_JITTER)
    return _hsv_to_rgb(hue, rng.uniform(*style.saturation), rng.uniform(*style.value))


def _any_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return _hsv_to_rgb(rng.uniform(0.0, 360.0), rng.uniform(0.0, 1.0), rng.uniform(0.3, 1.0))


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Low-frequency colour texture: a random 6x6 grid upsampled bilinearly, plus a base colour."""
    base = np.array(_hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.4), rng.uniform(0.2, 0.7)))
    grid = rng.uniform(-60.0, 60.0, size=(6, 6, 3))
    coarse = np.clip(base + grid, 0, 255).astype(np.uint8)
    return Image.fromarray(coarse, "RGB").resize((size, size), Image.BILINEAR)


def _shape_mask(
    size: int,
    category_id: int,
    x0: int,
    y0: int,
    side: int,
    rng: np.random.Generator,
    kind: str = "shapes",
) -> Image.Image:
    """Binary mask ('L', 0/255) of one class shape of ``kind`` drawn in the square
    ``[x0, y0, side, side]``: its bbox is that square or, for rotated shapes, inside it."""
    categories = _KINDS[kind].categories
    if not 1 <= category_id <= len(categories):
        raise ValueError(f"category_id={category_id} is not a {kind} class (1..{len(categories)})")
    mask = Image.new("L", (size, size), 0)
    _DRAW_CLASS[categories[category_id - 1]["name"]](ImageDraw.Draw(mask), x0, y0, side, rng)
    return mask


def _draw_square(draw, x0, y0, side, rng):
    draw.rectangle([x0, y0, x0 + side - 1, y0 + side - 1], fill=255)


def _draw_circle(draw, x0, y0, side, rng):
    draw.ellipse([x0, y0, x0 + side - 1, y0 + side - 1], fill=255)


def _draw_triangle(draw, x0, y0, side, rng):  # apex up/down/left/right
    x1, y1 = x0 + side - 1, y0 + side - 1
    orientation = int(rng.integers(4))
    pts = {
        0: [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)],
        1: [(x0, y0), (x1, y0), ((x0 + x1) / 2, y1)],
        2: [(x0, (y0 + y1) / 2), (x1, y0), (x1, y1)],
        3: [(x0, y0), (x1, (y0 + y1) / 2), (x0, y1)],
    }[orientation]
    draw.polygon(pts, fill=255)


def _draw_ring(draw, x0, y0, side, rng):
    width = max(2, int(round(side * rng.uniform(0.12, 0.22))))
    draw.ellipse([x0, y0, x0 + side - 1, y0 + side - 1], outline=255, width=width)


def _draw_star(draw, x0, y0, side, rng):  # 5 points, random rotation
    centre, outer = x0 + (side - 1) / 2, (side - 1) / 2
    inner = outer * rng.uniform(0.38, 0.5)
    turn = rng.uniform(0.0, 2.0 * math.pi / 5.0)
    pts = []
    for k in range(10):
        radius = outer if k % 2 == 0 else inner
        angle = turn + k * math.pi / 5.0 - math.pi / 2.0
        pts.append((centre + radius * math.cos(angle), y0 + outer + radius * math.sin(angle)))
    draw.polygon(pts, fill=255)


def _draw_cross(draw, x0, y0, side, rng):  # plus sign spanning the square
    x1, y1 = x0 + side - 1, y0 + side - 1
    thick = max(2, int(round(side * rng.uniform(0.25, 0.36))))
    a = (side - thick) // 2
    draw.rectangle([x0, y0 + a, x1, y0 + a + thick - 1], fill=255)
    draw.rectangle([x0 + a, y0, x0 + a + thick - 1, y1], fill=255)


def _draw_diamond(draw, x0, y0, side, rng):  # rhombus, wide or tall, longer axis = side
    short = max(3, int(round(side * rng.uniform(0.55, 0.85))))
    w, h = (side, short) if rng.uniform() < 0.5 else (short, side)
    dx, dy = x0 + (side - w) // 2, y0 + (side - h) // 2
    cx, cy = dx + (w - 1) / 2, dy + (h - 1) / 2
    draw.polygon([(cx, dy), (dx + w - 1, cy), (cx, dy + h - 1), (dx, cy)], fill=255)


def _draw_ellipse(draw, x0, y0, side, rng):  # aspect 2-3, random orientation
    centre, a = x0 + (side - 1) / 2, (side - 1) / 2
    b = a / rng.uniform(2.0, 3.0)
    theta = rng.uniform(0.0, math.pi)
    c, s = math.cos(theta), math.sin(theta)
    pts = []
    for k in range(48):
        t = 2.0 * math.pi * k / 48
        u, v = a * math.cos(t), b * math.sin(t)
        pts.append((centre + u * c - v * s, y0 + a + u * s + v * c))
    draw.polygon(pts, fill=255)


_DRAW_CLASS = {
    "square": _draw_square,
    "circle": _draw_circle,
    "triangle": _draw_triangle,
    "ring": _draw_ring,
    "star": _draw_star,
    "cross": _draw_cross,
    "diamond": _draw_diamond,
    "ellipse": _draw_ellipse,
}


def _distractor_mask(
    size: int,
    rng: np.random.Generator,
    min_size: int,
    max_size: int,
    kinds: tuple[str, ...] = _KINDS["shapes"].distractors,
):
    """Mask of an unannotated clutter shape, one of ``kinds``: cross, hollow square, line
    segment, small blob (shapes' clutter), filled triangle, thin ring."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    side = int(round(math.exp(rng.uniform(math.log(min_size), math.log(max_size)))))
    x0 = int(rng.integers(0, size - side + 1))
    y0 = int(rng.integers(0, size - side + 1))
    x1, y1 = x0 + side - 1, y0 + side - 1
    kind = kinds[int(rng.integers(len(kinds)))]
    thick = max(1, side // 6)
    if kind == "cross":
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        draw.rectangle([x0, cy - thick // 2, x1, cy + thick // 2], fill=255)
        draw.rectangle([cx - thick // 2, y0, cx + thick // 2, y1], fill=255)
    elif kind == "hollow_square":  # a square outline, not a ring
        draw.rectangle([x0, y0, x1, y1], outline=255, width=max(1, thick // 2))
    elif kind == "line":
        draw.line([(x0, y0), (x1, int(rng.integers(y0, y1 + 1)))], fill=255, width=max(1, thick))
    elif kind == "blob":  # a few overlapping small ellipses
        for _ in range(3):
            r = max(1, side // 5)
            cx = int(rng.integers(x0, x1 + 1))
            cy = int(rng.integers(y0, y1 + 1))
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif kind == "triangle":  # filled, apex up
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=255)
    elif kind == "thin_ring":
        draw.ellipse([x0, y0, x1, y1], outline=255, width=max(1, thick // 2))
    else:
        raise ValueError(f"distractor {kind!r} is not known")
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
    style = _KINDS[spec.kind]
    rng = np.random.default_rng([spec.seed, _SPLIT_CODE[split], index, *style.stream])
    size = spec.image_size
    image = _background(rng, size)

    # clutter under the objects
    num_distractors = int(rng.integers(0, spec.max_distractors + 1))
    for _ in range(num_distractors):
        mask = _distractor_mask(
            size, rng, max(3, spec.min_size // 2), spec.max_size // 2, style.distractors
        )
        image.paste(_any_colour(rng), (0, 0), mask)

    objects: list[DemoObject] = []
    if rng.uniform() >= spec.empty_ratio:
        num_objects = int(rng.integers(1, spec.max_objects + 1))
        for _ in range(num_objects):
            for _attempt in range(20):  # rejection sampling on the overlap limit
                category_id = int(rng.integers(1, len(style.categories) + 1))
                side = _object_side(rng, spec)
                x0 = int(rng.integers(0, size - side + 1))
                y0 = int(rng.integers(0, size - side + 1))
                mask = _shape_mask(size, category_id, x0, y0, side, rng, spec.kind)
                bbox = _mask_bbox(mask)
                if bbox is None or max(bbox[2], bbox[3]) < spec.min_size:
                    continue
                if all(_overlap_ok(bbox, o.bbox, spec.max_iou) for o in objects):
                    image.paste(_class_colour(rng, category_id, spec.kind), (0, 0), mask)
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
            "description": f"ppdet-ghm demo {spec.kind}",
            "spec": spec_record(spec),
            "split": split,
        },
        "images": images,
        "annotations": annotations,
        "categories": [dict(c) for c in spec.categories],
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
    every box lies inside its image with its longer side in ``[min_size, max_size]``, the
    categories are those of ``spec.kind`` (ids 1..4), and at least one image has no object when
    ``empty_ratio > 0`` and the split has 50 images or more. Returns per split
    ``{"images", "objects", "empty_images"}``.
    """
    out_dir = Path(out_dir)
    valid_ids = {c["id"] for c in spec.categories}
    summary = {}
    for split, expected in (("train", spec.num_train), ("val", spec.num_val)):
        json_path = out_dir / "annotations" / f"instances_{split}.json"
        coco = json.loads(json_path.read_text())
        if coco["categories"] != [dict(c) for c in spec.categories]:
            names = [c.get("name") for c in coco["categories"]]
            raise ValueError(f"{json_path}: categories {names} are not the {spec.kind!r} kind's")
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
