"""ppdet_ghm.convert for ResNet-18/34 (BasicBlock) backbones and GroupNorm RetinaHeads, and the
torchvision/mmdet res2a shortcut of NormEvalResNet (``identity_res2_shortcut``).

Source names are written out here from the architecture (mmdet ``ResNet(depth=18/34)``, ``FPN``,
``RetinaHead(norm_cfg=dict(type='GN'))``), independently of the converter's table; step 13 of the
alignment (align/step13_train.py) converts the real mmdet model's arrays with it.
"""

import numpy as np
import paddle
import pytest
from ppdet.modeling.backbones.resnet import ResNet

from ppdet_ghm.builder import build_model
from ppdet_ghm.convert import ConversionError, convert_state_dict, mmdet_retinanet_table
from ppdet_ghm.convert.mapping import mmdet_architecture, torchvision_resnet_table
from ppdet_ghm.modeling.backbone import NormEvalResNet
from tests.helpers import REPO

STEP13_CONFIG = str(REPO / "align" / "configs" / "train_r18_ghm.yml")
BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
WIDTHS = (64, 128, 256, 512)


def _bn(name, c):
    return [(f"{name}.{p}", (c,)) for p in ("weight", "bias", "running_mean", "running_var")] + [
        (f"{name}.num_batches_tracked", ())
    ]


def torch_basic_resnet_spec(depth, prefix=""):
    """``[(name, shape)]`` of torchvision / mmdet ResNet-18/34 (BasicBlock), no ``fc``."""
    spec = [(f"{prefix}conv1.weight", (64, 3, 7, 7))] + _bn(f"{prefix}bn1", 64)
    cin = 64
    for layer, (blocks, width) in enumerate(zip(BLOCKS[depth], WIDTHS, strict=True), start=1):
        for b in range(blocks):
            p = f"{prefix}layer{layer}.{b}"
            spec += [(f"{p}.conv1.weight", (width, cin, 3, 3))] + _bn(f"{p}.bn1", width)
            spec += [(f"{p}.conv2.weight", (width, width, 3, 3))] + _bn(f"{p}.bn2", width)
            if b == 0 and cin != width:
                spec += [(f"{p}.downsample.0.weight", (width, cin, 1, 1))]
                spec += _bn(f"{p}.downsample.1", width)
            cin = width
    return spec


def mmdet_r18_gn_spec(num_classes=4, channels=64, stacked_convs=2):
    """mmdet RetinaNet-GHM R18-FPN with a GN head (step 13's model)."""
    spec = torch_basic_resnet_spec(18, "backbone.")
    for i, c in enumerate((128, 256, 512)):
        spec += [(f"neck.lateral_convs.{i}.conv.weight", (channels, c, 1, 1))]
        spec += [(f"neck.lateral_convs.{i}.conv.bias", (channels,))]
    for i, c in enumerate((channels, channels, channels, 512, channels)):
        spec += [(f"neck.fpn_convs.{i}.conv.weight", (channels, c, 3, 3))]
        spec += [(f"neck.fpn_convs.{i}.conv.bias", (channels,))]
    spec += [("bbox_head.loss_cls.edges", (31,)), ("bbox_head.loss_cls.acc_sum", (30,))]
    spec += [("bbox_head.loss_bbox.edges", (11,)), ("bbox_head.loss_bbox.acc_sum", (10,))]
    for tower in ("cls_convs", "reg_convs"):
        for i in range(stacked_convs):
            spec += [(f"bbox_head.{tower}.{i}.conv.weight", (channels, channels, 3, 3))]
            spec += [(f"bbox_head.{tower}.{i}.gn.{p}", (channels,)) for p in ("weight", "bias")]
    spec += [
        ("bbox_head.retina_cls.weight", (9 * num_classes, channels, 3, 3)),
        ("bbox_head.retina_cls.bias", (9 * num_classes,)),
        ("bbox_head.retina_reg.weight", (36, channels, 3, 3)),
        ("bbox_head.retina_reg.bias", (36,)),
    ]
    return spec


def tagged(spec):
    """Arrays whose every value tells its source (index i -> i + position / 1e6)."""
    out = {}
    for i, (name, shape) in enumerate(spec):
        if name.endswith(".edges"):
            bins = shape[0] - 1
            edges = np.arange(bins + 1, dtype=np.float32) / np.float32(bins)
            if ".loss_cls." in name:
                edges[-1] += np.float32(1e-6)
            else:
                edges[-1] = np.float32(1e3)
            out[name] = edges
        else:
            size = int(np.prod(shape))
            out[name] = (i + np.arange(size, dtype=np.float64) / 1e6).astype(np.float32)
            out[name] = out[name].reshape(shape)
    return out


@pytest.fixture(scope="module")
def step13_model():
    return build_model(STEP13_CONFIG)


