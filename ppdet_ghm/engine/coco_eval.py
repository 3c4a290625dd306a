"""COCO box evaluation of a detections JSON against a ground-truth JSON (pycocotools).

The detections file is the COCO results format, a list of
``{"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float}`` (what
``ppdet-ghm eval`` writes as ``bbox.json``); the ground truth is a COCO instances file.
:func:`evaluate_detections` runs ``COCOeval(iouType="bbox")`` and returns the 12 standard numbers
plus the AP (0.5:0.95, all areas, 100 detections) of every category, computed from COCOeval's
precision array the way ppdet's ``cocoapi_eval(classwise=True)`` and mmdet do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["STAT_NAMES", "CocoBoxResults", "evaluate_detections", "format_per_class_table"]

#: Names of COCOeval.stats, in order.
STAT_NAMES: tuple[str, ...] = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)


@dataclasses.dataclass
class CocoBoxResults:
    """COCO box metrics. Values are in [0, 1]; -1 where COCOeval has no ground truth to score.

    Attributes:
        stats: the 12 numbers of ``COCOeval.stats`` by name (``STAT_NAMES``).
        per_class_ap: AP 0.5:0.95 per category name.
        summary: pycocotools' printed AP/AR table.
        num_detections: number of detections evaluated.
    """

    stats: dict[str, float]
    per_class_ap: dict[str, float]
    summary: str
    num_detections: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def format_per_class_table(per_class_ap: dict[str, float]) -> str:
    """A plain-text two-column table ``category | AP``."""
    width = max([len("category")] + [len(name) for name in per_class_ap])
    lines = [f"{'category':<{width}} | AP", f"{'-' * width}-+------"]
    for name, ap in per_class_ap.items():
        value = f"{ap:.3f}" if ap >= 0 else "n/a"
        lines.append(f"{name:<{width}} | {value}")
    return "\n".join(lines)


def _per_class_ap(coco_eval, coco_gt) -> dict[str, float]:
    # precision: [T iou thresholds, R recall points, K categories, A area ranges, M max dets];
    # area index 0 = "all", max-dets index -1 = 100; -1 marks "no ground truth" entries.
    precision = coco_eval.eval["precision"]
    per_class = {}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        name = coco_gt.cats[cat_id]["name"]
        per_class[name] = float(np.mean(values)) if values.size else -1.0
    return per_class


def evaluate_detections(
    detections: str | Path | list[dict],
    ground_truth: str | Path,
) -> CocoBoxResults:
    """Evaluate COCO-format box detections against a COCO ground-truth file.

    Args:
        detections: path of a results JSON (a list of detections) or the list itself. Image ids
            must exist in the ground truth; an empty list scores 0 everywhere.
        ground_truth: path of a COCO instances JSON.

    Raises:
        ValueError: detections that are not a list of dicts with ``image_id``, ``category_id``,
            ``bbox`` and ``score``, or that name an image id the ground truth does not have.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not isinstance(detections, list):
        with open(detections) as f:
            detections = json.load(f)
    if not isinstance(detections, list):
        raise ValueError("detections must be a JSON list of COCO results")
    required = ("image_id", "category_id", "bbox", "score")
    for i, det in enumerate(detections):
        if not isinstance(det, dict) or any(key not in det for key in required):
            raise ValueError(f"detection {i} is not a dict with keys {required}: {det!r}")

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(ground_truth))
    unknown = {det["image_id"] for det in detections} - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(
            f"{len(unknown)} image id(s) of the detections are not in {ground_truth}, "
            f"e.g. {sorted(unknown)[:5]}"
        )
    cat_names = [coco_gt.cats[c]["name"] for c in coco_gt.getCatIds()]
    if not detections:
        logger.warning("no detections: every metric is 0")
        return CocoBoxResults(
            stats={name: 0.0 for name in STAT_NAMES},
            per_class_ap={name: 0.0 for name in cat_names},
            summary="(no detections)",
            num_detections=0,
        )

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        coco_dt = coco_gt.loadRes(detections)
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    summary = "\n".join(
        line for line in buffer.getvalue().splitlines() if line.startswith(" Average")
    )
    return CocoBoxResults(
        stats={name: float(v) for name, v in zip(STAT_NAMES, coco_eval.stats, strict=True)},
        per_class_ap=_per_class_ap(coco_eval, coco_gt),
        summary=summary,
        num_detections=len(detections),
    )
