"""RetinaFPN: state-dict layout, P6 from C5 without ReLU before P7, nearest top-down, init."""

import math

import numpy as np
import paddle
import pytest

from ppdet_ghm.modeling.fpn import RetinaFPN


def test_state_dict_layout_of_the_r50_neck():
    fpn = RetinaFPN(in_channels=[512, 1024, 2048], out_channel=256)
    shapes = {k: tuple(v.shape) for k, v in fpn.state_dict().items()}
    expected = {}
    for i, c in enumerate([512, 1024, 2048]):
        expected[f"lateral_convs.{i}.weight"] = (256, c, 1, 1)
        expected[f"lateral_convs.{i}.bias"] = (256,)
    for i in range(5):
        expected[f"fpn_convs.{i}.weight"] = (256, 2048 if i == 3 else 256, 3, 3)
        expected[f"fpn_convs.{i}.bias"] = (256,)
    assert shapes == expected
    assert fpn.fpn_convs[3]._stride == [2, 2] and fpn.fpn_convs[4]._stride == [2, 2]
    assert [s.stride for s in fpn.out_shape] == [8, 16, 32, 64, 128]
    assert {s.channels for s in fpn.out_shape} == {256}


def test_xavier_uniform_init_and_zero_bias():
    paddle.seed(0)
    fpn = RetinaFPN(in_channels=[512, 1024, 2048], out_channel=256)
    weight = fpn.fpn_convs[0].weight.numpy()
    bound = math.sqrt(6.0 / (256 * 9 + 256 * 9))  # fan_in + fan_out of a 3x3 256->256 conv
    assert np.abs(weight).max() <= bound
    np.testing.assert_allclose(weight.std(), bound / math.sqrt(3), rtol=0.02)  # uniform's std
    assert all(not np.any(conv.bias.numpy()) for conv in fpn.fpn_convs)


def _identity_fpn(channels, **kwargs):
    """An FPN whose lateral and output convs pass features through unchanged."""
    fpn = RetinaFPN(in_channels=[channels] * 3, out_channel=channels, **kwargs)
    eye = np.eye(channels, dtype=np.float32)
    for conv in fpn.lateral_convs:
        conv.weight.set_value(eye[:, :, None, None])
    centre = np.zeros((channels, channels, 3, 3), np.float32)
    centre[:, :, 1, 1] = eye
    for conv in fpn.fpn_convs[:3]:
        conv.weight.set_value(centre)
    return fpn


def _nearest(x, size):
    """Nearest upsampling of [N, C, h, w] to size (H, W): source index floor(i * h / H)."""
    rows = np.minimum(np.floor(np.arange(size[0]) * (x.shape[2] / size[0])), x.shape[2] - 1)
    cols = np.minimum(np.floor(np.arange(size[1]) * (x.shape[3] / size[1])), x.shape[3] - 1)
    return x[:, :, rows.astype(int)][:, :, :, cols.astype(int)]


def test_top_down_nearest_upsampling_to_odd_sizes():
    rng = np.random.default_rng(0)
    c3, c4, c5 = (
        rng.normal(size=(2, 4, h, w)).astype(np.float32) for h, w in [(13, 17), (7, 9), (4, 5)]
    )
    fpn = _identity_fpn(4)
    p3, p4, p5, _, _ = (x.numpy() for x in fpn([paddle.to_tensor(c) for c in (c3, c4, c5)]))
    expected_p5 = c5
    expected_p4 = c4 + _nearest(expected_p5, (7, 9))
    expected_p3 = c3 + _nearest(expected_p4, (13, 17))
    np.testing.assert_allclose(p5, expected_p5, atol=1e-6)
    np.testing.assert_allclose(p4, expected_p4, atol=1e-6)
    np.testing.assert_allclose(p3, expected_p3, atol=1e-5)
    # hand check of one odd-size index: row 6 of a 7-row map comes from row floor(6 * 4 / 7) = 3
    np.testing.assert_allclose(p4[:, :, 6, 0], c4[:, :, 6, 0] + c5[:, :, 3, 0], atol=1e-6)


@pytest.mark.parametrize("relu", [False, True])
def test_p6_from_c5_and_p7_from_p6(relu):
    rng = np.random.default_rng(1)
    inputs = [
        paddle.to_tensor(rng.normal(size=(1, c, s, s)).astype(np.float32))
        for c, s in [(8, 16), (16, 8), (32, 4)]
    ]
    fpn = RetinaFPN(in_channels=[8, 16, 32], out_channel=8, relu_before_extra_convs=relu)
    outs = fpn(inputs)
    assert [tuple(x.shape[2:]) for x in outs] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    np.testing.assert_array_equal(outs[3].numpy(), fpn.fpn_convs[3](inputs[2]).numpy())
    p6 = paddle.nn.functional.relu(outs[3]) if relu else outs[3]
    np.testing.assert_array_equal(outs[4].numpy(), fpn.fpn_convs[4](p6).numpy())
    assert np.any(outs[3].numpy() < 0)  # so that the ReLU choice matters


def test_extra_source_output_takes_p5():
    fpn = RetinaFPN(in_channels=[8, 16, 32], out_channel=8, extra_source="output")
    assert fpn.fpn_convs[3].weight.shape == [8, 8, 3, 3]
    inputs = [paddle.randn([1, c, s, s]) for c, s in [(8, 16), (16, 8), (32, 4)]]
    outs = fpn(inputs)
    np.testing.assert_array_equal(outs[3].numpy(), fpn.fpn_convs[3](outs[2]).numpy())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"extra_source": "on_input"},
        {"num_extra_levels": -1},
        {"in_channels": [8, 16], "strides": [8, 16, 32]},
    ],
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        RetinaFPN(**kwargs)
