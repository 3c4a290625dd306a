"""Two CPU-friendly stand-ins for Paddle ops, with the same numbers as the ops they replace.

* :class:`ChannelBiasConv2D`: ``nn.Conv2D`` whose bias is added as ``[C, 1, 1]`` in dygraph.
  Paddle 3.3.1's ``F.conv2d`` adds it as ``[1, C, 1, 1]``, a broadcast that its CPU kernels run
  4x slower (forward + backward ~9 % of a RetinaNet training iteration; BENCHMARKS.md, Model).
* :func:`upsample_nearest`: the FPN's top-down nearest upsampling; when traced for export it is
  written as repeat-2x2-and-crop, because Paddle 3.3.1's oneDNN predictor cannot run the
  exported ``nearest_interp`` op (``ConvertPirAttribute2RuntimeAttribute not support``).
"""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

__all__ = ["ChannelBiasConv2D", "upsample_nearest"]


class ChannelBiasConv2D(nn.Conv2D):
    """``nn.Conv2D`` (NCHW, zero padding) that adds its bias as ``[C, 1, 1]`` in dygraph.

    Same parameters, names and outputs as ``nn.Conv2D`` (the add is elementwise either way;
    tests compare outputs and gradients); under ``paddle.jit.to_static`` it is ``nn.Conv2D``
    exactly, so exported graphs keep the conv + bias pattern that inference passes fuse.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self._data_format != "NCHW" or self._padding_mode != "zeros":
            raise ValueError(
                f"ChannelBiasConv2D supports data_format='NCHW' and padding_mode='zeros', got "
                f"{self._data_format!r} and {self._padding_mode!r}"
            )

    def forward(self, x):
        """[N, C_in, H, W] -> [N, C_out, H', W']."""
        if self.bias is None or not paddle.in_dynamic_mode():
            return super().forward(x)
        out = F.conv2d(
            x,
            self.weight,
            None,
            stride=self._stride,
            padding=self._padding,
            dilation=self._dilation,
            groups=self._groups,
        )
        return out + self.bias.reshape([-1, 1, 1])


def upsample_nearest(x, size):
    """[N, C, h, w] ``x`` -> [N, C, H, W] nearest-neighbour upsampled to ``size`` = (H, W), as
    mmdet FPN's ``F.interpolate(x, size=..., mode='nearest')``.

    In dygraph this is ``F.interpolate``. Traced (``to_static``, for export) it repeats every
    pixel 2x2 and crops to ``size``: the same values whenever each output side is ``2s`` or
    ``2s - 1`` for input side ``s``, which holds between FPN levels of stride-2 convs
    (``ceil(s / 2)`` in, ``s`` out). A larger output (e.g. after a floor-mode pooling) makes the
    following add fail on shapes instead of giving other numbers.
    """
    if paddle.in_dynamic_mode():
        return F.interpolate(x, size=size, mode="nearest")
    n, c, h, w = paddle.shape(x)
    up = x.unsqueeze([3, 5]).expand([n, c, h, 2, w, 2]).reshape([n, c, 2 * h, 2 * w])
    return up[:, :, : size[0], : size[1]]
