"""Checks of a COCO-format training set: a clear error naming the file and the record, or a counted skip.

ppdet's ``COCODataSet`` silently skips an image whose file is missing, drops zero-size boxes with
one warning each, keeps boxes that stick out of the image, fails with a bare ``KeyError`` on a
category id the JSON does not declare, and lets an undecodable image through to a transform that
then fails with ``'bytes' object has no attribute 'shape'``. :class:`CheckedCOCODataSet` parses
the same JSON into the same records, but applies the policy of :class:`DataChecks` to every
problem and counts what it did in a :class:`DataReport` (logged as one line).

Policies (config block ``data_checks``; defaults first)::

    data_checks:
      check_images: header     # header | full | none: open every image (header: size and
                               #   format; full: decode it all, finds truncated files)
      bad_image: error         # error | skip: missing, unreadable or truncated image file,
                               #   image record without a positive width/height; in
                               #   training, a file that fails to decode (skip: the next
                               #   image of the set takes its place, with a warning)
      invalid_box: drop        # drop | error: box with width or height < 1 px or area <= 0
                               #   (mmdet CocoDataset's rule), or not 4 finite numbers
      box_outside: clip        # clip | drop | error: box reaching outside the image; a clipped
                               #   box left with no area is dropped (counted apart)
      unknown_category: error  # error | drop: annotation whose category_id is not in categories

Images left without boxes are kept as negatives when the dataset's ``allow_empty`` is true
(ppdet's flag) and dropped otherwise; both are counted. Crowd boxes (unless ``load_crowd``) and
annotations marked ``ignore`` are skipped as ppdet skips them. A dataset with no usable image is
an error. Records, category mapping, order and empty-image sampling are ppdet's (same ``gt_bbox``
rounding to 3 decimals), so a clean set gives exactly ppdet's records.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os

import numpy as np
from ppdet.data.source.coco import COCODataSet

logger = logging.getLogger(__name__)

__all__ = [
    "CheckedCOCODataSet",
    "DataChecks",
    "DataReport",
    "DatasetError",
    "checked_dataset",
    "decode_problem",
]

_CHOICES = {
    "check_images": ("header", "full", "none"),
    "bad_image": ("error", "skip"),
    "invalid_box": ("drop", "error"),
    "box_outside": ("clip", "drop", "error"),
    "unknown_category": ("error", "drop"),
}


class DatasetError(ValueError):
    """A problem in the data set that the policy does not skip; the message names file and record."""


@dataclasses.dataclass(frozen=True)
class DataChecks:
    """What to do with each kind of bad input (see the module docstring for the values)."""

    check_images: str = "header"
    bad_image: str = "error"
    invalid_box: str = "drop"
    box_outside: str = "clip"
    unknown_category: str = "error"

    def __post_init__(self):
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"data_checks.{name}={value!r} is not one of {list(choices)}")

    @classmethod
    def from_config(cls, block: dict | None) -> DataChecks:
        """From the config's ``data_checks`` block (None: defaults); unknown keys raise."""
        block = dict(block or {})
        unknown = sorted(set(block) - set(_CHOICES))
        if unknown:
            raise ValueError(f"data_checks: unknown key(s) {unknown}; it takes {sorted(_CHOICES)}")
        return cls(**{k: str(v) for k, v in block.items()})


@dataclasses.dataclass
class DataReport:
    """What the checks found in one annotation file (counts)."""

    images: int = 0  # image records in the JSON
    kept_images: int = 0  # records of the data set (with the empty ones kept)
    boxes: int = 0  # boxes kept
    missing_images: int = 0  # skipped: file not found
    unreadable_images: int = 0  # skipped: cannot be opened / decoded, or truncated
    bad_image_records: int = 0  # skipped: width/height not positive
    size_mismatches: int = 0  # the file's size differs from the JSON's (the file's is used)
    invalid_boxes: int = 0  # dropped: width/height <= 0 or not finite
    clipped_boxes: int = 0  # clipped to the image
    outside_dropped: int = 0  # dropped: outside the image (box_outside=drop, or nothing left)
    unknown_category: int = 0  # dropped: category id not declared
    orphan_annotations: int = 0  # dropped: image_id not among the images
    crowd_skipped: int = 0  # skipped: iscrowd (load_crowd false)
    ignored: int = 0  # skipped: 'ignore' flag
    empty_kept: int = 0  # images without boxes kept as negatives (allow_empty)
    empty_dropped: int = 0  # images without boxes dropped (allow_empty false)

    def problems(self) -> dict[str, int]:
        """The non-zero counts of what was skipped, dropped or changed."""
        skip = {"images", "kept_images", "boxes", "empty_kept"}
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in skip and getattr(self, f.name)
        }

    def summary(self) -> str:
        problems = ", ".join(f"{k} {v}" for k, v in self.problems().items()) or "no problems"
        return (
            f"{self.kept_images} of {self.images} images ({self.empty_kept} without boxes), "
            f"{self.boxes} boxes; {problems}"
        )


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"annotation file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: not a readable JSON file: {err}") from err
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise DatasetError(f"{path}: not a COCO annotation file (no 'images' list)")
    for key in ("annotations", "categories"):
        if not isinstance(coco.get(key, []), list):
            raise DatasetError(f"{path}: '{key}' is not a list")
    return coco


