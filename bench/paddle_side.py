"""Our side of the benchmarks: RetinaNet-GHM R50-FPN (ppdet ``RetinaNet`` + ``GHMRetinaHead``).

The model is ``ppdet_ghm.builder.build_model(configs/retinanet_ghm_r50_fpn_1x_coco.yml)`` holding
``align.weights.generate_state_dict(seed)`` through ``ppdet_ghm.convert.convert_state_dict``: the
same arrays the reference loads. Inputs are the ppdet input dict as the reader hands it (normalised,
padded images; ``im_shape``; ``scale_factor`` 1; per-image gt lists), built from the same NumPy batch.

The training iteration mirrors the reference's: forward + loss, ``backward``, ``Momentum(0.9)`` with
L2 weight decay 1e-4 and ``ClipGradByGlobalNorm(35)`` (Paddle clips before adding the decay, as
torch's ``clip_grad_norm_`` + ``SGD(weight_decay)``), ``step``, ``clear_grad``.
"""

import os

import numpy as np

from bench.driver import REPO_DIR
from bench.timing import SectionTimer

CONFIG = os.path.join(REPO_DIR, "configs", "retinanet_ghm_r50_fpn_1x_coco.yml")
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
CLIP_MAX_NORM = 35.0


def build(seed: int, config: str = CONFIG):
    """Our model with the seeded weights of ``align.weights`` (converted), in eval mode."""
    from align import weights
    from align.paddle_ref import load_converted_weights
    from ppdet_ghm.builder import build_model

    model = build_model(config)
    load_converted_weights(model, weights.generate_state_dict(seed))
    model.eval()
    return model


def input_dict(batch, with_gt: bool):
    """ppdet's input dict for ``batch`` (``align.paddle_ref.input_dict``)."""
    from align.paddle_ref import input_dict as align_input_dict

    return align_input_dict(batch, with_gt)


def hook_ghm(model, timer: SectionTimer):
    """Count the forward time of every GHM-C / GHM-R call in ``timer``."""
    for loss in (model.head.loss_cls, model.head.loss_bbox):
        loss.register_forward_pre_hook(timer.enter)
        loss.register_forward_post_hook(timer.exit)


def train_step(model, batch, lr: float, threaded_momentum: bool = False):
    """A closure running one training iteration on ``batch``; returns the loss as a float.
    ``threaded_momentum``: the optimizer's update as ``ppdet-ghm train`` runs it on a CPU
    (``ppdet_ghm.engine.threaded_momentum``, the same numbers as Paddle's step)."""
    import paddle

    model.train()
    params = [p for p in model.parameters() if not p.stop_gradient]
    optimizer = paddle.optimizer.Momentum(
        learning_rate=lr,
        momentum=MOMENTUM,
        parameters=params,
        weight_decay=paddle.regularizer.L2Decay(WEIGHT_DECAY),
        grad_clip=paddle.nn.ClipGradByGlobalNorm(CLIP_MAX_NORM),
    )
    if threaded_momentum:
        from ppdet_ghm.engine.threaded_momentum import use_threaded_momentum

        use_threaded_momentum(optimizer)
    inputs = input_dict(batch, with_gt=True)

    def step():
        loss = model(dict(inputs))["loss"]
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        return float(loss)

    return step


def head_outputs(model, batch):
    """The head's raw outputs on ``batch`` (no grad), as NumPy: per-level cls and reg maps."""
    import paddle

    model.eval()
    inputs = input_dict(batch, with_gt=False)
    with paddle.no_grad():
        cls_logits, bbox_deltas = model.head(model.neck(model.backbone(inputs)))
    return [t.numpy() for t in cls_logits], [t.numpy() for t in bbox_deltas]


def loss_step(model, batch, outputs):
    """A closure: the head's loss on fixed head outputs (targets + 5 per-level GHM calls), backward."""
    import paddle

    model.train()
    head = model.head
    inputs = input_dict(batch, with_gt=True)
    cls_np, reg_np = outputs

    def step():
        cls_logits = [paddle.to_tensor(a, stop_gradient=False) for a in cls_np]
        bbox_deltas = [paddle.to_tensor(a, stop_gradient=False) for a in reg_np]
        loss = head.get_loss((cls_logits, bbox_deltas), dict(inputs))["loss"]
        loss.backward()
        return float(loss)

    return step


