"""engine.threaded_momentum: Paddle's Momentum step with the clip multiply and the momentum update
run as one threaded call gives the bits of Paddle's own step (parameters, velocities, clipped
gradients) over several steps, for every case the step distinguishes (clip active or not,
auto_skip_clip, no clip, a parameter's own L2Decay and learning rate, need_clip false, frozen
parameters and parameters without a gradient, Nesterov, parameters cut into several pieces on
1-3 threads), and the formula itself against a float64 NumPy reference.

Bits, not tolerances, against Paddle: both sides run the same kernel on the same numbers on this
CPU; the NumPy check has a float32-rounding tolerance.
"""

import numpy as np
import paddle
import pytest
from paddle.regularizer import L1Decay, L2Decay

from ppdet_ghm.engine import threaded_momentum
from ppdet_ghm.engine.threaded_momentum import (
    ThreadedMomentumUnavailable,
    for_training,
    unsupported_reason,
    use_threaded_momentum,
)
from ppdet_ghm.modeling import cpp_ops
from tests.helpers.bits import assert_same_bits

PIECE = 1 << 16  # threaded_momentum.cc's piece length


class _Net(paddle.nn.Layer):
    """Parameters of every kind the step treats apart; the big one spans several pieces."""

    def __init__(self):
        super().__init__()
        self.big = paddle.nn.Linear(4, 3 * PIECE // 4 + 5)  # weight: 3 pieces + a 20-float tail
        self.own = paddle.nn.Conv2D(
            3, 8, 3, weight_attr=paddle.ParamAttr(regularizer=L2Decay(0.0), learning_rate=0.5)
        )
        self.unclipped = paddle.nn.Linear(4, 6, weight_attr=paddle.ParamAttr(need_clip=False))
        self.frozen = paddle.nn.Linear(4, 4)
        self.frozen.weight.stop_gradient = True
        self.unused = paddle.nn.Linear(4, 2)  # in the optimizer, no gradient

    def loss(self, x, image):
        return (
            self.big(x).square().mean() * 50
            + self.own(image).sum()
            + self.unclipped(x).sum()
            + self.frozen(x).sum()
        )


def _run(threaded: bool, steps: int = 3, nesterov: bool = False, clip="active", lr=0.1):
    with paddle.utils.unique_name.guard():  # the same parameter and accumulator names each run
        return _steps(threaded, steps, nesterov, clip, lr)


def _steps(threaded, steps, nesterov, clip, lr):
    paddle.seed(0)
    net = _Net()
    grad_clip = {
        "active": paddle.nn.ClipGradByGlobalNorm(1.0),
        "inactive": paddle.nn.ClipGradByGlobalNorm(1e6),
        "skip-active": paddle.nn.ClipGradByGlobalNorm(1.0, auto_skip_clip=True),
        "skip-inactive": paddle.nn.ClipGradByGlobalNorm(1e6, auto_skip_clip=True),
        "none": None,
    }[clip]
    opt = paddle.optimizer.Momentum(
        lr,
        0.9,
        parameters=net.parameters(),
        use_nesterov=nesterov,
        weight_decay=L2Decay(1e-4),
        grad_clip=grad_clip,
    )
    if threaded:
        use_threaded_momentum(opt)
    rng = np.random.default_rng(1)
    grads = []
    for _ in range(steps):
        x = paddle.to_tensor(rng.standard_normal((2, 4)).astype("float32"))
        image = paddle.to_tensor(rng.standard_normal((2, 3, 7, 7)).astype("float32"))
        net.loss(x, image).backward()
        opt.step()
        grads.append(
            {p.name: p.grad.numpy().copy() for p in net.parameters() if p.grad is not None}
        )
        opt.clear_grad()
    params = {p.name: p.numpy() for p in net.parameters()}
    velocities = {k: v.numpy() for k, v in opt._accumulators[opt._velocity_acc_str].items()}
    return params, velocities, grads, opt


def _assert_same_runs(ours, paddles):
    for what, a, b in (("param", ours[0], paddles[0]), ("velocity", ours[1], paddles[1])):
        assert a.keys() == b.keys()
        for name in a:
            assert_same_bits(a[name], b[name], f"{what} {name}")
    for step, (a, b) in enumerate(zip(ours[2], paddles[2], strict=True)):
        assert a.keys() == b.keys()
        for name in a:
            assert_same_bits(a[name], b[name], f"clipped grad {name}, step {step}")


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("clip", ["active", "inactive", "skip-active", "skip-inactive", "none"])
def test_the_bits_of_paddles_step(clip, threads, set_math_threads):
    set_math_threads(threads)
    paddles = _run(False, clip=clip)
    ours = _run(True, clip=clip)
    _assert_same_runs(ours, paddles)
    _, velocities, grads, _ = ours
    # of 9 trainable parameters, the unused layer's two have no gradient and no velocity
    assert len(velocities) == len(grads[0]) == 7
    assert max(g.size for g in grads[0].values()) > 3 * PIECE  # one spans several pieces


def test_nesterov_and_a_scheduled_learning_rate(set_math_threads):
    set_math_threads(2)
    lr = paddle.optimizer.lr.StepDecay(0.1, step_size=1, gamma=0.5)
    paddles = _run(False, nesterov=True, lr=lr)
    lr = paddle.optimizer.lr.StepDecay(0.1, step_size=1, gamma=0.5)
    ours = _run(True, nesterov=True, lr=lr)
    _assert_same_runs(ours, paddles)


def test_the_formula_against_float64():
    """One parameter, two steps, clip active: clip factor, L2 decay, momentum, by hand."""
    p0 = np.array([0.5, -1.0, 2.0, 0.0], "float32")
    param = paddle.create_parameter([4], "float32")
    param.set_value(p0)
    opt = paddle.optimizer.Momentum(
        0.1,
        0.9,
        parameters=[param],
        weight_decay=L2Decay(0.01),
        grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0),
    )
    use_threaded_momentum(opt)
    g = np.array([3.0, -4.0, 0.0, 12.0])  # norm 13
    p, v = p0.astype("float64"), np.zeros(4)
    for _ in range(2):
        param.grad = paddle.to_tensor(g.astype("float32"))
        opt.step()
        clipped = g * (1.0 / 13.0)
        v = 0.9 * v + clipped + 0.01 * p
        p = p - 0.1 * v
        np.testing.assert_allclose(param.grad.numpy(), clipped, rtol=1e-6)
        opt.clear_grad()
    np.testing.assert_allclose(param.numpy(), p, rtol=1e-6, atol=1e-7)
    velocity = next(iter(opt._accumulators[opt._velocity_acc_str].values()))
    np.testing.assert_allclose(velocity.numpy(), v, rtol=1e-6, atol=1e-7)
    assert p[3] != 0.0  # the zero parameter moved by its gradient alone


