"""Step 13's run variants: label noise, a pretrained backbone, a perturbed start, saved weights
and the torch-against-torch noise floor, each checked on hand-made inputs."""

import argparse
import json

import numpy as np
import pytest

from align import step13_train, train_data


def _split(counts, labels):
    """A :func:`train_data.load`-like split: ``counts`` boxes per image, box ``i`` = [i, i, i+1,
    i+1]."""
    n = int(sum(counts))
    return {
        "boxes": np.arange(n, dtype=np.float32)[:, None] + np.array([0, 0, 1, 1], np.float32),
        "labels": np.asarray(labels, np.int64),
        "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "digest": np.zeros(32, np.uint8),
        "image_ids": np.arange(len(counts)),
    }


def test_corrupt_annotations_drops_and_relabels_as_drawn():
    counts = [3, 0, 5, 2] * 50
    labels = np.arange(sum(counts)) % train_data.NUM_CLASSES
    split = _split(counts, labels)
    out = train_data.corrupt_annotations(split, wrong_class=0.3, missing=0.2, seed=4)
    # the same draw, by hand
    rng = np.random.default_rng([4, 1701])
    drop = rng.random(len(labels)) < 0.2
    flip = (rng.random(len(labels)) < 0.3) & ~drop
    shift = rng.integers(1, train_data.NUM_CLASSES, len(labels))
    keep = ~drop
    np.testing.assert_array_equal(out["boxes"], split["boxes"][keep])
    np.testing.assert_array_equal(out["labels"], np.where(flip, (labels + shift) % 4, labels)[keep])
    kept_labels, orig = out["labels"], labels[keep]
    assert np.all(kept_labels[flip[keep]] != orig[flip[keep]])  # a wrong class is another class
    assert np.all(kept_labels[~flip[keep]] == orig[~flip[keep]])
    assert out["noise"] == {"dropped": int(drop.sum()), "wrong_class": int(flip.sum()), "of": 500}
    assert 70 < drop.sum() < 130 and 90 < flip.sum() < 150  # 20 % of 500, 30 % of the rest
    # offsets still cut the kept boxes per image: box i belongs to the image it came from
    image_of = np.repeat(np.arange(len(counts)), counts)[keep]
    for img in (0, 2, 3, 198):
        rows = out["boxes"][out["offsets"][img] : out["offsets"][img + 1]]
        np.testing.assert_array_equal(rows, split["boxes"][keep][image_of == img])
    assert not np.array_equal(out["digest"], split["digest"])
    again = train_data.corrupt_annotations(split, 0.3, 0.2, seed=4)
    np.testing.assert_array_equal(again["digest"], out["digest"])
    other = train_data.corrupt_annotations(split, 0.3, 0.21, seed=4)
    assert not np.array_equal(other["digest"], out["digest"])


def test_corrupt_annotations_edges():
    split = _split([2, 1], [0, 3, 1])
    none = train_data.corrupt_annotations(split, 0.0, 0.0)
    np.testing.assert_array_equal(none["labels"], split["labels"])
    np.testing.assert_array_equal(none["offsets"], split["offsets"])
    empty = train_data.corrupt_annotations(_split([0, 0], []), 0.5, 0.5)
    assert empty["boxes"].shape == (0, 4) and list(empty["offsets"]) == [0, 0, 0]
    with pytest.raises(ValueError, match="missing must be in"):
        train_data.corrupt_annotations(split, 0.1, 1.0)
    with pytest.raises(ValueError, match="wrong_class must be in"):
        train_data.corrupt_annotations(split, -0.1, 0.0)


def test_with_backbone_takes_only_the_backbone(tmp_path):
    init = train_data.numpy_init(0)
    trained = {k: v + 1.0 for k, v in train_data.numpy_init(1).items()}
    path = tmp_path / "w.npz"
    np.savez(path, **trained)
    out = train_data.with_backbone(init, str(path))
    assert list(out) == list(init)
    for name, value in out.items():
        expected = trained[name] if name.startswith("backbone.") else init[name]
        np.testing.assert_array_equal(value, expected, err_msg=name)
    del trained["backbone.layer2.0.bn1.running_var"]
    np.savez(path, **trained)
    with pytest.raises(KeyError, match=r"w\.npz: no entry 'backbone\.layer2\.0\.bn1\.running_var'"):
        train_data.with_backbone(init, str(path))
    trained["backbone.layer2.0.bn1.running_var"] = np.ones(3, np.float32)
    np.savez(path, **trained)
    with pytest.raises(ValueError, match=r"has shape \(3,\), the model \(128,\)"):
        train_data.with_backbone(init, str(path))


