"""export --onnx, ONNX Runtime inference and evaluation against the Paddle predictor.

The tiny model of tests/helpers/engine_tiny.py (trained 2 iterations, classification weights x 8
and bias 0, so that scores spread over 0.8-0.99; test_export.py's x 30 saturates many scores to
exactly 1.0 in float32, where NMS picks among ties by order) on 6 val images is exported once with
``onnx=True``; ONNX Runtime and the Paddle predictor (oneDNN on, as shipped) then run the same
images. Their detections must agree as ``ppdet_ghm.engine.backend_agreement`` requires (same count
per image, IoU >= 0.999, scores within 1e-4), and their COCO AP on a ground truth made of the
predictor's confident boxes (AP far from 0, so that equal APs say something) within 1e-4.
"""

import json
import os
import shutil
import sys

import numpy as np
import onnx
import onnxruntime as ort
import paddle
import pytest
from onnx import TensorProto, helper, numpy_helper

from ppdet_ghm import cli
from ppdet_ghm.data.demo_data import generate
from ppdet_ghm.engine import backend_agreement, onnx_export, tasks
from ppdet_ghm.engine.onnx_predictor import OnnxDetector, check_onnx_model
from ppdet_ghm.engine.predictor import ExportedDetector
from tests.helpers.engine_tiny import TINY_CONFIG, TINY_SPEC

NUM_VAL = 6
OVERRIDES = {"GHMRetinaHead.postprocessor.score_thr": 0.3}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    data = root / "data"
    spec = TINY_SPEC.__class__(**{**TINY_SPEC.__dict__, "num_val": NUM_VAL})
    generate(spec, data)
    config = root / "tiny.yml"
    config.write_text(TINY_CONFIG)
    overrides = {f"{split}.dataset_dir": str(data) for split in ("TrainDataset", "EvalDataset")}
    overrides |= {"TestDataset.dataset_dir": str(data), **OVERRIDES, "epoch": 1}
    tasks.train(str(config), overrides=overrides, output_dir=str(root / "train"), seed=0, threads=1)
    state = paddle.load(str(root / "train" / "model_final.pdparams"))
    cls_weight = next(k for k in state if "retina_cls" in k and k.endswith("weight"))
    cls_bias = next(k for k in state if "retina_cls" in k and k.endswith("bias"))
    state[cls_weight] = state[cls_weight] * 8.0
    state[cls_bias] = paddle.zeros_like(state[cls_bias])
    paddle.save(state, str(root / "spread.pdparams"))
    images = [str(data / "val" / f"{i:06d}.jpg") for i in range(NUM_VAL)]
    return root, str(config), overrides, str(root / "spread"), images


@pytest.fixture(scope="module")
def exported(model):
    root, config, overrides, weights, _ = model
    return tasks.export(
        config, weights=weights, overrides=overrides, output_dir=str(root / "exported"), onnx=True
    )


@pytest.fixture(scope="module")
def detectors(exported):
    return (
        ExportedDetector(exported, threads=1),
        OnnxDetector(os.path.join(exported, "model.onnx"), threads=1),
    )


def test_export_writes_onnx_with_the_nms_limit_and_our_metadata(exported):
    model = onnx.load(os.path.join(exported, "model.onnx"))
    assert onnx_export.default_opset(model) == onnx_export.OPSET == 17
    meta = onnx_export.onnx_metadata(model)
    assert meta[onnx_export.META_FORMAT] == onnx_export.FORMAT_VERSION
    assert meta[onnx_export.META_PARAMS_SHA256] == onnx_export.file_sha256(
        os.path.join(exported, "model.pdiparams")
    )
    with open(os.path.join(exported, "infer_cfg.yml")) as f:
        assert meta[onnx_export.META_INFER_CFG] == f.read()
    # paddle2onnx writes multiclass_nms3's nms_top_k=-1 as max_output_boxes_per_class=-1
    (nms,) = [n for n in model.graph.node if n.op_type == "NonMaxSuppression"]
    limit = next(t for t in model.graph.initializer if t.name == nms.input[2])
    assert numpy_helper.to_array(limit).tolist() == [onnx_export.NMS_ALL_BOXES]
    # the group norms' epsilon (paddle2onnx leaves whatever was in memory)
    norms = [n for n in model.graph.node if n.op_type == "InstanceNormalization"]
    assert len(norms) == 10  # 5 FPN levels x 2 head towers of 1 conv + GroupNorm
    for node in norms:
        (eps,) = [helper.get_attribute_value(a) for a in node.attribute if a.name == "epsilon"]
        assert eps == pytest.approx(1e-5, rel=1e-6)
    # the program it was converted from has no op that paddle2onnx refuses
    program = os.path.join(exported, "model.json")
    assert b"full_batch_size_like" not in open(program, "rb").read()


