"""The PyTorch reference: mmdet 3.3.0 RetinaNet-GHM built from the config shipped in the mmdet wheel.

mmcv-lite has no compiled ops, so ``import mmdet.models`` fails on ``mmcv._ext``. We register a
stand-in module under that name before mmdet is imported: every op it is asked for exists (so
``mmcv.ext_loader.load_ext`` is satisfied) and raises if called, except ``nms``, which is a pure-torch
greedy NMS with mmcv's CPU semantics (boxes visited in descending score order, area
``(x2 - x1 + offset) * (y2 - y1 + offset)``, a box is suppressed when its IoU with a kept one is
``> iou_threshold``, kept indices returned in visiting order). RetinaNet's training path uses no
compiled op; NMS (through ``mmcv.ops.batched_nms``) is the only one needed for detections.

Only the ``--side torch`` half of the alignment steps imports this module.
"""

import os
import sys
import types

import numpy as np

GHM_CONFIG = os.path.join("configs", "ghm", "retinanet_r50_fpn_ghm-1x_coco.py")


def greedy_nms(boxes, scores, iou_threshold: float, offset: int = 0):
    """mmcv's ``nms`` op on CPU, in torch: kept indices of ``boxes`` [M, 4] (x1y1x2y2), best first.

    Same visiting order (``scores.sort(descending=True)``), area convention and ``>`` test as
    mmcv 2.1's ``nms_cpu``; float32 arithmetic in the same order of operations.
    """
    import torch

    if boxes.numel() == 0:
        return boxes.new_empty((0,), dtype=torch.long)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + offset) * (y2 - y1 + offset)
    order = scores.sort(0, descending=True)[1]
    keep_mask = torch.ones(boxes.shape[0], dtype=torch.bool)
    for pos in range(order.numel()):
        if not keep_mask[pos]:
            continue
        i = order[pos]
        rest = order[pos + 1 :]
        xx1 = torch.maximum(x1[i], x1[rest])
        yy1 = torch.maximum(y1[i], y1[rest])
        xx2 = torch.minimum(x2[i], x2[rest])
        yy2 = torch.minimum(y2[i], y2[rest])
        w = torch.clamp(xx2 - xx1 + offset, min=0.0)
        h = torch.clamp(yy2 - yy1 + offset, min=0.0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        keep_mask[pos + 1 :] &= ~(iou > iou_threshold)
    return order[keep_mask]


class _ExtStandIn(types.ModuleType):
    """``mmcv._ext`` without compiled code: ``nms`` is :func:`greedy_nms`, any other op raises."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing_op(*args, **kwargs):
            raise NotImplementedError(
                f"mmcv._ext.{name} is a compiled mmcv op; align/torch_ref.py provides only nms"
            )

        return missing_op

    @staticmethod
    def nms(boxes, scores, iou_threshold: float, offset: int = 0):
        return greedy_nms(boxes, scores, iou_threshold, offset)


def install_mmcv_ext_stand_in():
    """Register the ``mmcv._ext`` stand-in in ``sys.modules`` (idempotent); call before mmdet."""
    if not isinstance(sys.modules.get("mmcv._ext"), _ExtStandIn):
        sys.modules["mmcv._ext"] = _ExtStandIn("mmcv._ext")


def reference_config_path():
    """Path of ``retinanet_r50_fpn_ghm-1x_coco.py`` inside the installed mmdet wheel."""
    import mmdet

    path = os.path.join(os.path.dirname(mmdet.__file__), ".mim", GHM_CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mmdet ships no {GHM_CONFIG} at {path}")
    return path


def build_reference_model():
    """mmdet's RetinaNet-GHM R50-FPN in float32 on CPU, eval mode, with ``init_cfg=None``."""
    install_mmcv_ext_stand_in()
    import torch
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules()
    cfg = Config.fromfile(reference_config_path())
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    model = model.float().to(torch.device("cpu"))
    model.eval()
    return model


def load_numpy_state_dict(model, state_dict):
    """Load a ``{name: ndarray}`` dict into ``model`` strictly (every key, every shape)."""
    import torch

    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    misshaped = sorted(
        k for k in own if k in state_dict and tuple(own[k].shape) != state_dict[k].shape
    )
    if missing or unexpected or misshaped:
        raise ValueError(
            f"state_dict mismatch: missing {missing}, unexpected {unexpected}, "
            f"misshaped {misshaped}"
        )
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}
    model.load_state_dict(tensors, strict=True)


