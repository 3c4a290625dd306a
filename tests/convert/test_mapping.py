"""ppdet_ghm.convert.mapping and the CLI: the rename table against ppdet's real ResNet, strictness,
atomic output, and loading the result with ppdet's own loaders.

Source names are written out here from the architecture (torchvision / mmdet ResNet-50, mmdet FPN
and RetinaHead), independently of the converter's table; tests/convert/test_vs_torch.py checks them
against mmdet's real model where torch is installed.
"""

import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
from ppdet.modeling.backbones.resnet import ResNet

from ppdet_ghm.convert import (
    ConversionError,
    convert_state_dict,
    main,
    mmdet_retinanet_table,
    save_pdparams_atomic,
    torchvision_resnet_table,
)
from ppdet_ghm.convert.cli import DEFAULT_CONFIG
from ppdet_ghm.convert.mapping import mmdet_backbone_table, reference_ghm_edges
from tests.helpers import REPO as _REPO
from tests.helpers.torch_files import contiguous, write_zip_checkpoint
from tests.helpers.torch_specs import (
    mmdet_retinanet_ghm_spec,
    tagged_state_dict,
    torch_resnet50_spec,
    torchvision_resnet50_spec,
)

REPO = str(_REPO)


def test_table_counts():
    full = mmdet_retinanet_table()
    prefixes = {}
    for old in full.renames:
        prefixes[old.split(".")[0]] = prefixes.get(old.split(".")[0], 0) + 1
    assert prefixes == {"backbone": 265, "neck": 16, "bbox_head": 22}  # 20 convs + 2 acc_sum
    assert len(full.skips) == 55  # 53 num_batches_tracked + 2 edges
    assert sum(k.endswith("num_batches_tracked") for k in full.skips) == 53
    assert set(full.renames) | set(full.skips) == {n for n, _ in mmdet_retinanet_ghm_spec()}
    tv = torchvision_resnet_table()
    assert len(tv.renames) == 265 and len(tv.skips) == 55  # 53 counters + fc.weight + fc.bias
    assert set(tv.renames) | set(tv.skips) == {n for n, _ in torchvision_resnet50_spec()}
    assert (
        full.dump().splitlines()[0] == "backbone.conv1.weight -> backbone.conv1.conv1.conv.weight"
    )


@pytest.mark.parametrize(
    "old,new",
    [
        ("conv1.weight", "conv1.conv1.conv.weight"),
        ("bn1.running_mean", "conv1.conv1.norm._mean"),
        ("bn1.running_var", "conv1.conv1.norm._variance"),
        ("layer1.0.downsample.0.weight", "res2.res2a.short.conv.weight"),
        ("layer1.0.downsample.1.running_mean", "res2.res2a.short.norm._mean"),
        ("layer2.3.conv2.weight", "res3.res3d.branch2b.conv.weight"),
        ("layer3.5.bn2.running_var", "res4.res4f.branch2b.norm._variance"),
        ("layer3.5.bn3.bias", "res4.res4f.branch2c.norm.bias"),
        ("layer4.2.bn1.weight", "res5.res5c.branch2a.norm.weight"),
    ],
)
def test_table_spot_checks(old, new):
    assert torchvision_resnet_table().renames[old] == new
    assert mmdet_retinanet_table().renames[f"backbone.{old}"] == f"backbone.{new}"


def test_table_covers_ppdet_resnet(resnet_shapes):
    """Every ppdet ResNet-50 parameter is the image of exactly one torch name, with its shape."""
    tv = torchvision_resnet_table()
    assert sorted(tv.renames.values()) == sorted(resnet_shapes)
    spec = dict(torch_resnet50_spec())
    for old, new in tv.renames.items():
        assert spec[old] == resnet_shapes[new], (old, new)


