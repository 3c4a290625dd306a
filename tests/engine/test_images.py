"""Unreadable images are found before ppdet's reader: ``tasks.readable_images`` (infer) and
``tasks.readable_eval_set`` (eval on a COCO set with a broken val image)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image

from ppdet_ghm.builder import build_model
from ppdet_ghm.engine import tasks
from tests.helpers.engine_tiny import make_tiny


@pytest.fixture
def folder(tmp_path):
    Image.fromarray(np.full((8, 6), 128, np.uint8), "L").save(tmp_path / "gray.png")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "one.jpg")
    Image.fromarray(np.zeros((5, 7, 4), np.uint8), "RGBA").save(tmp_path / "alpha.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF")  # 10-byte header only
    return tmp_path


def test_skip_reports_and_leaves_out_the_unreadable(folder, caplog):
    images = tasks.find_images(folder)
    with caplog.at_level("WARNING", logger="ppdet_ghm.engine.tasks"):
        good, bad = tasks.readable_images(images, "skip")
    assert [p.rsplit("/", 1)[1] for p in good] == ["alpha.png", "gray.png", "one.jpg"]
    assert [p.rsplit("/", 1)[1] for p in bad] == ["broken.jpg", "empty.png"]
    assert "empty.png: unreadable image (empty file), skipped" in caplog.text
    assert "broken.jpg: unreadable image (not a decodable image), skipped" in caplog.text


def test_error_names_the_first_unreadable_file(folder):
    with pytest.raises(ValueError, match=r"broken\.jpg: unreadable image"):
        tasks.readable_images(tasks.find_images(folder), "error")


def test_nothing_readable_and_unknown_policy(folder):
    with pytest.raises(ValueError, match="none of the 2 image"):
        tasks.readable_images([str(folder / "empty.png"), str(folder / "broken.jpg")])
    with pytest.raises(ValueError, match="bad_image must be one of"):
        tasks.readable_images([str(folder / "gray.png")], "ignore")


@pytest.fixture(scope="module")
def tiny_eval(tmp_path_factory):
    """The tiny set with val image 000001.jpg emptied, and the tiny model's initial weights."""
    root = tmp_path_factory.mktemp("eval_bad_image")
    config, overrides = make_tiny(root)
    paddle.seed(0)
    paddle.save(build_model(config, overrides).state_dict(), str(root / "w.pdparams"))
    (root / "data" / "val" / "000001.jpg").write_bytes(b"")
    opts = [f"{k}={v}" for k, v in overrides.items()]
    return root, config, opts


def _eval(tiny_eval, policy, workers, out):
    """``ppdet-ghm eval`` in a subprocess: before the check, ppdet's reader raised in its loader
    thread (worker_num 0) and the run waited forever."""
    root, config, opts = tiny_eval
    command = [sys.executable, "-m", "ppdet_ghm", "eval", "-c", config, "--threads", "1"]
    command += ["--weights", str(root / "w"), "--output_dir", str(root / out)]
    command += ["--bad_image", policy, "-o", *opts, f"worker_num={workers}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOG_minloglevel="2")
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("workers", [0, 1])
def test_eval_stops_naming_an_unreadable_val_image_by_default(tiny_eval, workers):
    proc = _eval(tiny_eval, "error", workers, f"err{workers}")
    bad = tiny_eval[0] / "data" / "val" / "000001.jpg"
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"ppdet-ghm eval: error: {bad}: unreadable image (empty file); --bad_image skip leaves it out"
    )


def test_eval_skip_leaves_the_image_out_of_loader_and_metric(tiny_eval):
    root = tiny_eval[0]
    proc = _eval(tiny_eval, "skip", 1, "skip")
    assert proc.returncode == 0, proc.stderr[-2000:]
    bad = str(root / "data" / "val" / "000001.jpg")
    metrics = json.loads((root / "skip" / "metrics.json").read_text())
    assert metrics["skipped_images"] == [bad]
    gt = json.loads(Path(metrics["ground_truth"]).read_text())
    full = json.loads((root / "data" / "annotations" / "instances_val.json").read_text())
    bad_id = next(i["id"] for i in full["images"] if i["file_name"] == "000001.jpg")
    assert [i["id"] for i in gt["images"]] == [i["id"] for i in full["images"] if i["id"] != bad_id]
    assert [a["id"] for a in gt["annotations"]] == [
        a["id"] for a in full["annotations"] if a["image_id"] != bad_id
    ]
    log = (root / "skip" / "eval.log").read_text()
    assert "Total sample number: 1," in log  # ppdet's loader read the readable image only
    assert f"{bad}: unreadable image (empty file), skipped" in proc.stderr
