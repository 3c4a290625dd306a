"""Generated image files and COCO sets for the data-reading steps (7 and 9), and their summaries.

Both sides of ``step7_eval_data`` and ``step9_train_data`` write the same files with this module
(NumPy and Pillow only, seeded), then read them through their own pipelines; the torch log records
each file's sha256 and the Paddle side refuses to compare when its files differ (another Pillow,
zlib or libjpeg writes other bytes).

Resize grids. Both pipelines scale by ``s = min(800 / short side, 1333 / long side)`` with
``cv2.resize(INTER_LINEAR)`` on the uint8 image, but they call it differently: mmcv's ``imrescale``
passes the output size ``(int(w * s + 0.5), int(h * s + 0.5))`` (cv2 then samples the source at the
ratio input / output size), ppdet's ``Resize`` passes ``fx = fy = s`` (cv2 rounds the output size the
same way but samples at exactly ``1 / s``). When ``w * s`` and ``h * s`` are integers the two grids
are the same and the resized pixels must be identical; otherwise ppdet's grid drifts from mmcv's by
up to ``0.5 / s`` source pixels at the far edge. :func:`grid_kind` names the two cases ("exact",
"rounded"); the steps judge them apart.
"""

import hashlib
import json
import os
import tempfile
from fractions import Fraction

import numpy as np

TARGET_SHORT, TARGET_LONG = 800, 1333  # mmdet scale=(1333, 800), ppdet target_size=[800, 1333]
PAD_DIVISOR = 32
SUBSAMPLE_STRIDE = 37  # prime: a strided subsample cannot alias with a scale of 2, 3, 4, ...
META_FILES = "meta.files_sha256"


def default_folder(step: str):
    """A folder under the system's temp dir for ``step``'s generated files."""
    return os.path.join(tempfile.gettempdir(), "ppdet_ghm_align", step)


def resize_scale(h: int, w: int) -> Fraction:
    """Exact keep-ratio scale of an ``h`` x ``w`` image to 800 x 1333 (both pipelines' rule)."""
    return min(Fraction(TARGET_SHORT, min(h, w)), Fraction(TARGET_LONG, max(h, w)))


def grid_kind(h: int, w: int) -> str:
    """'exact' when ``h * s`` and ``w * s`` are integers (ppdet's and mmcv's grids coincide)."""
    s = resize_scale(h, w)
    return "exact" if (h * s).denominator == 1 and (w * s).denominator == 1 else "rounded"


