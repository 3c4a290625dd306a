"""The ``ppdet-ghm`` command line: argument parsing, overrides, sub-commands end to end (tiny)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from ppdet_ghm import cli
from tests.helpers.engine_tiny import REPO, make_tiny


def test_overrides_are_yaml_values_with_dotted_keys_and_ppdet_tags():
    from ppdet.optimizer.optimizer import PiecewiseDecay

    got = cli.parse_overrides(
        [
            "epoch=3",
            "TrainReader.batch_size=4",
            "weights=output/x/model_final",
            "LearningRate.base_lr=1e-3",
            "use_gpu=false",
            "GHMRetinaHead.anchor_generator.ratios=[0.5, 1.0]",
            "LearningRate.schedulers=[!PiecewiseDecay {milestones: [2]}]",
        ]
    )
    assert got["epoch"] == 3 and got["TrainReader.batch_size"] == 4
    assert got["weights"] == "output/x/model_final"
    assert got["LearningRate.base_lr"] == pytest.approx(1e-3) and got["use_gpu"] is False
    assert got["GHMRetinaHead.anchor_generator.ratios"] == [0.5, 1.0]
    (sched,) = got["LearningRate.schedulers"]
    assert isinstance(sched, PiecewiseDecay) and sched.milestones == [2]


@pytest.mark.parametrize("item", ["epoch", "=3", ""])
def test_malformed_overrides_raise(item):
    with pytest.raises(ValueError, match="KEY=VALUE"):
        cli.parse_overrides([item])


def test_parser_knows_the_subcommands_and_ppdet_flags():
    parser = cli.build_parser()
    args = parser.parse_args(
        [
            "train",
            "-c",
            "a.yml",
            "-o",
            "epoch=1",
            "x=2",
            "-o",
            "y=3",
            "--eval",
            "-r",
            "out/3",
            "--use_vdl",
            "--output_dir",
            "out",
        ]
    )
    assert (args.command, args.config, args.opt) == ("train", "a.yml", ["epoch=1", "x=2", "y=3"])
    assert args.eval and args.resume == "out/3" and args.use_vdl and args.output_dir == "out"
    args = parser.parse_args(["infer", "--model_dir", "m", "--infer_img", "a.jpg"])
    assert args.model_dir == "m" and args.infer_img == "a.jpg" and args.draw_threshold == 0.5
    args = parser.parse_args(["convert", "a.pth", "b.pdparams", "--backbone-only"])
    assert (args.src, args.dst, args.backbone_only) == ("a.pth", "b.pdparams", True)
    args = parser.parse_args(["check-weights", "a.pdparams"])
    assert (args.src, args.dst) == ("a.pdparams", None)
    for command in ("eval", "export", "make-demo-data", "demo"):
        assert parser.parse_args([command] + (["-c", "a.yml"] if command == "export" else []))
    with pytest.raises(SystemExit):
        parser.parse_args(["infer", "--model_dir", "m"])  # an image or a folder is required


@pytest.mark.parametrize(
    ("command", "option"),
    [
        ("train", "--resume"),
        ("eval", "--bad_image"),
        ("infer", "--infer_dir"),
        ("export", "--weights"),
        ("convert", "--backbone-only"),
        ("check-weights", "dst"),
        ("make-demo-data", "--kind"),
        ("demo", "--compare"),
        ("plot-gradients", "--images"),
    ],
)
def test_every_sub_command_has_its_own_help(command, option, capsys):
    """One way to wire a sub-command: its arguments are the parser's, so -h shows them."""
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args([command, "-h"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: ppdet-ghm {command}") and option in out


def test_convert_rejects_a_destination_that_is_not_pdparams(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["convert", "a.pth", str(tmp_path / "out.bin")])
    assert exit_.value.code == 2
    assert "DST must end with .pdparams" in capsys.readouterr().err


def test_convert_delegates_to_the_converter(tmp_path, capsys):
    missing = tmp_path / "missing.pth"
    status = cli.main(["convert", str(missing), str(tmp_path / "out.pdparams")])
    assert status == 1
    assert "missing.pth" in capsys.readouterr().err
    assert not (tmp_path / "out.pdparams").exists()


def test_make_demo_data(tmp_path, capsys):
    out = tmp_path / "d"
    status = cli.main(
        [
            "make-demo-data",
            "--out",
            str(out),
            "--num-train",
            "3",
            "--num-val",
            "2",
            "--image-size",
            "64",
            "--max-size",
            "32",
            "--seed",
            "7",
        ]
    )
    assert status == 0
    assert sorted(os.listdir(out / "train")) == ["000000.jpg", "000001.jpg", "000002.jpg"]
    coco = json.loads((out / "annotations" / "instances_val.json").read_text())
    assert len(coco["images"]) == 2 and coco["info"]["spec"]["seed"] == 7
    assert "train: 3 images" in capsys.readouterr().out


def test_train_eval_infer_export_through_the_cli(tmp_path, capsys):
    config, overrides = make_tiny(tmp_path)
    opts = [f"{k}={v}" for k, v in overrides.items()]
    train_dir = tmp_path / "train"
    status = cli.main(
        [
            "train",
            "-c",
            config,
            "-o",
            *opts,
            "epoch=1",
            "--output_dir",
            str(train_dir),
            "--use_vdl",
            "--threads",
            "1",
            "--seed",
            "0",
        ]
    )
    assert status == 0
    assert (train_dir / "model_final.pdparams").is_file()
    log = (train_dir / "train.log").read_text()
    assert "Epoch: [0] [0/2]" in log and "Epoch: [0] [1/2]" in log
    vdl_files = os.listdir(train_dir / "vdl")
    assert any(name.startswith("vdlrecords") for name in vdl_files)

    weights = str(train_dir / "model_final")
    eval_dir = tmp_path / "eval"
    status = cli.main(
        ["eval", "-c", config, "-o", *opts, "--weights", weights, "--output_dir", str(eval_dir)]
    )
    assert status == 0
    assert (eval_dir / "bbox.json").is_file() and (eval_dir / "metrics.json").is_file()
    printed = capsys.readouterr().out
    assert "per-class AP" in printed and "triangle" in printed

    # a folder with one good image, an empty file and a broken JPEG: the broken ones are
    # reported and skipped (ppdet's loader would fail on them inside a worker)
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(tmp_path / "data" / "val" / "000001.jpg", images / "000001.jpg")
    (images / "empty.png").write_bytes(b"")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    infer_dir = tmp_path / "infer"
    infer = ["infer", "-c", config, "-o", *opts, "--weights", weights, "--infer_dir", str(images)]
    capsys.readouterr()
    status = cli.main([*infer, "--output_dir", str(infer_dir)])
    assert status == 0
    assert "1 image(s), 2 unreadable skipped" in capsys.readouterr().out
    assert sorted(os.listdir(infer_dir)) == ["000001.jpg", "detections.json"]
    records = json.loads((infer_dir / "detections.json").read_text())
    assert {r["file_name"] for r in records} <= {"000001.jpg"}
    status = cli.main([*infer, "--output_dir", str(tmp_path / "infer2"), "--bad_image", "error"])
    assert status == 1
    assert "broken.jpg: unreadable image (not a decodable image)" in capsys.readouterr().err


def test_missing_weights_is_an_error_not_a_traceback(tmp_path, capsys):
    config, overrides = make_tiny(tmp_path)
    opts = [f"{k}={v}" for k, v in overrides.items()]
    status = cli.main(["eval", "-c", config, "-o", *opts, "--weights", str(tmp_path / "nope")])
    assert status == 1
    assert "weights file not found" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "ppdet_ghm", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    commands = ("train", "eval", "infer", "export", "convert", "check-weights", "make-demo-data")
    for command in (*commands, "demo"):
        assert command in result.stdout
