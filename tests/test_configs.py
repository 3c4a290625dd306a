"""Every shipped config builds and runs a step; the paper's hyperparameters; the builder."""

import glob
import math
import os
import textwrap

import numpy as np
import paddle
import pytest
from ppdet.core.workspace import create
from ppdet.optimizer import OptimizerBuilder

import ppdet_ghm.losses
from ppdet_ghm.builder import build_model, load_config, resolved_config
from tests.helpers import REPO

ROOT = str(REPO)
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yml")))
GHM = os.path.join(ROOT, "configs", "retinanet_ghm_r50_fpn_1x_coco.yml")
BASELINE = os.path.join(ROOT, "configs", "retinanet_r50_fpn_1x_coco.yml")
TINY = os.path.join(ROOT, "configs", "retinanet_ghm_r18_fpn_tiny_shapes.yml")

needs_ghm = pytest.mark.skipif(
    not hasattr(ppdet_ghm.losses, "GHMCLoss"), reason="GHM losses not available"
)


def _batch(num_classes, size=128):
    paddle.seed(0)
    return {
        "image": paddle.randn([2, 3, size, size]),
        "im_shape": paddle.to_tensor([[128.0, 128.0], [100.0, 120.0]]),
        "scale_factor": paddle.to_tensor([[1.0, 1.0], [0.5, 0.5]]),
        "gt_bbox": [
            paddle.to_tensor([[10.0, 20.0, 60.0, 90.0], [30.0, 30.0, 120.0, 100.0]]),
            paddle.to_tensor([[5.0, 5.0, 40.0, 50.0]]),
        ],
        "gt_class": [
            paddle.to_tensor([[0], [num_classes - 1]], dtype="int32"),
            paddle.to_tensor([[1 % num_classes]], dtype="int32"),
        ],
    }


@needs_ghm
@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_builds_and_runs_a_step(path):
    config = load_config(path)
    assert config.architecture == "RetinaNet"
    model = create(config.architecture)
    assert {"backbone", "neck", "head"} <= {name for name, _ in model.named_children()}
    create("LearningRate")  # the schedule builds too
    model.train()
    batch = _batch(config.num_classes)
    losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_reg", "loss"}
    assert math.isfinite(float(losses["loss"]))
    losses["loss"].backward()
    model.eval()
    out = model({k: batch[k] for k in ("image", "im_shape", "scale_factor")})
    assert out["bbox"].shape[1] == 6 and out["bbox_num"].shape == [2]


