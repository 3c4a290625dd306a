"""modeling.onednn_conv: oneDNN convolutions give a float64 convolution's numbers (forward and
all three gradients) within the float32 summation bound, switch only the layers they compute
exactly, and the config key ``onednn_conv`` behaves as documented.

The bound is Higham's for a sum of K float32 products in any order, K * eps / (1 - K * eps)
times the sum of the products' magnitudes (plus one rounding of the result): it holds for every
kernel path and thread count, so the tests do not depend on the CPU.
"""

import logging

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest

from ppdet_ghm.modeling import onednn_conv
from ppdet_ghm.modeling.layers import ChannelBiasConv2D

EPS32 = float(np.finfo(np.float32).eps)


@pytest.fixture(scope="module", autouse=True)
def ops():
    """Build the extension once (the first build of a machine takes ~15 s)."""
    return onednn_conv.load_ops()


def _windows(x, kernel, stride, padding, dilation):
    """[N, C, H, W] float64 -> [N, C, kh, kw, H', W'] input windows of a zero-padded conv."""
    n, c, h, w = x.shape
    kh, kw = kernel
    padded = np.zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]))
    padded[:, :, padding[0] : padding[0] + h, padding[1] : padding[1] + w] = x
    out_h = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    win = np.empty((n, c, kh, kw, out_h, out_w))
    for i in range(kh):
        for j in range(kw):
            rows = i * dilation[0] + stride[0] * np.arange(out_h)
            cols = j * dilation[1] + stride[1] * np.arange(out_w)
            win[:, :, i, j] = padded[:, :, rows][:, :, :, cols]
    return win


def _reference(x, w, b, dy, stride, padding, dilation):
    """float64 conv forward, its gradients for x, w and b given dy, and the magnitude sums that
    bound each float32 result's error (same index layout as the results)."""
    win = _windows(x, w.shape[2:], stride, padding, dilation)
    out = np.einsum("nckluv,ockl->nouv", win, w) + (0 if b is None else b[None, :, None, None])
    mag_out = np.einsum("nckluv,ockl->nouv", np.abs(win), np.abs(w))
    dw = np.einsum("nckluv,nouv->ockl", win, dy)
    mag_dw = np.einsum("nckluv,nouv->ockl", np.abs(win), np.abs(dy))
    # dx: scatter dy * w back through the windows (the adjoint of _windows)
    n, c, h, wid = x.shape
    kh, kw = w.shape[2:]
    dx_pad = np.zeros((n, c, h + 2 * padding[0], wid + 2 * padding[1]))
    mag_pad = np.zeros_like(dx_pad)
    cols_dy = np.einsum("nouv,ockl->nckluv", dy, w)
    cols_mag = np.einsum("nouv,ockl->nckluv", np.abs(dy), np.abs(w))
    out_h, out_w = dy.shape[2:]
    for i in range(kh):
        for j in range(kw):
            rows = i * dilation[0] + stride[0] * np.arange(out_h)
            cols = j * dilation[1] + stride[1] * np.arange(out_w)
            dx_pad[:, :, rows[:, None], cols[None, :]] += cols_dy[:, :, i, j]
            mag_pad[:, :, rows[:, None], cols[None, :]] += cols_mag[:, :, i, j]
    crop = (slice(None), slice(None), slice(padding[0], padding[0] + h))
    crop += (slice(padding[1], padding[1] + wid),)
    db = dy.sum(axis=(0, 2, 3))
    mag_db = np.abs(dy).sum(axis=(0, 2, 3))
    return (out, mag_out), (dx_pad[crop], mag_pad[crop]), (dw, mag_dw), (db, mag_db)


def _assert_within_bound(got, expected, magnitude, terms, what):
    gamma = terms * EPS32 / (1 - terms * EPS32)
    bound = gamma * magnitude + EPS32 * np.abs(expected) + 1e-30
    excess = np.abs(got - expected) / bound
    assert excess.max() <= 1.0, f"{what}: error {excess.max():.2f}x the float32 bound"