def test_perturbed_start_is_seeded_and_of_the_given_size():
    init = train_data.numpy_init(0)
    a = train_data.perturbed(init, 1e-3, seed=0)
    np.testing.assert_array_equal(a["neck.fpn_convs.0.conv.weight"],
                                  train_data.perturbed(init, 1e-3, 0)["neck.fpn_convs.0.conv.weight"])  # fmt: skip
    w0, w1 = init["backbone.conv1.weight"], a["backbone.conv1.weight"]
    rel = (w1.astype(np.float64) - w0) / w0
    assert w1.dtype == np.float32
    assert 0.9e-3 < rel.std() < 1.1e-3 and abs(rel.mean()) < 1e-4
    np.testing.assert_array_equal(a["neck.fpn_convs.0.conv.bias"], 0.0)  # zeros stay zero
    b = train_data.perturbed(init, 1e-3, seed=1)
    assert not np.array_equal(a["backbone.conv1.weight"], b["backbone.conv1.weight"])


def test_start_arrays_applies_backbone_then_perturbation(tmp_path):
    init = train_data.numpy_init(0)
    args = argparse.Namespace(backbone_from=None, perturb_init=0.0, seed=0)
    assert train_data.start_arrays(init, args) is init
    trained = train_data.numpy_init(5)
    np.savez(tmp_path / "w.npz", **trained)
    args = argparse.Namespace(backbone_from=str(tmp_path / "w.npz"), perturb_init=1e-2, seed=3)
    out = train_data.start_arrays(init, args)
    expected = train_data.perturbed(train_data.with_backbone(init, args.backbone_from), 1e-2, 3)
    for name in init:
        np.testing.assert_array_equal(out[name], expected[name])


def test_saved_weights_are_the_loaded_arrays(tmp_path):
    """Our model's state under mmdet names reads back what was loaded through the converter."""
    from align import train_paddle
    from align.paddle_ref import load_converted_weights

    arrays = train_data.numpy_init(2)
    model = train_paddle.build_model("focal")
    load_converted_weights(model, arrays)
    path = tmp_path / "w.npz"
    train_paddle.save_weights(model, str(path))
    with np.load(path) as f:
        saved = {k: f[k] for k in f.files}
    assert sorted(saved) == sorted(n for n, _ in train_data.mmdet_r18_spec())
    for name, value in arrays.items():
        np.testing.assert_array_equal(saved[name], value, err_msg=name)
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]  # no temporary left
    # the reference's head (no GroupNorm): conv biases, no gn entries
    plain = train_data.without_head_norm(arrays)
    model = train_paddle.build_model("focal", overrides={"GHMRetinaHead.norm_groups": 0})
    load_converted_weights(model, plain)
    state = train_paddle.mmdet_state(model)
    assert sorted(state) == sorted(plain)
    for name, value in plain.items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)


def test_without_head_norm_keeps_the_conv_draws():
    arrays = train_data.numpy_init(0)
    plain = train_data.without_head_norm(arrays)
    assert not [n for n in plain if ".gn." in n]
    assert len(plain) == len(arrays) - 8 + 4  # 4 GN layers x (weight, bias) out, 4 conv biases in
    names = list(plain)
    for tower in ("cls_convs", "reg_convs"):
        for i in range(2):
            weight = f"bbox_head.{tower}.{i}.conv.weight"
            bias = f"bbox_head.{tower}.{i}.conv.bias"
            assert names.index(bias) == names.index(weight) + 1  # mmdet's state_dict order
            np.testing.assert_array_equal(plain[bias], np.zeros(64, np.float32))
            np.testing.assert_array_equal(plain[weight], arrays[weight])
    args = argparse.Namespace(head_norm="none", backbone_from=None, perturb_init=0.0, seed=0)
    assert list(train_data.start_arrays(arrays, args)) == names


def test_changed_runs_need_a_tag():
    parse = step13_train.build_parser().parse_args
    for flags in (
        ["--wrong-class", "0.1"],
        ["--perturb-init", "1e-7"],
        ["--opt", "A.b=1"],
        ["--head-norm", "none"],
    ):
        with pytest.raises(SystemExit, match="name it with --tag"):
            step13_train.check_tagged(parse(["--side", "paddle", *flags]))
        step13_train.check_tagged(parse(["--side", "paddle", *flags, "--tag", "x"]))
    step13_train.check_tagged(parse(["--side", "paddle"]))


