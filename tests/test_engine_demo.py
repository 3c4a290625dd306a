"""``ppdet-ghm demo`` end to end on the tiny config: data, train, eval, picture, summary."""

import json
import logging
import os

from engine_tiny import make_tiny
from PIL import Image

from ppdet_ghm import cli
from ppdet_ghm.engine.trainer import restore_ppdet_console


def test_demo_runs_every_step_and_says_where_everything_went(tmp_path, capsys):
    config, _ = make_tiny(tmp_path)
    data_dir, out_dir = tmp_path / "demo_data", tmp_path / "demo_output"
    argv = [
        "demo", "-c", config, "-o", "epoch=1", "GHMRetinaHead.postprocessor.score_thr=0.001", "--data-dir", str(data_dir),
        "--output-dir", str(out_dir), "--num-train", "4", "--num-val", "2",
        "--image-size", "64", "--max-size", "32", "--threads", "1", "--num-pictures", "2",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    for text in (
        "[1/4] data: generating",
        "[2/4] train",
        "[3/4] evaluate",
        "[4/4] draw",
        "Average Precision",
        "per-class AP",
        "where everything went",
        "time:",
    ):
        assert text in printed, text
    out = out_dir / "tiny"
    record = json.loads((out / "results.json").read_text())
    assert set(record["stats"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    for key in ("checkpoint", "train_log", "detections_json", "metrics", "picture"):
        assert os.path.isfile(record["paths"][key]), key
        assert record["paths"][key] in printed
    with Image.open(out / "detections.png") as picture:
        assert picture.size == (2 * 64 + 3 * 4, 64 + 2 * 4)  # 2 images of 64 px, 4 px gaps
    # a second run finds the data set in place and does not regenerate it
    assert cli.main(argv) == 0
    assert "[1/4] data: " + str(data_dir) + " is there already" in capsys.readouterr().out


def test_restore_ppdet_console_repoints_stringio_handlers():
    import io
    import sys

    logger = logging.getLogger("ppdet.test_console_dummy")
    handler = logging.StreamHandler(io.StringIO())
    logger.addHandler(handler)
    try:
        assert restore_ppdet_console() >= 1
        assert handler.stream is sys.stdout
    finally:
        logger.removeHandler(handler)
