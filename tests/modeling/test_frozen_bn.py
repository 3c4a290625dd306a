"""modeling.frozen_bn: a frozen-statistics BatchNorm with its ReLU (and a residual) as one op
gives Paddle's bits for the output and the input gradients, gamma / beta gradients summed in
float64 (checked against a float64 NumPy reference), the same numbers on any thread count, and
switches only the layers it reproduces.

Output and input gradients are compared bit for bit with Paddle's own ops on the same CPU (both
sides multiply and add the same float32 numbers), so these comparisons do not depend on the CPU's
kernels; the gamma / beta gradients are float64 sums, compared with a tolerance far above their
rounding and far below a float32 sum's.
"""

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest

from ppdet_ghm.modeling import frozen_bn
from ppdet_ghm.modeling.backbone import NormEvalResNet
from tests.helpers.bits import assert_same_bits


@pytest.fixture(scope="module", autouse=True)
def ops():
    """Build the extension once (the first build of a machine takes ~15 s)."""
    return frozen_bn.load_ops()


def _norm(channels, rng):
    """A BatchNorm2D on running statistics drawn as align.weights draws them."""
    norm = nn.BatchNorm2D(channels, use_global_stats=True)
    norm.weight.set_value(rng.uniform(0.6, 1.4, channels).astype("float32"))
    norm.bias.set_value(rng.normal(0.0, 0.2, channels).astype("float32"))
    norm._mean.set_value(rng.normal(0.0, 0.2, channels).astype("float32"))
    norm._variance.set_value(rng.uniform(0.5, 2.0, channels).astype("float32"))
    return norm


def _paddle(x, norm, relu, residual):
    y = norm(x)
    if residual is not None:
        y = paddle.add(y, residual)
    return F.relu(y) if relu else y


# x shape: odd sizes (planes not a multiple of the 8 lanes), one image, a large plane
SHAPES = [(2, 16, 9, 7), (1, 5, 1, 3), (3, 8, 32, 32)]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(("relu", "with_residual"), [(True, False), (True, True), (False, False)])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_output_and_input_gradients_are_paddles_bits(shape, relu, with_residual, threads):
    rng = np.random.default_rng(sum(shape))
    norm = _norm(shape[1], rng)
    x = paddle.to_tensor(rng.standard_normal(shape).astype("float32") * 2, stop_gradient=False)
    r = paddle.to_tensor(rng.standard_normal(shape).astype("float32"), stop_gradient=False)
    residual = r if with_residual else None
    dy = paddle.to_tensor(rng.standard_normal(shape).astype("float32"))
    # (paddle.grad through a PyLayer must ask for every input that needs a gradient)
    inputs = [x, norm.weight, norm.bias] + ([r] if with_residual else [])

    ref = _paddle(x, norm, relu, residual)
    ref_grads = paddle.grad(ref, inputs, dy)
    out = frozen_bn.frozen_bn_act(x, norm, relu, residual, threads=threads)
    grads = paddle.grad(out, inputs, dy)
    assert_same_bits(out, ref, "output")
    assert_same_bits(grads[0], ref_grads[0], "input gradient")
    if with_residual:
        assert_same_bits(grads[3], ref_grads[3], "residual gradient")


def test_scale_and_shift_are_paddles_own():
    """Paddle's kernel does not round every channel as a float32 1 / sqrt(var + eps) * gamma
    would (here 1 of 256 channels on a 2-core Xeon, 19 of 64 in R50's res2a with 2 threads);
    read back from the kernel, scale and shift give its bits in every channel."""
    rng = np.random.default_rng(1)
    norm = _norm(256, rng)
    x = paddle.to_tensor(rng.standard_normal((2, 256, 16, 16)).astype("float32") * 2)
    assert_same_bits(frozen_bn.frozen_bn_act(x, norm, False, threads=2), norm(x), "output")


def _float64_affine_grads(x, norm, relu, residual, dy):
    """d gamma, d beta of relu(norm(x) + residual) in float64 (NumPy), the mask from Paddle's
    float32 output."""
    y = _paddle(x, norm, relu, residual).numpy()
    g = dy.numpy().astype(np.float64) * ((y > 0) if relu else 1.0)
    mean = norm._mean.numpy().astype(np.float64)[None, :, None, None]
    var = norm._variance.numpy().astype(np.float64)
    centered = (g * (x.numpy().astype(np.float64) - mean)).sum(axis=(0, 2, 3))
    return centered / np.sqrt(var + np.float32(norm._epsilon)), g.sum(axis=(0, 2, 3))


@pytest.mark.parametrize("relu", [True, False])
def test_gamma_and_beta_gradients_are_float64_sums(relu):
    rng = np.random.default_rng(7)
    shape = (2, 6, 40, 40)  # 3200 elements per channel
    norm = _norm(shape[1], rng)
    x = paddle.to_tensor(rng.standard_normal(shape).astype("float32") * 2)
    residual = paddle.to_tensor(rng.standard_normal(shape).astype("float32"))
    dy = paddle.to_tensor(rng.standard_normal(shape).astype("float32"))
    want_gamma, want_beta = _float64_affine_grads(x, norm, relu, residual, dy)
    out = frozen_bn.frozen_bn_act(x, norm, relu, residual, threads=2)
    d_gamma, d_beta = paddle.grad(out, [norm.weight, norm.bias], dy)
    # float64 sums of float32 terms, rounded once to float32: within an ulp or two
    np.testing.assert_allclose(d_gamma.numpy(), want_gamma, rtol=3e-7, atol=1e-5)
    np.testing.assert_allclose(d_beta.numpy(), want_beta, rtol=3e-7, atol=1e-5)


