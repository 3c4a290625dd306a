"""The demo data generator: counts, boxes, sizes, determinism, validation."""

import json

import numpy as np
import pytest
from PIL import Image

from ppdet_ghm.data import demo_data
from ppdet_ghm.data.demo_data import (
    CATEGORIES,
    DemoDataSpec,
    draw_image,
    generate,
    tree_digest,
    validate,
)

SMALL = DemoDataSpec(
    seed=3, num_train=12, num_val=6, image_size=96, min_size=8, max_size=40, empty_ratio=0.25
)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    generate(SMALL, out)
    return out


def test_counts_layout_and_categories(small_set):
    summary = validate(small_set, SMALL)
    assert summary["train"]["images"] == 12 and summary["val"]["images"] == 6
    for split, num in (("train", 12), ("val", 6)):
        coco = json.loads((small_set / "annotations" / f"instances_{split}.json").read_text())
        assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4]
        assert [c["name"] for c in coco["categories"]] == [c["name"] for c in CATEGORIES]
        assert [im["id"] for im in coco["images"]] == list(range(1, num + 1))
        assert sorted(p.name for p in (small_set / split).iterdir()) == [
            f"{i:06d}.jpg" for i in range(num)
        ]
        ann_ids = [a["id"] for a in coco["annotations"]]
        assert ann_ids == list(range(1, len(ann_ids) + 1))
        for im in coco["images"]:
            with Image.open(small_set / split / im["file_name"]) as image:
                assert image.size == (96, 96) and image.mode == "RGB"


def test_boxes_inside_images_sizes_in_range_area_is_w_times_h(small_set):
    coco = json.loads((small_set / "annotations" / "instances_train.json").read_text())
    assert len(coco["annotations"]) > 12  # several objects per image on average
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        assert all(isinstance(v, int) for v in ann["bbox"])
        assert x >= 0 and y >= 0 and x + w <= 96 and y + h <= 96
        assert 8 <= max(w, h) <= 40
        assert ann["area"] == w * h and ann["iscrowd"] == 0
        assert ann["category_id"] in (1, 2, 3, 4)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, small_set):
    again = tmp_path / "again"
    generate(SMALL, again)
    assert tree_digest(again) == tree_digest(small_set)
    other = tmp_path / "other"
    generate(DemoDataSpec(**{**SMALL.__dict__, "seed": 4}), other)
    assert tree_digest(other) != tree_digest(small_set)


def test_an_image_depends_on_its_index_not_on_the_set_size():
    bigger = DemoDataSpec(**{**SMALL.__dict__, "num_train": 40})
    for index in (0, 5, 11):
        a, objects_a = draw_image(SMALL, "train", index)
        b, objects_b = draw_image(bigger, "train", index)
        assert objects_a == objects_b
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the splits draw from different streams
    assert (
        np.asarray(draw_image(SMALL, "val", 0)[0]).tobytes()
        != np.asarray(draw_image(SMALL, "train", 0)[0]).tobytes()
    )


@pytest.mark.parametrize(
    ("category_id", "expected"),
    [(1, (10, 20, 17, 17)), (2, (10, 20, 17, 17)), (4, (10, 20, 17, 17))],
)
def test_shape_masks_have_pixel_exact_boxes(category_id, expected):
    rng = np.random.default_rng(0)
    mask = demo_data._shape_mask(64, category_id, 10, 20, 17, rng)
    assert demo_data._mask_bbox(mask) == expected
    pixels = np.asarray(mask) > 0
    # a filled square covers its whole box, a disc about pi/4 of it, a ring less
    fill = pixels.sum() / (17 * 17)
    assert {1: fill == 1.0, 2: 0.7 < fill < 0.85, 4: 0.2 < fill < 0.7}[category_id]


def test_triangle_box_spans_the_drawn_square():
    for seed in range(4):  # the four orientations come up within a few seeds
        rng = np.random.default_rng(seed)
        box = demo_data._mask_bbox(demo_data._shape_mask(64, 3, 5, 7, 21, rng))
        assert box[:2] == (5, 7) and max(box[2], box[3]) == 21


def test_objects_do_not_overlap_more_than_allowed():
    spec = DemoDataSpec(seed=0, num_train=30, num_val=0, image_size=96, max_size=60)
    for index in range(30):
        _, objects = draw_image(spec, "train", index)
        for i, a in enumerate(objects):
            for b in objects[:i]:  # a was drawn after b
                inter = demo_data._intersection(a.bbox, b.bbox)
                union = a.bbox[2] * a.bbox[3] + b.bbox[2] * b.bbox[3] - inter
                assert inter <= spec.max_iou * union
                assert inter <= 0.5 * b.bbox[2] * b.bbox[3]


def test_empty_ratio_is_respected_on_average():
    spec = DemoDataSpec(seed=1, num_train=200, num_val=0, image_size=64, max_size=32)
    empty = sum(not draw_image(spec, "train", i)[1] for i in range(200))
    # binomial(200, 0.1): mean 20, std 4.2
    assert 8 <= empty <= 32


def test_validate_names_a_box_outside_the_image(tmp_path):
    generate(SMALL, tmp_path)
    path = tmp_path / "annotations" / "instances_val.json"
    coco = json.loads(path.read_text())
    coco["annotations"][0]["bbox"] = [90, 0, 10, 10]
    path.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"annotation 1 .*not inside 96x96"):
        validate(tmp_path, SMALL)


def test_validate_names_a_missing_image(tmp_path):
    generate(SMALL, tmp_path)
    (tmp_path / "train" / "000003.jpg").unlink()
    with pytest.raises(ValueError, match="000003.jpg is missing"):
        validate(tmp_path, SMALL)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_format": "gif"}, "image_format"),
        ({"min_size": 50, "max_size": 40}, "min_size"),
        ({"max_size": 300}, "does not fit"),
        ({"empty_ratio": 1.5}, "empty_ratio"),
        ({"max_objects": 0}, "max_objects"),
        ({"size_mix": (0.0, 0.0, 0.0)}, "size_mix"),
    ],
)
def test_bad_specs_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DemoDataSpec(**kwargs)


def test_png_output_is_lossless(tmp_path):
    spec = DemoDataSpec(**{**SMALL.__dict__, "num_train": 2, "num_val": 1, "image_format": "png"})
    generate(spec, tmp_path)
    expected, _ = draw_image(spec, "train", 1)
    with Image.open(tmp_path / "train" / "000001.png") as image:
        np.testing.assert_array_equal(np.asarray(image), np.asarray(expected))


def test_size_mix_follows_cocos_ranges():
    spec = DemoDataSpec()
    rng = np.random.default_rng(0)
    sides = np.asarray([demo_data._object_side(rng, spec) for _ in range(5000)])
    assert sides.min() >= 8 and sides.max() <= 128
    shares = [np.mean(sides < 32), np.mean((sides >= 32) & (sides < 96)), np.mean(sides >= 96)]
    np.testing.assert_allclose(shares, [0.2, 0.5, 0.3], atol=0.03)  # binomial std < 0.007
    # log-uniform inside a range: as many small sides in 8-16 as in 16-32
    small = sides[sides < 32]
    assert abs(np.mean(small < 16) - 0.5) < 0.05


def test_size_mix_drops_ranges_outside_min_max():
    spec = DemoDataSpec(seed=0, num_train=1, num_val=0, min_size=40, max_size=60, image_size=96)
    rng = np.random.default_rng(0)
    sides = [demo_data._object_side(rng, spec) for _ in range(200)]
    assert min(sides) >= 40 and max(sides) <= 60