def torch_state_dict_spec(model):
    """``[(name, shape, dtype str)]`` of the model's state_dict, in its order."""
    return [
        (k, tuple(v.shape), str(v.dtype).replace("torch.", ""))
        for k, v in model.state_dict().items()
    ]


def set_deterministic(num_threads: int = 1):
    """Single-threaded deterministic torch (float32 sums in a fixed order)."""
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True)


def reference_with_weights(seed: int):
    """The reference model holding :func:`align.weights.generate_state_dict` ``(seed)``.

    Checks first that our torch-free spec of the state_dict (names, order, shapes, dtypes) and the
    GHM edges equal the model's own, so the Paddle side's arrays are exactly these.

    Returns:
        (model in eval mode, the ``{name: ndarray}`` state dict loaded into it)
    """
    from align import weights

    model = build_reference_model()
    spec = [(k, s, d) for k, s, d in torch_state_dict_spec(model)]
    if spec != weights.state_dict_spec():
        ours = weights.state_dict_spec()
        diff = [(a, b) for a, b in zip(spec, ours, strict=False) if a != b][:5]
        raise ValueError(
            f"align.weights.state_dict_spec() differs from mmdet's state_dict "
            f"({len(spec)} vs {len(ours)} entries; first differences {diff})"
        )
    state_dict = weights.generate_state_dict(seed)
    own = model.state_dict()
    for key in ("bbox_head.loss_cls.edges", "bbox_head.loss_bbox.edges"):
        if not np.array_equal(own[key].numpy(), state_dict[key]):
            raise ValueError(f"{key}: generated {state_dict[key]} != mmdet's {own[key].numpy()}")
    load_numpy_state_dict(model, state_dict)
    return model, state_dict


def data_samples(batch: dict, with_gt: bool = True):
    """mmdet ``DetDataSample`` list for :func:`align.data.fake_batch` (metas as the preprocessor sets)."""
    import torch
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    samples = []
    for i, (h, w) in enumerate(batch["image_shapes"]):
        sample = DetDataSample()
        sample.set_metainfo(
            {
                "img_shape": (h, w),
                "ori_shape": (h, w),
                "pad_shape": (h, w),  # already a multiple of 32: its own padded shape
                "batch_input_shape": tuple(batch["batch_shape"]),
                "scale_factor": (1.0, 1.0),
            }
        )
        if with_gt:
            gt = InstanceData()
            gt.bboxes = torch.from_numpy(np.array(batch["gt_boxes"][i]))
            gt.labels = torch.from_numpy(np.array(batch["gt_labels"][i]))
            sample.gt_instances = gt
        samples.append(sample)
    return samples


class TorchContext:
    """What the torch halves of the steps share: weights, batch, and a model built once."""

    def __init__(self, seed: int, num_threads: int = 1):
        from align import data

        set_deterministic(num_threads)
        self.seed = seed
        self.batch = data.fake_batch()
        self._model = None
        self.state_dict = None

    def model(self):
        """The reference model holding the alignment weights (built on first use), eval mode."""
        if self._model is None:
            self._model, self.state_dict = reference_with_weights(self.seed)
        return self._model

    def fresh_model(self):
        """The model with the alignment weights (and zero GHM ``acc_sum``) loaded again."""
        model = self.model().float()
        load_numpy_state_dict(model, self.state_dict)
        model.eval()
        return model

    def images(self, dtype: str = "float32"):
        import torch

        return torch.from_numpy(self.batch["images"].astype(dtype))

    def data_samples(self, with_gt: bool = True):
        return data_samples(self.batch, with_gt=with_gt)