def test_onnx_runtime_gives_the_predictor_detections(model, detectors):
    images = model[4]
    paddle_side, onnx_side = detectors
    total = backend_agreement.Agreement()
    for path in images:
        first, second = paddle_side.predict(path), onnx_side.predict(path)
        assert len(first) == len(second), path
        np.testing.assert_array_equal(np.sort(first[:, 0]), np.sort(second[:, 0]))
        total.add(backend_agreement.match_detections(first, second))
    assert total.images == NUM_VAL and total.detections >= 10
    assert total.ok, total
    assert total.min_iou >= 0.999 and total.max_score_diff <= 1e-4


def _pseudo_ground_truth(path, detector, images):
    """A COCO file whose boxes are ``detector``'s 2nd, 4th, ... 20th best detections of each
    image: an AP between 0 and 1 that depends on how all detections interleave by score."""
    gt = {"images": [], "annotations": [], "categories": []}
    gt["categories"] = [
        {"id": int(c), "name": n}
        for c, n in zip(detector.category_ids, detector.label_list, strict=True)
    ]
    for image_id, image in enumerate(images):
        gt["images"].append(
            {"id": image_id, "file_name": os.path.basename(image), "height": 64, "width": 64}
        )
        for cls, _, x1, y1, x2, y2 in detector.predict(image)[1:20:2].tolist():
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": int(detector.category_ids[int(cls)]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    path.write_text(json.dumps(gt))
    return str(path), len(gt["annotations"])


def test_coco_ap_is_the_same_both_ways(model, detectors, tmp_path):
    root, images = model[0], model[4]
    paddle_side, onnx_side = detectors
    gt, boxes = _pseudo_ground_truth(tmp_path / "gt.json", paddle_side, images)
    assert boxes == 10 * NUM_VAL
    image_dir = str(root / "data" / "val")
    ap = {}
    for name, detector in (("paddle", paddle_side), ("onnx", onnx_side)):
        results = tasks.evaluate_exported(detector, gt, image_dir, output_dir=str(tmp_path / name))
        ap[name] = results.stats["AP"]
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert metrics["stats"]["AP"] == pytest.approx(ap[name])
        assert len(json.loads((tmp_path / name / "bbox.json").read_text())) > boxes
    assert 0.05 < ap["paddle"] < 0.95, ap
    assert abs(ap["onnx"] - ap["paddle"]) <= 1e-4


def test_agreement_command_on_the_export(model, exported, capsys):
    root = model[0]
    status = backend_agreement.main(
        [
            "--model_dir",
            exported,
            "--image_dir",
            str(root / "data" / "val"),
            "--gt",
            str(root / "data" / "annotations" / "instances_val.json"),
            "--threads",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert f"{NUM_VAL} images" in out and "agree" in out and "COCO AP" in out


def test_infer_cli_with_onnx_writes_what_the_predictor_writes(model, exported, tmp_path):
    root, images = model[0], model[4]
    outputs = {}
    for flag, value in (("--model_dir", exported), ("--onnx", f"{exported}/model.onnx")):
        out = tmp_path / flag.strip("-")
        argv = ["infer", flag, value, "--infer_dir", str(root / "data" / "val")]
        argv += ["--output_dir", str(out), "--draw_threshold", "0.3", "--threads", "1"]
        assert cli.main(argv) == 0
        outputs[flag] = json.loads((out / "detections.json").read_text())
        for path in images:
            assert (out / os.path.basename(path)).is_file()
    paddle_records, onnx_records = outputs["--model_dir"], outputs["--onnx"]
    assert len(onnx_records) == len(paddle_records) > 0
    assert {tuple(sorted(r)) for r in onnx_records} == {tuple(sorted(r)) for r in paddle_records}
    key = lambda r: (r["file_name"], r["class_index"], -r["score"])  # noqa: E731
    for a, b in zip(sorted(paddle_records, key=key), sorted(onnx_records, key=key), strict=True):
        assert (a["file_name"], a["category_name"]) == (b["file_name"], b["category_name"])
        assert abs(a["score"] - b["score"]) <= 1e-4
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=0.02)  # JSON: 2 digits


def test_eval_cli_with_onnx_and_a_config(model, exported, tmp_path):
    root, config, overrides = model[0], model[1], model[2]
    argv = ["eval", "--onnx", f"{exported}/model.onnx", "-c", config, "--threads", "1"]
    argv += ["--output_dir", str(tmp_path / "eval")]
    for key, value in overrides.items():
        argv += ["-o", f"{key}={value}"]
    assert cli.main(argv) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    gt = json.loads((root / "data" / "annotations" / "instances_val.json").read_text())
    ids = {img["id"] for img in gt["images"]}
    dets = json.loads((tmp_path / "eval" / "bbox.json").read_text())
    assert len(dets) == metrics["num_detections"] > 0
    assert {d["image_id"] for d in dets} <= ids


# ------------------------------------------------------------------ refusals and missing packages


def _image_folder(tmp_path):
    """A folder with one small JPEG."""
    from PIL import Image

    folder = tmp_path / "img"
    folder.mkdir()
    Image.new("RGB", (32, 32), (120, 40, 200)).save(folder / "a.jpg")
    return str(folder)


def test_a_file_that_is_not_onnx_is_refused(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x00\xffnot a protobuf" * 10)
    with pytest.raises(ValueError, match="not an ONNX model"):
        check_onnx_model(path)


def test_an_onnx_model_of_another_exporter_is_refused(tmp_path, capsys):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["out"])],
        "other",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(ValueError, match="not written by ppdet-ghm export --onnx"):
        OnnxDetector(path)
    assert cli.main(["infer", "--onnx", str(path), "--infer_dir", _image_folder(tmp_path)]) == 1
    assert "no ppdet_ghm metadata" in capsys.readouterr().err


