"""Fixed benchmark inputs, identical on both sides: normalised images and ground-truth boxes.

Same layout as ``align.data.fake_batch`` (what both data pipelines hand the model after
normalisation and padding to a multiple of 32), at benchmark sizes:

- ``b2_512``: 2 images of 512x512 (batch 2, the small training case);
- ``b1_800x1333``: 1 image of 800x1333 (the reference's training/test scale), padded to 800x1344;
- ``b1_512``: 1 image of 512x512 (a cheap inference case).

Each image carries ``NUM_GT`` boxes of COCO-like sizes (16 to 70 % of the shorter side, aspect
0.5-2) and labels in [0, 80). The number of positive anchors, and so the cost of the GHM losses,
depends only on these boxes and the anchors (MaxIoU assignment), not on the weights.
"""

import numpy as np

CASES = {
    # name: (number of images, (H, W) of each image's content)
    "b2_512": (2, (512, 512)),
    "b1_800x1333": (1, (800, 1333)),
    "b1_512": (1, (512, 512)),
}
NUM_GT = 8
NUM_CLASSES = 80
DATA_SEED = 11
SIZE_DIVISOR = 32


def padded(size: int, divisor: int = SIZE_DIVISOR):
    return -(-size // divisor) * divisor


def make_batch(case: str, seed: int = DATA_SEED):
    """The fixed batch of ``case`` as NumPy arrays and tuples.

    Returns:
        dict with ``images`` float32 [N, 3, Hp, Wp] (normalised, zero in the padding),
        ``image_shapes`` ((H, W) per image), ``batch_shape`` (Hp, Wp), ``gt_boxes`` (tuple of
        float32 [G, 4], x1y1x2y2 in input pixels) and ``gt_labels`` (tuple of int64 [G], 0-based).
    """
    if case not in CASES:
        raise ValueError(f"unknown case {case!r}; choose from {sorted(CASES)}")
    num_images, (h, w) = CASES[case]
    rng = np.random.default_rng(seed)
    batch_shape = (padded(h), padded(w))
    images = np.zeros((num_images, 3, *batch_shape), dtype=np.float32)
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    gt_boxes, gt_labels = [], []
    for i in range(num_images):
        for c in range(3):
            wave = np.sin(xx / (17.0 + 5 * c) + i) * np.cos(yy / (23.0 - 3 * c) - i)
            images[i, c, :h, :w] = 0.8 * rng.standard_normal((h, w)) + wave
        side = rng.uniform(0.16, 0.7, size=NUM_GT) * min(h, w)
        aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0), size=NUM_GT))
        bw = np.minimum(side * np.sqrt(aspect), w - 2)
        bh = np.minimum(side / np.sqrt(aspect), h - 2)
        x1 = rng.uniform(0, w - bw)
        y1 = rng.uniform(0, h - bh)
        boxes = np.stack([x1, y1, x1 + bw, y1 + bh], axis=1).astype(np.float32)
        gt_boxes.append(boxes)
        gt_labels.append(rng.integers(0, NUM_CLASSES, size=NUM_GT).astype(np.int64))
    return {
        "images": images,
        "image_shapes": tuple((h, w) for _ in range(num_images)),
        "batch_shape": batch_shape,
        "gt_boxes": tuple(gt_boxes),
        "gt_labels": tuple(gt_labels),
    }
