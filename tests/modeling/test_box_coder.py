"""Delta xywh coding: hand-computed deltas and boxes, clipping, round trip."""

import math

import numpy as np
import paddle
import pytest

from ppdet_ghm.modeling.box_coder import DeltaXYWHBoxCoder


def test_encode_hand_computed():
    # anchor centre (5, 5), size 10x10; box centre (7, 4), size 20x5
    anchors = paddle.to_tensor([[0.0, 0.0, 10.0, 10.0]])
    boxes = paddle.to_tensor([[-3.0, 1.5, 17.0, 6.5]])
    deltas = DeltaXYWHBoxCoder().encode(anchors, boxes).numpy()
    np.testing.assert_allclose(deltas, [[0.2, -0.1, math.log(2.0), math.log(0.5)]], rtol=1e-6)


def test_encode_with_means_and_stds():
    coder = DeltaXYWHBoxCoder(means=[0.1, 0.0, 0.0, 0.0], stds=[0.1, 0.1, 0.2, 0.2])
    deltas = coder.encode(
        paddle.to_tensor([[0.0, 0.0, 10.0, 10.0]]), paddle.to_tensor([[-3.0, 1.5, 17.0, 6.5]])
    ).numpy()
    expected = [(0.2 - 0.1) / 0.1, -0.1 / 0.1, math.log(2.0) / 0.2, math.log(0.5) / 0.2]
    np.testing.assert_allclose(deltas, [expected], rtol=1e-5)


def test_decode_hand_computed_and_clipped():
    coder = DeltaXYWHBoxCoder()
    anchors = paddle.to_tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]]])
    deltas = paddle.to_tensor([[[0.2, -0.1, math.log(2.0), math.log(0.5)], [1.0, 1.0, 0.0, 0.0]]])
    boxes = coder.decode(anchors, deltas, max_shape=paddle.to_tensor([[12.0, 16.0]])).numpy()
    # box 1 is (-3, 1.5, 17, 6.5) clipped to width 16; box 2 is (10, 10, 20, 20) clipped to 16 x 12
    np.testing.assert_allclose(
        boxes[0], [[0.0, 1.5, 16.0, 6.5], [10.0, 10.0, 16.0, 12.0]], atol=1e-5
    )


def test_decode_clips_the_log_size_ratio():
    coder = DeltaXYWHBoxCoder()
    boxes = coder.decode(
        paddle.to_tensor([[[0.0, 0.0, 10.0, 10.0]]]),
        paddle.to_tensor([[[0.0, 0.0, 100.0, -100.0]]]),
    ).numpy()
    ratio = 1000 / 16  # exp(|log(16 / 1000)|)
    np.testing.assert_allclose(
        boxes[0, 0], [5 - 5 * ratio, 5 - 5 / ratio, 5 + 5 * ratio, 5 + 5 / ratio], rtol=1e-5
    )


def test_round_trip():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (50, 2))
    anchors = np.concatenate([xy, xy + rng.uniform(5, 60, (50, 2))], 1).astype(np.float32)
    xy = rng.uniform(0, 100, (50, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (50, 2))], 1).astype(np.float32)
    coder = DeltaXYWHBoxCoder()
    deltas = coder.encode(paddle.to_tensor(anchors), paddle.to_tensor(boxes))
    decoded = coder.decode(paddle.to_tensor(anchors[None]), deltas.unsqueeze(0)).numpy()[0]
    np.testing.assert_allclose(decoded, boxes, atol=1e-3)


@pytest.mark.parametrize(
    "kwargs", [{"means": [0, 0, 0]}, {"stds": [1, 1, 0, 1]}, {"wh_ratio_clip": 2.0}]
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        DeltaXYWHBoxCoder(**kwargs)
