"""Tests of ppdet_ghm.losses.ghm: GHM-C / GHM-R against an independent float64 NumPy reference.

The reference below is written from the paper and the reference's semantics (mmdet ghm_loss.py):
per-bin loops, float32 edges compared in float64, EMA of the counts, weights / n,
``sum(loss * w) / (tot + eps) * loss_weight``; gradients are written analytically.
"""

import math

import numpy as np
import paddle
import pytest

from ppdet_ghm.losses import (
    GHMCLoss,
    GHMRLoss,
    ghm_bin_index,
    ghmc_edges,
    ghmc_loss,
    ghmr_edges,
    ghmr_loss,
)
from ppdet_ghm.losses import ghm as ghm_module
from tests.helpers import REPO

EPS32 = float(np.finfo(np.float32).eps)  # mmdet's weight_reduce_loss: sum / (tot + eps)
RTOL = 1e-6


# ------------------------------------------------------------------ independent references
def ref_edges(bins, last):
    """float32 edges: i / bins, last edge + 1e-6 (GHM-C) or = 1e3 (GHM-R)."""
    edges = np.array([np.float32(i) / np.float32(bins) for i in range(bins + 1)], np.float32)
    if last == "ghmc":
        edges[-1] = np.float32(edges[-1] + np.float32(1e-6))
    else:
        edges[-1] = np.float32(1e3)
    return edges


def ref_weights(g, valid, tot, edges, acc, momentum):
    """Per-element GHM weights by a loop over bins; returns (weights float64, new acc float64)."""
    weights = np.zeros_like(g, dtype=np.float64)
    acc = None if acc is None else np.array(acc, dtype=np.float64)
    n = 0
    for i in range(len(edges) - 1):
        inds = (g >= float(edges[i])) & (g < float(edges[i + 1])) & valid
        count = int(inds.sum())
        if count > 0:
            if momentum > 0:
                acc[i] = momentum * acc[i] + (1 - momentum) * count
                weights[inds] = tot / acc[i]
            else:
                weights[inds] = tot / count
            n += 1
    if n > 0:
        weights /= n
    return weights, acc


def ref_ghmc(x, target, label_weight, bins, momentum=0.0, acc=None, loss_weight=1.0):
    """GHM-C in float64: (loss, d loss / d x, new acc). target float [N, C] binary."""
    x = np.asarray(x, np.float64)
    t = np.asarray(target, np.float64)
    s = 1.0 / (1.0 + np.exp(-x))
    g = np.abs(s - t)
    lw = np.broadcast_to(np.asarray(label_weight, np.float64).reshape(len(x), -1), x.shape)
    valid = lw > 0
    tot = max(float(valid.sum()), 1.0)
    w, acc = ref_weights(g, valid, tot, ref_edges(bins, "ghmc"), acc, momentum)
    bce = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    scale = loss_weight / (tot + EPS32)
    return (bce * w).sum() * scale, (s - t) * w * scale, acc


def ref_ghmr(pred, target, label_weight, mu, bins, momentum=0.0, acc=None, loss_weight=1.0):
    """GHM-R in float64: (loss, d loss / d pred, new acc)."""
    d = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
    root = np.sqrt(d * d + mu * mu)
    g = np.abs(d) / root
    lw = np.asarray(label_weight, np.float64)
    tot = max(float(lw.sum()), 1.0)
    w, acc = ref_weights(g, lw > 0, tot, ref_edges(bins, "ghmr"), acc, momentum)
    scale = loss_weight / (tot + EPS32)
    return ((root - mu) * w).sum() * scale, d / root * w * scale, acc


def one_hot(labels, num_classes):
    target = np.zeros((len(labels), num_classes))
    for row, label in enumerate(labels):
        if 0 <= label < num_classes:
            target[row, label] = 1.0
    return target


# ------------------------------------------------------------------ helpers
def run(loss, pred, target, label_weight, dtype="float32"):
    """Forward + backward of ``loss``; returns (loss, grad) as float64 NumPy."""
    x = paddle.to_tensor(np.asarray(pred, dtype=dtype), stop_gradient=False)
    target = paddle.to_tensor(target)
    value = loss(x, target, paddle.to_tensor(label_weight))
    value.backward()
    return float(value), x.grad.numpy().astype(np.float64)


