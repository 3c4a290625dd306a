"""Model pieces of RetinaNet-GHM R50-FPN, registered in ppdet's workspace on import.

=====================  ==================================================================
module                 registered classes
=====================  ==================================================================
``backbone``           ``NormEvalResNet``: ppdet ResNet with mmdet ``norm_eval`` BN
``fpn``                ``RetinaFPN``: P3-P7, P6 from C5, no ReLU before the extra convs
``anchors``            ``OctaveAnchorGenerator``: mmdet v2+ anchors (offset 0)
``assigner``           ``MaxIoUAnchorAssigner``: mmdet MaxIoUAssigner with low-quality matches
``box_coder``          ``DeltaXYWHBoxCoder``: mmdet DeltaXYWHBBoxCoder
``postprocess``        ``RetinaPostProcessor``: mmdet 3.x test-time filtering + class-aware NMS
``head``               ``GHMRetinaHead``: per-FPN-level losses (the reference's granularity)
``layers``             (not registered) ``ChannelBiasConv2D``, ``upsample_nearest``: CPU- and
                       oneDNN-friendly stand-ins with the numbers of the ops they replace
``onednn_conv``        (not registered) ``use_onednn_convs``, ``for_training``: a model's
                       convolutions on oneDNN for CPU training (a C++ extension built at
                       first use)
``threaded_conv``      (not registered) Paddle's CPU convolution kernels on two threads, same
                       bits (the demo's training)
``frozen_bn``          (not registered) ``use_fused_frozen_bn``, ``for_training``: each
                       frozen-statistics BN with its ReLU (and shortcut) as one multi-threaded
                       op for CPU training, Paddle's bits but for gamma / beta sums
=====================  ==================================================================

The architecture is ppdet's own ``RetinaNet`` (``backbone``, ``neck``, ``head``). The losses, GHM
and the Focal / Smooth-L1 baseline, are in :mod:`ppdet_ghm.losses`.
"""

from ppdet_ghm.modeling import (  # noqa: F401  (imported to register in ppdet)
    anchors,
    assigner,
    backbone,
    box_coder,
    fpn,
    head,
    postprocess,
)
from ppdet_ghm.modeling.anchors import OctaveAnchorGenerator
from ppdet_ghm.modeling.assigner import MaxIoUAnchorAssigner
from ppdet_ghm.modeling.backbone import NormEvalResNet
from ppdet_ghm.modeling.box_coder import DeltaXYWHBoxCoder
from ppdet_ghm.modeling.fpn import RetinaFPN
from ppdet_ghm.modeling.head import GHMRetinaHead
from ppdet_ghm.modeling.postprocess import RetinaPostProcessor

__all__ = [
    "DeltaXYWHBoxCoder",
    "GHMRetinaHead",
    "MaxIoUAnchorAssigner",
    "NormEvalResNet",
    "OctaveAnchorGenerator",
    "RetinaFPN",
    "RetinaPostProcessor",
]