def test_table_depth_101_names():
    resnet = ResNet(depth=101, variant="b", norm_type="bn", freeze_at=0, return_idx=[1, 2, 3])
    renames = torchvision_resnet_table(depth=101).renames
    assert sorted(renames.values()) == sorted(resnet.state_dict())
    assert renames["layer3.22.conv1.weight"] == "res4.res4b22.branch2a.conv.weight"
    with pytest.raises(ValueError, match="depth=26"):
        torchvision_resnet_table(depth=26)


def test_convert_torchvision_backbone(resnet_shapes, caplog):
    src = tagged_state_dict(torchvision_resnet50_spec())
    with caplog.at_level("INFO", logger="ppdet_ghm.convert.mapping"):
        out = convert_state_dict(src, resnet_shapes, backbone_only=True, verbose=True)
    assert list(out) == list(resnet_shapes)
    renames = torchvision_resnet_table().renames
    for old, new in renames.items():
        assert out[new] is src[old]
    assert "layer1.0.bn1.running_var -> res2.res2a.branch2a.norm._variance" in caplog.text
    assert "fc.weight -> (skipped: ImageNet classifier" in caplog.text
    # old torchvision files carry no num_batches_tracked: those skips are optional
    lean = {k: v for k, v in src.items() if not k.endswith("num_batches_tracked")}
    assert len(convert_state_dict(lean, resnet_shapes, backbone_only=True)) == 265


def test_convert_mmdet_backbone_only(resnet_shapes):
    src = tagged_state_dict(mmdet_retinanet_ghm_spec())
    out = convert_state_dict(src, resnet_shapes, backbone_only=True)
    assert out["res5.res5c.branch2c.norm._mean"] is src["backbone.layer4.2.bn3.running_mean"]
    assert len(out) == 265 and len(mmdet_backbone_table().skips) == 358 - 265


def test_convert_full_model(model_shapes):
    src = tagged_state_dict(mmdet_retinanet_ghm_spec())
    src["bbox_head.loss_cls.acc_sum"] = np.linspace(1, 30, 30, dtype=np.float32)
    out = convert_state_dict(src, model_shapes)
    assert list(out) == list(model_shapes) and len(out) == 303
    assert out["neck.fpn_convs.3.weight"] is src["neck.fpn_convs.3.conv.weight"]
    assert out["head.retina_cls.bias"] is src["bbox_head.retina_cls.bias"]
    assert out["head.loss_cls.acc_sum"] is src["bbox_head.loss_cls.acc_sum"]


def test_missing_ghm_buffers_default_to_zeros(model_shapes):
    """The 2020 checkpoint predates the GHM buffers: acc_sum starts at zero like a fresh loss."""
    src = tagged_state_dict(mmdet_retinanet_ghm_spec(ghm_buffers=False))
    out = convert_state_dict(src, model_shapes)
    for name, bins in (("head.loss_cls.acc_sum", 30), ("head.loss_bbox.acc_sum", 10)):
        assert out[name].dtype == np.float32
        np.testing.assert_array_equal(out[name], np.zeros(bins, np.float32))
    # and a model without acc_sum (momentum 0) drops the checkpoint's
    no_acc = {k: v for k, v in model_shapes.items() if not k.endswith("acc_sum")}
    full = tagged_state_dict(mmdet_retinanet_ghm_spec())
    assert set(convert_state_dict(full, no_acc)) == set(no_acc)


def test_all_problems_reported_together(model_shapes):
    src = tagged_state_dict(mmdet_retinanet_ghm_spec())
    del src["backbone.layer2.1.bn2.running_var"]  # missing
    src["neck.extra_conv.weight"] = np.zeros(3, np.float32)  # unmapped
    src["bbox_head.retina_cls.weight"] = np.zeros((18, 256, 3, 3), np.float32)  # 2 classes
    src["bbox_head.loss_bbox.edges"] = np.arange(11, dtype=np.float32) / 10  # last edge not 1e3
    with pytest.raises(ConversionError) as err:
        convert_state_dict(src, model_shapes)
    msg = str(err.value)
    assert "source keys neither renamed nor skipped (1):\n  neck.extra_conv.weight" in msg
    assert (
        "target keys not filled (1):\n  backbone.res3.res3b.branch2b.norm._variance "
        "(from backbone.layer2.1.bn2.running_var)"
    ) in msg
    assert (
        "bbox_head.retina_cls.weight (18, 256, 3, 3) -> head.retina_cls.weight (720, 256, 3, 3)"
        in msg
    )
    assert "bbox_head.loss_bbox.edges: values" in msg and "1000.0" in msg