def assert_close(actual, expected, rtol=RTOL):
    """Relative difference, normwise: |a - e| <= rtol * max|e| (elementwise for scalars)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(np.abs(expected).max(initial=0.0), 1e-30)
    err = np.abs(actual - expected).max(initial=0.0)
    assert err <= rtol * scale, f"max abs err {err:.3g} > {rtol} * {scale:.3g}"


def random_ghmc_inputs(rng, n=300, c=6, ignore=0.1):
    x = rng.standard_normal((n, c)) * 3.0
    labels = rng.integers(0, c + 1, n)  # c = background
    weight = (rng.random(n) >= ignore).astype(np.float32)
    return x, labels, weight


# ------------------------------------------------------------------ bins
@pytest.mark.parametrize("bins", [1, 2, 3, 7, 10, 20, 30])
@pytest.mark.parametrize("kind", ["ghmc", "ghmr"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bin_index_is_searchsorted_on_float32_edges(bins, kind, dtype):
    edges = ghmc_edges(bins) if kind == "ghmc" else ghmr_edges(bins)
    np.testing.assert_array_equal(edges, ref_edges(bins, kind))
    ftype = np.dtype(dtype).type
    inner = edges[:-1].astype(ftype)  # every edge below 1, as a value of g's dtype
    values = np.concatenate(
        [
            inner,
            np.nextafter(inner, ftype(-1)),
            np.nextafter(inner, ftype(2)),
            np.nextafter(np.nextafter(inner, ftype(2)), ftype(2)),
            np.random.default_rng(bins).random(2000).astype(ftype),
            np.array([0.0, 1.0, np.nextafter(ftype(1), ftype(0))], ftype),
        ]
    )
    values = values[(values >= 0) & (values <= 1)]
    expected = np.searchsorted(edges.astype(ftype), values, side="right") - 1
    idx = ghm_bin_index(paddle.to_tensor(values), edges)
    assert idx.dtype == paddle.int32
    np.testing.assert_array_equal(idx.numpy(), expected)


def test_floor_of_g_times_bins_is_not_the_bin():
    """Why the bin index is checked against the edges: floor(g * bins) is off right at edges."""
    edges = ghmc_edges(20).astype(np.float32)
    g = edges[17]  # fl32(17 / 20)
    below = np.nextafter(g, np.float32(0))  # the float32 just below: in bin 16
    assert np.floor(below * np.float32(20)) == 17  # fl32(below * 20) rounds up to 17
    assert ghm_bin_index(paddle.to_tensor(np.array([below, g])), edges).numpy().tolist() == [16, 17]
    # float64 g against float32 edges: fl32(6 / 10) > 0.6, so 0.6 lies in bin 5
    assert ghm_bin_index(paddle.to_tensor(np.array([0.6])), ghmr_edges(10)).numpy().tolist() == [5]


def test_bin_index_nan_goes_to_bin_zero():
    g = paddle.to_tensor(np.array([np.nan, 0.5], np.float32))
    assert ghm_bin_index(g, ghmc_edges(30)).numpy().tolist() == [0, 15]


# ------------------------------------------------------------------ hand-computed cases
def test_ghmc_two_bins_by_hand():
    # bins = 2: edges [0, 0.5, 1 + 1e-6]. sigmoid(0) = 1/2, sigmoid(ln 3) = 3/4.
    # element  x       t   s     g = |s - t|  bin
    # (0, 0)   0       0   1/2   1/2          1   (exactly on the edge 0.5)
    # (0, 1)   ln 3    1   3/4   1/4          0
    # (1, 0)   -ln 3   0   1/4   1/4          0
    # (1, 1)   -ln 3   0   1/4   1/4          0
    # counts [3, 1], tot = 4, n = 2: w(bin 0) = 4 / 3 / 2 = 2/3, w(bin 1) = 4 / 1 / 2 = 2.
    # BCE: ln 2, -ln(3/4), -ln(3/4), -ln(3/4)
    # loss = (2 * ln 2 + 3 * (2/3) * ln(4/3)) / 4 = (ln 2 + ln(4/3)) / 2 = ln(8/3) / 2
    # grad = (s - t) * w / 4: (0,0) 1/2 * 2 / 4 = 1/4; (0,1) -1/4 * 2/3 / 4 = -1/24; others 1/24
    ln3 = math.log(3.0)
    x = np.array([[0.0, ln3], [-ln3, -ln3]])
    t = np.array([[0.0, 1.0], [0.0, 0.0]])
    loss, grad = run(GHMCLoss(bins=2), x, t, np.ones((2, 2)), dtype="float64")
    tot = 4 + EPS32  # mmdet divides by tot + float32 eps
    assert loss == pytest.approx(math.log(8 / 3) / 2 * 4 / tot, rel=1e-12)
    expected = np.array([[1 / 4, -1 / 24], [1 / 24, 1 / 24]]) * 4 / tot
    np.testing.assert_allclose(grad, expected, rtol=1e-12)


def test_ghmr_three_bins_with_momentum_by_hand():
    # bins = 3: edges [0, 1/3, 2/3, 1e3]; mu = 0.02; g = |d| / sqrt(d^2 + mu^2):
    # d = 0 -> g = 0 (bin 0); d = mu/sqrt(3) -> g = (1/sqrt 3) / (2/sqrt 3) = 1/2 (bin 1);
    # d = +-mu -> g = 1/sqrt 2 = 0.707 (bin 2). ASL1 = sqrt(d^2 + mu^2) - mu:
    # 0, mu (2/sqrt 3 - 1), mu (sqrt 2 - 1).
    mu, m = 0.02, 0.5
    a1 = mu * (2 / math.sqrt(3) - 1)
    a2 = mu * (math.sqrt(2) - 1)
    loss_fn = GHMRLoss(mu=mu, bins=3, momentum=m)
    tot = 4 + EPS32
    # call 1: d = [0, mu/sqrt 3, mu, -mu] -> counts [1, 1, 2], acc = 0.5 * count = [.5, .5, 1],
    # w = tot / acc / n (n = 3) = [8/3, 8/3, 4/3] (tot = 4).
    # loss = (0 * 8/3 + a1 * 8/3 + 2 * a2 * 4/3) / 4
    d1 = np.array([[0.0, mu / math.sqrt(3), mu, -mu]])
    loss, grad = run(loss_fn, d1, np.zeros((1, 4)), np.ones((1, 4)), dtype="float64")
    np.testing.assert_allclose(loss_fn.acc_sum.numpy(), [0.5, 0.5, 1.0])
    assert loss == pytest.approx((a1 * 8 / 3 + 2 * a2 * 4 / 3) / tot, rel=1e-6)
    # grad = d / sqrt(d^2 + mu^2) * w / tot: [0, 1/2 * 8/3, 1/sqrt2 * 4/3, -1/sqrt2 * 4/3] / 4
    r2 = 1 / math.sqrt(2)
    np.testing.assert_allclose(
        grad, np.array([[0.0, 4 / 3, r2 * 4 / 3, -r2 * 4 / 3]]) / tot, rtol=1e-6
    )
    # call 2: d = [0, 0, 0, mu/sqrt 3] -> counts [3, 1, 0]: acc = [.5*.5 + .5*3, .5*.5 + .5*1, 1]
    # = [1.75, 0.75, 1] (bin 2 empty: kept); n = 2: w = [4/1.75/2, 4/0.75/2] = [8/7, 8/3].
    # loss = (3 * 0 * 8/7 + a1 * 8/3) / 4
    d2 = np.array([[0.0, 0.0, 0.0, mu / math.sqrt(3)]])
    loss, _ = run(loss_fn, d2, np.zeros((1, 4)), np.ones((1, 4)), dtype="float64")
    np.testing.assert_allclose(loss_fn.acc_sum.numpy(), [1.75, 0.75, 1.0])
    assert loss == pytest.approx(a1 * 8 / 3 / tot, rel=1e-6)


# ------------------------------------------------------------------ edges, g = 0 and g = 1
def test_ghmc_g_on_edges_and_at_zero_and_one():
    # 30 bins. x = 0 -> s = 1/2 exactly -> g = 1/2 = edges[15] exactly (bin 15, either target);
    # x = -100, t = 1 -> s = 0 -> g = 1 (last bin, edge 30 is 1 + 1e-6); x = +-100 with t = s ->
    # g = 0 (bin 0); x = -2, t = 0 -> g = sigmoid(-2) = 0.119 (bin 3: 3/30 <= g < 4/30).
    x = np.array([[0.0, 0.0], [-100.0, 100.0], [-100.0, -2.0]], np.float32)
    t = np.array([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]], np.float32)
    loss_fn = GHMCLoss(bins=30, momentum=0.5)
    loss, grad = run(loss_fn, x, t, np.ones(3, np.float32))
    counts = np.zeros(30)
    counts[[15, 29, 0, 3]] = [2, 1, 2, 1]
    np.testing.assert_array_equal(loss_fn.acc_sum.numpy(), 0.5 * counts)
    ref_loss, ref_grad, ref_acc = ref_ghmc(x, t, np.ones(3), 30, 0.5, np.zeros(30))
    np.testing.assert_array_equal(ref_acc, 0.5 * counts)
    assert loss == pytest.approx(ref_loss, rel=RTOL)
    assert_close(grad, ref_grad)


def test_ghmr_g_exactly_on_an_edge_in_float32_and_float64():
    # mu = 1, d = 3/4: sqrt(9/16 + 1) = 5/4, g = 3/5 rounded to float32 == edges[6] = fl32(6/10):
    # bin 6 in float32. In float64 g = 0.6 < fl32(0.6) = 0.6000000238: bin 5 (as the reference).
    d = np.float32(0.75)
    assert d / np.sqrt(d * d + np.float32(1)) == ghmr_edges(10)[6]
    pred = np.array([[0.75, -0.75, 0.0, 0.1]])
    target = np.zeros((1, 4))
    for dtype, bin_of_06 in (("float32", 6), ("float64", 5)):
        loss_fn = GHMRLoss(mu=1.0, bins=10, momentum=0.5)
        run(loss_fn, pred, target.astype(dtype), np.ones((1, 4), dtype), dtype=dtype)
        g_01 = 0.1 / math.sqrt(0.01 + 1)  # 0.0995: bin 0, with d = 0 (g = 0)
        assert g_01 < 0.1
        counts = np.zeros(10)
        counts[bin_of_06], counts[0] = 2, 2
        np.testing.assert_array_equal(loss_fn.acc_sum.numpy(), 0.5 * counts)


# ------------------------------------------------------------------ against the float64 reference
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("momentum", [0.0, 0.75])
def test_ghmc_integer_labels_mixed_ignore_matches_reference(dtype, momentum):
    rng = np.random.default_rng(1)
    x, labels, weight = random_ghmc_inputs(rng)
    weight[:5] = [0.5, 2.0, 0.0, 3.0, 0.0]  # only the sign matters
    loss_fn = GHMCLoss(bins=30, momentum=momentum, loss_weight=2.5)
    x = x.astype(dtype)
    loss, grad = run(loss_fn, x, labels, weight.astype(dtype), dtype=dtype)
    ref_loss, ref_grad, ref_acc = ref_ghmc(
        x, one_hot(labels, 6), weight, 30, momentum, np.zeros(30), loss_weight=2.5
    )
    assert loss == pytest.approx(ref_loss, rel=RTOL)
    assert_close(grad, ref_grad)
    if momentum > 0:
        np.testing.assert_allclose(loss_fn.acc_sum.numpy(), ref_acc, rtol=RTOL)
    else:
        np.testing.assert_array_equal(loss_fn.acc_sum.numpy(), np.zeros(30))


def test_ghmc_labels_equal_one_hot_float_targets_and_elementwise_weights():
    rng = np.random.default_rng(2)
    x, labels, weight = random_ghmc_inputs(rng, n=200, c=5)
    labels[:3] = [-1, 5, 4]  # -1 and C: background rows
    elem_weight = np.repeat(weight[:, None], 5, axis=1)
    elem_weight[7, 2] = 0.0  # one ignored element of a valid row
    results = []
    for target, lw in ((labels, elem_weight), (one_hot(labels, 5).astype(np.float32), elem_weight)):
        loss_fn = GHMCLoss(bins=10, momentum=0.7)
        results.append((*run(loss_fn, x.astype(np.float32), target, lw), loss_fn.acc_sum.numpy()))
    (la, ga, aa), (lb, gb, ab) = results
    assert la == pytest.approx(lb, rel=1e-7)
    assert_close(ga, gb)  # labels path: gradient via g * bins, a rounding or two apart
    np.testing.assert_array_equal(aa, ab)
    ref_loss, ref_grad, ref_acc = ref_ghmc(
        x, one_hot(labels, 5), elem_weight, 10, 0.7, np.zeros(10)
    )
    assert la == pytest.approx(ref_loss, rel=RTOL)
    assert_close(ga, ref_grad)
    np.testing.assert_allclose(aa, ref_acc, rtol=RTOL)


def test_ghmc_mmdet_input_form_takes_the_label_path_bit_for_bit():
    """Float one-hot targets with [N, C] weights that mark whole rows (mmdet's form) are run as
    integer labels with [N] weights: the same bits, not just the same numbers."""
    rng = np.random.default_rng(12)
    x, labels, weight = random_ghmc_inputs(rng, n=400, c=7)
    results = []
    for target, lw in (
        (labels, weight),
        (one_hot(labels, 7).astype(np.float32), np.repeat(weight[:, None] * 2.0, 7, axis=1)),
    ):
        loss_fn = GHMCLoss(bins=30, momentum=0.75)
        for _ in range(2):  # the second call sees the first's histogram
            loss, grad = run(loss_fn, x.astype(np.float32), target, lw)
        results.append((loss, grad, loss_fn.acc_sum.numpy()))
    (la, ga, aa), (lb, gb, ab) = results
    assert la == lb
    np.testing.assert_array_equal(ga, gb)
    np.testing.assert_array_equal(aa, ab)


@pytest.mark.parametrize(
    "rows, uniform",
    [
        ([[1, 1, 1], [0, 0, 0], [2, 0.5, 3], [-1, 0, -2]], True),  # valid, ignored, valid, ignored
        ([[0, 0, 0], [0, 0, 0]], True),  # every row ignored
        ([[1, 1, 1], [0, 1, 0]], False),  # an ignored-looking row with one valid element
        ([[1, 1, 1], [-1, 0, 0.5]], False),
        ([[1, 2, 3], [4, 5, 0]], False),  # the smallest weight of the last row is 0
        (np.zeros((0, 3)), True),
    ],
)
def test_row_label_weight_only_for_rows_of_one_sign(rows, uniform):
    """[N, C] weights become [N] only when every row is wholly valid (> 0) or wholly ignored."""
    lw = np.asarray(rows, dtype=np.float32).reshape(-1, 3)
    out = ghm_module._row_label_weight(paddle.to_tensor(lw)).numpy()
    if uniform:
        assert out.shape == (lw.shape[0],)
        np.testing.assert_array_equal(out > 0, (lw > 0).all(axis=1))
    else:
        np.testing.assert_array_equal(out, lw)


@pytest.mark.parametrize("kind", ["soft", "multi_label", "empty"])
def test_ghmc_float_targets_that_are_not_one_hot(kind):
    """Soft targets keep the general path; several ones in a row and empty inputs are binary."""
    rng = np.random.default_rng(13)
    x, labels, weight = random_ghmc_inputs(rng, n=250, c=5)
    target = one_hot(labels, 5)
    if kind == "soft":
        target[::7, 1] = 0.3
    elif kind == "multi_label":
        target[::3, 0] = 1.0
        target[::4, 2] = 1.0
    else:
        x, target, weight = x[:0], target[:0], weight[:0]
    lw = np.repeat(weight[:, None], 5, axis=1)
    loss_fn = GHMCLoss(bins=10, momentum=0.7)
    loss, grad = run(loss_fn, x.astype(np.float32), target.astype(np.float32), lw)
    if kind == "empty":
        assert loss == 0.0 and grad.shape == (0, 5)
        np.testing.assert_array_equal(loss_fn.acc_sum.numpy(), np.zeros(10))
        return
    ref_loss, ref_grad, ref_acc = ref_ghmc(x, target, lw, 10, 0.7, np.zeros(10))
    assert loss == pytest.approx(ref_loss, rel=RTOL)
    assert_close(grad, ref_grad)
    np.testing.assert_allclose(loss_fn.acc_sum.numpy(), ref_acc, rtol=RTOL)


def test_ghmc_five_call_momentum_sequence():
    rng = np.random.default_rng(3)
    loss_fn = GHMCLoss(bins=30, momentum=0.75)
    acc = np.zeros(30)
    for call, n in enumerate((400, 100, 30, 8, 3)):  # FPN-like level sizes
        x, labels, weight = random_ghmc_inputs(rng, n=n, c=4)
        x = x + call  # shifts the histogram from call to call
        loss, grad = run(loss_fn, x, labels, weight)
        ref_loss, ref_grad, acc = ref_ghmc(x, one_hot(labels, 4), weight, 30, 0.75, acc)
        np.testing.assert_allclose(loss_fn.acc_sum.numpy(), acc, rtol=RTOL, err_msg=f"call {call}")
        assert loss == pytest.approx(ref_loss, rel=RTOL)
        assert_close(grad, ref_grad)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ghmr_five_call_momentum_sequence_with_ignored(dtype):
    rng = np.random.default_rng(4)
    loss_fn = GHMRLoss(mu=0.02, bins=10, momentum=0.7, loss_weight=10.0)
    acc = np.zeros(10)
    for call in range(5):
        n = 60 - 10 * call
        pred = rng.standard_normal((n, 4)) * 0.05 * (call + 1)
        target = rng.standard_normal((n, 4)) * 0.05
        weight = np.repeat((rng.random((n, 1)) > 0.3).astype(np.float64), 4, axis=1)
        weight[0] = [0.5, 0.5, 2.0, 0.0]  # tot = sum(label_weight), weights by sign only
        loss, grad = run(loss_fn, pred.astype(dtype), target.astype(dtype), weight.astype(dtype))
        ref_loss, ref_grad, acc = ref_ghmr(pred, target, weight, 0.02, 10, 0.7, acc, 10.0)
        np.testing.assert_allclose(loss_fn.acc_sum.numpy(), acc, rtol=RTOL)
        assert loss == pytest.approx(ref_loss, rel=RTOL)
        assert_close(grad, ref_grad)


def _loop_baseline():
    """bench/ghm_loop_baseline.py (the straightforward per-bin port), loaded by path."""
    import importlib.util

    path = REPO / "bench" / "ghm_loop_baseline.py"
    spec = importlib.util.spec_from_file_location("ghm_loop_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vectorised_equals_the_per_bin_loop_port():
    loop = _loop_baseline()
    rng = np.random.default_rng(10)
    ours_c, loop_c = GHMCLoss(bins=30, momentum=0.75), loop.GHMCLoop(bins=30, momentum=0.75)
    ours_r, loop_r = GHMRLoss(momentum=0.7), loop.GHMRLoop(momentum=0.7)
    for _ in range(3):
        x, labels, weight = random_ghmc_inputs(rng, n=150, c=5)
        a, b = run(ours_c, x, labels, weight), run(loop_c, x, labels, weight)
        assert a[0] == pytest.approx(b[0], rel=RTOL)
        assert_close(a[1], b[1])
        np.testing.assert_array_equal(ours_c.acc_sum.numpy(), loop_c.acc_sum.numpy())
        pred, target = rng.standard_normal((2, 40, 4)) * 0.05
        box_weight = np.repeat((rng.random((40, 1)) > 0.3).astype(np.float32), 4, axis=1)
        a, b = run(ours_r, pred, target, box_weight), run(loop_r, pred, target, box_weight)
        assert a[0] == pytest.approx(b[0], rel=RTOL)
        assert_close(a[1], b[1])
        np.testing.assert_array_equal(ours_r.acc_sum.numpy(), loop_r.acc_sum.numpy())


# ------------------------------------------------------------------ gradient at x = 0
def test_ghmc_gradient_at_zero_logit_is_sigmoid_minus_target():
    # Paddle's binary_cross_entropy_with_logits returns -1.5/N and -0.5/N here; ours must give
    # (sigmoid(0) - t) * w / tot. bins = 10, x = 0 -> g = 1/2 for both targets: one bin, count 2,
    # tot = 2, n = 1: w = 2 / 2 = 1. grad = (1/2 - t) / 2: t = 1 -> -1/4, t = 0 -> +1/4.
    loss, grad = run(
        GHMCLoss(bins=10),
        np.zeros((1, 2), np.float32),
        np.array([[1.0, 0.0]], np.float32),
        np.ones(1, np.float32),
    )
    tot = 2 + EPS32
    np.testing.assert_allclose(grad, [[-0.5 / tot, 0.5 / tot]], rtol=1e-7)
    assert loss == pytest.approx(2 * math.log(2) / tot, rel=1e-6)


# ------------------------------------------------------------------ degenerate inputs
@pytest.mark.parametrize("labels", [True, False])
def test_ghmc_empty_input_gives_zero_loss_that_backpropagates(labels):
    loss_fn = GHMCLoss(bins=30, momentum=0.75)
    loss_fn.acc_sum.set_value(np.full(30, 3.0, np.float32))
    target = np.zeros(0, np.int64) if labels else np.zeros((0, 80), np.float32)
    loss, grad = run(loss_fn, np.zeros((0, 80), np.float32), target, np.zeros(0, np.float32))
    assert loss == 0.0
    assert grad.shape == (0, 80)
    np.testing.assert_array_equal(loss_fn.acc_sum.numpy(), np.full(30, 3.0))  # no bin updated


def test_ghmc_all_ignored_gives_zero_loss_and_zero_gradient():
    loss_fn = GHMCLoss(bins=30, momentum=0.75)
    loss, grad = run(
        loss_fn,
        np.random.default_rng(5).standard_normal((6, 3)),
        np.array([0, 1, 2, 3, 0, 1]),
        np.zeros(6, np.float32),
    )
    assert loss == 0.0 and np.all(grad == 0)
    np.testing.assert_array_equal(loss_fn.acc_sum.numpy(), np.zeros(30))


def test_ghmr_empty_and_all_ignored():
    loss_fn = GHMRLoss(momentum=0.7)
    loss, grad = run(loss_fn, np.zeros((0, 4)), np.zeros((0, 4)), np.zeros((0, 4)))
    assert loss == 0.0 and grad.shape == (0, 4)
    loss, grad = run(loss_fn, np.ones((3, 4)), np.zeros((3, 4)), np.zeros((3, 4)))
    assert loss == 0.0 and np.all(grad == 0)
    np.testing.assert_array_equal(loss_fn.acc_sum.numpy(), np.zeros(10))


def test_ghmc_nan_logit_gives_nan_loss_not_a_crash():
    x = np.array([[np.nan, 0.0]], np.float32)
    loss, _ = run(GHMCLoss(bins=30), x, np.array([2]), np.ones(1, np.float32))
    assert math.isnan(loss)


# ------------------------------------------------------------------ dtypes, static graph
def test_ghmc_float16_is_computed_in_float32():
    rng = np.random.default_rng(6)
    x, labels, weight = random_ghmc_inputs(rng, n=50, c=4)
    x16 = x.astype(np.float16)
    loss16, grad16 = run(GHMCLoss(bins=30), x16, labels, weight, dtype="float16")
    loss32, grad32 = run(GHMCLoss(bins=30), x16.astype(np.float32), labels, weight)
    assert loss16 == loss32
    np.testing.assert_allclose(grad16, grad32.astype(np.float16), rtol=1e-3)


def test_to_static_matches_eager():
    rng = np.random.default_rng(7)
    eager_c, static_c = GHMCLoss(bins=30, momentum=0.75), GHMCLoss(bins=30, momentum=0.75)
    eager_r, static_r = GHMRLoss(momentum=0.7), GHMRLoss(momentum=0.7)
    traced_c = paddle.jit.to_static(static_c, full_graph=True)
    traced_r = paddle.jit.to_static(static_r, full_graph=True)
    for _ in range(2):
        x, labels, weight = random_ghmc_inputs(rng, n=40, c=5)
        assert run(traced_c, x, labels, weight)[0] == run(eager_c, x, labels, weight)[0]
        pred, target = rng.standard_normal((2, 30, 4)) * 0.05
        box_weight = np.ones((30, 4))
        a = run(traced_r, pred, target, box_weight)
        b = run(eager_r, pred, target, box_weight)
        assert a[0] == b[0]
        np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(static_c.acc_sum.numpy(), eager_c.acc_sum.numpy())
    np.testing.assert_array_equal(static_r.acc_sum.numpy(), eager_r.acc_sum.numpy())


def test_static_gradient_matches_eager():
    rng = np.random.default_rng(8)
    x, labels, weight = random_ghmc_inputs(rng, n=40, c=5)
    eager = run(GHMCLoss(bins=30, momentum=0.75), x, labels, weight)
    traced = run(
        paddle.jit.to_static(GHMCLoss(bins=30, momentum=0.75), full_graph=True), x, labels, weight
    )
    assert traced[0] == eager[0]
    np.testing.assert_array_equal(traced[1], eager[1])


def test_pure_functions_return_the_new_histogram():
    x = paddle.to_tensor(np.zeros((1, 2), np.float32))
    acc = paddle.zeros([10])
    loss, new_acc = ghmc_loss(x, paddle.to_tensor(np.array([0])), paddle.ones([1]), acc, 10, 0.5)
    np.testing.assert_array_equal(acc.numpy(), np.zeros(10))  # the input is not modified
    assert new_acc.numpy()[5] == 1.0  # both elements have g = 1/2: 0.5 * 2
    _, same = ghmr_loss(paddle.ones([2, 4]), paddle.zeros([2, 4]), paddle.ones([2, 4]))
    assert same is None  # momentum 0: no histogram


# ------------------------------------------------------------------ state, config, options
def test_state_dict_holds_acc_sum_only_and_restores_it():
    loss_fn = GHMCLoss(bins=30, momentum=0.75)
    run(
        loss_fn,
        np.random.default_rng(9).standard_normal((20, 3)),
        np.zeros(20, np.int64),
        np.ones(20, np.float32),
    )
    state = loss_fn.state_dict()
    assert list(state) == ["acc_sum"]
    restored = GHMCLoss(bins=30, momentum=0.75)
    restored.set_state_dict({"acc_sum": state["acc_sum"].numpy()})
    np.testing.assert_array_equal(restored.acc_sum.numpy(), loss_fn.acc_sum.numpy())
    assert list(GHMRLoss().state_dict()) == ["acc_sum"]


@pytest.fixture
def ppdet_workspace():
    """ppdet's global config, restored after the test (load_config merges into it)."""
    from ppdet.core import workspace

    saved = dict(workspace.global_config)
    saved_ghmc = dict(workspace.global_config["GHMCLoss"])
    yield workspace
    workspace.global_config["GHMCLoss"].clear()
    workspace.global_config["GHMCLoss"].update(saved_ghmc)
    for key in list(workspace.global_config):
        if key not in saved:
            del workspace.global_config[key]


def test_yaml_config_builds_the_losses(tmp_path, ppdet_workspace):
    path = tmp_path / "ghm.yml"
    path.write_text(
        "GHMCLoss:\n  bins: 30\n  momentum: 0.75\n  loss_weight: 2.0\n"
        "ghmr: !GHMRLoss\n  mu: 0.02\n  bins: 10\n  momentum: 0.7\n  loss_weight: 10.0\n"
    )
    config = ppdet_workspace.load_config(str(path))
    ghmc = ppdet_workspace.create("GHMCLoss")
    assert isinstance(ghmc, GHMCLoss)
    assert (ghmc.bins, ghmc.momentum, ghmc.loss_weight) == (30, 0.75, 2.0)
    assert ghmc.acc_sum.shape == [30]
    ghmr = config["ghmr"]
    assert isinstance(ghmr, GHMRLoss)
    assert (ghmr.mu, ghmr.bins, ghmr.momentum, ghmr.loss_weight) == (0.02, 10, 0.7, 10.0)


def test_invalid_options_raise():
    with pytest.raises(ValueError, match="use_sigmoid"):
        GHMCLoss(use_sigmoid=False)
    with pytest.raises(ValueError, match="momentum"):
        GHMCLoss(momentum=1.0)
    with pytest.raises(ValueError, match="bins"):
        GHMRLoss(bins=0)
    with pytest.raises(ValueError, match="mu"):
        GHMRLoss(mu=0.0)
    with pytest.raises(ValueError, match="labels"):
        GHMCLoss()(paddle.zeros([2, 3]), paddle.zeros([2, 3], dtype="int64"), paddle.ones([2]))
    with pytest.raises(ValueError, match="label_weight"):
        GHMCLoss()(paddle.zeros([2, 3]), paddle.zeros([2], dtype="int64"), paddle.ones([2, 1]))
    with pytest.raises(ValueError, match="alike"):
        GHMRLoss()(paddle.zeros([2, 4]), paddle.zeros([2, 3]), paddle.ones([2, 4]))
