"""ResNet with mmdet's ``norm_eval`` semantics: frozen BN statistics, trainable BN affine.

The reference (mmdet ``ResNet(frozen_stages=1, norm_eval=True, norm_cfg=dict(type='BN',
requires_grad=True))``) keeps every BatchNorm in eval mode, so the running mean/variance of the
ImageNet weights are used and never updated, while gamma/beta of the stages after the frozen ones
are trained. ppdet's ``ResNet(freeze_norm=True)`` freezes both (learning rate 0, ``stop_gradient``).

:class:`NormEvalResNet` is ppdet's ``ResNet`` with that choice made explicit:

- ``freeze_norm=False, norm_eval=True`` (default, the reference): each BatchNorm always uses its
  running statistics (also in train mode) and never updates them; gamma/beta are trainable, with
  learning rate 1, in every stage after ``freeze_at``.
- ``freeze_norm=True``: ppdet's behaviour, statistics and affine frozen (``norm_eval`` is implied).
- ``freeze_norm=False, norm_eval=False``: ordinary train-mode BatchNorm (batch statistics, running
  statistics updated) in the stages after ``freeze_at``; for training from scratch.

In every mode the stem and the stages up to ``freeze_at`` (ppdet numbering: 0 = stem + res2, i.e.
mmdet ``frozen_stages=1``) are frozen: ``stop_gradient`` parameters and BatchNorm on running
statistics, as mmdet puts the frozen stages in eval mode.

Weight decay of the BN affine: mmdet's SGD decays every parameter, BN gamma/beta included, while
ppdet attaches ``L2Decay(norm_decay)`` (0 by default) to them, which overrides the optimizer's decay.
``norm_decay=None`` (default here) attaches no regulariser, so the optimizer's weight decay applies
as in the reference; a float restores ppdet's per-parameter ``L2Decay(norm_decay)``.

ResNet-18/34 shortcut of res2a: ppdet's ``ResNet`` gives the first block of every stage a 1x1
conv + BN projection shortcut, also res2a of the BasicBlock depths, whose input and output are
both 64 channels at stride 1; torchvision's and mmdet's ResNet-18/34 use the identity there
(``downsample`` only when the stride or the channels change). ``identity_res2_shortcut=True``
removes that projection (``res2.res2a.short``) so that the network, and its state dict, are
torchvision's / mmdet's; the default keeps ppdet's layout. Bottleneck depths are unaffected (their
res2a changes channels, 64 -> 256, in both frameworks).

State-dict names are ppdet's ``ResNet`` names, unchanged (``conv1.conv1.conv.weight``,
``res2.res2a.branch2a.norm._mean`` ...).
"""

import logging

import paddle.nn as nn
from paddle import ParamAttr
from paddle.regularizer import L2Decay
from ppdet.core.workspace import register, serializable
from ppdet.modeling.backbones.resnet import ConvNormLayer, ResNet

__all__ = ["NormEvalResNet"]

logger = logging.getLogger(__name__)