def test_the_state_dict_is_paddles(set_math_threads):
    """Same keys (accumulator names, LR state) and velocity bits as Paddle's optimizer after two
    steps: a checkpoint of either loads into the other (the trainer's resume test runs the
    threaded update through a checkpoint, tests/engine/test_resume.py)."""
    set_math_threads(2)
    *_, paddle_opt = _run(False, steps=2)
    *_, our_opt = _run(True, steps=2)
    ours, theirs = our_opt.state_dict(), paddle_opt.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        if isinstance(ours[key], paddle.Tensor):
            assert_same_bits(ours[key], theirs[key], key)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda ps: paddle.optimizer.AdamW(parameters=ps), "AdamW is not"),
        (
            lambda ps: paddle.optimizer.Momentum(
                parameters=ps, grad_clip=paddle.nn.ClipGradByNorm(1.0)
            ),
            "gradient clip ClipGradByNorm",
        ),
        (
            lambda ps: paddle.optimizer.Momentum(parameters=ps, weight_decay=L1Decay(0.1)),
            "regularization L1Decay",
        ),
        (
            lambda ps: paddle.optimizer.Momentum(parameters=ps, use_multi_tensor=True),
            "multi_tensor",
        ),
        (lambda ps: paddle.optimizer.Momentum(parameters=[{"params": ps}]), "parameter groups"),
    ],
)
def test_unsupported_optimizers_are_named_and_left_alone(make, reason):
    opt = make(paddle.nn.Linear(2, 2).parameters())
    assert reason in unsupported_reason(opt)
    with pytest.raises(ThreadedMomentumUnavailable, match=reason):
        use_threaded_momentum(opt)
    assert for_training(opt, "auto") is False
    with pytest.raises(ThreadedMomentumUnavailable, match=reason):
        for_training(opt, True)


def test_a_parameters_own_l1_decay_is_unsupported():
    layer = paddle.nn.Linear(2, 2, weight_attr=paddle.ParamAttr(regularizer=L1Decay(0.1)))
    opt = paddle.optimizer.Momentum(parameters=layer.parameters())
    assert "regularizer L1Decay" in unsupported_reason(opt)


def test_the_config_key(set_math_threads):
    def momentum():
        return paddle.optimizer.Momentum(parameters=paddle.nn.Linear(2, 2).parameters())

    set_math_threads(1)
    assert for_training(momentum(), "auto") is False  # one math thread: nothing to gain
    assert for_training(momentum(), "false") is False
    opt = momentum()
    assert for_training(opt, "true") is True
    assert isinstance(opt.step.__self__, threaded_momentum._ThreadedUpdate)
    set_math_threads(2)
    opt = momentum()
    assert for_training(opt, "auto") is True
    use_threaded_momentum(opt)  # a second call keeps one wrapper, around Paddle's own step
    assert opt.step.__self__.paddle_step.__func__ is paddle.optimizer.Momentum.step
    with pytest.raises(ValueError, match="config key threaded_momentum"):
        for_training(momentum(), "sometimes")


def test_a_failed_build_warns_under_auto_and_raises_under_true(
    monkeypatch, caplog, set_math_threads
):
    set_math_threads(2)
    monkeypatch.setattr(threaded_momentum, "_ops", cpp_ops.BuildError("no compiler here"))
    opt = paddle.optimizer.Momentum(parameters=paddle.nn.Linear(2, 2).parameters())
    assert for_training(opt, "auto") is False
    assert "no compiler here" in caplog.text
    assert not isinstance(getattr(opt.step, "__self__", None), threaded_momentum._ThreadedUpdate)
    with pytest.raises(ThreadedMomentumUnavailable, match="no compiler here"):
        for_training(opt, True)
