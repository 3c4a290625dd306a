"""RetinaNet anchors, identical to mmdet v2+ ``AnchorGenerator`` (octave scales, offset 0).

Per level with stride ``s`` the base anchors are centred at ``(center_offset * s, center_offset * s)``
(0 for RetinaNet: the anchor centre sits on the top-left corner of its feature cell, mmdet v2+),
``A = len(ratios) * scales_per_octave`` of them, ordered ratio-major (``scale_major=True``): for
ratios r0, r1, r2 and scales s0, s1, s2 the order is (r0,s0), (r0,s1), (r0,s2), (r1,s0), ...
with ``h / w = ratio``. The anchors of a level are ordered (y, x, anchor): row of feature cells,
then column, then base anchor, so that a head output [N, A*K, H, W] transposed to [N, H, W, A*K]
and reshaped to [N, H*W*A, K] lines up with them.
"""

import numpy as np
import paddle
from ppdet.core.workspace import register, serializable

__all__ = ["OctaveAnchorGenerator"]


@register
@serializable
class OctaveAnchorGenerator:
    """Multi-level anchors as mmdet ``AnchorGenerator(octave_base_scale, scales_per_octave, ...)``.

    Args:
        octave_base_scale: anchor size in units of the stride (4: 32 px at stride 8).
        scales_per_octave: scales ``octave_base_scale * 2**(i / scales_per_octave)``.
        ratios: height / width ratios.
        strides: stride of each level in pixels (P3-P7: 8 ... 128).
        center_offset: anchor centre inside a feature cell in units of the stride (mmdet v2+: 0).
    """

    def __init__(
        self,
        octave_base_scale: int = 4,
        scales_per_octave: int = 3,
        ratios: list = (0.5, 1.0, 2.0),
        strides: list = (8, 16, 32, 64, 128),
        center_offset: float = 0.0,
    ):
        if octave_base_scale <= 0 or scales_per_octave < 1:
            raise ValueError(
                "octave_base_scale must be > 0 and scales_per_octave >= 1, got "
                f"{octave_base_scale} and {scales_per_octave}"
            )
        if not ratios or any(r <= 0 for r in ratios):
            raise ValueError(f"ratios must be positive numbers, got {ratios}")
        if not strides or any(s <= 0 for s in strides):
            raise ValueError(f"strides must be positive numbers, got {strides}")
        if not 0.0 <= center_offset <= 1.0:
            raise ValueError(f"center_offset must be in [0, 1], got {center_offset}")
        self.octave_base_scale = octave_base_scale
        self.scales_per_octave = scales_per_octave
        self.ratios = tuple(float(r) for r in ratios)
        self.strides = tuple(strides)
        self.center_offset = float(center_offset)
        self.base_anchors = [self._level_base_anchors(s) for s in self.strides]

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map location (A)."""
        return len(self.ratios) * self.scales_per_octave

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    def _level_base_anchors(self, stride) -> np.ndarray:
        """float32 [A, 4] anchors of the cell at the origin; float32 arithmetic as mmdet's torch code."""
        # mmdet: scales from float64 numpy, then a float32 tensor
        octave_scales = np.array(
            [2 ** (i / self.scales_per_octave) for i in range(self.scales_per_octave)]
        )
        scales = (octave_scales * self.octave_base_scale).astype(np.float32)
        ratios = np.array(self.ratios, dtype=np.float32)
        size = np.float32(stride)
        h_ratios = np.sqrt(ratios)
        w_ratios = np.float32(1) / h_ratios
        ws = (size * w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (size * h_ratios[:, None] * scales[None, :]).reshape(-1)
        center = np.float32(self.center_offset * stride)
        half = np.float32(0.5)
        anchors = np.stack(
            [center - half * ws, center - half * hs, center + half * ws, center + half * hs],
            axis=-1,
        )
        return anchors.astype(np.float32)

    def level_anchors(self, level: int, height, width):
        """float32 [height * width * A, 4] anchors of one level, ordered (y, x, anchor).

        ``height`` and ``width`` may be Python ints or int tensors (for ``paddle.jit.to_static``).
        """
        stride = float(self.strides[level])
        shift_x = paddle.arange(0, width, dtype="float32") * stride
        shift_y = paddle.arange(0, height, dtype="float32") * stride
        yy, xx = paddle.meshgrid(shift_y, shift_x)  # [H, W], x fastest when flattened
        xx = xx.reshape([-1])
        yy = yy.reshape([-1])
        shifts = paddle.stack([xx, yy, xx, yy], axis=-1)  # [H*W, 4]
        base = paddle.to_tensor(self.base_anchors[level])  # [A, 4]
        return (shifts.unsqueeze(1) + base.unsqueeze(0)).reshape([-1, 4])

    def __call__(self, feats):
        """Anchors of every level for feature maps ``feats`` (list of [N, C, H_l, W_l]).

        Returns:
            list of float32 [H_l * W_l * A, 4] tensors, one per level.
        """
        if len(feats) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature levels, got {len(feats)}")
        anchors = []
        for level, feat in enumerate(feats):
            shape = paddle.shape(feat) if not paddle.in_dynamic_mode() else feat.shape
            anchors.append(self.level_anchors(level, shape[2], shape[3]))
        return anchors

    def valid_flags(self, featmap_sizes, pad_shape) -> np.ndarray:
        """bool [sum_l H_l * W_l * A] flags of anchors whose cell lies inside the padded image.

        Same rule as mmdet ``AnchorGenerator.valid_flags``: on a level with stride s, cells with
        ``y < ceil(pad_h / s)`` and ``x < ceil(pad_w / s)`` are valid, where ``pad_shape`` is the
        image's own shape padded to the size divisor (not the batch's padded shape).

        Args:
            featmap_sizes: list of (H_l, W_l) ints.
            pad_shape: (pad_h, pad_w) ints.
        """
        pad_h, pad_w = pad_shape
        flags = []
        for stride, (feat_h, feat_w) in zip(self.strides, featmap_sizes, strict=True):
            valid_h = min(int(np.ceil(pad_h / stride)), feat_h)
            valid_w = min(int(np.ceil(pad_w / stride)), feat_w)
            cell = np.zeros((feat_h, feat_w), dtype=bool)
            cell[:valid_h, :valid_w] = True
            flags.append(np.repeat(cell.reshape(-1), self.num_anchors))
        return np.concatenate(flags)
