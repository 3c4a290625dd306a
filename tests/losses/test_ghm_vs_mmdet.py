"""GHM-C / GHM-R against mmdet 3.3.0's GHMC / GHMR directly (skipped without torch + mmdet).

Five calls with momentum, the same module objects throughout (as the reference calls one loss per
FPN level): loss, gradient wrt the prediction and acc_sum after every call.
"""

import numpy as np
import paddle
import pytest

from ppdet_ghm.losses import GHMCLoss, GHMRLoss

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")


from align.torch_ref import install_mmcv_ext_stand_in  # noqa: E402

install_mmcv_ext_stand_in()
ghm_loss = pytest.importorskip("mmdet.models.losses.ghm_loss")

RTOL = 1e-6


def relative_error(actual, expected):
    return np.abs(actual - expected).max(initial=0.0) / max(
        np.abs(expected).max(initial=0.0), 1e-30
    )


def test_ghmc_five_calls_match_mmdet():
    rng = np.random.default_rng(0)
    ours, ref = GHMCLoss(bins=30, momentum=0.75), ghm_loss.GHMC(bins=30, momentum=0.75)
    for call, n in enumerate((500, 200, 60, 20, 6)):
        x = (rng.standard_normal((n, 8)) * 3 - call).astype(np.float32)
        labels = rng.integers(0, 9, n)  # 8 = background
        weight = (rng.random(n) > 0.1).astype(np.float32)
        x_p = paddle.to_tensor(x, stop_gradient=False)
        loss_p = ours(x_p, paddle.to_tensor(labels), paddle.to_tensor(weight))
        loss_p.backward()
        x_t = torch.tensor(x, requires_grad=True)
        loss_t = ref(x_t, torch.tensor(labels), torch.tensor(weight))
        loss_t.backward()
        assert float(loss_p) == pytest.approx(float(loss_t.detach()), rel=RTOL), f"call {call}"
        assert relative_error(x_p.grad.numpy(), x_t.grad.numpy()) <= RTOL, f"call {call}"
        np.testing.assert_array_equal(ours.acc_sum.numpy(), ref.acc_sum.numpy())


def test_ghmc_float_targets_and_no_momentum_match_mmdet():
    rng = np.random.default_rng(1)
    ours, ref = GHMCLoss(bins=10, loss_weight=2.0), ghm_loss.GHMC(bins=10, loss_weight=2.0)
    x = (rng.standard_normal((300, 4)) * 2).astype(np.float32)
    x[0, :2] = 0.0  # logit 0: the gradient Paddle's own BCE kernel gets wrong
    target = (rng.random((300, 4)) < 0.2).astype(np.float32)
    weight = (rng.random((300, 4)) > 0.05).astype(np.float32)
    x_p = paddle.to_tensor(x, stop_gradient=False)
    loss_p = ours(x_p, paddle.to_tensor(target), paddle.to_tensor(weight))
    loss_p.backward()
    x_t = torch.tensor(x, requires_grad=True)
    loss_t = ref(x_t, torch.tensor(target), torch.tensor(weight))
    loss_t.backward()
    assert float(loss_p) == pytest.approx(float(loss_t.detach()), rel=RTOL)
    assert relative_error(x_p.grad.numpy(), x_t.grad.numpy()) <= RTOL


def test_ghmr_five_calls_match_mmdet():
    rng = np.random.default_rng(2)
    ours = GHMRLoss(mu=0.02, bins=10, momentum=0.7, loss_weight=10.0)
    ref = ghm_loss.GHMR(mu=0.02, bins=10, momentum=0.7, loss_weight=10.0)
    for call, n in enumerate((200, 80, 30, 10, 3)):
        pred = (rng.standard_normal((n, 4)) * 0.05 * (call + 1)).astype(np.float32)
        target = (rng.standard_normal((n, 4)) * 0.05).astype(np.float32)
        weight = np.repeat((rng.random((n, 1)) > 0.2).astype(np.float32), 4, axis=1)
        p_p = paddle.to_tensor(pred, stop_gradient=False)
        loss_p = ours(p_p, paddle.to_tensor(target), paddle.to_tensor(weight))
        loss_p.backward()
        p_t = torch.tensor(pred, requires_grad=True)
        loss_t = ref(p_t, torch.tensor(target), torch.tensor(weight))
        loss_t.backward()
        assert float(loss_p) == pytest.approx(float(loss_t.detach()), rel=RTOL), f"call {call}"
        assert relative_error(p_p.grad.numpy(), p_t.grad.numpy()) <= RTOL, f"call {call}"
        np.testing.assert_array_equal(ours.acc_sum.numpy(), ref.acc_sum.numpy())
