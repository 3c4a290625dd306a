"""modeling.layers: the [C, 1, 1]-bias conv and the exportable nearest upsampling give the numbers
of the Paddle ops they stand in for."""

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest
from paddle.static import InputSpec

from ppdet_ghm.modeling.layers import ChannelBiasConv2D, upsample_nearest


def _nearest_numpy(x, size):
    """float64 reference: output pixel d takes input pixel floor(d * in / out) (mmdet/torch
    ``nearest``)."""
    h, w = x.shape[2:]
    rows = np.floor(np.arange(size[0]) * h / size[0]).astype(int)
    cols = np.floor(np.arange(size[1]) * w / size[1]).astype(int)
    return x[:, :, rows][:, :, :, cols]


@pytest.mark.parametrize("kernel_size, stride", [(3, 1), (1, 1), (3, 2)])
def test_channel_bias_conv_equals_conv2d(kernel_size, stride):
    paddle.seed(0)
    ours = ChannelBiasConv2D(6, 5, kernel_size, stride=stride, padding=kernel_size // 2)
    plain = nn.Conv2D(6, 5, kernel_size, stride=stride, padding=kernel_size // 2)
    plain.set_state_dict(ours.state_dict())
    ours.bias.set_value(paddle.to_tensor(np.linspace(-1, 1, 5, dtype="float32")))
    plain.bias.set_value(ours.bias)
    assert list(ours.state_dict()) == list(plain.state_dict())
    x_np = np.random.default_rng(0).standard_normal((2, 6, 9, 11)).astype("float32")
    grads = []
    for layer in (ours, plain):
        x = paddle.to_tensor(x_np, stop_gradient=False)
        out = layer(x)
        (out * out).sum().backward()
        grads.append(
            (out.numpy(), x.grad.numpy(), layer.weight.grad.numpy(), layer.bias.grad.numpy())
        )
        layer.clear_gradients()
    np.testing.assert_array_equal(grads[0][0], grads[1][0])  # the same elementwise add
    for got, expected in zip(grads[0][1:], grads[1][1:], strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_channel_bias_conv_without_bias_and_bad_layout():
    layer = ChannelBiasConv2D(3, 4, 3, padding=1, bias_attr=False)
    x = paddle.ones([1, 3, 5, 5])
    np.testing.assert_array_equal(
        layer(x).numpy(), F.conv2d(x, layer.weight, None, padding=1).numpy()
    )
    with pytest.raises(ValueError, match="NCHW"):
        ChannelBiasConv2D(3, 4, 3, data_format="NHWC")


class _Upsample(nn.Layer):
    def forward(self, x, ref):
        return upsample_nearest(x, paddle.shape(ref)[2:])


@pytest.mark.parametrize(
    "in_size, out_size",
    [((4, 6), (8, 12)), ((5, 7), (9, 13)), ((5, 7), (10, 13)), ((1, 1), (1, 2))],
)
def test_upsample_nearest_traced_equals_interpolate(in_size, out_size):
    """Dygraph (nearest_interp) and traced (repeat-and-crop) against the float64 reference, for
    output sides 2s and 2s - 1."""
    x_np = np.random.default_rng(1).standard_normal((2, 3, *in_size)).astype("float32")
    ref_np = np.zeros((2, 1, *out_size), "float32")
    expected = _nearest_numpy(x_np, out_size)
    x, ref = paddle.to_tensor(x_np), paddle.to_tensor(ref_np)
    np.testing.assert_array_equal(upsample_nearest(x, out_size).numpy(), expected)
    spec = [
        InputSpec([None, 3, None, None], "float32"),
        InputSpec([None, 1, None, None], "float32"),
    ]
    traced = paddle.jit.to_static(_Upsample(), input_spec=spec, full_graph=True)
    np.testing.assert_array_equal(traced(x, ref).numpy(), expected)