def test_paper_config_hyperparameters():
    cfg = load_config(GHM)
    assert cfg.architecture == "RetinaNet" and cfg.num_classes == 80 and cfg.metric == "COCO"
    assert dict(cfg.RetinaNet) == {
        "backbone": "NormEvalResNet",
        "neck": "RetinaFPN",
        "head": "GHMRetinaHead",
    }
    assert dict(cfg.NormEvalResNet) == {
        "depth": 50,
        "variant": "b",
        "freeze_at": 0,
        "return_idx": [1, 2, 3],
        "num_stages": 4,
        "freeze_norm": False,
        "norm_eval": True,
        "norm_decay": None,
        "norm_type": "bn",
    }
    assert dict(cfg.RetinaFPN) == {
        "out_channel": 256,
        "num_extra_levels": 2,
        "extra_source": "input",
        "relu_before_extra_convs": False,
    }
    head = _head(cfg)  # every argument create() passes, components resolved
    assert (head["feat_channels"], head["stacked_convs"], head["prior_prob"]) == (256, 4, 0.01)
    assert head["norm_groups"] == 0 and head["num_classes"] == 80
    assert head["pad_size_divisor"] == 32
    assert head["anchor_generator"] == {
        "name": "OctaveAnchorGenerator",
        "octave_base_scale": 4,
        "scales_per_octave": 3,
        "ratios": [0.5, 1.0, 2.0],
        "strides": [8, 16, 32, 64, 128],
        "center_offset": 0.0,
    }
    assert head["assigner"] == {
        "name": "MaxIoUAnchorAssigner",
        "pos_iou_thr": 0.5,
        "neg_iou_thr": 0.4,
        "min_pos_iou": 0.0,
        "match_low_quality": True,
        "gt_max_assign_all": True,
    }
    assert head["box_coder"] == {
        "name": "DeltaXYWHBoxCoder",
        "means": [0.0] * 4,
        "stds": [1.0] * 4,
        "wh_ratio_clip": 0.016,
    }
    assert head["loss_cls"] == {
        "name": "GHMCLoss",
        "bins": 30,
        "momentum": 0.75,
        "use_sigmoid": True,
        "loss_weight": 1.0,
        "sync_stats": False,
    }
    assert head["loss_bbox"] == {
        "name": "GHMRLoss",
        "mu": 0.02,
        "bins": 10,
        "momentum": 0.7,
        "loss_weight": 10.0,
        "sync_stats": False,
    }
    assert head["postprocessor"] == {
        "name": "RetinaPostProcessor",
        "nms_pre": 1000,
        "score_thr": 0.05,
        "nms_iou_thr": 0.5,
        "max_per_img": 100,
        "min_bbox_size": 0.0,
    }
    # schedule: lr 0.01 for 16 images, x0.1 at epochs 8 and 11, 12 epochs, warmup from 1/3 to
    # the full lr at iteration 499 (mmengine LinearLR end=500)
    assert cfg.epoch == 12
    assert cfg.LearningRate["base_lr"] == 0.01
    decay, warmup = cfg.LearningRate["schedulers"]
    assert decay.milestones == [8, 11] and decay.gamma == [0.1, 0.01]
    assert warmup.steps == 499 and warmup.start_factor == pytest.approx(1 / 3, rel=1e-12)
    assert cfg.OptimizerBuilder["clip_grad_by_norm"] == 35.0
    assert cfg.OptimizerBuilder["regularizer"] == {"type": "L2", "factor": 0.0001}
    assert cfg.OptimizerBuilder["optimizer"] == {"type": "Momentum", "momentum": 0.9}
    # input: 1333x800 keep ratio, flip 0.5, RGB mean/std on 0-255, pad to 32, 2 images per GPU
    train = cfg.TrainReader
    transforms = {next(iter(t)): next(iter(t.values())) for t in train["sample_transforms"]}
    assert list(transforms) == ["Decode", "RandomFlip", "Resize", "NormalizeImage", "Permute"]
    assert transforms["RandomFlip"] == {"prob": 0.5}
    assert transforms["Resize"] == {"target_size": [800, 1333], "keep_ratio": True, "interp": 1}
    assert transforms["NormalizeImage"] == {
        "is_scale": False,
        "mean": [123.675, 116.28, 103.53],
        "std": [58.395, 57.12, 57.375],
    }
    assert train["batch_transforms"] == [{"PadBatch": {"pad_to_stride": 32}}]
    assert train["batch_size"] == 2 and train["collate_batch"] is False
    assert train["drop_last"] is False  # mmengine keeps the last partial batch
    for reader in (cfg.EvalReader, cfg.TestReader):
        names = [next(iter(t)) for t in reader["sample_transforms"]]
        assert "RandomFlip" not in names and reader["batch_transforms"] == train["batch_transforms"]
    assert cfg.TrainDataset.image_dir == "train2017" and cfg.EvalDataset.image_dir == "val2017"
    assert cfg.pretrain_weights == "pretrained/resnet50_torchvision.pdparams"


def _head(cfg) -> dict:
    """The head's resolved arguments (components included) of a loaded config."""
    return resolved_config(cfg)["architecture"]["head"]


def _without(cfg, keys):
    return {k: v for k, v in cfg.items() if k not in keys}


