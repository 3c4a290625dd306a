"""Delta (dx, dy, dw, dh) box coding between anchors and boxes, as mmdet's ``DeltaXYWHBBoxCoder``.

Boxes are ``x1, y1, x2, y2`` in pixels with no +1 in widths (mmdet v2+ convention). The float32
operations follow mmdet's ``bbox2delta`` / ``delta2bbox`` in the same order, so targets and
decoded boxes agree with the reference to the last bit on CPU.
"""

import math

import paddle
from ppdet.core.workspace import register, serializable

__all__ = ["DeltaXYWHBoxCoder", "decode_deltas", "encode_deltas"]


def _divide(numerator, denominator):
    """Correctly rounded float32 quotient (Paddle's float32 CPU division is not always; through
    float64 it is, and then equals torch's)."""
    dtype = numerator.dtype
    return (numerator.astype("float64") / denominator.astype("float64")).astype(dtype)


def encode_deltas(anchors, boxes, means=(0.0, 0.0, 0.0, 0.0), stds=(1.0, 1.0, 1.0, 1.0)):
    """Regression targets of ``boxes`` relative to ``anchors`` (same formula as mmdet bbox2delta).

    Args:
        anchors: float32 [..., 4] reference boxes ``x1, y1, x2, y2``.
        boxes: float32 [..., 4] target boxes, same shape as ``anchors``.
        means, stds: 4 numbers each; deltas are ``(d - mean) / std``.

    Returns:
        float32 [..., 4]: ``dx = (gx - px) / pw``, ``dy``, ``dw = log(gw / pw)``, ``dh``.
    """
    px = (anchors[..., 0] + anchors[..., 2]) * 0.5
    py = (anchors[..., 1] + anchors[..., 3]) * 0.5
    pw = anchors[..., 2] - anchors[..., 0]
    ph = anchors[..., 3] - anchors[..., 1]
    gx = (boxes[..., 0] + boxes[..., 2]) * 0.5
    gy = (boxes[..., 1] + boxes[..., 3]) * 0.5
    gw = boxes[..., 2] - boxes[..., 0]
    gh = boxes[..., 3] - boxes[..., 1]
    deltas = paddle.stack(
        [
            _divide(gx - px, pw),
            _divide(gy - py, ph),
            paddle.log(_divide(gw, pw)),
            paddle.log(_divide(gh, ph)),
        ],
        axis=-1,
    )
    if tuple(means) != (0.0, 0.0, 0.0, 0.0) or tuple(stds) != (1.0, 1.0, 1.0, 1.0):
        mean = paddle.to_tensor(list(means), dtype=deltas.dtype)
        std = paddle.to_tensor(list(stds), dtype=deltas.dtype)
        deltas = (deltas - mean) / std
    return deltas


def decode_deltas(
    anchors,
    deltas,
    means=(0.0, 0.0, 0.0, 0.0),
    stds=(1.0, 1.0, 1.0, 1.0),
    max_shape=None,
    wh_ratio_clip: float = 16 / 1000,
):
    """Boxes from ``anchors`` shifted and scaled by ``deltas`` (same formula as mmdet delta2bbox).

    Args:
        anchors: float32 [..., 4] reference boxes ``x1, y1, x2, y2``.
        deltas: float32 [..., 4] predicted ``dx, dy, dw, dh`` (normalised by means/stds).
        max_shape: None, or float32 [B, 2] ``(height, width)`` per image, used when ``anchors`` and
            ``deltas`` are [B, K, 4]: x is clipped to [0, width], y to [0, height].
        wh_ratio_clip: ``dw`` and ``dh`` are clipped to ``+-|log(wh_ratio_clip)|``.

    Returns:
        float32 [..., 4] boxes ``x1, y1, x2, y2``.
    """
    if tuple(means) != (0.0, 0.0, 0.0, 0.0) or tuple(stds) != (1.0, 1.0, 1.0, 1.0):
        std = paddle.to_tensor(list(stds), dtype=deltas.dtype)
        mean = paddle.to_tensor(list(means), dtype=deltas.dtype)
        deltas = deltas * std + mean
    dxy = deltas[..., :2]
    dwh = deltas[..., 2:]
    pxy = (anchors[..., :2] + anchors[..., 2:]) * 0.5
    pwh = anchors[..., 2:] - anchors[..., :2]
    max_ratio = abs(math.log(wh_ratio_clip))
    dwh = paddle.clip(dwh, min=-max_ratio, max=max_ratio)
    gxy = pxy + pwh * dxy
    gwh = pwh * paddle.exp(dwh)
    x1y1 = gxy - gwh * 0.5
    x2y2 = gxy + gwh * 0.5
    boxes = paddle.concat([x1y1, x2y2], axis=-1)
    if max_shape is not None:
        # [B, 2] (h, w) -> [B, 1, 4] upper bounds (w, h, w, h)
        height = max_shape[:, 0:1].astype(boxes.dtype)
        width = max_shape[:, 1:2].astype(boxes.dtype)
        upper = paddle.stack([width, height, width, height], axis=-1)
        boxes = paddle.minimum(paddle.maximum(boxes, paddle.zeros_like(boxes)), upper)
    return boxes


@register
@serializable
class DeltaXYWHBoxCoder:
    """Delta xywh box coder with target means/stds, as mmdet ``DeltaXYWHBBoxCoder``.

    Args:
        means: 4 target means (the paper's setting: zeros).
        stds: 4 target standard deviations (the paper's setting: ones).
        wh_ratio_clip: decoded ``dw``/``dh`` are clipped to ``+-|log(wh_ratio_clip)|``
            (mmdet: 16 / 1000).
    """

    def __init__(
        self,
        means: list = (0.0, 0.0, 0.0, 0.0),
        stds: list = (1.0, 1.0, 1.0, 1.0),
        wh_ratio_clip: float = 16 / 1000,
    ):
        if len(means) != 4 or len(stds) != 4:
            raise ValueError(f"means and stds need 4 numbers each, got {means} and {stds}")
        if any(s <= 0 for s in stds):
            raise ValueError(f"stds must be positive, got {stds}")
        if not 0 < wh_ratio_clip < 1:
            raise ValueError(f"wh_ratio_clip must be in (0, 1), got {wh_ratio_clip}")
        self.means = tuple(float(m) for m in means)
        self.stds = tuple(float(s) for s in stds)
        self.wh_ratio_clip = float(wh_ratio_clip)

    def encode(self, anchors, boxes):
        """[..., 4] anchors and boxes -> [..., 4] regression targets."""
        return encode_deltas(anchors, boxes, self.means, self.stds)

    def decode(self, anchors, deltas, max_shape=None):
        """[B, K, 4] anchors and deltas -> [B, K, 4] boxes, clipped to ``max_shape`` [B, 2] (h, w)."""
        return decode_deltas(anchors, deltas, self.means, self.stds, max_shape, self.wh_ratio_clip)
