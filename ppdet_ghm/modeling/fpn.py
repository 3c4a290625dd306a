"""RetinaNet FPN (P3-P7) as mmdet ``FPN(start_level=1, add_extra_convs='on_input', num_outs=5)``.

Differences to ppdet's stock ``FPN`` config for RetinaNet: P6 is computed from C5 (mmdet
``'on_input'``; ppdet ``use_c5: false`` takes P5) and there is no ReLU before the extra convs
(mmdet ``relu_before_extra_convs=False``; ppdet applies one).
"""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle import ParamAttr
from paddle.nn.initializer import Constant, XavierUniform
from ppdet.core.workspace import register, serializable
from ppdet.modeling.shape_spec import ShapeSpec

from ppdet_ghm.modeling.layers import ChannelBiasConv2D, upsample_nearest

__all__ = ["RetinaFPN"]

_EXTRA_SOURCES = ("input", "lateral", "output")


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
    """Conv2D with bias, Xavier-uniform weights and zero bias (mmdet FPN init)."""
    return ChannelBiasConv2D(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=(kernel_size - 1) // 2,
        weight_attr=ParamAttr(initializer=XavierUniform()),
        bias_attr=ParamAttr(initializer=Constant(0.0)),
    )


def _spatial_size(x):
    """(H, W) of [N, C, H, W] ``x``: ints in dygraph, an int tensor under ``paddle.jit.to_static``."""
    return x.shape[2:] if paddle.in_dynamic_mode() else paddle.shape(x)[2:]


@register
@serializable
class RetinaFPN(nn.Layer):
    """Feature pyramid P3-P7 from C3-C5 with mmdet FPN semantics.

    ``lateral_convs[i]`` (1x1) maps C(3+i) to 256 channels; top-down, each lateral gets the
    nearest-neighbour upsampling (to its own size, as mmdet ``F.interpolate(size=...)``) of the one
    above added; ``fpn_convs[i]`` (3x3) gives P(3+i). ``fpn_convs[3]`` is a stride-2 3x3 conv on the
    extra source (C5 for ``extra_source='input'``) giving P6; ``fpn_convs[4]`` a stride-2 3x3 conv on
    P6 giving P7 (ReLU in between only with ``relu_before_extra_convs``).

    Args:
        in_channels: channels of the inputs (C3, C4, C5), filled from the backbone's out_shape.
        out_channel: channels of every output level.
        num_extra_levels: extra stride-2 levels on top (2: P6, P7).
        extra_source: 'input' (C5, the reference), 'lateral' (C5 lateral) or 'output' (P5).
        relu_before_extra_convs: ReLU on the input of the second and later extra convs.
        strides: strides of the inputs (8, 16, 32), filled from the backbone's out_shape.
    """

    def __init__(
        self,
        in_channels: list = (512, 1024, 2048),
        out_channel: int = 256,
        num_extra_levels: int = 2,
        extra_source: str = "input",
        relu_before_extra_convs: bool = False,
        strides: list = (8, 16, 32),
    ):
        super().__init__()
        if extra_source not in _EXTRA_SOURCES:
            raise ValueError(f"extra_source must be one of {_EXTRA_SOURCES}, got {extra_source!r}")
        if num_extra_levels < 0:
            raise ValueError(f"num_extra_levels must be >= 0, got {num_extra_levels}")
        if len(in_channels) != len(strides):
            raise ValueError(f"in_channels {in_channels} and strides {strides} differ in length")
        self.in_channels = list(in_channels)
        self.out_channel = out_channel
        self.num_extra_levels = num_extra_levels
        self.extra_source = extra_source
        self.relu_before_extra_convs = relu_before_extra_convs
        self.in_strides = list(strides)

        self.lateral_convs = nn.LayerList([_conv(c, out_channel, 1) for c in self.in_channels])
        fpn_convs = [_conv(out_channel, out_channel, 3) for _ in self.in_channels]
        for i in range(num_extra_levels):
            source_channels = (
                self.in_channels[-1] if i == 0 and extra_source == "input" else out_channel
            )
            fpn_convs.append(_conv(source_channels, out_channel, 3, stride=2))
        self.fpn_convs = nn.LayerList(fpn_convs)

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {
            "in_channels": [spec.channels for spec in input_shape],
            "strides": [spec.stride for spec in input_shape],
        }

    @property
    def out_shape(self):
        strides = self.in_strides + [
            self.in_strides[-1] * 2 ** (i + 1) for i in range(self.num_extra_levels)
        ]
        return [ShapeSpec(channels=self.out_channel, stride=s) for s in strides]

    def forward(self, body_feats):
        """list of [N, C_i, H_i, W_i] (C3-C5) -> list of [N, out_channel, H_l, W_l] (P3-P7)."""
        if len(body_feats) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} inputs, got {len(body_feats)}")
        # (no zip(strict=...): paddle.jit.to_static's zip does not take it)
        laterals = [conv(body_feats[i]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):
            size = _spatial_size(laterals[i - 1])
            laterals[i - 1] = laterals[i - 1] + upsample_nearest(laterals[i], size)
        outs = [self.fpn_convs[i](lat) for i, lat in enumerate(laterals)]
        num_levels = len(laterals)
        if self.num_extra_levels > 0:
            source = {"input": body_feats[-1], "lateral": laterals[-1], "output": outs[-1]}
            outs.append(self.fpn_convs[num_levels](source[self.extra_source]))
            for i in range(num_levels + 1, num_levels + self.num_extra_levels):
                x = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
                outs.append(self.fpn_convs[i](x))
        return outs
