"""``ppdet-ghm demo`` end to end on the tiny config: data, train, eval, picture, summary."""

import json
import os

from PIL import Image

from ppdet_ghm import cli
from tests.helpers.engine_tiny import make_tiny


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


def test_comparison_table_has_one_row_per_config_in_percent():
    from ppdet_ghm.engine.demo import format_comparison

    record = {
        "config_name": "demo",
        "losses": "GHMCLoss + GHMRLoss",
        "stats": {"AP": 0.4012, "AP50": 0.7, "AP75": 0.41, "APs": 0.2, "APm": 0.5, "APl": 0.6},
        "timings_s": {"train": 450.0},
    }
    table = format_comparison([record, {**record, "config_name": "demo_focal"}]).splitlines()
    assert table[0] == "| config | loss | AP | AP50 | AP75 | APs | APm | APl | train time |"
    assert table[2] == (
        "| `demo` | GHMCLoss + GHMRLoss | 40.1 | 70.0 | 41.0 | 20.0 | 50.0 | 60.0 | 7.5 min |"
    )
    assert len(table) == 4 and table[3].startswith("| `demo_focal` |")


def test_demo_and_focal_configs_differ_only_in_the_losses():
    from ppdet_ghm.builder import load_config, resolved_config
    from ppdet_ghm.engine.demo import default_config

    def flat(config):
        resolved = resolved_config(load_config(config))
        head = resolved["architecture"]["head"]
        losses = {k: head.pop(k) for k in ("loss_cls", "loss_bbox")}
        keep = {
            k: v
            for k, v in resolved.items()
            if k in ("epoch", "LearningRate", "OptimizerBuilder", "TrainReader", "EvalReader",
                     "architecture", "worker_num", "snapshot_epoch")
        }  # fmt: skip
        return keep, losses

    ghm, ghm_losses = flat(default_config("demo.yml"))
    focal, focal_losses = flat(default_config("demo_focal.yml"))
    assert ghm == focal
    assert ghm_losses["loss_cls"]["name"] == "GHMCLoss"
    assert ghm_losses["loss_bbox"] == {
        "name": "GHMRLoss", "mu": 0.02, "bins": 10, "momentum": 0.7, "loss_weight": 10.0,
        "sync_stats": False,
    }  # fmt: skip
    assert focal_losses == {
        "loss_cls": {"name": "SigmoidFocalLoss", "gamma": 2.0, "alpha": 0.25, "loss_weight": 1.0},
        "loss_bbox": {"name": "BetaSmoothL1Loss", "beta": 0.11, "loss_weight": 1.0},
    }