def _image_size(path: str, full: bool) -> tuple[int, int]:
    """(width, height) of the image file; OSError / ValueError when it cannot be read."""
    from PIL import Image, ImageFile

    with Image.open(path) as im:
        size = im.size
        if full:
            # ppdet sets LOAD_TRUNCATED_IMAGES at import; Pillow raises on truncation without it
            tolerant, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
            try:
                im.load()
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = tolerant
    return size


def decode_problem(path: str) -> str | None:
    """Why ppdet's ``Decode`` (``cv2.imdecode`` of the file's bytes, colour) cannot read
    ``path``, or None when it can."""
    import cv2

    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        return str(err)
    if data.size == 0:
        return "empty file"
    if cv2.imdecode(data, cv2.IMREAD_COLOR) is None:
        return "not a decodable image"
    return None


MIN_BOX_SIDE = 1.0  # px: mmdet CocoDataset.parse_data_info skips w < 1 or h < 1


def _not_positive(area) -> bool:
    """Whether an annotation's ``area`` is given and not > 0 (missing or non-numeric: False)."""
    try:
        return area is not None and not float(area) > 0
    except (TypeError, ValueError):
        return False


def _box_corners(bbox) -> list[float] | None:
    """COCO ``[x, y, w, h]`` -> ``[x1, y1, x2, y2]``, or None if not 4 finite numbers."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None
    return [x, y, x + w, y + h]


class _Checker:
    """One pass over a COCO JSON under a policy; see :func:`check_coco`."""

    def __init__(self, anno_path, image_dir, checks, allow_empty, load_crowd):
        self.anno_path = anno_path
        self.image_dir = image_dir
        self.checks = checks
        self.allow_empty = allow_empty
        self.load_crowd = load_crowd
        self.report = DataReport()

    def fail(self, message: str):
        raise DatasetError(f"{self.anno_path}: {message}")

    def image_entries(self, coco: dict) -> dict[int, dict]:
        """Image id -> {file, path, width, height}; bad images raised or skipped (counted)."""
        entries: dict[int, dict] = {}
        for index, image in enumerate(coco["images"]):
            where = f"images[{index}]"
            if not isinstance(image, dict) or not {"id", "file_name"} <= set(image):
                self.fail(f"{where} lacks 'id' or 'file_name': {image!r:.200}")
            image_id, file_name = image["id"], str(image["file_name"])
            where = f"image id {image_id} ({file_name})"
            if image_id in entries:
                self.fail(f"{where}: duplicate image id")
            self.report.images += 1
            path = os.path.join(self.image_dir, file_name) if self.image_dir else file_name
            try:
                width, height = float(image.get("width", 0)), float(image.get("height", 0))
            except (TypeError, ValueError):
                width = height = 0.0
            if not (width > 0 and height > 0):
                self.bad_image(
                    "bad_image_records",
                    f"{where}: width/height not positive: "
                    f"{image.get('width')!r} x {image.get('height')!r}",
                )
                continue
            if not os.path.isfile(path):
                self.bad_image("missing_images", f"{where}: image file not found: {path}")
                continue
            if self.checks.check_images != "none":
                try:
                    size = _image_size(path, full=self.checks.check_images == "full")
                except (OSError, ValueError, SyntaxError) as err:
                    self.bad_image("unreadable_images", f"{where}: cannot read {path}: {err}")
                    continue
                if size != (width, height):
                    self.report.size_mismatches += 1
                    logger.warning(
                        "%s: %s: the file is %dx%d, the JSON says %gx%g; using the file's size",
                        self.anno_path,
                        where,
                        *size,
                        width,
                        height,
                    )
                    width, height = float(size[0]), float(size[1])
            entries[image_id] = {
                "file": file_name,
                "path": path,
                "width": width,
                "height": height,
                "boxes": [],
            }
        return entries

    def bad_image(self, counter: str, message: str):
        if self.checks.bad_image == "error":
            self.fail(message + " (data_checks.bad_image=skip skips such images)")
        setattr(self.report, counter, getattr(self.report, counter) + 1)
        logger.warning("%s: %s: skipped", self.anno_path, message)

    def add_annotations(self, coco: dict, entries: dict[int, dict], catid2clsid: dict):
        for index, ann in enumerate(coco.get("annotations", [])):
            if not isinstance(ann, dict) or "image_id" not in ann:
                self.fail(f"annotations[{index}] has no 'image_id': {ann!r:.200}")
            where = f"annotation id {ann.get('id', '?')} (annotations[{index}])"
            entry = entries.get(ann["image_id"])
            if entry is None:
                self.report.orphan_annotations += 1
                continue
            where += f" of image id {ann['image_id']} ({entry['file']})"
            if ann.get("ignore", False):
                self.report.ignored += 1
                continue
            if ann.get("iscrowd", 0) and not self.load_crowd:
                self.report.crowd_skipped += 1
                continue
            if ann.get("category_id") not in catid2clsid:
                if self.checks.unknown_category == "error":
                    self.fail(
                        f"{where}: category_id {ann.get('category_id')!r} is not among the "
                        f"categories {sorted(catid2clsid)} (data_checks.unknown_category=drop "
                        "drops such boxes)"
                    )
                self.report.unknown_category += 1
                continue
            box = self.checked_box(ann.get("bbox"), entry, where, ann.get("area"))
            if box is not None:
                entry["boxes"].append((catid2clsid[ann["category_id"]], box, ann))

    def checked_box(self, bbox, entry: dict, where: str, area=None) -> list[float] | None:
        corners = _box_corners(bbox)
        eps = 1e-5  # ppdet's minimum side of a clipped box
        # mmdet's CocoDataset drops a gt box with w < 1 or h < 1 or area <= 0 (ppdet keeps a box
        # down to 1e-5 px); its training gts are the reference
        if (
            corners is None
            or corners[2] - corners[0] < MIN_BOX_SIDE
            or corners[3] - corners[1] < MIN_BOX_SIDE
            or _not_positive(area)
        ):
            if self.checks.invalid_box == "error":
                self.fail(
                    f"{where}: invalid bbox {bbox!r} (area {area!r}; width and height must be "
                    ">= 1 px and the area > 0)"
                )
            self.report.invalid_boxes += 1
            return None
        width, height = entry["width"], entry["height"]
        x1, y1, x2, y2 = corners
        if x1 >= 0 and y1 >= 0 and x2 <= width and y2 <= height:
            return corners
        if self.checks.box_outside == "error":
            self.fail(f"{where}: bbox {bbox!r} reaches outside the {width:g}x{height:g} image")
        if self.checks.box_outside == "drop":
            self.report.outside_dropped += 1
            return None
        clipped = [min(max(x1, 0.0), width), min(max(y1, 0.0), height)]
        clipped += [min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
        if clipped[2] - clipped[0] <= eps or clipped[3] - clipped[1] <= eps:
            self.report.outside_dropped += 1
            return None
        self.report.clipped_boxes += 1
        return clipped


def check_coco(
    anno_path: str,
    image_dir: str,
    checks: DataChecks | None = None,
    *,
    allow_empty: bool = False,
    load_crowd: bool = False,
) -> tuple[list[dict], dict[int, int], dict[str, int], DataReport]:
    """Read and check a COCO JSON.

    Returns:
        images: ``[{"id", "file", "path", "width", "height", "boxes": [(class_index,
        [x1, y1, x2, y2], annotation)]}]`` sorted by id, the images kept (with the empty ones
        when ``allow_empty``); ``catid2clsid`` (category id -> class index, in the order of
        ``categories``); ``cname2cid`` (name -> class index); the report.

    Raises:
        DatasetError: a problem the policy does not skip, or no usable image; the message names
            the annotation file and the record (image id and file, annotation id).
    """
    checks = checks or DataChecks()
    coco = _read_json(anno_path)
    checker = _Checker(anno_path, image_dir, checks, allow_empty, load_crowd)
    categories = coco.get("categories", [])
    catid2clsid = {c["id"]: i for i, c in enumerate(categories)}
    cname2cid = {c["name"]: catid2clsid[c["id"]] for c in categories}
    entries = checker.image_entries(coco)
    checker.add_annotations(coco, entries, catid2clsid)
    report = checker.report
    images = []
    for image_id in sorted(entries):
        entry = dict(entries[image_id], id=image_id)
        if not entry["boxes"]:
            if not allow_empty:
                report.empty_dropped += 1
                continue
            report.empty_kept += 1
        report.boxes += len(entry["boxes"])
        images.append(entry)
    report.kept_images = len(images)
    if not images:
        raise DatasetError(
            f"{anno_path}: no usable image ({report.summary()})"
            + ("" if allow_empty else "; images without boxes are dropped unless allow_empty")
        )
    return images, catid2clsid, cname2cid, report


class CheckedCOCODataSet(COCODataSet):
    """ppdet's ``COCODataSet`` with the checks of :class:`DataChecks` (same constructor, plus
    ``checks``). After :meth:`parse_dataset`, ``report`` holds the counts.

    A sample whose transforms fail (an image that cannot be decoded, ...) raises
    :class:`DatasetError` naming the image file and id.
    """

    def __init__(
        self,
        dataset_dir=None,
        image_dir=None,
        anno_path=None,
        data_fields=("image",),
        sample_num=-1,
        load_crowd=False,
        allow_empty=False,
        empty_ratio=1.0,
        repeat=1,
        *,
        checks: DataChecks | None = None,
    ):
        super().__init__(
            dataset_dir=dataset_dir,
            image_dir=image_dir,
            anno_path=anno_path,
            data_fields=list(data_fields),
            sample_num=sample_num,
            load_crowd=load_crowd,
            allow_empty=allow_empty,
            empty_ratio=empty_ratio,
            repeat=repeat,
        )
        self.checks = checks or DataChecks()
        self.report: DataReport | None = None

    @classmethod
    def from_dataset(cls, dataset: COCODataSet, checks: DataChecks) -> CheckedCOCODataSet:
        """The checked version of a configured (not yet parsed) ``COCODataSet``."""
        checked = cls.__new__(cls)
        checked.__dict__.update(copy.copy(dataset.__dict__))
        checked.checks = checks
        checked.report = None
        return checked

    def parse_dataset(self):
        anno_path = os.path.join(self.dataset_dir, self.anno_path)
        image_dir = os.path.join(self.dataset_dir, self.image_dir)
        images, self.catid2clsid, self.cname2cid, report = check_coco(
            anno_path,
            image_dir,
            self.checks,
            allow_empty=self.allow_empty,
            load_crowd=self.load_crowd,
        )
        records, empty_records = [], []
        for count, image in enumerate(images, start=1):
            record = self._record(image)
            (records if image["boxes"] else empty_records).append(record)
            if 0 < self.sample_num <= count:
                break
        if self.allow_empty and empty_records:
            empty_records = self._sample_empty(empty_records, len(records))
        self.roidbs = records + empty_records
        self.report = report
        logger.info("%s: %s", anno_path, report.summary())

    def _record(self, image: dict) -> dict:
        """ppdet's record of one image (fields as ``COCODataSet.parse_dataset`` makes them)."""
        record = {}
        if "image" in self.data_fields:
            record = {
                "im_file": image["path"],
                "im_id": np.array([image["id"]]),
                "h": image["height"],
                "w": image["width"],
            }
        boxes = image["boxes"]
        gt = {
            "is_crowd": np.array([[int(a.get("iscrowd", 0))] for _, _, a in boxes], np.int32),
            "gt_class": np.array([[c] for c, _, _ in boxes], np.int32),
            "gt_bbox": np.array([[round(v, 3) for v in b] for _, b, _ in boxes], np.float32),
            "gt_poly": [None] * len(boxes),
        }
        gt["is_crowd"] = gt["is_crowd"].reshape(-1, 1)
        gt["gt_class"] = gt["gt_class"].reshape(-1, 1)
        gt["gt_bbox"] = gt["gt_bbox"].reshape(-1, 4)
        record.update({k: v for k, v in gt.items() if k in self.data_fields})
        return record

    def __getitem__(self, idx):
        """ppdet's sample ``idx``. A failure is a :class:`DatasetError` naming the image; with
        ``bad_image: skip``, an image whose file does not decode (:func:`decode_problem`) is
        instead left out with a warning and the next image of the set takes its place (the
        batch keeps its size); the warning counts the skips of this loader process."""
        for offset in range(len(self.roidbs)):
            position = (idx + offset) % len(self.roidbs)
            try:
                return super().__getitem__(position)
            except Exception as err:
                roidb = self.roidbs[position]
                image_id = int(np.asarray(roidb.get("im_id", [-1])).reshape(-1)[0])
                path = roidb.get("im_file", "?")
                message = (
                    f"{path} (image id {image_id}): cannot be loaded or transformed: "
                    f"{type(err).__name__}: {err}"
                )
                problem = decode_problem(path) if self.checks.bad_image == "skip" else None
                if problem is None:  # policy error, or a failure that is not the file's
                    raise DatasetError(message) from err
                self.skipped_in_training = getattr(self, "skipped_in_training", 0) + 1
                logger.warning(
                    "%s (%s): skipped (data_checks.bad_image=skip), the next image takes its "
                    "place; %d skipped so far by this loader process",
                    path,
                    problem,
                    self.skipped_in_training,
                )
        raise DatasetError(f"{self.anno_path}: no image of the set can be loaded")


def checked_dataset(dataset, checks: DataChecks):
    """``dataset`` with the checks when it is a plain ppdet ``COCODataSet``; else unchanged."""
    if type(dataset) is COCODataSet:
        return CheckedCOCODataSet.from_dataset(dataset, checks)
    if isinstance(dataset, CheckedCOCODataSet):
        dataset.checks = checks
    return dataset
