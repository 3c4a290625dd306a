"""Python predictor for a model written by ``ppdet-ghm export`` (``paddle.inference``).

An export folder holds ``model.json`` (PIR program; ``model.pdmodel`` with older Paddle),
``model.pdiparams`` and ``infer_cfg.yml`` (preprocessing and class names, written by ppdet).
:class:`ExportedDetector` runs it on single images with **the same preprocessing code as the
dygraph reader** (ppdet's ``Decode``, ``Resize``, ``NormalizeImage``, ``Permute`` operators, then
zero padding to a multiple of the ``PadStride`` stride), so its detections equal those of the
dygraph model up to float32 round-off.

oneDNN (Paddle 3.3.1, CPU): on by default. Paddle 3.3.1's oneDNN predictor cannot run the
``nearest_interp`` op, so our FPN exports its upsampling as repeat-and-crop
(:func:`ppdet_ghm.modeling.layers.upsample_nearest`); :func:`ppdet_ghm.compat.inference_config`
turns oneDNN off for programs that still contain ``nearest_interp`` (older exports) and when
``use_onednn=False``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import yaml

from ppdet_ghm import compat

logger = logging.getLogger(__name__)

__all__ = ["ExportedDetector", "ImagePreprocessor", "detections_from_outputs", "read_infer_cfg"]

_SUPPORTED_OPS = ("Resize", "NormalizeImage", "Permute", "PadStride")


class ImagePreprocessor:
    """The preprocessing of an export's ``infer_cfg.yml``, shared by the Paddle predictor
    (:class:`ExportedDetector`) and ONNX Runtime (:class:`~ppdet_ghm.engine.onnx_predictor.
    OnnxDetector`).

    Args:
        infer_cfg: the parsed ``infer_cfg.yml`` (``Preprocess``, ``label_list``, optionally
            ``category_ids`` and ``draw_threshold``).
        source: where ``infer_cfg`` came from, named in errors.

    Raises:
        ValueError: no ``Preprocess`` list, or a step this predictor does not implement.
    """

    def __init__(self, infer_cfg: dict, source: str):
        from ppdet.data.transform import operators

        if not isinstance(infer_cfg, dict) or not isinstance(infer_cfg.get("Preprocess"), list):
            raise ValueError(f"{source}: no 'Preprocess' list of steps")
        self.label_list: list[str] = list(infer_cfg.get("label_list", []))
        self.draw_threshold: float = float(infer_cfg.get("draw_threshold", 0.5))
        # dataset category id per class index (written by ppdet_ghm's export; 1-based otherwise)
        self.category_ids: list[int] = list(
            infer_cfg.get("category_ids", range(1, len(self.label_list) + 1))
        )
        self._decode = operators.Decode()
        self._ops = []
        self._pad_stride = 1
        for step in infer_cfg["Preprocess"]:
            step = dict(step)
            kind = step.pop("type")
            if kind not in _SUPPORTED_OPS:
                raise ValueError(
                    f"{source}: preprocessing step {kind!r} is not supported (supported: "
                    f"{', '.join(_SUPPORTED_OPS)})"
                )
            if kind == "PadStride":
                self._pad_stride = int(step["stride"])
            else:
                self._ops.append(getattr(operators, kind)(**step))

    def __call__(self, image: str | os.PathLike | np.ndarray) -> dict[str, np.ndarray]:
        """Inputs of the exported program for one image (a path, or an RGB uint8 HxWx3 array).

        Returns ``image`` [1, 3, H', W'] float32 (padded), ``im_shape`` [1, 2] (resized H, W)
        and ``scale_factor`` [1, 2] (resized / original, y then x).
        """
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"image array must be HxWx3 RGB, got shape {image.shape}")
            sample = {"image": image, "h": image.shape[0], "w": image.shape[1]}
        else:
            sample = {"im_file": str(image)}
            sample = self._decode(sample)
        sample.setdefault("im_shape", np.array(sample["image"].shape[:2], dtype=np.float32))
        sample.setdefault("scale_factor", np.ones(2, dtype=np.float32))
        for op in self._ops:
            sample = op(sample)
        chw = sample["image"].astype(np.float32)
        stride = self._pad_stride
        height = int(np.ceil(chw.shape[1] / stride) * stride)
        width = int(np.ceil(chw.shape[2] / stride) * stride)
        padded = np.zeros((3, height, width), dtype=np.float32)
        padded[:, : chw.shape[1], : chw.shape[2]] = chw
        return {
            "image": padded[None],
            "im_shape": np.asarray(sample["im_shape"], dtype=np.float32).reshape(1, 2),
            "scale_factor": np.asarray(sample["scale_factor"], dtype=np.float32).reshape(1, 2),
        }


def read_infer_cfg(model_dir: str | os.PathLike) -> tuple[dict, str]:
    """``(parsed infer_cfg.yml, its path)`` of an export folder.

    Raises:
        FileNotFoundError: no ``infer_cfg.yml`` in ``model_dir``.
    """
    cfg_path = os.path.join(str(model_dir), "infer_cfg.yml")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{cfg_path} not found: is {model_dir} an export folder?")
    with open(cfg_path) as f:
        return yaml.safe_load(f), cfg_path


def detections_from_outputs(boxes: np.ndarray, num: np.ndarray) -> np.ndarray:
    """The exported program's ``(bbox [M, 6], bbox_num [1])`` outputs of one image -> float32
    [K, 6] rows ``(class index, score, x1, y1, x2, y2)``: the first ``bbox_num`` rows, without the
    class -1 row that Paddle's NMS returns when nothing is detected."""
    num = np.asarray(num).reshape(-1)
    count = int(num[0]) if num.size else 0
    dets = np.asarray(boxes[:count], dtype=np.float32).reshape(-1, 6)
    return dets[dets[:, 0] >= 0]


