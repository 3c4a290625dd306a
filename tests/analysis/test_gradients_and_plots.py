"""Tests of ppdet_ghm.analysis: gradient norms, histograms, reweighting curves, figures, monitor.

References are written here independently: float64 NumPy with explicit per-bin loops, finite
differences of the losses, and hand-computed values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ppdet_ghm.analysis import gradient_stats as S
from ppdet_ghm.analysis import gradients as G
from tests.helpers import REPO


# ------------------------------------------------------------------ independent references
def ref_bin_counts(values: np.ndarray, bins: int, last_edge: float) -> np.ndarray:
    """Per-bin loop as mmdet's GHM: float32 edges, edges[i] <= v < edges[i + 1]."""
    edges = np.arange(bins + 1).astype(np.float32) / np.float32(bins)
    if last_edge > 1:
        edges[-1] = np.float32(last_edge)
    else:
        edges[-1] += np.float32(1e-6)
    v = np.asarray(values, dtype=np.float32)
    return np.array([np.sum((v >= edges[i]) & (v < edges[i + 1])) for i in range(bins)])


def ref_cls_g(logits, labels, weights) -> np.ndarray:
    """g of valid elements, float64 sigmoid, label form expanded by hand."""
    n, c = logits.shape
    out = []
    for i in range(n):
        if weights[i] <= 0:
            continue
        for k in range(c):
            target = 1.0 if labels[i] == k else 0.0
            p = 1.0 / (1.0 + math.exp(-float(logits[i, k])))
            out.append(abs(p - target))
    return np.array(out)


def focal_loss_value(x: float, target: float, gamma: float, alpha_t: float) -> float:
    p = 1.0 / (1.0 + math.exp(-x))
    p_t = p if target == 1 else 1.0 - p
    return -alpha_t * (1.0 - p_t) ** gamma * math.log(p_t)


# ------------------------------------------------------------------ binning
def test_bin_edges_match_reference_float32():
    e = G.ghmc_edges(30)
    assert e.dtype == np.float32 and e.shape == (31,)
    assert e[-1] == np.float32(1.0) + np.float32(1e-6)
    assert e[10] == np.float32(10) / np.float32(30)
    r = G.ghmr_edges(10)
    assert r[-1] == np.float32(1e3) and r[3] == np.float32(0.3)


def test_bin_indices_at_boundaries():
    e = G.ghmc_edges(3)
    third = np.float32(1) / np.float32(3)
    below = np.nextafter(third, np.float32(0))
    values = np.array([0.0, below, third, 0.5, 1.0, 1.1, -0.1, np.nan], dtype=np.float32)
    assert G.bin_indices(values, e).tolist() == [0, 0, 1, 1, 2, -1, -1, -1]
    # GHM-R: gr close to 1 stays in the last bin
    assert G.bin_indices(np.array([0.99999, 0.1]), G.ghmr_edges(10)).tolist() == [9, 1]


def test_histogram_equals_per_bin_loop():
    rng = np.random.default_rng(1)
    # values on and near the edges as well as random ones
    v = np.concatenate(
        [rng.random(5000), np.arange(31) / 30.0, np.nextafter(np.arange(31) / 30.0, 0)]
    ).astype(np.float32)
    assert G.histogram(v, G.ghmc_edges(30)).tolist() == ref_bin_counts(v, 30, 1.0).tolist()
    assert G.histogram(v, G.ghmr_edges(10)).tolist() == ref_bin_counts(v, 10, 1e3).tolist()


# ------------------------------------------------------------------ gradient norms
def test_cls_gradient_norm_hand_computed():
    logits = np.array([[0.0, 2.0], [-1.0, 1.0], [3.0, 3.0]], dtype=np.float32)
    labels = np.array([0, 2, 1])  # class 0, background (C = 2), class 1 (ignored below)
    weights = np.array([1.0, 1.0, 0.0])
    g, is_pos = G.cls_gradient_norm(logits, labels, weights)
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expect = [1 - s(0.0), s(2.0), s(-1.0), s(1.0)]
    np.testing.assert_allclose(g, expect, rtol=1e-7)
    assert g.dtype == np.float32
    assert is_pos.tolist() == [True, False, False, False]
    # binary [N, C] targets and [N, C] weights give the same
    g2, pos2 = G.cls_gradient_norm(
        logits, G.expand_labels(labels, 2), np.repeat(weights, 2).reshape(3, 2)
    )
    np.testing.assert_array_equal(g, g2)
    np.testing.assert_array_equal(is_pos, pos2)


