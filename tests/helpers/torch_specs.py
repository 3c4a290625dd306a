"""``[(name, shape)]`` of the torch models the converter reads (torchvision / mmdet ResNet-50, mmdet
FPN and RetinaHead with the GHM buffers), written out from the architecture independently of the
converter's table, and state dicts tagged so that every tensor can be traced through a conversion."""

import numpy as np

from ppdet_ghm.convert.mapping import reference_ghm_edges

BLOCKS = (3, 4, 6, 3)
WIDTHS = (64, 128, 256, 512)


def _bn(name, c):
    return [(f"{name}.{p}", (c,)) for p in ("weight", "bias", "running_mean", "running_var")] + [
        (f"{name}.num_batches_tracked", ())
    ]


def torch_resnet50_spec(prefix=""):
    """``[(name, shape)]`` of a torch ResNet-50 (torchvision / mmdet names) without ``fc``."""
    spec = [(f"{prefix}conv1.weight", (64, 3, 7, 7))] + _bn(f"{prefix}bn1", 64)
    cin = 64
    for layer, (blocks, width) in enumerate(zip(BLOCKS, WIDTHS, strict=True), start=1):
        for b in range(blocks):
            p = f"{prefix}layer{layer}.{b}"
            spec += [(f"{p}.conv1.weight", (width, cin, 1, 1))] + _bn(f"{p}.bn1", width)
            spec += [(f"{p}.conv2.weight", (width, width, 3, 3))] + _bn(f"{p}.bn2", width)
            spec += [(f"{p}.conv3.weight", (4 * width, width, 1, 1))] + _bn(f"{p}.bn3", 4 * width)
            if b == 0:
                spec += [(f"{p}.downsample.0.weight", (4 * width, cin, 1, 1))]
                spec += _bn(f"{p}.downsample.1", 4 * width)
            cin = 4 * width
    return spec


def torchvision_resnet50_spec():
    return torch_resnet50_spec() + [("fc.weight", (1000, 2048)), ("fc.bias", (1000,))]


def mmdet_retinanet_ghm_spec(ghm_buffers=True):
    """``[(name, shape)]`` of mmdet's RetinaNet-GHM R50-FPN (80 classes, 9 anchors)."""
    spec = torch_resnet50_spec("backbone.")
    for i, c in enumerate((512, 1024, 2048)):
        spec += [(f"neck.lateral_convs.{i}.conv.weight", (256, c, 1, 1))]
        spec += [(f"neck.lateral_convs.{i}.conv.bias", (256,))]
    for i, c in enumerate((256, 256, 256, 2048, 256)):
        spec += [(f"neck.fpn_convs.{i}.conv.weight", (256, c, 3, 3))]
        spec += [(f"neck.fpn_convs.{i}.conv.bias", (256,))]
    if ghm_buffers:
        spec += [("bbox_head.loss_cls.edges", (31,)), ("bbox_head.loss_cls.acc_sum", (30,))]
        spec += [("bbox_head.loss_bbox.edges", (11,)), ("bbox_head.loss_bbox.acc_sum", (10,))]
    for tower in ("cls_convs", "reg_convs"):
        for i in range(4):
            spec += [(f"bbox_head.{tower}.{i}.conv.weight", (256, 256, 3, 3))]
            spec += [(f"bbox_head.{tower}.{i}.conv.bias", (256,))]
    spec += [
        ("bbox_head.retina_cls.weight", (720, 256, 3, 3)),
        ("bbox_head.retina_cls.bias", (720,)),
    ]
    spec += [("bbox_head.retina_reg.weight", (36, 256, 3, 3)), ("bbox_head.retina_reg.bias", (36,))]
    return spec


def tagged_state_dict(spec):
    """``{name: array}``: float32 zeros (lazily allocated) with a distinct tag as first element;
    int64 counters for ``num_batches_tracked``; reference edges for the GHM ``edges``."""
    out = {}
    for i, (name, shape) in enumerate(spec):
        if name.endswith("num_batches_tracked"):
            out[name] = np.array(1000 + i, dtype=np.int64)
        elif name.endswith(".edges"):
            out[name] = reference_ghm_edges(name, shape[0])
        else:
            arr = np.zeros(shape, dtype=np.float32)
            arr.flat[0] = i + 1
            out[name] = arr
    return out