def test_target_key_without_source_name(resnet_shapes):
    src = tagged_state_dict(torchvision_resnet50_spec())
    shapes = dict(resnet_shapes, **{"res6.extra.weight": (3,)})
    with pytest.raises(ConversionError, match=r"res6\.extra\.weight \(no source name maps to it\)"):
        convert_state_dict(src, shapes, backbone_only=True)


def test_edges_bins_must_match_model(model_shapes):
    src = tagged_state_dict(mmdet_retinanet_ghm_spec())
    src["bbox_head.loss_cls.edges"] = reference_ghm_edges("bbox_head.loss_cls.edges", 11)
    with pytest.raises(ConversionError, match=r"10 bins, but the model's head\.loss_cls\.acc_sum"):
        convert_state_dict(src, model_shapes)


def test_reference_edges_values():
    cls_edges = reference_ghm_edges("bbox_head.loss_cls.edges", 31)
    assert cls_edges.dtype == np.float32
    assert cls_edges[1] == np.float32(1) / np.float32(30)
    assert cls_edges[-1] == np.float32(np.float32(1.0) + np.float32(1e-6)) > 1.0
    reg_edges = reference_ghm_edges("bbox_head.loss_bbox.edges", 11)
    assert reg_edges[-1] == 1000.0 and reg_edges[5] == np.float32(0.5)


def test_full_conversion_needs_mmdet_layout(model_shapes):
    src = tagged_state_dict(torchvision_resnet50_spec())
    with pytest.raises(ConversionError, match="--backbone-only"):
        convert_state_dict(src, model_shapes)


class _Detector(paddle.nn.Layer):
    """Stand-in of a detector whose backbone is ppdet's ResNet (as load_pretrain_weight sees it)."""

    def __init__(self):
        super().__init__()
        self.backbone = ResNet(
            depth=50, variant="b", norm_type="bn", freeze_at=0, return_idx=[1, 2, 3]
        )
        self.neck = paddle.nn.Conv2D(2048, 8, 1)


def test_cli_backbone_only_loads_as_pretrain_weights(tmp_path, capsys):
    from ppdet.utils.checkpoint import load_pretrain_weight

    src = tagged_state_dict(torchvision_resnet50_spec())
    names = [n for n, _ in torchvision_resnet50_spec()]
    torch_file = tmp_path / "resnet50.pth"
    write_zip_checkpoint(torch_file, {n: contiguous(str(i), src[n]) for i, n in enumerate(names)})
    dst = tmp_path / "resnet50_paddle.pdparams"
    assert main([str(torch_file), str(dst), "--backbone-only", "--verbose"]) == 0
    printed = capsys.readouterr().out
    assert "layer4.2.conv3.weight -> res5.res5c.branch2c.conv.weight" in printed
    assert "320 source tensors: 265 renamed, 55 skipped; 265 written (backbone: 265)" in printed
    model = _Detector()
    load_pretrain_weight(model, str(dst)[: -len(".pdparams")])
    state = model.state_dict()
    for old, new in torchvision_resnet_table().renames.items():
        np.testing.assert_array_equal(state[f"backbone.{new}"].numpy(), src[old], err_msg=new)
    # leftovers in the directory: only the two files
    assert sorted(os.listdir(tmp_path)) == sorted([torch_file.name, dst.name])