def infer_step(model, batch):
    """A closure: dygraph inference on ``batch`` with post-processing (NMS), rescaled boxes."""
    import paddle

    model.eval()
    inputs = input_dict(batch, with_gt=False)

    def step():
        with paddle.no_grad():
            out = model(dict(inputs))
        return int(out["bbox_num"].sum())

    return step


def export(model, out_dir: str):
    """Export ``model`` for inference (``to_static`` with ``full_graph=True``, ``jit.save``), as
    ``Trainer.export`` traces it (``ppdet_ghm.compat.onnx_convertible_scalars``).

    The input spec is ppdet's: ``image`` [N, 3, H, W], ``im_shape`` [N, 2], ``scale_factor``
    [N, 2], with free N, H, W. Writes ``out_dir/model.{json|pdmodel,pdiparams}`` and an
    ``infer_cfg.yml`` without preprocessing steps (the benchmark feeds preprocessed inputs; the
    ONNX conversion stores it).
    """
    import paddle
    import yaml
    from paddle.static import InputSpec

    from ppdet_ghm.compat import onnx_convertible_scalars

    model.eval()
    spec = [
        {
            "image": InputSpec([None, 3, None, None], "float32", "image"),
            "im_shape": InputSpec([None, 2], "float32", "im_shape"),
            "scale_factor": InputSpec([None, 2], "float32", "scale_factor"),
        }
    ]
    with onnx_convertible_scalars():
        static = paddle.jit.to_static(model, input_spec=spec, full_graph=True)
        paddle.jit.save(static, os.path.join(out_dir, "model"))
    num_classes = model.head.num_classes
    with open(os.path.join(out_dir, "infer_cfg.yml"), "w") as f:
        yaml.safe_dump(
            {"Preprocess": [], "label_list": [f"class{i}" for i in range(num_classes)]}, f
        )
    return out_dir


def convert_onnx(model_dir: str) -> str:
    """``model_dir/model.onnx`` by ``ppdet_ghm.engine.onnx_export.convert_export`` (what
    ``ppdet-ghm export --onnx`` runs)."""
    from ppdet_ghm.engine.onnx_export import convert_export

    return convert_export(model_dir)


def _feeds(batch):
    n = len(batch["images"])
    return {
        "image": np.ascontiguousarray(batch["images"]),
        "im_shape": np.array(batch["image_shapes"], dtype=np.float32),
        "scale_factor": np.ones((n, 2), dtype=np.float32),
    }


def onnx_step(model_dir: str, batch, threads: int):
    """A closure: ``model_dir/model.onnx`` through ONNX Runtime's CPU provider as
    ``ppdet-ghm infer --onnx`` runs it (``ppdet_ghm.engine.onnx_predictor.OnnxDetector``,
    ``threads`` intra-op threads), one image per call (the converted NMS takes batch 1)."""
    from ppdet_ghm.engine.onnx_predictor import OnnxDetector

    if len(batch["images"]) != 1:
        raise ValueError("the ONNX model runs one image at a time: use a batch-1 case")
    detector = OnnxDetector(os.path.join(model_dir, "model.onnx"), threads=threads)
    feeds = _feeds(batch)

    def step():
        return len(detector.run(feeds))

    return step


def predictor_step(model_dir: str, batch, threads: int, onednn: bool = True):
    """A closure: the exported model through ``paddle.inference``, configured by
    ``ppdet_ghm.compat.inference_config`` (oneDNN on unless ``onednn=False``), as
    ``ppdet_ghm.engine.predictor`` does. Each call copies the inputs in, runs, and copies the
    detections out (what a deployment does).
    """
    from paddle import inference

    from ppdet_ghm.compat import inference_config

    config = inference_config(model_dir, use_onednn=onednn)
    config.set_cpu_math_library_num_threads(threads)
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    feeds = _feeds(batch)
    names = predictor.get_input_names()
    missing = set(names) - set(feeds)
    if missing:
        raise ValueError(f"exported model wants inputs {sorted(missing)} the benchmark lacks")
    handles = {name: predictor.get_input_handle(name) for name in names}
    outputs = [predictor.get_output_handle(name) for name in predictor.get_output_names()]

    def step():
        for name, handle in handles.items():
            handle.reshape(feeds[name].shape)
            handle.copy_from_cpu(feeds[name])
        predictor.run()
        results = [h.copy_to_cpu() for h in outputs]
        return int(results[1].sum()) if len(results) > 1 else len(results[0])

    return step
