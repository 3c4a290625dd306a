"""Focal and Smooth-L1 baseline losses against float64 NumPy references."""

import numpy as np
import paddle
import pytest

from ppdet_ghm.losses.baseline import BetaSmoothL1Loss, SigmoidFocalLoss


def _focal_reference(logits, labels, weights, gamma, alpha, avg_factor):
    x = logits.astype(np.float64)
    target = np.eye(x.shape[1] + 1)[labels][:, : x.shape[1]]  # label C (background) -> all zero
    p = 1 / (1 + np.exp(-x))
    bce = np.maximum(x, 0) - x * target + np.log1p(np.exp(-np.abs(x)))
    pt = np.where(target == 1, p, 1 - p)
    alpha_t = np.where(target == 1, alpha, 1 - alpha)
    return (bce * alpha_t * (1 - pt) ** gamma * weights[:, None]).sum() / avg_factor


def test_focal_loss_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (40, 5)).astype(np.float32)
    labels = rng.integers(0, 6, 40)  # 5 = background
    weights = (rng.random(40) > 0.2).astype(np.float32)  # some ignored anchors
    loss = SigmoidFocalLoss(gamma=2.0, alpha=0.25, loss_weight=2.0)(
        paddle.to_tensor(logits), paddle.to_tensor(labels), paddle.to_tensor(weights), 7.0
    )
    expected = 2.0 * _focal_reference(logits, labels, weights, 2.0, 0.25, 7.0)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_focal_loss_hand_value():
    # logit 0 (p = 0.5) for a positive: BCE ln 2, weight 0.25 * 0.5^2 -> 0.0625 * ln 2
    loss = SigmoidFocalLoss()(
        paddle.to_tensor([[0.0]]), paddle.to_tensor([0]), paddle.to_tensor([1.0]), 1.0
    )
    np.testing.assert_allclose(float(loss), 0.0625 * np.log(2), rtol=1e-6)


def test_smooth_l1_matches_numpy_and_hand_values():
    pred = paddle.to_tensor([[0.05, 0.5, -0.2, 0.0]])
    target = paddle.zeros([1, 4])
    weight = paddle.to_tensor([[1.0, 1.0, 1.0, 0.0]])
    loss = BetaSmoothL1Loss(beta=0.11)(pred, target, weight, 2.0)
    # 0.5 * 0.05^2 / 0.11 + (0.5 - 0.055) + (0.2 - 0.055), the 4th coordinate has weight 0
    expected = (0.5 * 0.05**2 / 0.11 + 0.445 + 0.145) / 2.0
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    l1 = BetaSmoothL1Loss(beta=0.0, loss_weight=3.0)(pred, target, weight, 1.0)
    np.testing.assert_allclose(float(l1), 3.0 * 0.75, rtol=1e-6)


def test_losses_declare_avg_factor():
    assert SigmoidFocalLoss.uses_avg_factor and BetaSmoothL1Loss.uses_avg_factor


@pytest.mark.parametrize(
    "build",
    [
        lambda: SigmoidFocalLoss(gamma=-1.0),
        lambda: SigmoidFocalLoss(alpha=1.5),
        lambda: BetaSmoothL1Loss(beta=-0.1),
    ],
)
def test_invalid_arguments_raise(build):
    with pytest.raises(ValueError):
        build()
