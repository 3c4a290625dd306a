"""Fixed fake inputs for the alignment steps: a padded batch of 2 normalised images and their gts.

The batch is what both data pipelines hand to the model after normalisation and padding (mmdet's
``DetDataPreprocessor``, ppdet's ``NormalizeImage`` + ``PadBatch``): image 0 fills the 128x160
batch; image 1 is 96x128, zero-padded to 128x160 (padding is applied after normalisation on both
sides, so its value is 0). Image 1 therefore has anchors outside its own padded shape, which mmdet
marks invalid (ignored in the loss); its detections are clipped to 96x128.

Boxes are x1y1x2y2 in input pixels, labels 0-based COCO-80 indices; scale factors are 1 so rescaling
to the original image is the identity. The gts include a small box whose best anchor IoU is below
the negative threshold (mmdet's low-quality match, ``min_pos_iou=0``) and boxes at several scales.
"""

import numpy as np

BATCH_SHAPE = (128, 160)  # (H, W), a multiple of 32
IMAGE_SHAPES = ((128, 160), (96, 128))  # (H, W) of each image's content (= its own padded shape)
DATA_SEED = 7

GT_BOXES = (
    np.array(
        [
            [10.5, 12.25, 70.0, 60.0],
            [60.0, 40.5, 150.25, 121.0],
            [101.0, 5.0, 119.5, 21.75],  # ~18x17: best IoU with any anchor < 0.4
            [30.0, 70.0, 62.0, 126.0],
            [4.0, 2.0, 156.0, 124.0],  # large: positives on P5
        ],
        dtype=np.float32,
    ),
    np.array(
        [
            [5.0, 8.0, 50.5, 90.0],
            [64.25, 30.0, 120.0, 80.5],
            [20.0, 10.0, 44.0, 34.0],
        ],
        dtype=np.float32,
    ),
)
GT_LABELS = (
    np.array([3, 17, 79, 0, 62], dtype=np.int64),
    np.array([0, 41, 3], dtype=np.int64),
)


def fake_batch(seed: int = DATA_SEED):
    """The fixed batch as a dict of NumPy arrays and tuples.

    Returns:
        dict with ``images`` float32 [2, 3, 128, 160] (normalised, zero in the padding),
        ``image_shapes`` ((H, W) per image), ``batch_shape`` (H, W), ``gt_boxes`` (tuple of float32
        [G_i, 4]) and ``gt_labels`` (tuple of int64 [G_i]).
    """
    rng = np.random.default_rng(seed)
    h, w = BATCH_SHAPE
    images = np.zeros((len(IMAGE_SHAPES), 3, h, w), dtype=np.float32)
    for i, (ih, iw) in enumerate(IMAGE_SHAPES):
        # Smooth-ish content: a random field plus a low-frequency pattern, roughly unit variance.
        yy, xx = np.meshgrid(np.arange(ih), np.arange(iw), indexing="ij")
        for c in range(3):
            wave = np.sin(xx / (7.0 + 3 * c) + i) * np.cos(yy / (11.0 - 2 * c) - i)
            images[i, c, :ih, :iw] = 0.8 * rng.standard_normal((ih, iw)) + wave
    return {
        "images": images,
        "image_shapes": IMAGE_SHAPES,
        "batch_shape": BATCH_SHAPE,
        "gt_boxes": GT_BOXES,
        "gt_labels": GT_LABELS,
    }
