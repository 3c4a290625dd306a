"""Export + Python predictor give the dygraph detections; infer and eval write what they promise.

The tiny model of tests/helpers/engine_tiny.py is trained 2 iterations, then its classification layer is
scaled up (weights x 30, bias 0) so that scores spread over (0, 1): with the near-constant scores of a
fresh RetinaNet (prior 0.01), NMS would pick among near-ties and a 1e-6 difference could swap
boxes. The same weights go to the dygraph ``infer`` and to ``export`` + ``ExportedDetector``.
"""

import json
import os

import numpy as np
import paddle
import pytest
import yaml

from ppdet_ghm import cli
from ppdet_ghm.engine import tasks
from ppdet_ghm.engine.predictor import ExportedDetector
from tests.helpers.engine_tiny import TINY_SPEC, make_tiny

OVERRIDES = {"GHMRetinaHead.postprocessor.score_thr": 0.3}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    config, overrides = make_tiny(root)
    overrides = {**overrides, **OVERRIDES, "epoch": 1}
    tasks.train(config, overrides=overrides, output_dir=str(root / "train"), seed=0, threads=1)
    state = paddle.load(str(root / "train" / "model_final.pdparams"))
    cls_weight = next(k for k in state if "retina_cls" in k and k.endswith("weight"))
    cls_bias = next(k for k in state if "retina_cls" in k and k.endswith("bias"))
    state[cls_weight] = state[cls_weight] * 30.0
    state[cls_bias] = paddle.zeros_like(state[cls_bias])  # scores around 0.5
    paddle.save(state, str(root / "spread.pdparams"))
    images = [str(root / "data" / "val" / f"{i:06d}.jpg") for i in range(TINY_SPEC.num_val)]
    return root, config, overrides, str(root / "spread"), images


@pytest.fixture(scope="module")
def exported(model):
    """The export folder, written once by ``tasks.export`` (returns what it returned)."""
    root, config, overrides, weights, _ = model
    return tasks.export(
        config, weights=weights, overrides=overrides, output_dir=str(root / "exported")
    )


def test_export_writes_the_inference_model(model, exported):
    root = model[0]
    out = exported
    assert out == str(root / "exported")
    files = set(os.listdir(out))
    assert "model.pdiparams" in files and "infer_cfg.yml" in files
    assert files & {"model.json", "model.pdmodel"}
    infer_cfg = yaml.safe_load((root / "exported" / "infer_cfg.yml").read_text())
    assert infer_cfg["label_list"] == ["square", "circle", "triangle", "ring"]
    assert infer_cfg["category_ids"] == [1, 2, 3, 4]
    assert [step["type"] for step in infer_cfg["Preprocess"]] == [
        "Resize",
        "NormalizeImage",
        "Permute",
        "PadStride",
    ]


@pytest.fixture(scope="module")
def dygraph_detections(model):
    root, config, overrides, weights, images = model
    return tasks.infer(
        config,
        images,
        weights=weights,
        overrides=overrides,
        output_dir=str(root / "infer_dygraph"),
        threads=1,
    )


def test_exported_program_has_no_nearest_interp(model, exported):
    """The FPN upsampling is exported as repeat-and-crop: Paddle 3.3.1's oneDNN predictor
    cannot run nearest_interp."""
    root, config, overrides, weights, _ = model
    program = next(p for p in (root / "exported").iterdir() if p.suffix in (".json", ".pdmodel"))
    assert b"nearest_interp" not in program.read_bytes()
    assert b"conv2d" in program.read_bytes()


@pytest.mark.parametrize("use_onednn", [True, False], ids=["onednn", "plain"])
def test_predictor_gives_the_dygraph_detections(model, exported, dygraph_detections, use_onednn):
    root, config, overrides, weights, images = model
    dygraph = dygraph_detections
    detector = ExportedDetector(root / "exported", threads=1, use_onednn=use_onednn)
    total = 0
    for image_id, path in enumerate(images):
        expected = [d for d in dygraph if d["image_id"] == image_id]
        got = detector.predict(path)
        assert len(got) == len(expected) > 0
        total += len(got)
        expected_rows = np.array(
            [
                [
                    d["class_index"],
                    d["score"],
                    d["bbox"][0],
                    d["bbox"][1],
                    d["bbox"][0] + d["bbox"][2],
                    d["bbox"][1] + d["bbox"][3],
                ]
                for d in expected
            ]
        )
        order_got = np.lexsort((-got[:, 1], got[:, 0]))
        order_exp = np.lexsort((-expected_rows[:, 1], expected_rows[:, 0]))
        got, expected_rows = got[order_got], expected_rows[order_exp]
        np.testing.assert_array_equal(got[:, 0], expected_rows[:, 0])
        np.testing.assert_allclose(got[:, 1], expected_rows[:, 1], atol=2e-5)  # JSON: 5 digits
        np.testing.assert_allclose(got[:, 2:], expected_rows[:, 2:], atol=0.01)  # JSON: 2 digits
    assert total >= 4


def test_infer_cli_with_the_exported_model_writes_images_and_json(model, exported, capsys):
    root, config, overrides, weights, images = model
    out = root / "infer_exported"
    status = cli.main(
        [
            "infer",
            "--model_dir",
            str(root / "exported"),
            "--infer_dir",
            str(root / "data" / "val"),
            "--output_dir",
            str(out),
            "--draw_threshold",
            "0.3",
            "--threads",
            "1",
        ]
    )
    assert status == 0
    records = json.loads((out / "detections.json").read_text())
    assert {r["file_name"] for r in records} <= {os.path.basename(p) for p in images}
    assert all(r["score"] >= 0.3 for r in records)
    assert all(r["category_name"] in ("square", "circle", "triangle", "ring") for r in records)
    for path in images:
        assert (out / os.path.basename(path)).is_file()
    assert "detections.json" in capsys.readouterr().out


def test_eval_writes_detections_and_metrics_that_agree(model):
    root, config, overrides, weights, _ = model
    out = root / "eval"
    results = tasks.evaluate(
        config, weights=weights, overrides=overrides, output_dir=str(out), threads=1
    )
    dets = json.loads((out / "bbox.json").read_text())
    assert len(dets) == results.num_detections > 0
    gt = json.loads((root / "data" / "annotations" / "instances_val.json").read_text())
    assert {d["image_id"] for d in dets} <= {im["id"] for im in gt["images"]}
    assert {d["category_id"] for d in dets} <= {1, 2, 3, 4}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stats"] == pytest.approx(results.stats)
    assert list(metrics["per_class_ap"]) == ["square", "circle", "triangle", "ring"]


def test_weights_that_do_not_fit_raise(model, tmp_path):
    root, config, overrides, weights, _ = model
    state = paddle.load(weights + ".pdparams")
    name = next(k for k in state if "retina_reg" in k and k.endswith("weight"))
    state[name] = state[name][:4]
    paddle.save(state, str(tmp_path / "bad.pdparams"))
    with pytest.raises(ValueError, match="shape mismatch"):
        tasks.infer(
            config,
            [],
            weights=str(tmp_path / "bad"),
            overrides=overrides,
            output_dir=str(tmp_path / "out"),
        )