def test_baseline_differs_only_in_the_losses():
    ghm = load_config(GHM)
    ghm_head = _head(ghm)
    ghm_rest = {
        k: dict(v) if isinstance(v, dict) else v
        for k, v in _without(
            ghm,
            {
                "GHMRetinaHead",
                "weights",
                "filename",
                "TrainDataset",
                "EvalDataset",
                "TestDataset",
                "LearningRate",
            },
        ).items()
    }
    base = load_config(BASELINE)
    base_head = _head(base)
    assert base_head["loss_cls"] == {
        "name": "SigmoidFocalLoss",
        "gamma": 2.0,
        "alpha": 0.25,
        "loss_weight": 1.0,
    }
    assert base_head["loss_bbox"] == {"name": "BetaSmoothL1Loss", "beta": 0.11, "loss_weight": 1.0}
    for key in ("loss_cls", "loss_bbox"):
        del ghm_head[key], base_head[key]
    assert ghm_head == base_head
    base_rest = {
        k: dict(v) if isinstance(v, dict) else v
        for k, v in _without(
            base,
            {
                "GHMRetinaHead",
                "weights",
                "filename",
                "TrainDataset",
                "EvalDataset",
                "TestDataset",
                "LearningRate",
            },
        ).items()
    }
    assert ghm_rest == base_rest


@pytest.mark.parametrize("path", [GHM, BASELINE], ids=os.path.basename)
def test_coco_configs_follow_mmengines_schedule(path):
    """Both COCO configs: full lr at iteration 499 (mmengine's LinearLR end=500) and the last
    partial batch kept (ceil(ceil(N / W) / 2) iterations per epoch, as mmengine)."""
    cfg = load_config(path)
    warmup = cfg.LearningRate["schedulers"][1]
    assert type(warmup).__name__ == "LinearWarmup" and warmup.steps == 499
    assert cfg.TrainReader["drop_last"] is False


@needs_ghm
def test_built_paper_model():
    model = build_model(GHM)
    head = model.head
    assert (head.loss_cls.bins, head.loss_cls.momentum) == (30, 0.75)
    assert (head.loss_bbox.mu, head.loss_bbox.bins, head.loss_bbox.momentum) == (0.02, 10, 0.7)
    assert head.loss_bbox.loss_weight == 10.0
    assert head.num_classes == 80 and head.anchor_generator.num_anchors == 9
    assert model.neck.extra_source == "input" and not model.neck.relu_before_extra_convs
    assert model.backbone.norm_eval and not model.backbone.freeze_norm
    state = model.state_dict()
    counts = {p: sum(k.startswith(p + ".") for k in state) for p in ("backbone", "neck", "head")}
    assert counts == {"backbone": 265, "neck": 16, "head": 22}  # head: 20 conv + 2 acc_sum
    assert tuple(state["neck.fpn_convs.3.weight"].shape) == (256, 2048, 3, 3)
    assert "head.loss_cls.acc_sum" in state and "head.loss_bbox.acc_sum" in state


@needs_ghm
def test_training_steps_decrease_the_loss_on_a_fixed_batch():
    model = build_model(TINY, {"num_classes": 3})
    optimizer = OptimizerBuilder(
        clip_grad_by_norm=35.0,
        regularizer={"type": "L2", "factor": 0.0001},
        optimizer={"type": "Momentum", "momentum": 0.9},
    )(0.01, model)
    batch = _batch(3)
    model.train()
    losses = []
    for _ in range(6):
        loss = model(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0], losses


# ---------------------------------------------------------------------------- builder
def _write(tmp_path, text):
    path = tmp_path / "config.yml"
    path.write_text(textwrap.dedent(text).format(base=BASELINE))
    return str(path)


def test_missing_config_names_the_file():
    with pytest.raises(FileNotFoundError, match="no_such.yml"):
        build_model("configs/no_such.yml")


