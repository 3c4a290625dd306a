"""Training, evaluation, inference and export around ppdet's ``Trainer`` (subclassed, not forked).

- :mod:`.trainer`: :class:`GHMTrainer` (exact resume, output folder, log file, progress bars);
- :mod:`.tasks`: ``train`` / ``evaluate`` / ``infer`` / ``export`` / ``predict_exported`` /
  ``predict_onnx`` / ``evaluate_exported``;
- :mod:`.coco_eval`: COCO box evaluation of a detections JSON against a ground-truth JSON;
- :mod:`.predictor`: :class:`ExportedDetector`, the Python predictor of an exported model;
- :mod:`.onnx_export`: ``model.onnx`` from an export folder (paddle2onnx + repairs + metadata);
- :mod:`.onnx_predictor`: :class:`OnnxDetector`, ONNX Runtime on that file;
- :mod:`.backend_agreement`: whether the two predictors give the same detections;
- :mod:`.visualize`: drawing detections;
- :mod:`.cpu_memory`: glibc's malloc kept from returning freed tensors (CPU tasks);
- :mod:`.threaded_momentum`: the SGD + momentum update of all parameters as one threaded call
  with Paddle's bits (CPU training);
- :mod:`.demo`: the CPU demo that ``make demo`` runs.
"""

from ppdet_ghm.engine.coco_eval import CocoBoxResults, evaluate_detections
from ppdet_ghm.engine.trainer import GHMTrainer, load_model_weights

__all__ = ["CocoBoxResults", "GHMTrainer", "evaluate_detections", "load_model_weights"]
