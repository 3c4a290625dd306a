"""ONNX Runtime (CPU) predictor for a ``model.onnx`` written by ``ppdet-ghm export --onnx``.

:class:`OnnxDetector` has the interface of the Paddle predictor
(:class:`~ppdet_ghm.engine.predictor.ExportedDetector`): the same preprocessing code
(:class:`~ppdet_ghm.engine.predictor.ImagePreprocessor`, from the ``infer_cfg.yml`` stored in the
model's metadata), the same inputs (``image`` [1, 3, H, W], ``im_shape`` [1, 2],
``scale_factor`` [1, 2]) and the same detections (float32 [M, 6] rows ``class index, score, x1,
y1, x2, y2`` in original-image pixels, by descending score). The NMS runs inside the graph
(:mod:`ppdet_ghm.engine.onnx_export`); nothing is post-processed here.

A file is refused (``ValueError`` with the reason) when it is not ONNX, was not written by
``ppdet-ghm export --onnx`` (no ``ppdet_ghm`` metadata: another model, or paddle2onnx run by
hand, whose NMS returns no box in ONNX Runtime), has another opset than
:data:`~ppdet_ghm.engine.onnx_export.OPSET`, has other inputs, or sits in an export folder whose
``model.pdiparams`` is not the one it was converted from (a stale conversion).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml

from ppdet_ghm.engine import onnx_export
from ppdet_ghm.engine.predictor import ImagePreprocessor, detections_from_outputs

__all__ = ["INPUT_NAMES", "OnnxDetector", "check_onnx_model"]

#: The inputs of our exported detector, in any order.
INPUT_NAMES = ("image", "im_shape", "scale_factor")


def check_onnx_model(path: str | os.PathLike) -> dict:
    """Read and check ``path``; returns the parsed ``infer_cfg`` stored in it.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: why the file is not a model this predictor runs (see the module docstring).
    """
    onnx = onnx_export.require("onnx")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no ONNX model at {path}")
    try:
        model = onnx.load(path)
    except Exception as err:  # protobuf's DecodeError and friends
        raise ValueError(f"{path}: not an ONNX model ({type(err).__name__}: {err})") from err
    meta = onnx_export.onnx_metadata(model)
    redo = "convert it with `ppdet-ghm export -c CONFIG --weights W --onnx`"
    if meta.get(onnx_export.META_FORMAT) != onnx_export.FORMAT_VERSION:
        found = meta.get(onnx_export.META_FORMAT)
        what = f"metadata format {found!r}" if found else "no ppdet_ghm metadata"
        raise ValueError(
            f"{path}: not written by ppdet-ghm export --onnx ({what}; expected format "
            f"{onnx_export.FORMAT_VERSION}): {redo}"
        )
    opset = onnx_export.default_opset(model)
    if opset != onnx_export.OPSET:
        raise ValueError(
            f"{path}: ONNX opset {opset}, but this predictor runs opset {onnx_export.OPSET} "
            f"(the one whose NMS it was checked with): {redo}"
        )
    initializers = {t.name for t in model.graph.initializer}
    inputs = sorted(i.name for i in model.graph.input if i.name not in initializers)
    if inputs != sorted(INPUT_NAMES):
        raise ValueError(f"{path}: inputs {inputs}, expected {sorted(INPUT_NAMES)}: {redo}")
    if len(model.graph.output) != 2:
        raise ValueError(
            f"{path}: {len(model.graph.output)} outputs, expected 2 (bbox, bbox_num): {redo}"
        )
    params = os.path.join(os.path.dirname(os.path.abspath(path)), "model.pdiparams")
    if os.path.isfile(params):
        expected = meta.get(onnx_export.META_PARAMS_SHA256)
        if onnx_export.file_sha256(params) != expected:
            raise ValueError(
                f"{path} was converted from another model than {params} beside it (SHA-256 of "
                f"the weights differs: a stale conversion): re-export with --onnx"
            )
    try:
        infer_cfg = yaml.safe_load(meta.get(onnx_export.META_INFER_CFG, ""))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: the stored infer_cfg.yml does not parse: {err}") from err
    if not isinstance(infer_cfg, dict):
        raise ValueError(f"{path}: no infer_cfg.yml stored in the metadata: {redo}")
    return infer_cfg


class OnnxDetector:
    """Run a ``model.onnx`` of ``ppdet-ghm export --onnx`` with ONNX Runtime on the CPU.

    Args:
        onnx_path: the ``.onnx`` file.
        threads: intra-op threads (default: the CPUs this process may use).

    Raises:
        MissingOnnxDependency: onnx or onnxruntime is not installed.
        FileNotFoundError, ValueError: see :func:`check_onnx_model`.
    """

    def __init__(self, onnx_path: str | os.PathLike, *, threads: int | None = None):
        ort = onnx_export.require("onnxruntime")
        self.path = os.fspath(onnx_path)
        infer_cfg = check_onnx_model(self.path)
        self._preprocess = ImagePreprocessor(infer_cfg, f"{self.path} (stored infer_cfg.yml)")
        self.label_list = self._preprocess.label_list
        self.draw_threshold = self._preprocess.draw_threshold
        self.category_ids = self._preprocess.category_ids
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        self._session = ort.InferenceSession(
            self.path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self._session.get_inputs()]
        self._output_names = [o.name for o in self._session.get_outputs()]

    def preprocess(self, image: str | os.PathLike | np.ndarray) -> dict[str, np.ndarray]:
        """See :class:`~ppdet_ghm.engine.predictor.ImagePreprocessor`."""
        return self._preprocess(image)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Detections [M, 6] of one preprocessed image (``image``, ``im_shape``,
        ``scale_factor`` with batch 1)."""
        boxes, num = self._session.run(
            self._output_names, {name: inputs[name] for name in self.input_names}
        )
        return detections_from_outputs(boxes, num)

    def predict(self, image: str | os.PathLike | np.ndarray) -> np.ndarray:
        """Detections of one image, as :meth:`ExportedDetector.predict
        <ppdet_ghm.engine.predictor.ExportedDetector.predict>`."""
        return self.run(self.preprocess(image))

    def predict_files(self, paths: list[str | os.PathLike]) -> dict[str, np.ndarray]:
        """:meth:`predict` for each path; returns ``{path: detections}``."""
        return {str(Path(p)): self.predict(p) for p in paths}
