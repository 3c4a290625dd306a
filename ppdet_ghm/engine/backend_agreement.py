"""Do ONNX Runtime and the Paddle predictor give the same detections? Per image and as COCO AP.

The criteria (:data:`MIN_IOU`, :data:`MAX_SCORE_DIFF`): the same number of detections in every
image, and a one-to-one matching of the two lists, same class, where every matched pair has IoU
>= 0.999 and scores within 1e-4. The matching (:func:`match_detections`) takes the first list's
detections by descending score and pairs each with an unmatched detection of the same class in
the second list: among those with IoU >= 0.999 the one closest in score (nearly identical boxes
occur, e.g. several clipped to the image), else the one that overlaps it most.

Command line (the numbers of the closing note in README "ONNX")::

    python -m ppdet_ghm.engine.backend_agreement --model_dir output/demo/export \\
        --image_dir demo_data/val --gt demo_data/annotations/instances_val.json

exits 0 when every image agrees, 1 otherwise; prints the worst IoU and score difference and,
with ``--gt``, the COCO AP of each backend on the same predictions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile

import numpy as np

__all__ = [
    "MAX_SCORE_DIFF",
    "MIN_IOU",
    "Agreement",
    "box_iou",
    "compare_detectors",
    "main",
    "match_detections",
]

#: Least IoU of a matched pair of boxes.
MIN_IOU = 0.999
#: Largest score difference of a matched pair.
MAX_SCORE_DIFF = 1e-4


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a`` [N, 4] and ``b`` [M, 4] (``x1, y1, x2, y2``, no +1) -> [N, M], float64."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


@dataclasses.dataclass
class Agreement:
    """How two lists of detections of the same images compare.

    Attributes:
        images: images compared.
        detections: detections of the first backend (all images).
        count_mismatches: images whose two lists differ in length.
        unmatched: detections of the first list with no same-class partner.
        min_iou: least IoU of a matched pair (1.0 when nothing was matched).
        max_score_diff: largest score difference of a matched pair.
        ap_first, ap_second: COCO AP (0.5:0.95) of each backend, when a ground truth was given.
    """

    images: int = 0
    detections: int = 0
    count_mismatches: int = 0
    unmatched: int = 0
    min_iou: float = 1.0
    max_score_diff: float = 0.0
    ap_first: float | None = None
    ap_second: float | None = None

    @property
    def ok(self) -> bool:
        """Same counts, everything matched, IoU >= :data:`MIN_IOU`, scores within
        :data:`MAX_SCORE_DIFF`."""
        return (
            self.count_mismatches == 0
            and self.unmatched == 0
            and self.min_iou >= MIN_IOU
            and self.max_score_diff <= MAX_SCORE_DIFF
        )

    def add(self, other: Agreement) -> None:
        self.images += other.images
        self.detections += other.detections
        self.count_mismatches += other.count_mismatches
        self.unmatched += other.unmatched
        self.min_iou = min(self.min_iou, other.min_iou)
        self.max_score_diff = max(self.max_score_diff, other.max_score_diff)


def match_detections(a: np.ndarray, b: np.ndarray) -> Agreement:
    """Compare the detections of one image, ``a`` and ``b`` [M, 6] rows ``class, score, x1, y1,
    x2, y2`` (see the module docstring for the matching)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 6)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 6)
    result = Agreement(images=1, detections=len(a), count_mismatches=int(len(a) != len(b)))
    if not len(a) or not len(b):
        result.unmatched = len(a)
        return result
    iou = box_iou(a[:, 2:], b[:, 2:])
    iou[a[:, None, 0] != b[None, :, 0]] = -1.0  # other class: never a partner
    taken = np.zeros(len(b), dtype=bool)
    for i in np.argsort(-a[:, 1], kind="stable"):
        candidates = np.where(taken, -1.0, iou[i])
        close = candidates >= MIN_IOU
        if close.any():  # boxes that overlap this much (e.g. two clipped to the image): by score
            j = int(np.argmin(np.where(close, np.abs(b[:, 1] - a[i, 1]), np.inf)))
        else:
            j = int(np.argmax(candidates))
        if candidates[j] < 0:
            result.unmatched += 1
            continue
        taken[j] = True
        result.min_iou = min(result.min_iou, float(candidates[j]))
        result.max_score_diff = max(result.max_score_diff, abs(float(a[i, 1] - b[j, 1])))
    return result


def _coco_records(per_image: dict[int, np.ndarray], category_ids) -> list[dict]:
    return [
        {
            "image_id": image_id,
            "category_id": int(category_ids[int(cls)]),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": score,
        }
        for image_id, dets in per_image.items()
        for cls, score, x1, y1, x2, y2 in np.asarray(dets, dtype=np.float64).tolist()
    ]


