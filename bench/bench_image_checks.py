"""What checking every image costs before training (``data_checks.check_images``) or evaluation.

Writes ``--num`` COCO-sized JPEGs (640x480, quality 90, smooth random content: libjpeg's work
per pixel is that of a photo, not of a flat image) and a COCO JSON, then times on the same files:

- ``check_coco`` with ``check_images: header`` (the default: Pillow opens each file, format and
  size), ``full`` (Pillow decodes each file, truncation is an error) and ``none``;
- ``tasks.readable_images`` (what ``ppdet-ghm eval`` and ``infer`` do first: ``cv2.imdecode`` of
  every file, one thread per core).

Each is run ``--repeats`` times, median reported, per image and extrapolated to COCO train2017
(118,287 images) and val2017 (5,000). The second and later runs read from the page cache: a cold
disk adds its read time (COCO train2017 is 18 GB) to every mode alike.

    python -m bench.bench_image_checks --num 1000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np

COCO_TRAIN, COCO_VAL = 118_287, 5_000


def write_set(root: str, num: int, seed: int = 0) -> tuple[str, str]:
    """``num`` 640x480 JPEGs and their COCO JSON (one box each) under ``root``."""
    import cv2

    rng = np.random.default_rng(seed)
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for i in range(num):
        small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        image = cv2.resize(small, (640, 480), interpolation=cv2.INTER_CUBIC)
        image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
        name = f"{i:06d}.jpg"
        cv2.imwrite(os.path.join(image_dir, name), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        images.append({"id": i + 1, "file_name": name, "width": 640, "height": 480})
        annotations.append(
            {"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [10, 20, 100, 80],
             "area": 8000, "iscrowd": 0}
        )  # fmt: skip
    anno = os.path.join(root, "instances.json")
    with open(anno, "w") as f:
        json.dump(
            {"images": images, "annotations": annotations,
             "categories": [{"id": 1, "name": "thing"}]}, f
        )  # fmt: skip
    return anno, image_dir


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from ppdet_ghm.data.validation import DataChecks, check_coco
    from ppdet_ghm.engine.tasks import readable_images

    with tempfile.TemporaryDirectory() as root:
        anno, image_dir = write_set(root, args.num)
        paths = [os.path.join(image_dir, n) for n in sorted(os.listdir(image_dir))]
        modes = {
            f"check_images: {mode}": lambda mode=mode: check_coco(
                anno, image_dir, DataChecks(check_images=mode)
            )
            for mode in ("none", "header", "full")
        }
        modes["eval/infer decode (cv2, threads)"] = lambda: readable_images(paths, "error")
        rows = []
        for name, fn in modes.items():
            fn()  # page cache warm, imports done
            seconds = _timed(fn, args.repeats)
            per_image_ms = 1000 * seconds / args.num
            rows.append((name, per_image_ms))
    print(f"{args.num} JPEGs 640x480, {len(os.sched_getaffinity(0))} cores, median of "
          f"{args.repeats}")  # fmt: skip
    print("| check | per image (ms) | COCO train2017 (s) | COCO val2017 (s) |")
    print("|---|---:|---:|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms:.3f} | {ms * COCO_TRAIN / 1000:.0f} | {ms * COCO_VAL / 1000:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
