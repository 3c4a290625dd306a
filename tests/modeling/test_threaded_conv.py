"""modeling.threaded_conv: Paddle's convolution kernels on two threads give F.conv2d's bits
(output, input and weight gradients, bias gradients of both layer classes), switch only the
layers they reproduce, and keep a seeded training run the same to the last bit.

Bits, not tolerances: both sides run the same kernel on the same operands on this CPU, so the
comparison does not depend on the CPU's kernels or the thread count of the math library.
"""

import logging

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest

from ppdet_ghm.engine import tasks
from ppdet_ghm.modeling import threaded_conv
from ppdet_ghm.modeling.layers import ChannelBiasConv2D
from tests.helpers.bits import assert_same_bits
from tests.helpers.engine_tiny import make_tiny


@pytest.fixture(scope="module", autouse=True)
def ops():
    """Build the extension once (the first build of a machine takes ~15 s)."""
    return threaded_conv.load_ops()


# x shape, weight shape, stride, padding (2 or 4 values: [top, bottom, left, right]), dilation,
# groups: 3x3 / 1x1 / stride 2 / odd batch / asymmetric padding + dilation + groups / batch 1
CASES = [
    ((4, 8, 20, 20), (16, 8, 3, 3), [1, 1], [1, 1], [1, 1], 1),
    ((6, 16, 12, 12), (8, 16, 1, 1), [1, 1], [0, 0], [1, 1], 1),
    ((4, 8, 21, 17), (12, 8, 3, 3), [2, 2], [1, 1], [1, 1], 1),
    ((5, 12, 17, 23), (8, 6, 3, 5), [2, 1], [1, 0, 2, 1], [2, 1], 2),
    ((1, 3, 32, 32), (4, 3, 7, 7), [2, 2], [3, 3], [1, 1], 1),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])))
def test_forward_and_gradients_are_paddles_bits(case, threads):
    x_shape, w_shape, stride, padding, dilation, groups = case
    rng = np.random.default_rng(sum(x_shape))
    x = paddle.to_tensor(rng.standard_normal(x_shape).astype("float32"), stop_gradient=False)
    w = paddle.to_tensor(rng.standard_normal(w_shape).astype("float32"), stop_gradient=False)
    pad = padding if len(padding) == 2 else [[0, 0], [0, 0], padding[:2], padding[2:]]
    ref = F.conv2d(x, w, stride=stride, padding=pad, dilation=dilation, groups=groups)
    dy = paddle.to_tensor(rng.standard_normal(ref.shape).astype("float32"))
    ref_dx, ref_dw = paddle.grad(ref, [x, w], dy)

    out = threaded_conv.threaded_conv2d(x, w, stride, padding, dilation, groups, threads)
    dx, dw = paddle.grad(out, [x, w], dy)
    assert_same_bits(out, ref, "output")
    assert_same_bits(dx, ref_dx, "input gradient")
    assert_same_bits(dw, ref_dw, "weight gradient")


@pytest.mark.parametrize("count", [1, 2])
def test_the_bits_hold_for_the_math_librarys_thread_count(set_math_threads, count):
    set_math_threads(count)
    test_forward_and_gradients_are_paddles_bits(CASES[0], threads=2)
    test_forward_and_gradients_are_paddles_bits(CASES[3], threads=2)


def test_only_the_needed_gradient_and_a_strided_view():
    rng = np.random.default_rng(0)
    base = paddle.to_tensor(rng.standard_normal((4, 16, 10, 10)).astype("float32"))
    x = base[:, ::2]  # a non-contiguous view: 8 channels
    w = paddle.to_tensor(rng.standard_normal((6, 8, 3, 3)).astype("float32"), stop_gradient=False)
    ref = F.conv2d(x, w, padding=1)
    dy = paddle.ones_like(ref)
    (ref_dw,) = paddle.grad(ref, [w], dy)
    out = threaded_conv.threaded_conv2d(x, w, [1, 1], [1, 1], [1, 1], 1, 2)
    (dw,) = paddle.grad(out, [w], dy)
    assert_same_bits(out, ref, "output")
    assert_same_bits(dw, ref_dw, "weight gradient")
    # the op returns a placeholder, not a gradient, for what is not asked
    dx, dw_only = threaded_conv.load_ops().threaded_conv2d_backward(
        x.contiguous(), w, dy, [1, 1], [1, 1], "EXPLICIT", [1, 1], 1, 2, False, True
    )
    assert dx.shape == [1]
    assert_same_bits(dw_only, ref_dw, "weight gradient alone")


