"""Wrong input through the command line: exit status 1 and a message that says what and where.

A config key that does not exist, a bad ``data_checks`` option, a training set with a bad
record, weights that do not fit the model (eval, and resume); no traceback, nothing trained.
"""

import errno
import json
import os

import paddle
import pytest

from ppdet_ghm import cli
from ppdet_ghm.builder import build_model
from tests.helpers.engine_tiny import make_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_errors")
    config, overrides = make_tiny(root)
    return root, config, [f"{k}={v}" for k, v in overrides.items()]


def _run(capsys, argv):
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, err


def _train(tiny, out, *opts):
    root, config, overrides = tiny
    return ["train", "-c", config, "--output_dir", str(root / out), "--threads", "1", "-o"] + [
        *overrides,
        *opts,
    ]


def test_a_config_key_that_does_not_exist(tiny, capsys):
    root, config, _ = tiny
    status, err = _run(capsys, _train(tiny, "key", "GHMRetinaHead.feat_chanels=8"))
    assert status == 1
    assert f"ppdet-ghm train: error: {config}: unknown key(s) ['feat_chanels'] for " in err
    assert "GHMRetinaHead; it takes [" in err and "'feat_channels'" in err
    assert not (root / "key").exists()


def test_a_data_checks_option_that_does_not_exist(tiny, capsys):
    status, err = _run(capsys, _train(tiny, "checks", "data_checks.box_outside=shrink"))
    assert status == 1
    assert "error: data_checks.box_outside='shrink' is not one of ['clip', 'drop', 'error']" in err


def test_a_bad_record_in_the_training_set_names_file_and_record(tiny, capsys):
    root, _, _ = tiny
    data = root / "data"
    coco = json.loads((data / "annotations" / "instances_train.json").read_text())
    coco["annotations"][2]["category_id"] = 42
    bad = data / "annotations" / "bad_train.json"
    bad.write_text(json.dumps(coco))
    ann_id = coco["annotations"][2]["id"]
    image = next(i for i in coco["images"] if i["id"] == coco["annotations"][2]["image_id"])
    argv = _train(tiny, "bad_data", "TrainDataset.anno_path=annotations/bad_train.json")
    status, err = _run(capsys, argv)
    assert status == 1
    assert (
        f"ppdet-ghm train: error: {bad}: annotation id {ann_id} (annotations[2]) of image id "
        f"{image['id']} ({image['file_name']}): category_id 42 is not among the categories "
        "[1, 2, 3, 4]"
    ) in err
    assert not list((root / "bad_data").glob("*.pdparams"))
    # the documented skip: the same set trains with the box dropped and counted
    argv += ["data_checks.unknown_category=drop", "epoch=1"]
    status, _ = _run(capsys, argv)
    assert status == 0
    log = (root / "bad_data" / "train.log").read_text()
    assert "4 of 4 images (0 without boxes)" in log and "; unknown_category 1" in log


def _unfit_weights(tiny, path):
    """The tiny model's state with one key missing and one shape changed."""
    root, config, overrides = tiny
    opts = dict(o.split("=", 1) for o in overrides)
    state = build_model(config, opts).state_dict()
    del state["head.retina_reg.bias"]
    state["head.retina_cls.weight"] = paddle.zeros([9 * 5, 16, 3, 3])  # 5 classes, not 4
    paddle.save(state, str(path))


def test_eval_with_weights_that_do_not_fit_lists_keys_and_shapes(tiny, capsys):
    root, config, overrides = tiny
    _unfit_weights(tiny, root / "unfit.pdparams")
    argv = ["eval", "-c", config, "--weights", str(root / "unfit.pdparams")]
    status, err = _run(capsys, argv + ["--output_dir", str(root / "eval"), "-o", *overrides])
    assert status == 1
    assert (
        f"{root / 'unfit.pdparams'} does not fit the model: 1 missing key(s) "
        "['head.retina_reg.bias'], 1 shape mismatch(es) ['head.retina_cls.weight: file "
        "[45, 16, 3, 3] vs model [36, 16, 3, 3]']"
    ) in err


def test_resume_from_a_checkpoint_that_does_not_fit_is_an_error(tiny, capsys):
    root, _, _ = tiny
    _unfit_weights(tiny, root / "old.pdparams")
    paddle.save({"last_epoch": 1}, str(root / "old.pdopt"))
    status, err = _run(capsys, _train(tiny, "resume") + ["-r", str(root / "old")])
    assert status == 1
    assert (
        f"ppdet-ghm train: error: {root / 'old.pdparams'} does not fit the model: 1 missing "
        "key(s) ['head.retina_reg.bias'], 1 shape mismatch(es)"
    ) in err
    assert not list((root / "resume").glob("*.pdparams"))


def test_a_full_disk_while_saving_is_one_line_and_leaves_no_half_checkpoint(
    tiny, capsys, monkeypatch
):
    """The second epoch's checkpoint fails on its optimizer file (ENOSPC): exit status 1, one
    line naming the file, the error and the last complete checkpoint (epoch 1's)."""
    real_save = paddle.save

    def save(obj, target):
        if os.path.basename(target).startswith(".model_final.pdopt"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, target)

    monkeypatch.setattr(paddle, "save", save)
    root = tiny[0]
    status, err = _run(capsys, _train(tiny, "disk_full"))
    out = root / "disk_full"
    assert status == 1
    assert err.strip() == (
        f"ppdet-ghm train: cannot write checkpoint {out / 'model_final'}: "
        f"{out / 'model_final.pdopt'}: [Errno {errno.ENOSPC}] No space left on device; its files "
        f"were removed; last complete checkpoint: {out / '0'}"
    )
    assert sorted(p.name for p in out.glob("model_final*")) == []
    assert sorted(p.name for p in out.glob("0.*")) == ["0.meta.json", "0.pdopt", "0.pdparams"]
    assert not list(out.glob(".*.tmp"))