def test_architecture_read_off_names():
    arch = mmdet_architecture(dict(mmdet_r18_gn_spec()))
    assert arch == {"depth": 18, "stacked_convs": 2, "head_norm": True}
    tv34 = dict(torch_basic_resnet_spec(34))
    assert mmdet_architecture(tv34)["depth"] == 34


@pytest.mark.parametrize(
    "old, new",
    [
        ("backbone.layer1.0.conv1.weight", "backbone.res2.res2a.branch2a.conv.weight"),
        ("backbone.layer1.1.conv2.weight", "backbone.res2.res2b.branch2b.conv.weight"),
        ("backbone.layer1.1.bn2.running_var", "backbone.res2.res2b.branch2b.norm._variance"),
        ("backbone.layer2.0.downsample.0.weight", "backbone.res3.res3a.short.conv.weight"),
        ("backbone.layer4.0.downsample.1.running_mean", "backbone.res5.res5a.short.norm._mean"),
        ("bbox_head.cls_convs.1.conv.weight", "head.cls_convs.1.weight"),
        ("bbox_head.cls_convs.1.gn.weight", "head.cls_norms.1.weight"),
        ("bbox_head.reg_convs.0.gn.bias", "head.reg_norms.0.bias"),
    ],
)
def test_table_spot_checks(old, new):
    assert mmdet_retinanet_table(18, 2, True).renames[old] == new


def test_basic_block_tables_have_no_conv3_nor_res2_projection():
    renames = mmdet_retinanet_table(18, 2, True).renames
    assert not any(".conv3." in k or "layer1.0.downsample" in k for k in renames)
    assert not any(
        k.startswith("bbox_head.cls_convs.") and k.endswith("conv.bias") for k in renames
    )
    plain = mmdet_retinanet_table(34, 4, False).renames
    assert plain["bbox_head.cls_convs.3.conv.bias"] == "head.cls_convs.3.bias"
    assert plain["backbone.layer3.5.conv2.weight"] == "backbone.res4.res4f.branch2b.conv.weight"


def test_convert_step13_model_fills_every_tensor(step13_model):
    src = tagged(mmdet_r18_gn_spec())
    own = step13_model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in own.items()}
    out = convert_state_dict(src, shapes)
    assert list(out) == list(shapes)
    renames = mmdet_retinanet_table(18, 2, True).renames
    for old, new in renames.items():
        np.testing.assert_array_equal(out[new], src[old])
    missing, unexpected = step13_model.set_state_dict(out)
    assert not missing and not unexpected


@pytest.mark.parametrize("depth", [18, 34])
def test_torchvision_basic_resnet_to_identity_shortcut_backbone(depth):
    backbone = NormEvalResNet(depth=depth, freeze_at=-1, identity_res2_shortcut=True)
    shapes = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
    spec = torch_basic_resnet_spec(depth) + [("fc.weight", (1000, 512)), ("fc.bias", (1000,))]
    out = convert_state_dict(tagged(spec), shapes, backbone_only=True)
    assert sorted(out) == sorted(shapes)
    assert sorted(torchvision_resnet_table(depth).renames.values()) == sorted(shapes)


def test_ppdet_resnet18_layout_is_refused_by_name():
    """ppdet's own ResNet-18 has a 1x1 projection on res2a, which torch checkpoints lack."""
    resnet = ResNet(depth=18, variant="b", norm_type="bn", freeze_at=0, return_idx=[1, 2, 3])
    shapes = {k: tuple(v.shape) for k, v in resnet.state_dict().items()}
    with pytest.raises(ConversionError, match=r"res2\.res2a\.short\.conv\.weight"):
        convert_state_dict(tagged(torch_basic_resnet_spec(18)), shapes, backbone_only=True)


def test_identity_res2_shortcut_adds_the_input():
    paddle.seed(0)
    model = NormEvalResNet(depth=18, freeze_at=-1, identity_res2_shortcut=True, return_idx=[0])
    model.eval()
    block = model.res2.res2a
    assert not hasattr(block, "short") or "short" not in block._sub_layers
    x = paddle.randn([1, 64, 8, 8])
    branch = block.branch2b(block.branch2a(x))
    np.testing.assert_allclose(
        block(x).numpy(), paddle.nn.functional.relu(branch + x).numpy(), atol=1e-6
    )
    with pytest.raises(ValueError, match="identity_res2_shortcut"):
        NormEvalResNet(depth=50, identity_res2_shortcut=True)


def test_freeze_at_minus_one_trains_stem_bn_statistics():
    """freeze_at=-1 freezes nothing: the stem BN uses batch statistics (mmdet frozen_stages=-1)."""
    paddle.seed(0)
    model = NormEvalResNet(depth=18, freeze_at=-1, norm_eval=False)
    model.train()
    before = model.conv1.conv1.norm._mean.numpy().copy()
    model({"image": paddle.randn([2, 3, 64, 64]) * 3 + 1})
    assert not np.array_equal(before, model.conv1.conv1.norm._mean.numpy())
