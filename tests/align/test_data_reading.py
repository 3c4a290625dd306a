"""Data-reading alignment steps 7 (eval reader) and 9 (train reader) against the committed torch logs.

Each Paddle side regenerates the image files, reads them through our reader and must pass every
gating row; the non-gating (INFO) rows are the documented resize-grid difference of the "rounded"
images only. Breaking the port on purpose (nearest-neighbour resize; boxes not flipped with the
image) must make the step FAIL. About 30 s on 2 cores; the ``torch`` test regenerates the torch
logs and compares them with the committed ones.
"""

import os

import numpy as np
import pytest

from align import common, report, step7_eval_data, step9_train_data
from align import data_reading as dr

LOGS = common.DEFAULT_LOGS


def _run(step, tmp_path, side="paddle", logs=LOGS):
    args = step.build_parser().parse_args(
        ["--side", side, "--logs", str(logs), "--out", str(tmp_path / "out")]
        + ["--images", str(tmp_path / "images")]
    )
    return common.run_side(step, args)


def _assert_passes(rows):
    failed = [r for r in rows if r.status == report.STATUS_FAIL]
    assert not failed, report.format_table(failed)
    info = [r for r in rows if r.status == report.STATUS_INFO]
    # only the rounded-grid rows at exact thresholds may be INFO (ppdet's Resize grid)
    assert all(r.quantity.startswith("rounded grid:") and "exact" in r.quantity for r in info), (
        report.format_table(info)
    )
    assert {r.quantity for r in rows if r.status == report.STATUS_PASS} >= {
        "padded shape [3, Hp, Wp]",
        "exact grid: every 37th pixel",
        "padding is zero",
    }


def _failed(rows):
    return {r.quantity for r in rows if r.status == report.STATUS_FAIL}


def test_step7_eval_reader_matches_the_reference(tmp_path):
    rows = _run(step7_eval_data, tmp_path)
    _assert_passes(rows)
    assert len(rows) == 23


def test_step9_train_reader_matches_the_reference(tmp_path):
    rows = _run(step9_train_data, tmp_path)
    _assert_passes(rows)
    crowd = [r for r in rows if r.quantity.startswith("crowd boxes")]
    assert crowd and crowd[0].status == report.STATUS_PASS, crowd
    log = common.load_log(common.log_path(LOGS, step9_train_data.STEP, "torch"))
    # the image without annotations is dropped; the zero-area and 0.8 x 0.6 boxes are not gts
    assert log["flip0.image_ids"].tolist() == [1, 2, 4, 5]
    assert len(log["flip0.exact.a_600x400_png.gt_bboxes"]) == 4
    assert int(log["flip0.exact.a_600x400_png.crowd"][0]) == 1


def test_step7_fails_with_a_nearest_neighbour_resize(tmp_path, monkeypatch):
    import cv2
    from ppdet.data.transform import operators

    def nearest(self, image, scale):
        return cv2.resize(image, None, None, fx=scale[0], fy=scale[1], interpolation=0)

    monkeypatch.setattr(operators.Resize, "apply_image", nearest)
    failed = _failed(_run(step7_eval_data, tmp_path))
    assert {"exact grid: every 37th pixel", "exact grid: row profiles"} <= failed, failed


def test_step9_fails_when_boxes_are_not_flipped(tmp_path, monkeypatch):
    from ppdet.data.transform import operators

    monkeypatch.setattr(operators.RandomFlip, "apply_bbox", lambda self, bbox, width: bbox)
    failed = _failed(_run(step9_train_data, tmp_path))
    assert {"exact grid: gt boxes", "rounded grid: gt boxes"} <= failed, failed
    assert "exact grid: every 37th pixel" not in failed  # the image itself is still flipped


def test_other_image_files_are_refused(tmp_path):
    files = dr.write_eval_images(str(tmp_path))
    paths = [p for p, _ in files]
    log = dr.files_meta(paths)
    dr.check_same_files(log, paths, "log")
    with open(paths[2], "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match=r"other image files .*rgb_1000x300\.png"):
        dr.check_same_files(log, paths, "log")


def test_grid_kinds_and_log_sizes():
    assert [dr.grid_kind(h, w) for _, w, h, _ in dr.EVAL_IMAGES] == ["rounded"] * 3 + ["exact"] * 4
    for step in (step7_eval_data, step9_train_data):
        path = common.log_path(LOGS, step.STEP, "torch")
        assert os.path.getsize(path) < 300_000


@pytest.mark.torch
@pytest.mark.parametrize("step", [step7_eval_data, step9_train_data], ids=lambda s: s.STEP)
def test_torch_logs_regenerate_identically(tmp_path, step):
    pytest.importorskip("mmdet")
    _run(step, tmp_path, side="torch", logs=tmp_path)
    fresh = common.load_log(common.log_path(tmp_path, step.STEP, "torch"))
    committed = common.load_log(common.log_path(LOGS, step.STEP, "torch"))
    assert sorted(fresh) == sorted(committed)
    for key in committed:
        np.testing.assert_array_equal(fresh[key], committed[key], err_msg=key)