def test_another_opset_is_refused(exported, tmp_path):
    model = onnx.load(os.path.join(exported, "model.onnx"))
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = 11
    path = tmp_path / "model.onnx"  # no model.pdiparams beside it: only the opset is wrong
    onnx.save(model, path)
    with pytest.raises(ValueError, match="opset 11, but this predictor runs opset 17"):
        check_onnx_model(path)


def test_a_conversion_of_other_weights_is_refused(exported, tmp_path):
    shutil.copy(os.path.join(exported, "model.onnx"), tmp_path / "model.onnx")
    params = open(os.path.join(exported, "model.pdiparams"), "rb").read()
    (tmp_path / "model.pdiparams").write_bytes(params[:-4] + b"\x00\x00\x80\x3f")
    with pytest.raises(ValueError, match="converted from another model"):
        check_onnx_model(tmp_path / "model.onnx")
    (tmp_path / "model.pdiparams").write_bytes(params)
    assert check_onnx_model(tmp_path / "model.onnx")["label_list"][0] == "square"


def test_re_export_without_onnx_removes_the_old_conversion(model, tmp_path):
    root, config, overrides, weights, _ = model
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"from an earlier export")
    tasks.export(config, weights=weights, overrides=overrides, output_dir=str(out))
    assert not (out / "model.onnx").exists()
    assert (out / "model.pdiparams").is_file()