def test_the_numbers_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(3)
    shape = (4, 32, 48, 48)  # large enough for 3 threads
    norm = _norm(shape[1], rng)
    x = paddle.to_tensor(rng.standard_normal(shape).astype("float32"), stop_gradient=False)
    dy = paddle.to_tensor(rng.standard_normal(shape).astype("float32"))
    results = []
    for threads in (1, 2, 3):
        out = frozen_bn.frozen_bn_act(x, norm, True, threads=threads)
        results.append([out, *paddle.grad(out, [x, norm.weight, norm.bias], dy)])
    for other in results[1:]:
        for got, want, what in zip(
            other, results[0], ["y", "dx", "d gamma", "d beta"], strict=True
        ):
            assert_same_bits(got, want, what)


def test_only_the_needed_gradients_and_nan_as_paddles_relu():
    rng = np.random.default_rng(11)
    norm = _norm(4, rng)
    norm.weight.stop_gradient = True  # a frozen stage: affine frozen too
    norm.bias.stop_gradient = True
    x = paddle.to_tensor(rng.standard_normal((2, 4, 5, 5)).astype("float32"))
    x[0, 1, 2, 3] = float("nan")
    x.stop_gradient = False
    out = frozen_bn.frozen_bn_act(x, norm, True, threads=2)
    assert_same_bits(out, _paddle(x, norm, True, None), "output with a NaN")
    assert out.numpy()[0, 1, 2, 3] == 0  # Paddle's ReLU turns a NaN into 0
    without_relu = frozen_bn.frozen_bn_act(x, norm, False, threads=2)
    assert np.isnan(without_relu.numpy()[0, 1, 2, 3])
    out.backward(paddle.ones_like(out))
    assert norm.weight.grad is None and norm.bias.grad is None
    dx = x.grad
    np.testing.assert_array_equal(np.isfinite(dx.numpy()), True)

    frozen = paddle.to_tensor(x.numpy())  # nothing needs a gradient: no backward at all
    assert frozen_bn.frozen_bn_act(frozen, norm, True, threads=2).stop_gradient


def test_bad_inputs_are_named():
    norm = _norm(4, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"x must be \[N, 4, H, W\]"):
        frozen_bn.frozen_bn_act(paddle.ones([1, 3, 2, 2]), norm, True)
    with pytest.raises(ValueError, match="residual must have x's shape"):
        frozen_bn.frozen_bn_act(paddle.ones([1, 4, 2, 2]), norm, True, paddle.ones([1, 4, 2, 1]))


def _resnet(depth, seed):
    paddle.seed(seed)
    model = NormEvalResNet(depth=depth, freeze_at=0, return_idx=[1, 2, 3], norm_eval=True)
    rng = np.random.default_rng(seed)
    for name, buffer in model.named_buffers():
        size = buffer.shape[0]
        values = rng.normal(0, 0.2, size) if name.endswith("_mean") else rng.uniform(0.5, 2, size)
        buffer.set_value(values.astype("float32"))
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.set_value(rng.uniform(0.6, 1.4, param.shape).astype("float32"))
        elif name.endswith("norm.bias"):
            param.set_value(rng.normal(0, 0.2, param.shape).astype("float32"))
    model.train()
    return model


def _run(model, image):
    feats = model({"image": image})
    loss = sum((f * f).mean() for f in feats)
    loss.backward()
    grads = {n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None}
    return [f.numpy() for f in feats], grads


@pytest.mark.parametrize(("depth", "fused"), [(18, 21), (50, 53)])
def test_a_resnet_trains_the_same_except_gamma_and_beta_summation(depth, fused):
    """Every frozen BN of NormEvalResNet is fused (R18: 21, R50: 53; each block's last one with
    the shortcut's addition, in the block's forward), outputs and every convolution gradient are
    Paddle's bits, gamma / beta gradients agree to float32 rounding."""
    image = paddle.to_tensor(np.random.default_rng(1).standard_normal((2, 3, 64, 64)), "float32")
    plain = _resnet(depth, 0)
    switched = _resnet(depth, 0)
    assert frozen_bn.use_fused_frozen_bn(switched, threads=2) == fused
    names = frozen_bn.fused_layers(switched)
    assert len(names) == fused and "res2.res2a" in names and "conv1.conv1" in names
    feats_a, grads_a = _run(plain, image)
    feats_b, grads_b = _run(switched, image)
    for a, b in zip(feats_a, feats_b, strict=True):
        assert_same_bits(b, a, "features")
    assert grads_a.keys() == grads_b.keys() and any("norm" in n for n in grads_a)
    for name in grads_a:
        if "norm" in name:  # float64 sums against Paddle's float32 ones
            scale = np.abs(grads_a[name]).max()
            np.testing.assert_allclose(
                grads_b[name], grads_a[name], atol=1e-5 * scale, err_msg=name
            )
        else:
            assert_same_bits(grads_b[name], grads_a[name], name)


def test_other_norms_are_left_alone():
    """Batch statistics (norm_eval false) are not a frozen affine map: nothing is switched."""
    model = NormEvalResNet(depth=18, freeze_at=-1, return_idx=[1, 2, 3], norm_eval=False)
    assert frozen_bn.use_fused_frozen_bn(model, threads=2) == 0


def test_the_config_key():
    model = _resnet(18, 0)
    assert frozen_bn.for_training(model, "auto", onednn_convs=0) == 0  # Paddle's convolutions
    assert frozen_bn.for_training(model, False, onednn_convs=5) == 0
    assert frozen_bn.fused_layers(model) == []
    assert frozen_bn.for_training(model, "auto", onednn_convs=5) == 21
    with pytest.raises(ValueError, match="config key fused_frozen_bn"):
        frozen_bn.for_training(model, "yes")
