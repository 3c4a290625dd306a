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


# ----------------------------------------------------------------------------- the marks kind

MARKS = DemoDataSpec(kind="marks", seed=5, num_train=10, num_val=4, image_size=128)


@pytest.fixture(scope="module")
def marks_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("marks")
    generate(MARKS, out)
    return out


def test_marks_defaults_come_from_the_kind():
    assert (MARKS.max_size, MARKS.size_mix) == (64, (0.7, 0.3, 0.0))
    assert (DemoDataSpec().max_size, DemoDataSpec().size_mix) == (128, (0.2, 0.5, 0.3))
    assert DemoDataSpec(kind="marks", max_size=96).max_size == 96  # a given value wins
    assert demo_data.KIND_DEFAULTS["marks"] == {"max_size": 64, "size_mix": (0.7, 0.3, 0.0)}


def test_marks_set_has_its_four_categories_and_records_its_kind(marks_set):
    summary = validate(marks_set, MARKS)
    assert summary["train"]["images"] == 10 and summary["val"]["images"] == 4
    coco = json.loads((marks_set / "annotations" / "instances_train.json").read_text())
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [
        (1, "star"),
        (2, "cross"),
        (3, "diamond"),
        (4, "ellipse"),
    ]
    assert {c["name"] for c in coco["categories"]}.isdisjoint(c["name"] for c in CATEGORIES)
    assert coco["info"]["spec"]["kind"] == "marks" and coco["info"]["spec"]["max_size"] == 64
    assert coco["info"]["spec"] == demo_data.spec_record(MARKS)
    assert coco["info"]["description"] == "ppdet-ghm demo marks"
    # the shapes record leaves the kind out, so the demo's files are as they always were
    assert "kind" not in demo_data.spec_record(SMALL)
    # validating against the other kind fails on the categories
    shapes_spec = DemoDataSpec(**{**MARKS.__dict__, "kind": "shapes"})
    with pytest.raises(ValueError, match="not the 'shapes' kind's"):
        validate(marks_set, shapes_spec)


def test_marks_boxes_follow_the_size_mix():
    spec = DemoDataSpec(kind="marks", seed=2, num_train=60, num_val=0)
    sides, categories = [], set()
    for index in range(60):
        for obj in draw_image(spec, "train", index)[1]:
            x, y, w, h = obj.bbox
            assert x >= 0 and y >= 0 and x + w <= 256 and y + h <= 256
            sides.append(max(w, h))
            categories.add(obj.category_id)
    sides = np.asarray(sides)
    assert len(sides) > 150 and categories == {1, 2, 3, 4}
    assert sides.min() >= 8 and sides.max() <= 64  # no large object
    assert np.mean(sides < 32) > 0.6  # 70 % drawn small (rotated shapes only shrink)
    # the drawn sides follow the mix exactly; a 0 share is never drawn
    rng = np.random.default_rng(0)
    drawn = np.asarray([demo_data._object_side(rng, spec) for _ in range(4000)])
    assert drawn.max() <= 64 and np.mean(drawn >= 96) == 0.0
    assert abs(np.mean(drawn < 32) - 0.7) < 0.03


def test_marks_same_seed_same_bytes_and_unlike_shapes(tmp_path, marks_set):
    again = tmp_path / "again"
    generate(MARKS, again)
    assert tree_digest(again) == tree_digest(marks_set)
    other = tmp_path / "other"
    generate(DemoDataSpec(**{**MARKS.__dict__, "seed": 6}), other)
    assert tree_digest(other) != tree_digest(marks_set)
    # same seed and sizes, other kind: other images
    shapes_spec = DemoDataSpec(**{**MARKS.__dict__, "kind": "shapes"})
    a, b = draw_image(MARKS, "train", 0)[0], draw_image(shapes_spec, "train", 0)[0]
    assert np.asarray(a).tobytes() != np.asarray(b).tobytes()


def _tight_box(mask):
    ys, xs = np.nonzero(np.asarray(mask))
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


@pytest.mark.parametrize("category_id", [1, 2, 3, 4])
def test_marks_masks_have_pixel_exact_boxes(category_id):
    for seed in range(6):  # rotations, aspects and orientations vary with the stream
        rng = np.random.default_rng(seed)
        mask = demo_data._shape_mask(64, category_id, 10, 20, 21, rng, kind="marks")
        box = demo_data._mask_bbox(mask)
        assert box == _tight_box(mask)
        x, y, w, h = box  # inside the drawn square
        assert x >= 10 and y >= 20 and x + w <= 31 and y + h <= 41
        if category_id == 2:  # the plus spans the square
            assert box == (10, 20, 21, 21)
        if category_id == 3:  # the diamond spans it along its longer axis
            assert max(w, h) == 21 and min(w, h) < 21
        if category_id == 4:  # an elongated ellipse: it covers well under pi/4 of its square
            assert (np.asarray(mask) > 0).sum() < 0.5 * 21 * 21


def test_marks_objects_boxes_are_their_mask_extent(monkeypatch):
    """Every box draw_image returns is the pixel extent of the mask it drew the object with."""
    drawn = []
    shape_mask = demo_data._shape_mask

    def recording(*args, **kwargs):
        mask = shape_mask(*args, **kwargs)
        drawn.append(mask)
        return mask

    monkeypatch.setattr(demo_data, "_shape_mask", recording)
    spec = DemoDataSpec(kind="marks", seed=1, num_train=8, num_val=0)
    for index in range(8):
        drawn.clear()
        _, objects = draw_image(spec, "train", index)
        extents = [_tight_box(m) for m in drawn if np.asarray(m).any()]
        for obj in objects:
            assert obj.bbox in extents


def test_unknown_kind_raises_naming_the_field_and_the_kinds():
    with pytest.raises(ValueError, match=r"kind='blobs'.*\['shapes', 'marks'\]"):
        DemoDataSpec(kind="blobs")


def test_command_line_generates_the_marks_kind(tmp_path, capsys):
    import argparse

    from ppdet_ghm import cli
    from ppdet_ghm.engine import demo

    out = tmp_path / "marks"
    argv = ["make-demo-data", "--out", str(out), "--kind", "marks", "--num-train", "2"]
    assert cli.main([*argv, "--num-val", "1", "--image-size", "96", "--seed", "5"]) == 0
    coco = json.loads((out / "annotations" / "instances_val.json").read_text())
    assert coco["info"]["spec"]["kind"] == "marks" and coco["info"]["spec"]["max_size"] == 64
    assert coco["categories"][0]["name"] == "star"
    spec = DemoDataSpec(kind="marks", seed=5, num_train=2, num_val=1, image_size=96)
    assert validate(out, spec)["train"]["images"] == 2
    # the demo's options: --data-kind, defaults unchanged
    parser = demo.add_arguments(argparse.ArgumentParser())
    assert parser.parse_args([]).data_kind == "shapes"
    assert parser.parse_args([]).max_size is None  # the kind's default
    assert parser.parse_args(["--data-kind", "marks"]).data_kind == "marks"
    with pytest.raises(SystemExit):
        parser.parse_args(["--data-kind", "blobs"])
    # data already there is recognised as the same set only for the same kind
    assert demo._data_is_current(out, spec)
    assert not demo._data_is_current(out, DemoDataSpec(**{**spec.__dict__, "kind": "shapes"}))