@pytest.mark.parametrize("layer_class", [nn.Conv2D, ChannelBiasConv2D])
def test_switched_layers_keep_their_bias_arithmetic(layer_class):
    paddle.seed(3)
    layer = layer_class(8, 16, 3, padding=1, stride=2)
    twin = layer_class(8, 16, 3, padding=1, stride=2)
    twin.set_state_dict(layer.state_dict())
    assert threaded_conv.use_threaded_convs(twin, 2) == 1
    assert threaded_conv.threaded_conv_layers(twin) == [""]
    rng = np.random.default_rng(1)
    x_np = rng.standard_normal((4, 8, 15, 15)).astype("float32")
    dy = paddle.to_tensor(rng.standard_normal((4, 16, 8, 8)).astype("float32"))
    results = []
    for model in (layer, twin):
        x = paddle.to_tensor(x_np, stop_gradient=False)
        out = model(x)
        grads = paddle.grad(out, [x, model.weight, model.bias], dy)
        results.append([out, *grads])
    for name, a, b in zip(["output", "dx", "dw", "db"], *results, strict=True):
        assert_same_bits(a, b, name)


def test_which_layers_are_switched():
    def model():
        paddle.seed(5)
        return nn.Sequential(
            nn.Conv2D(3, 4, 3, padding=1),  # 0: yes
            nn.Conv2D(4, 4, 3, padding="SAME"),  # 1: 'SAME' is not explicit
            nn.Conv2D(4, 4, 3, padding=1, padding_mode="reflect"),  # 2: not zero padding
            ChannelBiasConv2D(4, 4, 1),  # 3: yes
            nn.Conv2D(4, 4, 3, padding=[1, 0, 2, 1], groups=2),  # 4: yes (4-value padding, groups)
            nn.Conv2DTranspose(4, 4, 3),  # 5: not a convolution of this kind
        )

    plain, switched = model(), model()
    assert threaded_conv.use_threaded_convs(switched) == 3
    assert threaded_conv.threaded_conv_layers(switched) == ["0", "3", "4"]
    x = paddle.randn([2, 3, 8, 8])
    out = switched(x)
    assert out.shape == [2, 4, 9, 11]  # H: 8 -> 7 (top 1, bottom 0) -> 9; W: 8 -> 9 -> 11
    assert_same_bits(out, plain(x), "output")


def test_traced_layers_keep_paddles_forward():
    layer = nn.Conv2D(3, 4, 3, padding=1)
    threaded_conv.use_threaded_convs(layer)
    static = paddle.jit.to_static(layer, full_graph=True)
    x = paddle.randn([2, 3, 8, 8])
    np.testing.assert_allclose(static(x).numpy(), F.conv2d(x, layer.weight, layer.bias, padding=1))
    program = static.forward.concrete_program.main_program
    names = {op.name() for op in program.global_block().ops}
    assert "pd_op.conv2d" in names
    assert not any("threaded" in name for name in names)


def test_for_training_setting(monkeypatch, caplog):
    def model():
        return nn.Sequential(nn.Conv2D(3, 4, 3), nn.Conv2D(4, 4, 1))

    assert threaded_conv.for_training(model(), 1) == 0
    assert threaded_conv.for_training(model(), "2") == 2
    assert threaded_conv.threads_setting(" 2 ") == 2
    for bad in (3, "two", True, 0, None):
        with pytest.raises(ValueError, match="config key paddle_conv_threads: expected 1 or 2"):
            threaded_conv.for_training(model(), bad)

    def unavailable():
        raise threaded_conv.ThreadedConvUnavailable("no compiler here")

    monkeypatch.setattr(threaded_conv, "load_ops", unavailable)
    with caplog.at_level(logging.WARNING, logger=threaded_conv.__name__):
        assert threaded_conv.for_training(model(), 2) == 0
    assert "run on one thread (paddle_conv_threads: 2): no compiler here" in caplog.text


def test_training_on_two_threads_repeats_one_threads_run_bit_for_bit(tmp_path):
    """The demo config's setting: Paddle's convolutions, on two threads; two steps of the tiny
    demo variant give the one-thread run's losses and weights to the bit."""
    config, overrides = make_tiny(tmp_path)
    runs = {}
    for threads in (1, 2):
        trainer = tasks.train(
            config,
            overrides={
                **overrides,
                "epoch": 1,
                "onednn_conv": False,
                "paddle_conv_threads": threads,
            },
            output_dir=str(tmp_path / f"threads{threads}"),
            seed=0,
            threads=1,
        )
        assert trainer.onednn_convs == 0
        assert (trainer.threaded_convs > 0) == (threads == 2)
        losses = [[r[k] for k in ("loss", "loss_cls", "loss_reg")] for r in trainer.history.records]
        weights = {k: v.numpy() for k, v in trainer.model.state_dict().items()}
        runs[threads] = losses, weights
    assert len(runs[1][0]) == 2
    assert runs[1][0] == runs[2][0]
    for name, value in runs[1][1].items():
        np.testing.assert_array_equal(runs[2][1][name], value, err_msg=name)