def test_cli_failure_writes_nothing(tmp_path, capsys):
    src = tagged_state_dict(torchvision_resnet50_spec())
    del src["layer3.0.conv2.weight"]
    torch_file = write_zip_checkpoint(
        tmp_path / "r.pth", {n: contiguous(str(i), a) for i, (n, a) in enumerate(src.items())}
    )
    dst = tmp_path / "out.pdparams"
    assert main([str(torch_file), str(dst), "--backbone-only"]) == 1
    assert "res4.res4a.branch2b.conv.weight (from layer3.0.conv2.weight)" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["r.pth"]
    with pytest.raises(SystemExit):
        main([str(torch_file), str(tmp_path / "out.bin"), "--backbone-only"])


def test_atomic_write_keeps_old_file_on_error(tmp_path, monkeypatch):
    dst = tmp_path / "w.pdparams"
    save_pdparams_atomic({"a": np.arange(3, dtype=np.float32)}, dst)
    before = dst.read_bytes()

    def broken_replace(src, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_pdparams_atomic({"a": np.zeros(5, np.float32)}, dst)
    assert dst.read_bytes() == before
    assert os.listdir(tmp_path) == ["w.pdparams"]
    monkeypatch.undo()
    save_pdparams_atomic({"a": np.zeros(5, np.float32)}, dst)
    np.testing.assert_array_equal(paddle.load(str(dst))["a"].numpy(), np.zeros(5, np.float32))
    umask = os.umask(0)
    os.umask(umask)
    assert dst.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_python_m_refuses_malicious_file(tmp_path):
    """``python -m ppdet_ghm.convert`` end to end: exit 1, the global named, nothing run/written."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    src = write_zip_checkpoint(tmp_path / "evil.pth", {"state_dict": {}, "meta": Evil()})
    dst = tmp_path / "out.pdparams"
    proc = subprocess.run(
        [sys.executable, "-m", "ppdet_ghm.convert", str(src), str(dst), "--backbone-only"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=REPO),
    )
    assert proc.returncode == 1, proc.stderr
    assert "posix.system" in proc.stderr or "os.system" in proc.stderr
    assert not marker.exists() and not dst.exists()


def test_full_model_conversion_loads_with_load_weight(tmp_path):
    """The converted mmdet-named state_dict fills our real model (ppdet ``weights:`` loader)."""
    builder = pytest.importorskip("ppdet_ghm.builder")
    if not os.path.isfile(DEFAULT_CONFIG):
        pytest.skip(f"no {DEFAULT_CONFIG}")
    from ppdet.utils.checkpoint import load_pretrain_weight, load_weight

    spec = mmdet_retinanet_ghm_spec()
    src = tagged_state_dict(spec)
    src["bbox_head.loss_bbox.acc_sum"] = np.arange(10, dtype=np.float32) + 0.5
    torch_file = write_zip_checkpoint(
        tmp_path / "retinanet_ghm.pth",
        {
            "meta": {"epoch": 12},
            "state_dict": {n: contiguous(str(i), src[n]) for i, (n, _) in enumerate(spec)},
        },
    )
    dst = tmp_path / "retinanet_ghm.pdparams"
    assert main([str(torch_file), str(dst)]) == 0
    model = builder.build_model(DEFAULT_CONFIG)

    # --backbone-only output of the same file: ppdet `pretrain_weights` fill exactly the backbone
    backbone_dst = tmp_path / "backbone.pdparams"
    assert main([str(torch_file), str(backbone_dst), "--backbone-only"]) == 0
    load_pretrain_weight(model, str(backbone_dst)[: -len(".pdparams")])
    state = model.state_dict()
    for old, new in mmdet_retinanet_table().renames.items():
        tagged = state[new].numpy().flat[0] == src[old].flat[0]
        assert tagged == old.startswith("backbone."), old

    load_weight(model, str(dst))  # asserts that no model key is unmatched
    state = model.state_dict()
    renames = mmdet_retinanet_table().renames
    assert set(state) == {renames[k] for k in src if k in renames}
    for old in src:
        if old in renames:
            np.testing.assert_array_equal(state[renames[old]].numpy(), src[old], err_msg=old)
