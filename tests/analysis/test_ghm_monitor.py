"""`ppdet-ghm train --ghm_log_interval K` logs each FPN level's GHM bin counts every K iterations."""

import re

from ppdet_ghm import cli
from tests.helpers.engine_tiny import make_tiny


def test_train_logs_per_level_ghm_histograms(tmp_path):
    config, overrides = make_tiny(tmp_path)
    opts = [f"{k}={v}" for k, v in overrides.items()]
    out = tmp_path / "train"
    argv = ["train", "-c", config, "-o", *opts, "epoch=1", "--output_dir", str(out)]
    status = cli.main([*argv, "--threads", "1", "--seed", "0", "--ghm_log_interval", "1"])
    assert status == 0
    log = (out / "train.log").read_text()
    # 4 images, batch 2: 2 iterations, each logged (K = 1) for the 5 levels of both losses.
    for level in ("P3", "P4", "P5", "P6", "P7"):
        for loss in (r"loss_cls \(GHM-C\)", r"loss_bbox \(GHM-R\)"):
            iters = set(re.findall(rf"GHM iter (\d+) head\.{loss} {level}: counts", log))
            assert iters == {"0", "1"}, (loss, level, iters)