CASES = [  # (x shape, w shape, stride, padding, dilation, bias)
    ((2, 5, 9, 11), (4, 5, 3, 3), (1, 1), (1, 1), (1, 1), True),
    ((1, 3, 12, 10), (6, 3, 3, 3), (2, 2), (1, 1), (1, 1), False),
    ((2, 4, 8, 9), (3, 4, 1, 1), (1, 1), (0, 0), (1, 1), True),
    ((1, 4, 9, 8), (5, 4, 1, 1), (2, 2), (0, 0), (1, 1), False),
    ((1, 2, 11, 13), (3, 2, 3, 2), (1, 2), (2, 0), (2, 1), True),
    ((2, 3, 16, 16), (8, 3, 7, 7), (2, 2), (3, 3), (1, 1), False),  # the stem's shape
]


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation, bias", CASES)
def test_forward_and_gradients_match_float64(x_shape, w_shape, stride, padding, dilation, bias):
    rng = np.random.default_rng(sum(x_shape) + sum(w_shape))
    x_np = rng.standard_normal(x_shape).astype("float32")
    w_np = (rng.standard_normal(w_shape) * 0.3).astype("float32")
    b_np = rng.standard_normal(w_shape[0]).astype("float32") if bias else None
    x = paddle.to_tensor(x_np, stop_gradient=False)
    w = paddle.to_tensor(w_np, stop_gradient=False)
    b = paddle.to_tensor(b_np, stop_gradient=False) if bias else None
    out = onednn_conv.onednn_conv2d(x, w, b, stride, padding, dilation)
    dy_np = rng.standard_normal(out.shape).astype("float32")
    out.backward(paddle.to_tensor(dy_np))

    def f64(a):
        return None if a is None else a.astype(np.float64)

    ref_out, ref_dx, ref_dw, ref_db = _reference(
        f64(x_np), f64(w_np), f64(b_np), f64(dy_np), stride, padding, dilation
    )
    k = w_shape[1] * w_shape[2] * w_shape[3]
    _assert_within_bound(out.numpy(), *ref_out, k + 1, "forward")
    _assert_within_bound(x.grad.numpy(), *ref_dx, w_shape[0] * w_shape[2] * w_shape[3], "dx")
    _assert_within_bound(w.grad.numpy(), *ref_dw, int(np.prod(out.shape)) // w_shape[0], "dw")
    if bias:
        _assert_within_bound(b.grad.numpy(), *ref_db, int(np.prod(out.shape)) // w_shape[0], "db")


def test_only_the_needed_gradients_and_non_contiguous_input():
    rng = np.random.default_rng(1)
    base = paddle.to_tensor(rng.standard_normal((2, 7, 6, 4)).astype("float32"))
    x = base.transpose([0, 3, 1, 2])  # a [2, 4, 7, 6] view with other strides
    w = paddle.to_tensor(rng.standard_normal((3, 4, 3, 3)).astype("float32"), stop_gradient=False)
    frozen_w = paddle.to_tensor(w.numpy())  # stop_gradient: True
    x_grad = paddle.to_tensor(x.numpy(), stop_gradient=False)
    out = onednn_conv.onednn_conv2d(x, w, None, 1, 1, 1)
    np.testing.assert_allclose(out.numpy(), F.conv2d(x, w, padding=1).numpy(), rtol=1e-5, atol=1e-5)
    (dw,) = paddle.grad([out.sum()], [w])
    (dx,) = paddle.grad(
        [onednn_conv.onednn_conv2d(x_grad, frozen_w, None, 1, 1, 1).sum()], [x_grad]
    )
    ref_w, ref_x = paddle.grad([F.conv2d(x_grad, w, padding=1).sum()], [w, x_grad])
    np.testing.assert_allclose(dw.numpy(), ref_w.numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dx.numpy(), ref_x.numpy(), rtol=1e-5, atol=1e-4)


def test_repeated_calls_give_the_same_bits():
    rng = np.random.default_rng(2)
    x = paddle.to_tensor(
        rng.standard_normal((2, 16, 20, 20)).astype("float32"), stop_gradient=False
    )
    w = paddle.to_tensor(rng.standard_normal((16, 16, 3, 3)).astype("float32"), stop_gradient=False)
    runs = []
    for _ in range(2):
        out = onednn_conv.onednn_conv2d(x, w, None, 1, 1, 1)
        runs.append([out.numpy(), *(g.numpy() for g in paddle.grad([(out * out).sum()], [x, w]))])
    for first, second in zip(*runs, strict=True):
        np.testing.assert_array_equal(first, second)


def test_use_onednn_convs_switches_supported_layers_only():
    paddle.seed(0)
    model = nn.Sequential(
        nn.Conv2D(3, 8, 3, padding=1),  # switched
        ChannelBiasConv2D(8, 8, 1),  # switched (an nn.Conv2D)
        nn.Conv2D(8, 8, 3, padding=1, groups=2),  # groups
        nn.Conv2D(8, 8, 3, padding="SAME"),  # string padding
        nn.Conv2D(8, 8, 3, padding=[1, 1, 1, 1]),  # symmetric 4-list: switched
        nn.Conv2D(8, 8, 3, padding=[0, 1, 1, 1]),  # asymmetric
    )
    x = paddle.to_tensor(np.random.default_rng(3).standard_normal((1, 3, 10, 10)).astype("float32"))
    before, state = model(x).numpy(), {k: v.numpy() for k, v in model.state_dict().items()}
    assert onednn_conv.use_onednn_convs(model) == 3
    assert onednn_conv.onednn_conv_layers(model) == ["0", "1", "4"]
    assert {k: v.numpy() for k, v in model.state_dict().items()}.keys() == state.keys()
    after = model(x).numpy()
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5)
    assert onednn_conv.use_onednn_convs(model, min_kernel=3) == 2  # the 3x3 ones again


def test_switched_layer_keeps_paddle_under_to_static():
    conv = nn.Conv2D(3, 4, 3, padding=1)
    onednn_conv.use_onednn_convs(conv)
    static = paddle.jit.to_static(conv, full_graph=True)
    x = paddle.ones([1, 3, 5, 5])
    np.testing.assert_allclose(
        static(x).numpy(),
        F.conv2d(x, conv.weight, conv.bias, padding=1).numpy(),
        rtol=1e-5,
        atol=1e-5,
    )


def test_for_training_setting(monkeypatch, caplog):
    def model():
        return nn.Sequential(nn.Conv2D(3, 4, 3), nn.Conv2D(4, 4, 1))

    # training switches the convolutions larger than 1x1; the 1x1 one stays a GEMM of Paddle's
    trained = model()
    assert onednn_conv.for_training(trained, "auto") == 1
    assert onednn_conv.onednn_conv_layers(trained) == ["0"]
    assert onednn_conv.for_training(model(), True) == 1
    assert onednn_conv.for_training(model(), "false") == 0
    with pytest.raises(ValueError, match="config key onednn_conv: expected true, false or auto"):
        onednn_conv.for_training(model(), "yes")

    def unavailable():
        raise onednn_conv.OnednnUnavailable("no compiler here")

    monkeypatch.setattr(onednn_conv, "load_ops", unavailable)
    with caplog.at_level(logging.WARNING, logger=onednn_conv.__name__):
        assert onednn_conv.for_training(model(), "auto") == 0
    assert "stay on Paddle's CPU kernels (onednn_conv: auto): no compiler here" in caplog.text
    with pytest.raises(onednn_conv.OnednnUnavailable, match="no compiler here"):
        onednn_conv.for_training(model(), True)


def test_missing_headers_and_version_mismatch_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEDNN_INCLUDE_DIR", str(tmp_path))
    monkeypatch.setattr(onednn_conv.sys, "prefix", str(tmp_path / "env"))
    with pytest.raises(onednn_conv.OnednnUnavailable, match="pip install --no-deps onednn-devel"):
        onednn_conv.find_headers()
    (tmp_path / "oneapi" / "dnnl").mkdir(parents=True)
    (tmp_path / "oneapi" / "dnnl" / "dnnl.hpp").write_text("")
    (tmp_path / "oneapi" / "dnnl" / "dnnl_version.h").write_text(
        "#define DNNL_VERSION_MAJOR 3\n#define DNNL_VERSION_MINOR 12\n#define DNNL_VERSION_PATCH 0\n"
    )
    assert onednn_conv.find_headers() == tmp_path
    assert onednn_conv.header_version(tmp_path) == (3, 12, 0)
    assert onednn_conv.library_version(onednn_conv.paddle_onednn_library())[:2] == (3, 6)
    monkeypatch.setattr(onednn_conv, "_ops", None)
    with pytest.raises(onednn_conv.OnednnUnavailable, match=r"Paddle's oneDNN is 3\.6\.\d+ but"):
        onednn_conv.load_ops()