def test_cls_gradient_norm_rejects_bad_labels_and_shapes():
    with pytest.raises(ValueError, match="labels must lie"):
        G.cls_gradient_norm(np.zeros((2, 3)), np.array([0, 4]), np.ones(2))
    with pytest.raises(ValueError, match="logits must be"):
        G.cls_gradient_norm(np.zeros(3), np.zeros(3), np.ones(3))


def test_reg_gradient_norm_hand_computed():
    pred = np.array([[0.02, 0.0, 0.1, -0.3], [1.0, 1.0, 1.0, 1.0]])
    target = np.array([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    weight = np.array([[1, 1, 1, 1], [0, 0, 0, 0]], dtype=np.float32)
    gr, abs_d = G.reg_gradient_norm(pred, target, weight, mu=0.02)
    np.testing.assert_allclose(abs_d, [0.02, 0.0, 0.1, 0.3])
    expect = [1 / math.sqrt(2), 0.0, 0.1 / math.sqrt(0.01 + 0.0004), 0.3 / math.sqrt(0.09 + 0.0004)]
    np.testing.assert_allclose(gr, expect, rtol=1e-7)


# ------------------------------------------------------------------ reweighting curves
def test_ce_curve_is_identity():
    assert G.ce_grad_norm(np.array([0.5]))[0] == 0.5


def test_focal_curve_hand_computed_and_finite_difference():
    # g = 0.5, gamma = 2: 0.25 * (0.5 - 2 * 0.5 * ln 0.5) = 0.25 * (0.5 + ln 2)
    np.testing.assert_allclose(G.focal_grad_norm(0.5, 2.0), 0.25 * (0.5 + math.log(2)), rtol=1e-12)
    np.testing.assert_allclose(G.focal_grad_norm(0.5, 2.0, 0.25), 0.0625 * (0.5 + math.log(2)))
    assert G.focal_grad_norm(1.0, 2.0, 0.75) == pytest.approx(0.75)
    assert G.focal_grad_norm(0.0, 2.0) == 0.0
    np.testing.assert_allclose(G.focal_grad_norm(np.array([0.1, 0.7]), 0.0), [0.1, 0.7])
    # |dFL/dx| by central differences, for positive and negative targets
    h = 1e-6
    for x in (-3.0, -0.4, 0.0, 1.2, 4.0):
        for target in (0, 1):
            p = 1 / (1 + math.exp(-x))
            g = abs(p - target)
            num = (
                focal_loss_value(x + h, target, 2.0, 0.25)
                - focal_loss_value(x - h, target, 2.0, 0.25)
            ) / (2 * h)
            assert G.focal_grad_norm(g, 2.0, 0.25) == pytest.approx(abs(num), rel=1e-6)


def test_smooth_l1_and_asl1_curves():
    np.testing.assert_allclose(
        G.smooth_l1_grad_norm(np.array([0.055, 0.11, 2.0]), 0.11), [0.5, 1.0, 1.0]
    )
    np.testing.assert_allclose(G.smooth_l1_grad_norm(np.array([0.0, 0.3]), 0.0), [0.0, 1.0])
    np.testing.assert_allclose(
        G.asl1_grad_norm(np.array([0.0, 0.02, -0.02]), 0.02),
        [0.0, 1 / math.sqrt(2), 1 / math.sqrt(2)],
    )
    # ASL1 gradient is the derivative of sqrt(d^2 + mu^2) - mu
    d, mu, h = 0.037, 0.02, 1e-7
    num = (math.sqrt((d + h) ** 2 + mu**2) - math.sqrt((d - h) ** 2 + mu**2)) / (2 * h)
    assert G.asl1_grad_norm(d, mu) == pytest.approx(num, rel=1e-6)


def test_harmonising_weights_hand_computed():
    w = G.harmonising_weights(np.array([2, 0, 6]))
    np.testing.assert_allclose(w[[0, 2]], [8 / (2 * 2), 8 / (6 * 2)])
    assert np.isnan(w[1])
    # weights average to one over the examples
    assert (2 * w[0] + 6 * w[2]) / 8 == pytest.approx(1.0)
    assert np.isnan(G.harmonising_weights(np.zeros(3))).all()
    # reweighted norm: g * w[bin(g)] with 3 bins
    r = G.ghm_reweighted_grad_norm(np.array([0.1, 0.5, 0.9]), G.ghmc_edges(3), w)
    assert r[0] == pytest.approx(0.1 * 2.0) and np.isnan(r[1])
    assert r[2] == pytest.approx(0.9 * 8 / 12)


def test_harmonising_weights_are_the_losses_weights_at_momentum_0():
    """One weighting: the figures' float64 NumPy form equals the losses' on non-empty bins."""
    import paddle

    from ppdet_ghm.losses import ghm_bin_weights

    counts = np.array([5, 0, 1, 7, 0, 12], dtype=np.float64)
    ours, _ = ghm_bin_weights(
        paddle.to_tensor(counts), paddle.to_tensor(np.float64(25.0)), dtype="float64"
    )
    figure = G.harmonising_weights(counts, tot=25.0)
    np.testing.assert_allclose(ours.numpy()[counts > 0], figure[counts > 0], rtol=1e-15)
    assert (ours.numpy()[counts == 0] == 0).all() and np.isnan(figure[counts == 0]).all()


# ------------------------------------------------------------------ accumulated data
def _random_levels(seed: int = 0, num_levels: int = 3, num_classes: int = 4):
    rng = np.random.default_rng(seed)
    levels = []
    for lvl in range(num_levels):
        n = 400 // (lvl + 1)
        logits = rng.normal(-4, 3, size=(n, num_classes)).astype(np.float32)
        labels = np.where(rng.random(n) < 0.1, rng.integers(0, num_classes, n), num_classes)
        weights = (rng.random(n) > 0.05).astype(np.float32)
        levels.append((logits, labels, weights))
    return levels


def test_cls_summary_counts_weights_and_curves_against_direct_numpy():
    levels = _random_levels()
    bins, alpha = 10, 0.25
    stats = S.ClsGradientStats(bins=bins, num_levels=len(levels))
    for lvl, (x, y, w) in enumerate(levels):
        stats.update(lvl, x, y, w)
    s = S.summarize_cls(stats, focal_alpha=alpha, grid_points=11)

    per_level_g = [ref_cls_g(x, y, w) for x, y, w in levels]
    level_counts = np.stack([ref_bin_counts(g, bins, 1.0) for g in per_level_g])
    np.testing.assert_array_equal(s["level_counts"], level_counts)
    all_g = np.concatenate(per_level_g).astype(np.float32).astype(np.float64)  # loss's g is f32
    counts = ref_bin_counts(all_g, bins, 1.0)
    np.testing.assert_array_equal(s["counts"], counts)
    assert counts.sum() == sum(int((w > 0).sum()) * 4 for _, _, w in levels)
    np.testing.assert_allclose(s["fraction"], counts / counts.sum())
    np.testing.assert_allclose(s["density"][:-1], counts[:-1] / counts.sum() * bins, rtol=1e-6)
    pos = sum(int(((y < 4) & (w > 0)).sum()) for _, y, w in levels)
    assert s["pos_counts"].sum() == pos

    n_nonempty = int((counts > 0).sum())
    weights = np.array([counts.sum() / (c * n_nonempty) if c else np.nan for c in counts])
    np.testing.assert_allclose(s["ghmc_weights"], weights)
    # curves at the grid 0, 0.1, ..., 1: CE = g, FL by formula, GHM-C = g * w[bin]
    grid = np.linspace(0, 1, 11)
    np.testing.assert_allclose(s["curve_ce"], grid)
    fl = [alpha * g**2 * (g - 2 * (1 - g) * math.log(1 - g)) if g < 1 else alpha for g in grid]
    np.testing.assert_allclose(s["curve_focal_pos"], fl, atol=1e-15)
    np.testing.assert_allclose(s["curve_focal_neg"], np.array(fl) / alpha * (1 - alpha))
    bin_of = [min(int(np.float32(g) * np.float32(bins) // 1), bins - 1) for g in grid]
    np.testing.assert_allclose(s["curve_ghmc"][1:], grid[1:] * weights[bin_of[1:]], rtol=1e-12)

    # contributions: per-bin sums of each loss's gradient norm, as fractions
    idx = np.array([np.flatnonzero(G.ghmc_edges(bins) <= np.float32(g))[-1] for g in all_g])
    ce_sum = np.bincount(idx, weights=all_g, minlength=bins)
    np.testing.assert_allclose(s["contrib_ce"], ce_sum / ce_sum.sum(), rtol=1e-10)
    gh = np.nan_to_num(weights) * ce_sum
    np.testing.assert_allclose(s["contrib_ghmc"], gh / gh.sum(), rtol=1e-10)
    is_pos = np.concatenate(
        [((y[w > 0, None] == np.arange(4)[None]).ravel()) for _, y, w in levels]
    )
    fl_ex = (
        np.where(is_pos, alpha, 1 - alpha)
        * all_g**2
        * (all_g - 2 * (1 - all_g) * np.log1p(-np.minimum(all_g, 1 - 1e-300)))
    )
    fl_sum = np.bincount(idx, weights=fl_ex, minlength=bins)
    np.testing.assert_allclose(s["contrib_focal"], fl_sum / fl_sum.sum(), rtol=1e-9)
    for key in ("contrib_ce", "contrib_focal", "contrib_ghmc"):
        assert s[key].sum() == pytest.approx(1.0)


def test_reg_summary_against_direct_numpy():
    rng = np.random.default_rng(3)
    stats = S.RegGradientStats(mu=0.02, num_levels=2)
    all_d = []
    for lvl in range(2):
        pred, target = rng.normal(0, 0.2, (50, 4)), rng.normal(0, 0.2, (50, 4))
        weight = np.repeat((rng.random(50) < 0.5)[:, None], 4, axis=1).astype(np.float32)
        stats.update(lvl, pred, target, weight)
        all_d.append(np.abs(pred - target)[weight > 0])
    d = np.concatenate(all_d)
    gr = d / np.sqrt(d**2 + 0.02**2)
    s = S.summarize_reg(stats, ghmr_bins=10, hist_bins=20, sl1_beta=0.11, grid_points=50)
    assert int(s["num_coords"]) == d.size
    np.testing.assert_array_equal(s["counts"], ref_bin_counts(gr, 20, 1.0))
    np.testing.assert_array_equal(s["level_counts"].sum(axis=0), s["counts"])
    r_counts = ref_bin_counts(gr, 10, 1e3)
    np.testing.assert_array_equal(s["ghmr_counts"], r_counts)
    n = int((r_counts > 0).sum())
    w = np.array([d.size / (c * n) if c else np.nan for c in r_counts])
    np.testing.assert_allclose(s["ghmr_weights"], w)
    # curves against |d|
    gd = s["grid_d"]
    np.testing.assert_allclose(s["curve_sl1"], np.minimum(gd / 0.11, 1.0))
    gr_grid = gd / np.sqrt(gd**2 + 0.02**2)
    np.testing.assert_allclose(s["curve_asl1"], gr_grid)
    ridx = np.minimum((gr_grid.astype(np.float32) * np.float32(10)).astype(int), 9)
    ok = np.abs(gr_grid * 10 - np.round(gr_grid * 10)) > 1e-5  # away from bin edges
    np.testing.assert_allclose(s["curve_ghmr"][ok], (gr_grid * w[ridx])[ok])
    # shares per displayed bin
    idx = np.minimum((gr.astype(np.float32) * np.float32(20)).astype(int), 19)
    sl1 = np.bincount(idx, weights=np.minimum(d / 0.11, 1.0), minlength=20)
    np.testing.assert_allclose(s["contrib_sl1"], sl1 / sl1.sum(), rtol=1e-9)
    rid = np.minimum((gr.astype(np.float32) * np.float32(10)).astype(int), 9)
    ghmr = np.bincount(idx, weights=gr * w[rid], minlength=20)
    np.testing.assert_allclose(s["contrib_ghmr"], ghmr / ghmr.sum(), rtol=1e-9)


# ------------------------------------------------------------------ figures
def _png_size(path) -> tuple[int, int]:
    data = open(path, "rb").read(32)
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _check_png(path, size: tuple[int, int]) -> None:
    """A PNG of ``size`` (w, h) with a drawing on it (bars, curves, text: many colours)."""
    from PIL import Image

    assert _png_size(path) == size
    colours = Image.open(path).convert("RGB").getcolors(maxcolors=1 << 16)
    assert len(colours) > 20


# ------------------------------------------------------------------ training-time monitor
class _StandInGHMC:
    """Built lazily (paddle import): a Layer with the GHM-C interface (acc_sum, bins, momentum)."""

    @staticmethod
    def make(bins: int, momentum: float):
        import paddle

        class StandInGHMC(paddle.nn.Layer):
            def __init__(self):
                super().__init__()
                self.bins, self.momentum = bins, momentum
                self.register_buffer("acc_sum", paddle.zeros([bins]), persistable=True)

            def forward(self, pred, target, label_weight):
                g, _ = G.cls_gradient_norm(pred.numpy(), target.numpy(), label_weight.numpy())
                counts = G.histogram(g, G.ghmc_edges(self.bins)).astype(np.float32)
                acc = self.acc_sum.numpy()
                acc = np.where(counts > 0, self.momentum * acc + (1 - self.momentum) * counts, acc)
                self.acc_sum.set_value(acc.astype(np.float32))
                return pred.sum() * 0.0

        return StandInGHMC()


def _ghm_loss_for_monitor(bins: int, momentum: float):
    try:
        from ppdet_ghm.losses import GHMCLoss
    except ImportError:
        return _StandInGHMC.make(bins, momentum)
    return GHMCLoss(bins=bins, momentum=momentum, use_sigmoid=True, loss_weight=1.0)


def test_ghm_monitor_records_each_level_every_k_iterations(tmp_path, caplog):
    import types

    import paddle

    from ppdet_ghm.analysis.ghm_monitor import GHMMonitor

    bins, momentum = 6, 0.75
    head = paddle.nn.Layer()
    head.loss_cls = _ghm_loss_for_monitor(bins, momentum)
    trainer = types.SimpleNamespace(model=head, cfg={})
    monitor = GHMMonitor(trainer, interval=2, vdl_log_dir=str(tmp_path / "vdl"))
    assert [(n, k) for n, k, _ in monitor.losses] == [("loss_cls", "cls")]

    levels = _random_levels(seed=5, num_levels=5, num_classes=3)
    ema = np.zeros(bins)
    expected = {}
    with caplog.at_level("INFO", logger="ppdet_ghm.analysis.ghm_monitor"):
        for it in range(4):
            monitor.on_step_begin({"mode": "train"})
            per_level = []
            for x, y, w in levels:
                y = np.minimum(y, 3)
                head.loss_cls(paddle.to_tensor(x[:, :3]), paddle.to_tensor(y), paddle.to_tensor(w))
                g, _ = G.cls_gradient_norm(x[:, :3], y, w)
                counts = ref_bin_counts(g, bins, 1.0)
                ema = np.where(counts > 0, momentum * ema + (1 - momentum) * counts, ema)
                per_level.append((counts, ema.copy()))
            expected[it] = per_level
            monitor.on_step_end({"mode": "train"})
    monitor.close()

    assert sorted(monitor.history) == [0, 2]
    for it, records in monitor.history.items():
        assert [rec.call_index for _, rec in records] == [0, 1, 2, 3, 4]
        for (_, rec), (counts, acc) in zip(records, expected[it], strict=True):
            np.testing.assert_array_equal(rec.counts, counts)
            np.testing.assert_allclose(rec.acc_sum, acc, rtol=1e-6)
    # the EMA differs between levels: per-level snapshots, not one shared end state
    assert not np.allclose(monitor.history[2][0][1].acc_sum, monitor.history[2][4][1].acc_sum)
    lines = [r.getMessage() for r in caplog.records if "GHM iter" in r.getMessage()]
    assert len(lines) == 10 and "P3" in lines[0] and "P7" in lines[4]
    assert list((tmp_path / "vdl").glob("vdlrecords.*.log"))


# ------------------------------------------------------------------ plot-gradients end to end
TINY_CONFIG = REPO / "configs/demo.yml"  # the CPU demo model


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A 4-image generated shapes set and overrides pointing the demo config at it."""
    from ppdet_ghm.data import DemoDataSpec, generate

    root = tmp_path_factory.mktemp("tiny")
    spec = DemoDataSpec(num_train=2, num_val=2, image_size=96, min_size=8, max_size=48,
                        empty_ratio=0.0)  # fmt: skip
    generate(spec, root / "data")
    overrides = {
        "TrainDataset.dataset_dir": str(root / "data"),
        "EvalDataset.dataset_dir": str(root / "data"),
        "weights": None,
    }
    return root, overrides


def _np_bce(x, t):
    return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


def _np_ghm_loss(elem_loss, g, valid, edges, tot, loss_weight=1.0):
    """GHM loss with momentum 0 written out: weights tot / (count * n) per bin, sum / tot."""
    gv = g[valid].astype(np.float32)
    counts = [((gv >= edges[i]) & (gv < edges[i + 1])).sum() for i in range(len(edges) - 1)]
    n = sum(c > 0 for c in counts)
    w = np.zeros(gv.shape)
    for i, c in enumerate(counts):
        if c:
            w[(gv >= edges[i]) & (gv < edges[i + 1])] = tot / c / n
    return float((elem_loss[valid] * w).sum() / tot * loss_weight)


def test_level_outputs_match_the_heads_own_per_level_losses(tiny_setup):
    """Our per-level flattening of logits/labels/deltas/targets is the head's: recomputing the
    GHM losses from it in NumPy gives the head's per-level loss values."""
    import paddle
    from ppdet.core.workspace import global_config

    from ppdet_ghm.analysis import plot_gradients as PG
    from ppdet_ghm.builder import build_model

    _, overrides = tiny_setup
    paddle.seed(0)
    momentum0 = {"GHMRetinaHead.loss_cls.momentum": 0.0, "GHMRetinaHead.loss_bbox.momentum": 0.0}
    model = build_model(str(TINY_CONFIG), overrides={**overrides, **momentum0})
    model.eval()
    batch = next(iter(PG.build_loader(global_config, "train", 2)))
    levels = PG.level_outputs(model, batch)
    with paddle.no_grad():
        feats = model.neck(model.backbone(batch))
        losses_cls, losses_reg = model.head.level_losses(model.head(feats), batch)
    assert len(levels) == 5 and sum(int((lv["labels"] < 4).sum()) for lv in levels) > 0
    for lv, loss_cls, loss_reg in zip(levels, losses_cls, losses_reg, strict=True):
        x = lv["logits"].astype(np.float64)
        t = G.expand_labels(lv["labels"], 4).astype(np.float64)
        valid = np.repeat(lv["label_weights"][:, None] > 0, 4, axis=1)
        g = np.abs(1 / (1 + np.exp(-x)) - t)
        ref_cls = _np_ghm_loss(_np_bce(x, t), g, valid, G.ghmc_edges(30), max(valid.sum(), 1))
        assert float(loss_cls) == pytest.approx(ref_cls, rel=1e-5)
        d = lv["bbox_pred"].astype(np.float64) - lv["bbox_targets"]
        valid_r = lv["bbox_weights"] > 0
        asl1 = np.sqrt(d * d + 0.02**2) - 0.02
        gr = np.abs(d) / np.sqrt(d * d + 0.02**2)
        tot = max(lv["bbox_weights"].sum(), 1.0)
        ref_reg = _np_ghm_loss(asl1, gr, valid_r, G.ghmr_edges(10), tot, loss_weight=10.0)
        assert float(loss_reg) == pytest.approx(ref_reg, rel=1e-5, abs=1e-7)


def test_plot_gradients_end_to_end(tiny_setup, tmp_path):
    import argparse
    import json

    from ppdet_ghm.analysis import plot_gradients as PG

    _, overrides = tiny_setup
    opts = [f"{k}={'null' if v is None else v}" for k, v in overrides.items()]
    args = PG.add_arguments(argparse.ArgumentParser()).parse_args(
        ["-c", str(TINY_CONFIG), "-o", *opts, "--images", "2", "--out", str(tmp_path / "out")]
        + ["--split", "val"]
    )
    paths = PG.run(args)
    data = json.loads(paths["json"].read_text())
    meta, cls, reg = data["meta"], data["cls"], data["reg"]
    assert meta["images"] == 2 and meta["settings"]["bins"] == 30
    assert meta["settings"]["mu"] == 0.02 and meta["settings"]["ghmr_bins"] == 10
    # every valid anchor gives one g per class; every positive gives 4 regression coordinates
    assert sum(cls["counts"]) == 4 * sum(meta["valid_anchors"])
    assert [sum(c) for c in cls["level_counts"]] == [4 * v for v in meta["valid_anchors"]]
    assert sum(cls["pos_counts"]) == sum(meta["positives"]) > 0
    assert reg["num_coords"] == 4 * sum(meta["positives"]) == sum(reg["counts"])
    assert sum(reg["ghmr_counts"]) == reg["num_coords"]
    npz = np.load(paths["npz"])
    np.testing.assert_array_equal(npz["cls/counts"], cls["counts"])
    np.testing.assert_allclose(npz["reg/curve_asl1"], reg["curve_asl1"])
    _check_png(paths["cls_distribution"], (700, 480))
    _check_png(paths["cls_reweighting"], (1040, 440))
    _check_png(paths["reg"], (1440, 440))


def test_parse_overrides():
    """plot_gradients reads -o as the ppdet-ghm command line does (one parser, dotted keys)."""
    from ppdet_ghm.builder import _expand_dotted, parse_overrides

    overrides = parse_overrides(["weights=a/b.pdparams", "GHMRetinaHead.loss_cls.bins=20"])
    assert overrides == {"weights": "a/b.pdparams", "GHMRetinaHead.loss_cls.bins": 20}
    assert _expand_dotted(overrides) == {
        "weights": "a/b.pdparams",
        "GHMRetinaHead": {"loss_cls": {"bins": 20}},
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["weights"])


def test_ghm_monitor_follows_ppdet_iteration_after_resume():
    import types

    import paddle

    from ppdet_ghm.analysis.ghm_monitor import GHMMonitor

    head = paddle.nn.Layer()
    head.loss_cls = _ghm_loss_for_monitor(4, 0.5)
    monitor = GHMMonitor(types.SimpleNamespace(model=head, cfg={}), interval=10)
    x, y, w = _random_levels(num_levels=1, num_classes=3)[0]
    for step_id in range(3):  # resumed at epoch 2 of 5-step epochs: iterations 10, 11, 12
        status = {"mode": "train", "epoch_id": 2, "step_id": step_id, "steps_per_epoch": 5}
        monitor.on_step_begin(status)
        head.loss_cls(paddle.to_tensor(x[:, :3]), paddle.to_tensor(np.minimum(y, 3)),
                      paddle.to_tensor(w))  # fmt: skip
        monitor.on_step_end(status)
    monitor.close()
    assert sorted(monitor.history) == [10]


def test_subtitle_wraps_at_field_separators():
    from ppdet_ghm.analysis.plots import _wrap_fields

    text = "demo.yml | weights: out/0 | 20 val images | 242,016 valid anchors x 4 classes"
    assert (
        _wrap_fields(text, 46)
        == "demo.yml | weights: out/0 | 20 val images\n242,016 valid anchors x 4 classes"
    )
    assert _wrap_fields(text, 200) == text
    assert _wrap_fields("a very long field", 6) == "a very\nlong\nfield"


def test_figure_settings_come_from_the_models_losses_then_the_arguments():
    import argparse
    import types

    from ppdet_ghm.analysis.plot_gradients import _loss_settings
    from ppdet_ghm.losses import BetaSmoothL1Loss, GHMCLoss, GHMRLoss, SigmoidFocalLoss

    none = argparse.Namespace(bins=None, focal_gamma=None, focal_alpha=None, sl1_beta=None, mu=None)
    ghm = types.SimpleNamespace(loss_cls=GHMCLoss(bins=20), loss_bbox=GHMRLoss(mu=0.05, bins=7))
    s = _loss_settings(ghm, none)
    assert (s["bins"], s["mu"], s["ghmr_bins"]) == (20, 0.05, 7)
    assert (s["focal_gamma"], s["focal_alpha"], s["sl1_beta"]) == (2.0, 0.25, 0.11)
    base = types.SimpleNamespace(
        loss_cls=SigmoidFocalLoss(gamma=1.5, alpha=0.3), loss_bbox=BetaSmoothL1Loss(beta=0.05)
    )
    s = _loss_settings(base, none)
    assert (s["bins"], s["focal_gamma"], s["focal_alpha"], s["sl1_beta"]) == (30, 1.5, 0.3, 0.05)
    s = _loss_settings(base, argparse.Namespace(**{**vars(none), "bins": 12, "focal_alpha": 0.5}))
    assert (s["bins"], s["focal_alpha"]) == (12, 0.5)