@register
@serializable
class NormEvalResNet(ResNet):
    """ppdet ``ResNet`` whose BatchNorms follow mmdet ``norm_eval`` (see the module docstring).

    Args:
        depth: 18, 34, 50, 101 or 152.
        variant: ppdet ResNet variant; 'b' is mmdet's "pytorch" style (stride on the 3x3 conv).
        freeze_at: stem and stages ``res2 .. res(2 + freeze_at)`` are frozen; -1 freezes nothing
            (ppdet numbering: 0 == mmdet ``frozen_stages=1``).
        return_idx: stages whose outputs are returned (1, 2, 3 -> C3, C4, C5).
        num_stages: number of residual stages built (1-4).
        freeze_norm: True for ppdet's frozen norm (statistics and affine frozen).
        norm_eval: with ``freeze_norm=False``, True keeps BN statistics frozen (the reference),
            False trains BN normally.
        norm_decay: None: the optimizer's weight decay applies to BN gamma/beta (the reference);
            a float: ppdet's per-parameter ``L2Decay(norm_decay)`` instead.
        norm_type: 'bn' or 'sync_bn' (ppdet's ResNet supports no other).
        lr_mult_list: learning-rate multipliers of the conv weights of res2-res5.
        identity_res2_shortcut: depth 18/34 only: res2a adds its input unchanged (torchvision /
            mmdet) instead of through ppdet's 1x1 conv + BN projection.
    """

    __shared__ = []

    def __init__(
        self,
        depth: int = 50,
        variant: str = "b",
        freeze_at: int = 0,
        return_idx: list = (1, 2, 3),
        num_stages: int = 4,
        freeze_norm: bool = False,
        norm_eval: bool = True,
        norm_decay: float | None = None,
        norm_type: str = "bn",
        lr_mult_list: list = (1.0, 1.0, 1.0, 1.0),
        identity_res2_shortcut: bool = False,
    ):
        if norm_type not in ("bn", "sync_bn"):
            raise ValueError(f"norm_type must be 'bn' or 'sync_bn', got {norm_type!r}")
        if depth not in (18, 34, 50, 101, 152):
            raise ValueError(f"depth must be one of 18, 34, 50, 101, 152, got {depth}")
        if not -1 <= freeze_at < num_stages:
            raise ValueError(f"freeze_at must be in [-1, {num_stages - 1}], got {freeze_at}")
        if identity_res2_shortcut and depth not in (18, 34):
            raise ValueError(
                f"identity_res2_shortcut is for the BasicBlock depths 18 and 34, not {depth}"
            )
        super().__init__(
            depth=depth,
            variant=variant,
            lr_mult_list=list(lr_mult_list),
            norm_type=norm_type,
            norm_decay=0.0 if norm_decay is None else float(norm_decay),
            freeze_norm=freeze_norm,
            freeze_at=freeze_at,
            return_idx=list(return_idx),
            num_stages=num_stages,
        )
        if identity_res2_shortcut:
            first = self.res_layers[0].blocks[0]
            first.shortcut = True  # ppdet BasicBlock: shortcut=True adds the input itself
            delattr(first, "short")
        self.norm_eval = bool(norm_eval)
        self.norm_decay_mode = "optimizer" if norm_decay is None else "per-parameter"
        # freeze_at=-1 freezes nothing, the stem included (mmdet frozen_stages=-1, ppdet's ResNet)
        frozen = [self.conv1] + list(self.res_layers[: freeze_at + 1]) if freeze_at >= 0 else []
        if not freeze_norm:
            frozen_ids = {id(layer) for stage in frozen for layer in stage.sublayers()}
            for layer in self.sublayers():
                if isinstance(layer, ConvNormLayer):
                    global_stats = self.norm_eval or id(layer) in frozen_ids
                    layer.norm = _batch_norm(layer.norm, global_stats, norm_decay)
        # the new norms of the frozen stages must be frozen too (ppdet froze the old ones)
        if freeze_at >= 0:
            for stage in frozen:
                for param in stage.parameters():
                    param.stop_gradient = True
        logger.debug(
            "NormEvalResNet depth=%d freeze_at=%d freeze_norm=%s norm_eval=%s norm_decay=%s",
            depth,
            freeze_at,
            freeze_norm,
            norm_eval,
            norm_decay,
        )


def _batch_norm(old: nn.BatchNorm2D, use_global_stats: bool, norm_decay: float | None):
    """A BatchNorm2D like ``old`` with a trainable affine (lr 1) and, if asked, frozen statistics."""
    regularizer = None if norm_decay is None else L2Decay(float(norm_decay))
    norm = nn.BatchNorm2D(
        old.weight.shape[0],
        momentum=old._momentum,
        epsilon=old._epsilon,
        weight_attr=ParamAttr(learning_rate=1.0, regularizer=regularizer),
        bias_attr=ParamAttr(learning_rate=1.0, regularizer=regularizer),
        use_global_stats=True if use_global_stats else None,
    )
    return norm