class ExportedDetector:
    """Run an exported detector on images.

    Args:
        model_dir: the export folder (``model.json``/``.pdmodel``, ``.pdiparams``,
            ``infer_cfg.yml``).
        threads: CPU math threads (default: the CPUs this process may use).
        use_gpu: run on GPU 0 (needs paddlepaddle-gpu).
        use_onednn: on CPU, run with oneDNN (default; off for exports with ``nearest_interp``).

    Raises:
        FileNotFoundError: no exported model or no ``infer_cfg.yml`` in ``model_dir``.
        ValueError: a preprocessing step of ``infer_cfg.yml`` this predictor does not implement.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        threads: int | None = None,
        use_gpu: bool = False,
        use_onednn: bool = True,
    ):
        from paddle import inference

        model_dir = str(model_dir)
        self.path = model_dir
        infer_cfg, cfg_path = read_infer_cfg(model_dir)
        self._preprocess = ImagePreprocessor(infer_cfg, cfg_path)
        self.label_list = self._preprocess.label_list
        self.draw_threshold = self._preprocess.draw_threshold
        self.category_ids = self._preprocess.category_ids

        config = compat.inference_config(model_dir, use_onednn=use_onednn and not use_gpu)
        config.disable_glog_info()
        if use_gpu:
            config.enable_use_gpu(256, 0)
        else:
            config.set_cpu_math_library_num_threads(threads or len(os.sched_getaffinity(0)))
        self._predictor = inference.create_predictor(config)
        self.input_names = self._predictor.get_input_names()

    def preprocess(self, image: str | os.PathLike | np.ndarray) -> dict[str, np.ndarray]:
        """See :class:`ImagePreprocessor`."""
        return self._preprocess(image)

    def predict(self, image: str | os.PathLike | np.ndarray) -> np.ndarray:
        """Detections of one image: float32 [M, 6] rows ``(class index, score, x1, y1, x2, y2)``
        in original-image pixels, as ppdet's ``bbox`` output (class index into ``label_list``),
        by descending score."""
        inputs = self.preprocess(image)
        for name in self.input_names:
            handle = self._predictor.get_input_handle(name)
            handle.reshape(inputs[name].shape)
            handle.copy_from_cpu(inputs[name])
        self._predictor.run()
        outputs = [
            self._predictor.get_output_handle(name).copy_to_cpu()
            for name in self._predictor.get_output_names()
        ]
        return detections_from_outputs(outputs[0], outputs[1])

    def predict_files(self, paths: list[str | os.PathLike]) -> dict[str, np.ndarray]:
        """:meth:`predict` for each path; returns ``{path: detections}``."""
        return {str(Path(p)): self.predict(p) for p in paths}
