"""One test per fix of ppdet_ghm.compat; each runs ppdet's own code path and fails without the fix."""

import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
from PIL import Image
from ppdet.core.workspace import AttrDict
from ppdet.engine.trainer import Trainer
from ppdet.modeling.layers import MultiClassNMS
from ppdet.utils import visualizer

from ppdet_ghm import compat


def test_import_is_silent():
    code = "import ppdet_ghm, ppdet"
    # Paddle itself warns at import when OMP_NUM_THREADS > 1 (its own notice, which users who set
    # the variable should see); the import is checked in the environment Paddle expects.
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr == ""


def test_int_of_one_element_array_in_ppdet_visualizer(tmp_path):
    # numpy >= 2.4 raises TypeError on int(np.array([3])); ppdet's save_result does exactly that.
    out = tmp_path / "res.txt"
    results = {
        "im_id": np.array([3]),
        "bbox_res": [{"category_id": 1, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.9}],
    }
    visualizer.save_result(str(out), results, {1: "square"}, threshold=0.5)
    assert out.read_text() == "square 0.9 1.0 2.0 3.0 4.0\n"


def test_int_keeps_builtin_behaviour():
    to_int = compat.int_accepting_size1_arrays
    assert to_int(np.array([[7]])) == 7
    assert to_int("ff", 16) == 255
    assert to_int(3.9) == 3
    with pytest.raises(TypeError):
        to_int(np.array([1, 2]))


def test_draw_bbox_with_labels_on_current_pillow():
    # ppdet's draw_bbox measures the label with ImageDraw.textsize (removed in Pillow 10).
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    boxes = [{"image_id": 0, "category_id": 1, "bbox": [10.0, 20.0, 30.0, 30.0], "score": 0.9}]
    drawn = np.asarray(visualizer.draw_bbox(image, 0, {1: "square"}, boxes, threshold=0.5))
    # The box outline (width 2) is drawn at x = 10..11 from y = 20 down, and the label's filled
    # background sits right above the box, so pixels above y = 20 at x = 12 are coloured.
    assert drawn[30, 10].any()
    assert drawn[15, 12].any()
    assert not drawn[60, 60].any()


class _TinyDetector(paddle.nn.Layer):
    """Stand-in architecture: a conv whose output becomes 2 boxes per image, then NMS."""

    def __init__(self):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 4, 3, padding=1)
        self.nms = MultiClassNMS(score_threshold=0.0, keep_top_k=10, nms_threshold=0.5)

    def forward(self, inputs):
        feat = self.conv(inputs["image"]).mean(axis=[2, 3])  # [N, 4]
        boxes = paddle.stack([feat.abs(), feat.abs() + 10.0], axis=1)  # [N, 2, 4]
        scores = paddle.nn.functional.sigmoid(feat[:, :2]).unsqueeze(1)  # [N, 1, 2]
        bbox, bbox_num, _ = self.nms(boxes, scores)
        return {"bbox": bbox, "bbox_num": bbox_num}