def test_unknown_key_names_the_file_and_the_key(tmp_path):
    path = _write(tmp_path, "_BASE_: ['{base}']\nRetinaFPN:\n  out_channels: 128\n")
    with pytest.raises(ValueError, match=r"config\.yml.*'out_channels'.*RetinaFPN"):
        build_model(path)
    path = _write(
        tmp_path,
        """\
        _BASE_: ['{base}']
        GHMRetinaHead:
          loss_cls: {{name: SigmoidFocalLoss, gama: 2.0}}
        """,
    )
    with pytest.raises(ValueError, match=r"'gama'.*GHMRetinaHead\.loss_cls"):
        build_model(path)
    path = _write(tmp_path, "_BASE_: ['{base}']\nRetinaFpn:\n  out_channel: 128\n")
    with pytest.raises(ValueError, match="'RetinaFpn' is not a registered"):
        build_model(path)
    model_base = os.path.join(ROOT, "configs", "_base_", "retinanet_r50_fpn.yml")
    path = tmp_path / "no_name.yml"
    path.write_text(f"_BASE_: ['{model_base}']\nGHMRetinaHead:\n  assigner: {{pos_iou_thr: 0.6}}\n")
    with pytest.raises(ValueError, match="GHMRetinaHead.assigner is a block without 'name'"):
        build_model(str(path))


def test_overrides_and_reset_between_configs():
    cfg = load_config(
        BASELINE,
        {
            "GHMRetinaHead.postprocessor.score_thr": 0.3,
            "num_classes": 7,
            "TrainDataset.dataset_dir": "/data/coco",
        },
    )
    assert _head(cfg)["postprocessor"]["score_thr"] == 0.3 and cfg.num_classes == 7
    assert cfg.TrainDataset.dataset_dir == "/data/coco"  # the dataset object, not a dict
    with pytest.raises(ValueError, match="has no attribute 'data_dir'"):
        load_config(BASELINE, {"TrainDataset.data_dir": "/data"})
    # a second config starts clean: no override or loss block of the first survives
    model = build_model(TINY, {"num_classes": 3}) if hasattr(ppdet_ghm.losses, "GHMCLoss") else None
    cfg = load_config(BASELINE)
    assert cfg.num_classes == 80 and _head(cfg)["postprocessor"]["score_thr"] == 0.05
    assert cfg.NormEvalResNet["depth"] == 50 and cfg.TrainDataset.dataset_dir == "dataset/coco"
    if model is not None:
        assert model.backbone.depth == 18


@pytest.mark.slow
@needs_ghm
def test_tiny_model_exports_and_the_predictor_reproduces_dygraph(tmp_path):
    from paddle import inference

    from ppdet_ghm import compat

    model = build_model(TINY, {"num_classes": 3, "GHMRetinaHead.postprocessor.score_thr": 0.005})
    model.eval()
    spec = {
        "image": paddle.static.InputSpec([None, 3, -1, -1], "float32", "image"),
        "im_shape": paddle.static.InputSpec([None, 2], "float32", "im_shape"),
        "scale_factor": paddle.static.InputSpec([None, 2], "float32", "scale_factor"),
    }
    static = paddle.jit.to_static(model, input_spec=[spec], full_graph=True)
    paddle.jit.save(static, str(tmp_path / "model"))
    predictor = inference.create_predictor(compat.inference_config(str(tmp_path), "model"))
    batch = _batch(3, size=96)
    inputs = {k: batch[k] for k in ("image", "im_shape", "scale_factor")}
    expected = model(inputs)
    for name in predictor.get_input_names():
        handle = predictor.get_input_handle(name)
        handle.reshape(inputs[name].shape)
        handle.copy_from_cpu(inputs[name].numpy())
    predictor.run()
    bbox, bbox_num = (
        predictor.get_output_handle(n).copy_to_cpu() for n in predictor.get_output_names()[:2]
    )
    assert bbox_num.tolist() == expected["bbox_num"].numpy().tolist() and bbox_num.sum() > 0
    np.testing.assert_allclose(bbox, expected["bbox"].numpy(), rtol=1e-5, atol=1e-4)