def picture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A uint8 [h, w, 3] RGB test picture: smooth gradients, filled shapes (sharp edges), noise."""
    from PIL import Image, ImageDraw

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack(
        [
            60 + 120 * xx / max(w - 1, 1),
            40 + 150 * yy / max(h - 1, 1),
            128 + 80 * np.sin(2 * np.pi * (xx / max(w, 1) * 3 + yy / max(h, 1) * 2)),
        ],
        axis=-1,
    )
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, x1 = sorted(rng.uniform(0, w, 2))
        y0, y1 = sorted(rng.uniform(0, h, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.uniform() < 0.5:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        else:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
    pixels = np.asarray(image).astype(np.float64) + rng.normal(0.0, 6.0, (h, w, 3))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def write_image(path: str, rgb: np.ndarray, mode: str, rng: np.random.Generator):
    """Save ``rgb`` [h, w, 3] as ``mode`` ('RGB', 'L' or 'RGBA') in the format of the suffix.

    'L' stores the luma of ``rgb``; 'RGBA' adds an alpha ramp with a fully transparent quarter (the
    colour under it is kept, so decoding that composited alpha would change the pixels).
    """
    from PIL import Image

    image = Image.fromarray(rgb)
    if mode == "L":
        image = image.convert("L")
    elif mode == "RGBA":
        h, w = rgb.shape[:2]
        alpha = np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))
        alpha[: h // 2, : w // 2] = 0
        alpha = np.clip(alpha.astype(np.int64) + rng.integers(0, 2, (h, w)), 0, 255)
        image = Image.fromarray(np.dstack([rgb, alpha.astype(np.uint8)]), "RGBA")
    if path.endswith(".jpg"):
        image.save(path, format="JPEG", quality=90)
    else:
        image.save(path, format="PNG")


def sha256_of(path: str):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).digest()


def files_meta(paths):
    """``{META_FILES: uint8 [n, 32]}``: the sha256 of each file, in order."""
    return {META_FILES: np.stack([np.frombuffer(sha256_of(p), np.uint8) for p in paths])}


def check_same_files(torch_log: dict, paths, where: str):
    """Refuse to compare when the generated files differ from those the torch log was made from."""
    ours = files_meta(paths)[META_FILES]
    theirs = torch_log.get(META_FILES)
    if theirs is None:
        raise ValueError(f"{where} has no {META_FILES}: regenerate the torch log")
    if theirs.shape != ours.shape or not np.array_equal(theirs, ours):
        differ = [
            os.path.basename(p)
            for i, p in enumerate(paths)
            if i >= len(theirs) or not np.array_equal(theirs[i], ours[i])
        ]
        raise ValueError(
            f"{where} was made from other image files ({len(theirs)} logged, {len(ours)} here; "
            f"differing: {differ}); Pillow / zlib / libjpeg write other bytes here: regenerate "
            "the torch log with this environment"
        )


# --------------------------------------------------------------------------- step 7: eval images

# (file name, width, height, Pillow mode). Sizes: landscape and portrait 4:3 (rounded grid), a wide
# 10:3 image whose height is limited by 1333 (rounded), a tiny 20x30 scaled 40x, one larger than
# 1333 scaled down by 2/3, a grayscale and an RGBA image (exact grids).
EVAL_IMAGES = (
    ("rgb_640x480.jpg", 640, 480, "RGB"),
    ("rgb_480x640.png", 480, 640, "RGB"),
    ("rgb_1000x300.png", 1000, 300, "RGB"),
    ("rgb_20x30.png", 20, 30, "RGB"),
    ("rgb_1500x1200.jpg", 1500, 1200, "RGB"),
    ("gray_600x400.png", 600, 400, "L"),
    ("rgba_400x600.png", 400, 600, "RGBA"),
)
EVAL_SEED = 77
EVAL_JSON = "eval.json"


def image_key(file_name: str, w: int, h: int):
    """Log key prefix of an image: ``<grid kind>.<file name with '.' as '_'>``."""
    return f"{grid_kind(h, w)}.{file_name.replace('.', '_')}"


def write_eval_images(folder: str):
    """Write :data:`EVAL_IMAGES` and a COCO JSON listing them (no annotations) into ``folder``.

    Returns:
        [(path, key prefix)] in image-id order (ids 1, 2, ...).
    """
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(EVAL_SEED)
    out, images = [], []
    for image_id, (name, w, h, mode) in enumerate(EVAL_IMAGES, start=1):
        path = os.path.join(folder, name)
        write_image(path, picture(rng, h, w), mode, rng)
        out.append((path, image_key(name, w, h)))
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
    coco = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    with open(os.path.join(folder, EVAL_JSON), "w") as f:
        json.dump(coco, f)
    return out


# --------------------------------------------------------------------------- step 9: train set

TRAIN_SEED = 99
TRAIN_JSON = "train.json"
# Category ids are not contiguous: both sides map them to 0-based labels in this order.
TRAIN_CATEGORIES = (
    {"id": 1, "name": "a"},
    {"id": 3, "name": "b"},
    {"id": 7, "name": "c"},
    {
        "id": 12,
        "name": "d",
    },
)
# (id, file name, width, height, Pillow mode, [(category id, [x, y, w, h], iscrowd, area or None)])
# area None: w * h. Image 3 has no annotation (both drop it: mmdet filter_empty_gt, ppdet
# allow_empty false). Image 1 carries the special boxes: a crowd box (mmdet: ignored instance,
# ppdet: not loaded), a zero-width box with area 0 (both drop it), a 0.8 x 0.6 px box (mmdet drops
# w < 1 or h < 1; so does our checked dataset, ppdet's COCODataSet would keep it), one sticking out
# of the right border (clipped to the image on both sides).
TRAIN_IMAGES = (
    (
        1,
        "a_600x400.png",
        600,
        400,
        "RGB",
        [
            (1, [10.5, 20.25, 100.0, 80.0], 0, None),
            (3, [300.0, 50.0, 250.5, 300.0], 0, None),
            (7, [50.0, 150.0, 200.0, 200.0], 1, None),
            (3, [100.0, 100.0, 0.0, 30.0], 0, 0.0),
            (12, [550.0, 350.0, 100.0, 40.0], 0, None),
            (12, [220.4, 30.6, 12.3, 9.7], 0, None),
            (1, [400.2, 300.1, 0.8, 0.6], 0, None),
        ],
    ),
    (
        2,
        "b_400x600.jpg",
        400,
        600,
        "RGB",
        [(7, [20.0, 30.0, 150.0, 400.0], 0, None), (1, [200.25, 400.75, 180.0, 150.5], 0, None)],
    ),
    (3, "c_empty_640x480.png", 640, 480, "RGB", []),
    (
        4,
        "d_1500x1200.jpg",
        1500,
        1200,
        "L",
        [(12, [0.0, 0.0, 1500.0, 1200.0], 0, None), (3, [700.5, 600.5, 60.0, 45.0], 0, None)],
    ),
    (
        5,
        "e_640x480.png",
        640,
        480,
        "RGBA",
        [(1, [5.0, 6.0, 300.0, 200.0], 0, None), (7, [400.0, 100.0, 239.0, 379.0], 0, None)],
    ),
)


def write_train_set(folder: str):
    """Write :data:`TRAIN_IMAGES` and ``train.json`` (COCO format) into ``folder``.

    Returns:
        ({image id: (path, key prefix)}, path of the JSON), images in id order.
    """
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(TRAIN_SEED)
    images, annotations, out = [], [], {}
    for image_id, name, w, h, mode, boxes in TRAIN_IMAGES:
        path = os.path.join(folder, name)
        write_image(path, picture(rng, h, w), mode, rng)
        out[image_id] = (path, image_key(name, w, h))
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        for category, bbox, crowd, area in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": bbox,
                    "area": float(bbox[2] * bbox[3]) if area is None else area,
                    "iscrowd": crowd,
                    "segmentation": [],
                }
            )
    coco = {"images": images, "annotations": annotations, "categories": list(TRAIN_CATEGORIES)}
    json_path = os.path.join(folder, TRAIN_JSON)
    with open(json_path, "w") as f:
        json.dump(coco, f)
    return out, json_path


# --------------------------------------------------------------------------- summaries


def summarise_input(prefix: str, chw: np.ndarray, im_shape, scale_factor_hw):
    """Log entries of one network input, small enough to commit.

    Args:
        prefix: key prefix (``<kind>.<name>``).
        chw: float32 [3, Hp, Wp], the image as the network gets it (normalised, RGB, padded).
        im_shape: (h, w) of the resized image before padding, as the pipeline reports it.
        scale_factor_hw: (scale_y, scale_x) of resized / original, as the pipeline reports it.

    Returns:
        ``shape`` [3] int64 (padded C, H, W); ``im_shape``, ``scale_factor`` [2] float64 (h, w);
        ``chmean``, ``chstd`` [3] float64 over the padded tensor; ``rowmean`` [Hp], ``colmean``
        [Wp] float32 (means over channels and the other axis, taken in float64: a shifted or
        wrongly sized resize moves these profiles); ``sub`` float32 [3, ceil(Hp/37), ceil(Wp/37)],
        every 37th row and column from (18, 18); ``pad_max_abs`` [1]: the largest |value| outside the resized image
        (rows >= round(h), columns >= round(w)), 0 when the padding is zero.
    """
    x = np.asarray(chw, dtype=np.float32)
    x64 = x.astype(np.float64)
    h, w = (int(np.floor(float(v) + 0.5)) for v in im_shape)
    outside = np.ones(x.shape[1:], dtype=bool)
    outside[:h, :w] = False
    pad = np.abs(x64[:, outside])
    half = SUBSAMPLE_STRIDE // 2
    return {
        f"{prefix}.shape": np.array(x.shape, dtype=np.int64),
        f"{prefix}.im_shape": np.asarray(im_shape, dtype=np.float64).reshape(2),
        f"{prefix}.scale_factor": np.asarray(scale_factor_hw, dtype=np.float64).reshape(2),
        f"{prefix}.chmean": x64.mean(axis=(1, 2)),
        f"{prefix}.chstd": x64.std(axis=(1, 2)),
        f"{prefix}.rowmean": x64.mean(axis=(0, 2)).astype(np.float32),
        f"{prefix}.colmean": x64.mean(axis=(0, 1)).astype(np.float32),
        f"{prefix}.sub": np.ascontiguousarray(x[:, half::SUBSAMPLE_STRIDE, half::SUBSAMPLE_STRIDE]),
        f"{prefix}.pad_max_abs": np.array([pad.max() if pad.size else 0.0]),
    }