def test_noise_floor_of_two_torch_logs(tmp_path, capsys):
    plain = {k: np.ones(100) for k in ("loss", "loss_cls", "loss_bbox")}
    plain.update(lr=np.full(100, 1e-3), grad_norm=np.ones(100))
    tagged = {k: v.copy() for k, v in plain.items()}
    tagged["loss"][3] *= 1.002  # iteration 3: rel 2e-3, inside the first 10
    tagged["loss_cls"][40:] *= 1.1  # 10 % from iteration 40: the last 50-it. means are 10 % up
    args = step13_train.build_parser().parse_args(
        ["--noise-floor", "--loss", "focal", "--iters", "100", "--out", str(tmp_path)]
        + ["--tag", "perturb", "--data-root", str(tmp_path / "none")]
    )
    name = train_data.run_name("focal", "adamw", 0, 100)
    np.save(tmp_path / f"{name}_torch.npy", plain)
    np.save(tmp_path / f"{name}_perturb_torch.npy", tagged)
    out = step13_train.noise_floor(args)
    assert out["first_iters_max_rel_diff"]["loss"] == pytest.approx(2e-3)
    assert out["first_iters_max_rel_diff"]["loss_cls"] == 0.0
    assert out["smoothed_max_rel_diff"]["loss_cls"] == pytest.approx(0.1)
    assert out["smoothed_max_rel_diff"]["loss_bbox"] == 0.0
    assert out["coco"] == {}  # no detection files
    # second half (iterations 50-99): 10 of 50 at +10 % ... all 50 at +10 %: here 1.1 - 1
    assert out["second_half_shift"]["loss_cls"] == pytest.approx(0.1)
    assert out["second_half_shift"]["loss"] == 0.0  # the iteration-3 change is in the first half
    saved = json.loads((tmp_path / f"{name}_perturb_torch_noise_floor.json").read_text())
    assert saved["smoothed_max_rel_diff"]["loss_cls"] == pytest.approx(0.1)
    printed = capsys.readouterr().out
    assert "loss_cls: first 10 it. 0.00e+00, smoothed 1.00e-01, second half +10.0 %" in printed
    # our side: the same comparison of two Paddle logs
    np.save(tmp_path / f"{name}_paddle.npy", plain)
    np.save(tmp_path / f"{name}_perturb_paddle.npy", tagged)
    args.floor_side = "paddle"
    assert step13_train.noise_floor(args)["second_half_shift"]["loss_cls"] == pytest.approx(0.1)
    assert (tmp_path / f"{name}_perturb_paddle_noise_floor.json").is_file()


def test_second_half_shift_is_signed():
    assert step13_train.second_half_shift([9.0, 9.0, 1.0, 3.0], [0.0, 0.0, 2.0, 2.0]) == 0.0
    assert step13_train.second_half_shift([1, 1, 1.9, 1.9], [1, 1, 2, 2]) == pytest.approx(-0.05)


def test_ap_of_one_side_with_the_median_scores(tmp_path, capsys):
    """``--ap``: COCO AP of one side's detections and the median scores of true / false ones."""
    root = tmp_path / "data"
    ann_dir = root / train_data.DataArgs().tag() / "coco" / "annotations"
    ann_dir.mkdir(parents=True)
    gt = {
        "images": [{"id": 1, "width": 64, "height": 64}, {"id": 2, "width": 64, "height": 64}],
        "categories": [{"id": c} for c in (1, 2, 3, 4)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "area": 400,
             "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [10, 10, 30, 30], "area": 900,
             "iscrowd": 0},
        ],
    }  # fmt: skip
    (ann_dir / "instances_val.json").write_text(json.dumps(gt))
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.9},  # true
        {"image_id": 1, "category_id": 2, "bbox": [0, 0, 20, 20], "score": 0.3},  # wrong class
        {"image_id": 2, "category_id": 2, "bbox": [40, 40, 10, 10], "score": 0.5},  # misplaced
        {"image_id": 2, "category_id": 2, "bbox": [10, 10, 30, 30], "score": 0.7},  # true
    ]
    out = tmp_path / "out"
    out.mkdir()
    name = train_data.run_name("ghm", "adamw", 0, 600)
    (out / f"{name}_x_paddle_dets.json").write_text(json.dumps(dets))
    argv = ["--ap", "paddle", "--out", str(out), "--data-root", str(root), "--tag", "x"]
    assert step13_train.main(argv) == 0
    line = capsys.readouterr().out.strip()
    # class 1: its one gt found first, AP 1; class 2: the true box (0.7) ranks above the
    # misplaced one (0.5), the wrong-class box is on another image without a class-2 gt: AP 1
    assert line.startswith(f"{name}_x (paddle): AP 100.0, AP50 100.0, AP75 100.0")
    assert line.endswith("median score of true/false detections 0.800/0.400")