def compare_detectors(
    first, second, images: list[str], ground_truth: str | None = None
) -> tuple[Agreement, list[dict]]:
    """Run two detectors (``predict(path) -> [M, 6]``) on ``images`` and compare.

    Args:
        ground_truth: a COCO instances JSON naming ``images`` by ``file_name`` (base name):
            then each detector's detections are also COCO-evaluated.

    Returns:
        (the agreement over all images, per-image rows ``{"file_name", "count_first",
        "count_second", "min_iou", "max_score_diff"}``); with ``ground_truth`` the agreement
        gets ``ap_first`` and ``ap_second`` (COCO AP 0.5:0.95).
    """
    total = Agreement()
    rows = []
    outputs = ({}, {})
    for index, path in enumerate(images):
        dets = (first.predict(path), second.predict(path))
        for store, value in zip(outputs, dets, strict=True):
            store[index] = value
        one = match_detections(*dets)
        total.add(one)
        rows.append(
            {
                "file_name": os.path.basename(path),
                "count_first": len(dets[0]),
                "count_second": len(dets[1]),
                "min_iou": one.min_iou,
                "max_score_diff": one.max_score_diff,
            }
        )
    if ground_truth is not None:
        from ppdet_ghm.engine.coco_eval import evaluate_detections

        with open(ground_truth) as f:
            coco = json.load(f)
        ids = {img["file_name"]: img["id"] for img in coco["images"]}
        names = {os.path.basename(path) for path in images}
        missing = sorted(names - set(ids))
        if missing:
            raise ValueError(f"{ground_truth} has no image named {missing[0]}")
        with tempfile.TemporaryDirectory() as tmp:
            if len(names) < len(ids):  # a subset: score it against its own ground truth
                kept = {ids[name] for name in names}
                coco["images"] = [img for img in coco["images"] if img["id"] in kept]
                coco["annotations"] = [
                    a for a in coco.get("annotations", []) if a["image_id"] in kept
                ]
                ground_truth = os.path.join(tmp, "ground_truth.json")
                with open(ground_truth, "w") as f:
                    json.dump(coco, f)
            aps = []
            for detector, store in zip((first, second), outputs, strict=True):
                by_id = {ids[os.path.basename(images[i])]: d for i, d in store.items()}
                records = _coco_records(by_id, detector.category_ids)
                aps.append(evaluate_detections(records, ground_truth).stats["AP"])
        total.ap_first, total.ap_second = aps
    return total, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="export folder (Paddle predictor)")
    parser.add_argument("--onnx", default=None, help="default: <model_dir>/model.onnx")
    parser.add_argument("--image_dir", required=True, help="folder of images")
    parser.add_argument("--gt", default=None, help="COCO JSON of those images: AP both ways")
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of each backend")
    parser.add_argument("--json", default=None, help="write the per-image rows and summary here")
    args = parser.parse_args(argv)

    import ppdet_ghm  # noqa: F401  (compat fixes, quiet ppdet import)
    from ppdet_ghm.engine.onnx_predictor import OnnxDetector
    from ppdet_ghm.engine.predictor import ExportedDetector
    from ppdet_ghm.engine.tasks import find_images

    images = find_images(args.image_dir)[: args.limit]
    paddle_side = ExportedDetector(args.model_dir, threads=args.threads)
    onnx_side = OnnxDetector(
        args.onnx or os.path.join(args.model_dir, "model.onnx"), threads=args.threads
    )
    total, rows = compare_detectors(paddle_side, onnx_side, images, args.gt)
    summary = dataclasses.asdict(total) | {"ok": total.ok}
    print(
        f"{total.images} images, {total.detections} detections (Paddle predictor); images with "
        f"another count in ONNX Runtime: {total.count_mismatches}; unmatched: {total.unmatched}; "
        f"least IoU {total.min_iou:.6f} (need >= {MIN_IOU}); largest score difference "
        f"{total.max_score_diff:.2e} (need <= {MAX_SCORE_DIFF:g})"
    )
    if args.gt:
        print(
            f"COCO AP: Paddle predictor {total.ap_first:.6f}, ONNX Runtime {total.ap_second:.6f}, "
            f"difference {abs(total.ap_first - total.ap_second):.2e}"
        )
    print("agree" if total.ok else "DISAGREE")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "images": rows}, f, indent=1)
    return 0 if total.ok else 1


if __name__ == "__main__":
    sys.exit(main())
