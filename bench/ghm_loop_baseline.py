"""The straightforward Paddle port of the reference GHM losses: a Python loop over the bins.

Kept as the benchmark's baseline (``bench/bench_ghm_loss.py``) and as a readable statement of the
reference semantics: line for line what mmdet's ``GHMC`` / ``GHMR`` do, with a host
synchronisation per bin (``int(mask.sum())``). Not used by the package.
"""

import numpy as np
import paddle
import paddle.nn.functional as F


class GHMCLoop:
    """GHM-C as mmdet computes it: per bin, a mask, its count on the host, a masked weight."""

    def __init__(self, bins=10, momentum=0.0, loss_weight=1.0):
        self.bins = bins
        self.momentum = momentum
        self.loss_weight = loss_weight
        self.edges = np.arange(bins + 1, dtype=np.float32) / np.float32(bins)
        self.edges[-1] += np.float32(1e-6)
        self.acc_sum = paddle.zeros([bins], dtype="float32")

    def __call__(self, pred, target, label_weight):
        if target.ndim != pred.ndim:  # labels [N] -> one-hot [N, C], background row all zero
            num_classes = pred.shape[1]
            target = F.one_hot(target, num_classes + 1)[:, :num_classes]
            label_weight = label_weight.unsqueeze(1).expand(pred.shape)
        target = target.astype("float32")
        label_weight = label_weight.astype("float32")
        g = (F.sigmoid(pred).detach() - target).abs()
        valid = label_weight > 0
        tot = max(float(valid.astype("float32").sum()), 1.0)
        weights = paddle.zeros_like(pred)
        n = 0
        for i in range(self.bins):
            inds = (g >= float(self.edges[i])) & (g < float(self.edges[i + 1])) & valid
            num_in_bin = int(inds.astype("int64").sum())
            if num_in_bin > 0:
                if self.momentum > 0:
                    self.acc_sum[i] = (
                        self.momentum * self.acc_sum[i] + (1 - self.momentum) * num_in_bin
                    )
                    weights = paddle.where(inds, tot / self.acc_sum[i], weights)
                else:
                    weights = paddle.where(inds, paddle.full([], tot / num_in_bin), weights)
                n += 1
        if n > 0:
            weights = weights / n
        loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
        return (loss * weights).sum() / tot * self.loss_weight


class GHMRLoop:
    """GHM-R as mmdet computes it (Authentic Smooth L1, per-bin loop)."""

    def __init__(self, mu=0.02, bins=10, momentum=0.0, loss_weight=1.0):
        self.mu = mu
        self.bins = bins
        self.momentum = momentum
        self.loss_weight = loss_weight
        self.edges = np.arange(bins + 1, dtype=np.float32) / np.float32(bins)
        self.edges[-1] = np.float32(1e3)
        self.acc_sum = paddle.zeros([bins], dtype="float32")

    def __call__(self, pred, target, label_weight):
        diff = pred - target
        loss = paddle.sqrt(diff * diff + self.mu * self.mu) - self.mu
        g = (diff / paddle.sqrt(self.mu * self.mu + diff * diff)).abs().detach()
        weights = paddle.zeros_like(g)
        valid = label_weight > 0
        tot = max(float(label_weight.astype("float32").sum()), 1.0)
        n = 0
        for i in range(self.bins):
            inds = (g >= float(self.edges[i])) & (g < float(self.edges[i + 1])) & valid
            num_in_bin = int(inds.astype("int64").sum())
            if num_in_bin > 0:
                n += 1
                if self.momentum > 0:
                    self.acc_sum[i] = (
                        self.momentum * self.acc_sum[i] + (1 - self.momentum) * num_in_bin
                    )
                    weights = paddle.where(inds, tot / self.acc_sum[i], weights)
                else:
                    weights = paddle.where(inds, paddle.full([], tot / num_in_bin), weights)
        if n > 0:
            weights = weights / n
        return (loss * weights).sum() / tot * self.loss_weight