def test_multiclass_nms_under_to_static_matches_dygraph():
    # Paddle 3 (PIR) rejects ppdet's legacy static branch of multiclass_nms.
    paddle.seed(0)
    model = _TinyDetector()
    model.eval()
    inputs = {"image": paddle.rand([2, 3, 8, 8])}
    eager = model(inputs)
    static = paddle.jit.to_static(model, full_graph=True)(inputs)
    np.testing.assert_allclose(static["bbox"].numpy(), eager["bbox"].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(static["bbox_num"].numpy(), eager["bbox_num"].numpy())


def test_trainer_export_writes_a_model_that_runs(tmp_path):
    # Paddle >= 2.6 traces with full_graph=False by default, which breaks Trainer.export;
    # the oneDNN predictor failure is avoided by compat.inference_config.
    paddle.seed(0)
    trainer = Trainer.__new__(Trainer)
    trainer.model = _TinyDetector()
    trainer.cfg = AttrDict(
        architecture="RetinaNet",
        filename="tiny.yml",
        metric="COCO",
        num_classes=1,
        TestReader=AttrDict(
            inputs_def=AttrDict(image_shape=[3, 8, 8]),
            sample_transforms=[{"Resize": {"target_size": [8, 8], "keep_ratio": False}}],
            batch_size=1,
        ),
        TestDataset=AttrDict(),
        export=AttrDict(post_process=True, nms=True, benchmark=False),
        RetinaNet=AttrDict(),
    )
    trainer.cfg["TestDataset"] = _Categories()
    image = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    trainer.model.eval()
    eager = trainer.model({"image": paddle.to_tensor(image)})["bbox"].numpy()

    trainer.export(str(tmp_path))
    model_dir = tmp_path / "tiny"

    predictor = paddle.inference.create_predictor(compat.inference_config(str(model_dir)))
    for name in predictor.get_input_names():
        handle = predictor.get_input_handle(name)
        feed = {"image": image, "im_shape": np.array([[8.0, 8.0]], np.float32)}.get(
            name, np.ones((1, 2), np.float32)
        )
        handle.reshape(feed.shape)
        handle.copy_from_cpu(feed)
    predictor.run()
    exported = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
    np.testing.assert_allclose(exported, eager, rtol=1e-5, atol=1e-5)


class _Categories(AttrDict):
    """The part of a ppdet dataset that export's infer_cfg.yml reads (label list)."""

    def get_anno(self):
        return None

    def __getattr__(self, name):
        if name == "dataset_dir":
            return None
        raise AttributeError(name)


def test_inference_config_names_the_missing_model(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        compat.inference_config(str(tmp_path))


def test_ppdet_logs_reach_stdout_after_the_quiet_import():
    code = (
        "import ppdet_ghm\n"
        "from ppdet.utils.logger import setup_logger\n"
        "setup_logger('ppdet.engine').info('hello from ppdet')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "hello from ppdet" in done.stdout + done.stderr


class _ScalarOnTheLeft(paddle.nn.Layer):
    """``1.0 / x`` and ``2.0 - x`` on a [N, 2] input, as the post-processing's
    ``1.0 / scale_factor``."""

    def forward(self, x):
        return 1.0 / x + (2.0 - x)


def _traced_op_names(layer, spec):
    static = paddle.jit.to_static(layer, input_spec=spec, full_graph=True)
    program = static.forward.concrete_program.main_program
    return {op.name() for op in program.global_block().ops}, static


def test_scalar_on_the_left_traces_without_full_batch_size_like():
    # paddle2onnx 2.1.0 has no converter for full_batch_size_like, what PIR writes for the scalar
    # of `1.0 / x` when x has a dynamic dimension; within the fix it is full_like.
    spec = [paddle.static.InputSpec([None, 2], "float32", "x")]
    plain, _ = _traced_op_names(_ScalarOnTheLeft(), spec)
    assert "pd_op.full_batch_size_like" in plain  # what the fix is for
    with compat.onnx_convertible_scalars():
        fixed, static = _traced_op_names(_ScalarOnTheLeft(), spec)
    assert "pd_op.full_batch_size_like" not in fixed
    assert "pd_op.full_like" in fixed
    x = np.array([[0.5, 3.0], [7.0, 1e-3], [2.0, 4.0]], dtype=np.float32)
    expected = np.float32(1.0) / x + (np.float32(2.0) - x)
    np.testing.assert_array_equal(static(paddle.to_tensor(x)).numpy(), expected)


def test_trainer_export_traces_with_onnx_convertible_scalars():
    assert getattr(Trainer.export, "_ppdet_ghm_compat", False)
    from paddle.pir import math_op_patch

    original = math_op_patch.create_tensor_with_batchsize
    with compat.onnx_convertible_scalars():
        assert math_op_patch.create_tensor_with_batchsize is compat._scalar_like
    assert math_op_patch.create_tensor_with_batchsize is original
