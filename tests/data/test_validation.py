"""Bad training data: a clear error naming the file and the record, or a counted skip.

Small COCO JSONs written per test around 64x64 images of the demo generator; every test checks
the counts of the report and the records that come out (ppdet_ghm.data.validation).
"""

import json
import shutil

import numpy as np
import pytest
from ppdet.data.reader import Compose
from ppdet.data.source.coco import COCODataSet

from ppdet_ghm.data.demo_data import DemoDataSpec, generate
from ppdet_ghm.data.validation import CheckedCOCODataSet, DataChecks, DatasetError, check_coco

FIELDS = ["image", "gt_bbox", "gt_class", "is_crowd"]
CATEGORIES = [{"id": 1, "name": "square"}, {"id": 2, "name": "circle"}]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three 64x64 JPEGs of the demo generator: img/000000.jpg ... 000002.jpg."""
    root = tmp_path_factory.mktemp("demo")
    spec = DemoDataSpec(seed=1, num_train=3, num_val=0, image_size=64, min_size=8, max_size=32)
    generate(spec, root)
    return root / "train"


def _image(i, **extra):
    return {"id": i + 1, "file_name": f"{i:06d}.jpg", "width": 64, "height": 64, **extra}


def _ann(ann_id, image_id, bbox, category_id=1, **extra):
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "area": 1.0,
        "iscrowd": 0,
        **extra,
    }


def _dataset(tmp_path, images, coco_images, annotations, checks=None, **kwargs):
    """A CheckedCOCODataSet over a copy of the images and the given records."""
    root = tmp_path / "set"
    if not root.exists():
        shutil.copytree(images, root / "img")
        (root / "ann").mkdir()
    coco = {"images": coco_images, "annotations": annotations, "categories": CATEGORIES}
    (root / "ann" / "train.json").write_text(json.dumps(coco))
    return CheckedCOCODataSet(
        dataset_dir=str(root),
        image_dir="img",
        anno_path="ann/train.json",
        data_fields=FIELDS,
        checks=checks,
        **kwargs,
    )


def _parsed(*args, **kwargs):
    dataset = _dataset(*args, **kwargs)
    dataset.parse_dataset()
    return dataset


def test_a_clean_set_gives_exactly_ppdets_records(tmp_path):
    spec = DemoDataSpec(
        seed=3, num_train=10, num_val=0, image_size=64, max_size=32, empty_ratio=0.3
    )
    generate(spec, tmp_path)
    kwargs = dict(
        dataset_dir=str(tmp_path),
        image_dir="train",
        anno_path="annotations/instances_train.json",
        data_fields=FIELDS,
        allow_empty=True,
    )
    ours, ppdet = CheckedCOCODataSet(**kwargs), COCODataSet(**kwargs)
    ours.parse_dataset()
    ppdet.parse_dataset()
    assert ours.report.problems() == {}
    assert ours.report.images == ours.report.kept_images == 10
    assert ours.report.empty_kept == sum(len(r["gt_bbox"]) == 0 for r in ppdet.roidbs) > 0
    assert ours.catid2clsid == ppdet.catid2clsid and ours.cname2cid == ppdet.cname2cid
    assert len(ours.roidbs) == len(ppdet.roidbs)
    for a, b in zip(ours.roidbs, ppdet.roidbs, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], np.ndarray):
                assert a[key].dtype == b[key].dtype, key
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
            else:
                assert a[key] == b[key], key


def test_missing_image_file_is_an_error_naming_it_or_a_counted_skip(tmp_path, images):
    recs = [_image(0), _image(1, file_name="gone.jpg"), _image(2)]
    anns = [_ann(1, 1, [2, 2, 10, 10]), _ann(2, 2, [2, 2, 10, 10]), _ann(3, 3, [5, 5, 8, 8])]
    with pytest.raises(DatasetError, match=r"train\.json: image id 2 \(gone\.jpg\).*not found"):
        _parsed(tmp_path, images, recs, anns)
    dataset = _parsed(tmp_path, images, recs, anns, DataChecks(bad_image="skip"))
    assert dataset.report.missing_images == 1
    assert [int(r["im_id"][0]) for r in dataset.roidbs] == [1, 3]
    assert dataset.report.boxes == 2


def test_unreadable_image_is_found_by_the_header_check(tmp_path, images):
    recs = [_image(0), _image(1)]
    anns = [_ann(1, 1, [2, 2, 10, 10]), _ann(2, 2, [2, 2, 10, 10])]
    dataset = _dataset(tmp_path, images, recs, anns)
    (tmp_path / "set" / "img" / "000001.jpg").write_bytes(b"this is not an image")
    with pytest.raises(DatasetError, match=r"image id 2 \(000001\.jpg\): cannot read .*000001"):
        dataset.parse_dataset()
    dataset = _parsed(tmp_path, images, recs, anns, DataChecks(bad_image="skip"))
    assert dataset.report.unreadable_images == 1 and dataset.report.kept_images == 1


def test_truncated_image_is_found_by_the_full_check_only(tmp_path, images):
    recs = [_image(0), _image(1)]
    anns = [_ann(1, 1, [2, 2, 10, 10]), _ann(2, 2, [2, 2, 10, 10])]
    dataset = _dataset(tmp_path, images, recs, anns)
    path = tmp_path / "set" / "img" / "000000.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    dataset.parse_dataset()  # the header is intact
    assert dataset.report.kept_images == 2
    with pytest.raises(DatasetError, match=r"image id 1 \(000000\.jpg\): .*truncated"):
        _parsed(tmp_path, images, recs, anns, DataChecks(check_images="full"))
    checks = DataChecks(check_images="full", bad_image="skip")
    dataset = _parsed(tmp_path, images, recs, anns, checks)
    assert dataset.report.unreadable_images == 1
    assert [int(r["im_id"][0]) for r in dataset.roidbs] == [2]


def test_an_image_that_fails_to_load_in_training_names_its_file(tmp_path, images):
    recs = [_image(0), _image(1)]
    anns = [_ann(1, 1, [2, 2, 10, 10]), _ann(2, 2, [2, 2, 10, 10])]
    dataset = _dataset(tmp_path, images, recs, anns, DataChecks(check_images="none"))
    (tmp_path / "set" / "img" / "000001.jpg").write_bytes(b"\xff\xd8 garbage")
    dataset.parse_dataset()  # not opened when parsing
    dataset.set_kwargs()
    dataset.set_transform(Compose([{"Decode": {}}]))
    assert dataset[0]["image"].shape == (64, 64, 3)
    with pytest.raises(DatasetError, match=r"000001\.jpg \(image id 2\): cannot be loaded"):
        dataset[1]


def test_skip_puts_the_next_image_in_place_of_one_that_fails_to_decode(tmp_path, images, caplog):
    recs = [_image(0), _image(1), _image(2)]
    anns = [_ann(i + 1, i + 1, [2, 2, 10 + i, 10]) for i in range(3)]
    checks = DataChecks(check_images="none", bad_image="skip")
    dataset = _dataset(tmp_path, images, recs, anns, checks)
    (tmp_path / "set" / "img" / "000001.jpg").write_bytes(b"\xff\xd8 garbage")
    dataset.parse_dataset()
    dataset.set_kwargs()
    dataset.set_transform(Compose([{"Decode": {}}]))
    with caplog.at_level("WARNING", logger="ppdet_ghm.data.validation"):
        sample = dataset[1]
        assert int(sample["im_id"][0]) == 3  # the next image, with its own boxes
        np.testing.assert_array_equal(sample["gt_bbox"], [[2, 2, 14, 12]])
        assert int(dataset[2]["im_id"][0]) == 3 and int(dataset[0]["im_id"][0]) == 1
        dataset[1]
    assert dataset.skipped_in_training == 2
    assert caplog.text.count("000001.jpg (not a decodable image): skipped") == 2
    assert "2 skipped so far by this loader process" in caplog.text


def test_skip_does_not_hide_a_failure_that_is_not_the_files(tmp_path, images):
    """A transform that raises on a readable image stays an error under skip."""
    recs = [_image(0)]
    checks = DataChecks(check_images="none", bad_image="skip")
    dataset = _dataset(tmp_path, images, recs, [_ann(1, 1, [2, 2, 10, 10])], checks)
    dataset.parse_dataset()
    dataset.set_kwargs()

    def failing(sample):
        raise ZeroDivisionError("a bug in a transform")

    dataset.set_transform(failing)
    with pytest.raises(DatasetError, match=r"000000\.jpg \(image id 1\): .*a bug in a transform"):
        dataset[0]


def test_boxes_without_area_are_dropped_and_counted_or_an_error(tmp_path, images):
    anns = [
        _ann(1, 1, [2, 2, 10, 10]),
        _ann(2, 1, [5, 5, 0, 10]),  # zero width
        _ann(3, 1, [5, 5, 10, -3]),  # negative height
        _ann(4, 1, [5, 5, float("nan"), 4]),
        _ann(5, 1, [5, 5, 4]),  # 3 numbers
    ]
    dataset = _parsed(tmp_path, images, [_image(0)], anns)
    assert dataset.report.invalid_boxes == 4 and dataset.report.boxes == 1
    np.testing.assert_array_equal(dataset.roidbs[0]["gt_bbox"], [[2, 2, 12, 12]])
    with pytest.raises(DatasetError, match=r"annotation id 2 .*image id 1 \(000000\.jpg\).*bbox"):
        _parsed(tmp_path, images, [_image(0)], anns, DataChecks(invalid_box="error"))


def test_boxes_outside_the_image_are_clipped_dropped_or_an_error(tmp_path, images):
    anns = [
        _ann(1, 1, [-4, 10, 20, 20]),  # left edge out: x1 -> 0
        _ann(2, 1, [50, 50, 30, 30]),  # right/bottom out: x2, y2 -> 64
        _ann(3, 1, [70, 10, 5, 5]),  # entirely outside: nothing left
        _ann(4, 1, [10, 10, 20, 20]),  # inside
    ]
    dataset = _parsed(tmp_path, images, [_image(0)], anns)
    report = dataset.report
    assert (report.clipped_boxes, report.outside_dropped, report.boxes) == (2, 1, 3)
    np.testing.assert_array_equal(
        dataset.roidbs[0]["gt_bbox"], [[0, 10, 16, 30], [50, 50, 64, 64], [10, 10, 30, 30]]
    )
    dataset = _parsed(tmp_path, images, [_image(0)], anns, DataChecks(box_outside="drop"))
    assert (dataset.report.outside_dropped, dataset.report.boxes) == (3, 1)
    with pytest.raises(DatasetError, match=r"annotation id 1 .*outside the 64x64 image"):
        _parsed(tmp_path, images, [_image(0)], anns, DataChecks(box_outside="error"))


def test_images_without_boxes_are_negatives_when_allow_empty_else_dropped(tmp_path, images):
    recs = [_image(0), _image(1), _image(2)]
    anns = [_ann(1, 1, [2, 2, 10, 10]), _ann(2, 3, [0, 0, 0, 0])]  # image 3: its box is invalid
    kept = _parsed(tmp_path, images, recs, anns, allow_empty=True)
    assert (kept.report.empty_kept, kept.report.kept_images, kept.report.invalid_boxes) == (2, 3, 1)
    assert [int(r["im_id"][0]) for r in kept.roidbs] == [1, 2, 3]  # ppdet: negatives last
    assert kept.roidbs[2]["gt_bbox"].shape == (0, 4) and kept.roidbs[2]["gt_class"].shape == (0, 1)
    dropped = _parsed(tmp_path, images, recs, anns, allow_empty=False)
    assert (dropped.report.empty_dropped, dropped.report.kept_images) == (2, 1)


def test_unknown_category_is_an_error_naming_it_or_dropped(tmp_path, images):
    anns = [_ann(1, 1, [2, 2, 10, 10], category_id=2), _ann(7, 1, [2, 2, 10, 10], category_id=9)]
    with pytest.raises(
        DatasetError, match=r"annotation id 7 .*category_id 9 is not among .*\[1, 2\]"
    ):
        _parsed(tmp_path, images, [_image(0)], anns)
    dataset = _parsed(tmp_path, images, [_image(0)], anns, DataChecks(unknown_category="drop"))
    assert dataset.report.unknown_category == 1
    np.testing.assert_array_equal(dataset.roidbs[0]["gt_class"], [[1]])  # category 2 -> class 1


def test_an_empty_dataset_is_an_error(tmp_path, images):
    with pytest.raises(DatasetError, match=r"train\.json: no usable image \(0 of 0 images"):
        _parsed(tmp_path, images, [], [])
    recs = [_image(0, file_name="a.jpg"), _image(1, file_name="b.jpg")]
    with pytest.raises(DatasetError, match=r"no usable image \(0 of 2 images.*missing_images 2"):
        _parsed(tmp_path, images, recs, [], DataChecks(bad_image="skip"), allow_empty=True)
    with pytest.raises(DatasetError, match="images without boxes are dropped unless allow_empty"):
        _parsed(tmp_path, images, [_image(0)], [])


def test_malformed_json_and_records_name_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(DatasetError, match=r"bad\.json: not a readable JSON"):
        check_coco(str(path), str(tmp_path))
    path.write_text(json.dumps({"images": [{"id": 1}]}))
    with pytest.raises(DatasetError, match=r"bad\.json: images\[0\] lacks 'id' or 'file_name'"):
        check_coco(str(path), str(tmp_path))
    with pytest.raises(DatasetError, match="annotation file not found"):
        check_coco(str(tmp_path / "nope.json"), str(tmp_path))


def test_data_checks_reject_unknown_options():
    assert DataChecks.from_config(None) == DataChecks()
    assert DataChecks.from_config({"box_outside": "drop"}).box_outside == "drop"
    with pytest.raises(ValueError, match=r"data_checks: unknown key\(s\) \['box_outsde'\]"):
        DataChecks.from_config({"box_outsde": "drop"})
    with pytest.raises(ValueError, match=r"data_checks.box_outside='shrink' is not one of"):
        DataChecks(box_outside="shrink")