@pytest.mark.parametrize("module", ["onnxruntime", "onnx"])
def test_missing_onnx_packages_name_the_extra(exported, module, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(onnx_export.MissingOnnxDependency, match=r"ppdet-ghm\[onnx\]"):
        OnnxDetector(os.path.join(exported, "model.onnx"))
    argv = ["infer", "--onnx", f"{exported}/model.onnx", "--infer_dir", _image_folder(tmp_path)]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert f"'{module}'" in err and "pip install 'ppdet-ghm[onnx]'" in err


def test_export_onnx_without_paddle2onnx_writes_nothing(model, monkeypatch, tmp_path):
    root, config, overrides, weights, _ = model
    monkeypatch.setitem(sys.modules, "paddle2onnx", None)
    out = tmp_path / "export"
    with pytest.raises(onnx_export.MissingOnnxDependency, match="paddle2onnx"):
        tasks.export(config, weights=weights, overrides=overrides, output_dir=str(out), onnx=True)
    assert not out.exists()


# ------------------------------------------------------------------ the NMS limit


def _nms_model(limit: int):
    graph = helper.make_graph(
        [
            helper.make_node(
                "NonMaxSuppression", ["boxes", "scores", "limit", "iou", "thr"], ["sel"]
            )
        ],
        "nms",
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, None, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2, None]),
        ],
        [helper.make_tensor_value_info("sel", TensorProto.INT64, [None, 3])],
        [
            helper.make_tensor("limit", TensorProto.INT64, [1], [limit]),
            helper.make_tensor("iou", TensorProto.FLOAT, [1], [0.5]),
            helper.make_tensor("thr", TensorProto.FLOAT, [1], [0.05]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _select(model):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    boxes = np.array([[[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]]], np.float32)
    scores = np.array([[[0.9, 0.8, 0.7], [0.1, 0.6, 0.04]]], np.float32)
    return session.run(None, {"boxes": boxes, "scores": scores})[0].tolist()


def test_nms_limit_of_paddle_all_boxes_is_made_explicit():
    model = _nms_model(-1)  # what paddle2onnx writes for nms_top_k=-1
    assert _select(model) == []  # ONNX Runtime: a limit <= 0 selects nothing
    assert onnx_export.keep_all_nms_boxes(model) == 1
    # class 0: box 1 overlaps box 0 (IoU 0.68) and goes; class 1: box 2 is under the threshold
    assert _select(model) == [[0, 0, 0], [0, 0, 2], [0, 1, 1]]
    assert onnx_export.keep_all_nms_boxes(model) == 0  # a positive limit stays


def _program_json(path, epsilons):
    """A PIR-format program file with one group_norm op per epsilon (what program_ops reads)."""
    ops = [
        {"#": "1.group_norm", "A": [{"AT": {"#": "0.a_f64", "D": eps}, "N": "epsilon"}]}
        for eps in epsilons
    ]
    path.write_text(json.dumps({"program": {"regions": [{"blocks": [{"ops": ops}]}]}}))
    return path


def _instance_norm_model(count: int, garbage: float = 1.4e32):
    nodes, inputs = [], "x"
    for i in range(count):
        nodes.append(
            helper.make_node(
                "InstanceNormalization", [inputs, "s", "b"], [f"y{i}"], epsilon=garbage
            )
        )
        inputs = f"y{i}"
    graph = helper.make_graph(
        nodes,
        "norms",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4])],
        [helper.make_tensor_value_info(inputs, TensorProto.FLOAT, [1, 2, 4])],
        [
            helper.make_tensor("s", TensorProto.FLOAT, [2], [1.0, 1.0]),
            helper.make_tensor("b", TensorProto.FLOAT, [2], [0.0, 0.0]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_group_norm_epsilon_comes_from_the_program(tmp_path):
    model = _instance_norm_model(2)
    x = np.array([[[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0 + 1e-3]]], np.float32)
    session = lambda m: ort.InferenceSession(  # noqa: E731
        m.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    assert np.abs(session(model).run(None, {"x": x})[0]).max() < 1e-10  # eps 1.4e32: all gone
    program = _program_json(tmp_path / "model.json", [1e-5, 1e-5])
    assert onnx_export.set_group_norm_epsilon(model, program) == 2
    y = session(model).run(None, {"x": x})[0]
    row = x[0, 0] - x[0, 0].mean()
    expected = (row / np.sqrt((row**2).mean() + 1e-5)) / np.sqrt(1.0 + 1e-5)  # normalised twice
    np.testing.assert_allclose(y[0, 0], expected, rtol=1e-4)


def test_group_norm_epsilons_that_cannot_be_told_apart_are_refused(tmp_path):
    with pytest.raises(ValueError, match="epsilons differ"):
        onnx_export.set_group_norm_epsilon(
            _instance_norm_model(2), _program_json(tmp_path / "a.json", [1e-5, 1e-6])
        )
    with pytest.raises(ValueError, match="1 group_norm op"):
        onnx_export.set_group_norm_epsilon(
            _instance_norm_model(2), _program_json(tmp_path / "b.json", [1e-5])
        )


def test_a_graph_without_nms_is_not_our_detector():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    with pytest.raises(ValueError, match="no NonMaxSuppression"):
        onnx_export.keep_all_nms_boxes(helper.make_model(graph))


# ------------------------------------------------------------------ what paddle2onnx refuses


def test_paddle2onnx_has_no_converter_for_full_batch_size_like():
    from paddle2onnx import paddle2onnx_cpp2py_export as p2o

    supported = set(p2o.get_all_supported_operators_pir())
    assert "full_batch_size_like" not in supported  # why compat.onnx_convertible_scalars exists
    assert {"full_like", "multiclass_nms3", "group_norm", "take_along_axis"} <= supported


class _ScalarOnTheLeft(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.linear = paddle.nn.Linear(2, 2)  # a parameter, so that jit.save writes .pdiparams

    def forward(self, x):
        return 1.0 / self.linear(x)


def test_a_program_paddle2onnx_refuses_is_a_clear_error(tmp_path):
    spec = [paddle.static.InputSpec([None, 2], "float32", "x")]
    static = paddle.jit.to_static(_ScalarOnTheLeft(), input_spec=spec, full_graph=True)
    paddle.jit.save(static, str(tmp_path / "model"))  # traced without the fix
    assert b"full_batch_size_like" in (tmp_path / "model.json").read_bytes()
    (tmp_path / "infer_cfg.yml").write_text("Preprocess: []\nlabel_list: [a]\n")
    with pytest.raises(ValueError, match="paddle2onnx could not convert .*model.json"):
        onnx_export.convert_export(tmp_path)
    assert not (tmp_path / "model.onnx").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


@pytest.mark.parametrize(
    "extra",
    [[], ["--gt", "gt.json"], ["-c", "c.yml", "--gt", "gt.json", "--image_dir", "val"]],
    ids=["no-set", "gt-without-images", "both"],
)
def test_eval_of_an_exported_model_needs_one_set(extra, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--onnx", "model.onnx", *extra])
    assert exit_info.value.code == 2
    assert "-c CONFIG (its EvalDataset) or --gt GT.json --image_dir DIR" in capsys.readouterr().err
