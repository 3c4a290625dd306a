"""Converter against the PyTorch reference: checkpoints written by ``torch.save`` from mmdet 3.3.0's
RetinaNet-GHM, read back without torch, converted, and run through ppdet's ResNet.

Skipped cleanly where torch / mmdet are not installed (CI).
"""

import collections

import numpy as np
import pytest

from ppdet_ghm.convert import (
    convert_state_dict,
    load_torch_checkpoint,
    mmdet_retinanet_table,
    torchvision_resnet_table,
)
from ppdet_ghm.convert.mapping import reference_ghm_edges
from tests.helpers.torch_specs import mmdet_retinanet_ghm_spec

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
pytest.importorskip("mmdet")
pytest.importorskip("mmengine")

GHM_CONFIG = "configs/ghm/retinanet_r50_fpn_ghm-1x_coco.py"


@pytest.fixture(scope="module")
def mmdet_model():
    """mmdet RetinaNet-GHM R50-FPN with every BN given random statistics and affine, eval mode."""
    import os

    from align.torch_ref import install_mmcv_ext_stand_in

    install_mmcv_ext_stand_in()
    import mmdet
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules()
    cfg = Config.fromfile(os.path.join(os.path.dirname(mmdet.__file__), ".mim", GHM_CONFIG))
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(7)
        model.bbox_head.loss_cls.acc_sum.uniform_(0.0, 100.0)
    return model


def _numpy_state(model_or_sd):
    sd = model_or_sd if isinstance(model_or_sd, dict) else model_or_sd.state_dict()
    return collections.OrderedDict((k, v.detach().cpu().numpy()) for k, v in sd.items())


def _assert_equal_dicts(got, want):
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_mmdet_state_dict_matches_spec_and_ghm_edges(mmdet_model):
    sd = mmdet_model.state_dict()
    spec = [(k, tuple(v.shape)) for k, v in sd.items()]
    assert len(spec) == 358
    assert sorted(spec) == sorted(mmdet_retinanet_ghm_spec())
    table = mmdet_retinanet_table()
    assert set(table.renames) | set(table.skips) == set(sd)
    for name in ("bbox_head.loss_cls.edges", "bbox_head.loss_bbox.edges"):
        mmdet_edges = sd[name].numpy()
        np.testing.assert_array_equal(reference_ghm_edges(name, mmdet_edges.shape[0]), mmdet_edges)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_save_read_back_without_torch(tmp_path, mmdet_model, legacy):
    """mmengine-style checkpoint: state_dict + numpy meta + a real MessageHub + optimizer state."""
    from mmengine.logging import MessageHub

    hub = MessageHub.get_instance("convert_test")
    hub.update_scalar("train/loss", 1.5)
    hub.update_info("iter", 12)
    sd = mmdet_model.state_dict()
    other = torch.nn.Linear(3, 2)  # an optimizer with momentum buffers (tensors to drop)
    optimizer = torch.optim.SGD(other.parameters(), lr=0.01, momentum=0.9)
    other(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    ckpt = {
        "meta": {"epoch": 12, "seed": np.int64(2019), "dataset_meta": {"classes": ("a", "b")}},
        "state_dict": sd,
        "message_hub": hub.state_dict(),
        "optimizer": optimizer.state_dict(),
    }
    path = tmp_path / "ckpt.pth"
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    _assert_equal_dicts(load_torch_checkpoint(path), _numpy_state(sd))


def test_torch_tensor_varieties(tmp_path):
    """Views, offsets, fp16, bf16, int64, bool, 0-d, Parameters (``_rebuild_parameter``)."""
    base = torch.randn(5, 7)
    sd = collections.OrderedDict(
        t=base.t(),
        block=base[1:4, 2:6],
        step=base[:, ::2],
        half=torch.randn(3, 4).half(),
        ints=torch.tensor([[-(2**40), 3]]),
        flags=torch.tensor([True, False]),
        count=torch.tensor(53),
        param=torch.nn.Parameter(torch.randn(2, 2)),
        bf16=torch.randn(4).bfloat16(),
    )
    want = {
        k: v.detach().float().numpy() if k == "bf16" else v.detach().numpy() for k, v in sd.items()
    }
    for legacy in (False, True):
        path = tmp_path / f"v{int(legacy)}.pth"
        torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
        _assert_equal_dicts(load_torch_checkpoint(path), want)


def _ppdet_resnet():
    from ppdet.modeling.backbones.resnet import ResNet

    return ResNet(depth=50, variant="b", norm_type="bn", freeze_at=0, return_idx=[1, 2, 3])


def test_torchvision_style_resnet50_converts_to_same_features(tmp_path, mmdet_model):
    """torchvision names (= mmdet backbone names without prefix) + fc -> ppdet ResNet: C3-C5 equal."""
    import paddle

    backbone_sd = collections.OrderedDict(mmdet_model.backbone.state_dict())
    backbone_sd["fc.weight"] = torch.randn(1000, 2048)
    backbone_sd["fc.bias"] = torch.randn(1000)
    path = tmp_path / "resnet50-torchvision.pth"
    torch.save(backbone_sd, path)
    src = load_torch_checkpoint(path)
    _assert_equal_dicts(src, _numpy_state(backbone_sd))

    resnet = _ppdet_resnet()
    shapes = {k: tuple(v.shape) for k, v in resnet.state_dict().items()}
    converted = convert_state_dict(src, shapes, backbone_only=True)
    assert len(converted) == len(torchvision_resnet_table().renames) == 265
    resnet.set_state_dict({k: paddle.to_tensor(v) for k, v in converted.items()})
    resnet.eval()

    image = np.random.default_rng(0).standard_normal((1, 3, 96, 64)).astype(np.float32)
    with torch.no_grad():
        want = [f.numpy() for f in mmdet_model.backbone(torch.from_numpy(image))][1:]
    got = [f.numpy() for f in resnet({"image": paddle.to_tensor(image)})]
    assert (
        [g.shape for g in got]
        == [w.shape for w in want]
        == [
            (1, 512, 12, 8),
            (1, 1024, 6, 4),
            (1, 2048, 3, 2),
        ]
    )
    for g, w in zip(got, want, strict=True):
        scale = float(np.abs(w).max())
        np.testing.assert_allclose(g, w, rtol=0, atol=2e-5 * max(scale, 1.0))


def test_full_mmdet_checkpoint_converts(tmp_path, mmdet_model, model_shapes):  # noqa: F811
    """torch.save of {'meta', 'state_dict'} -> our names; acc_sum carried, edges checked and dropped."""
    path = tmp_path / "retinanet_ghm.pth"
    torch.save({"meta": {"mmdet_version": "3.3.0"}, "state_dict": mmdet_model.state_dict()}, path)
    out = convert_state_dict(load_torch_checkpoint(path), model_shapes)
    assert len(out) == 303
    sd = mmdet_model.state_dict()
    np.testing.assert_array_equal(
        out["head.loss_cls.acc_sum"], sd["bbox_head.loss_cls.acc_sum"].numpy()
    )
    np.testing.assert_array_equal(
        out["backbone.res4.res4f.branch2b.norm._variance"],
        sd["backbone.layer3.5.bn2.running_var"].numpy(),
    )
    np.testing.assert_array_equal(
        out["neck.fpn_convs.3.weight"], sd["neck.fpn_convs.3.conv.weight"].numpy()
    )
