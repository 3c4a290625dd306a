"""The RetinaNet baseline losses (Focal + Smooth L1), normalised by the head's ``avg_factor``.

They are the losses the GHM paper compares against (authors' repo / mmdet v1: FocalLoss gamma 2,
alpha 0.25 and SmoothL1Loss beta 0.11 = 1/9). Unlike the GHM losses, which normalise themselves,
these return ``sum(loss * weight) / avg_factor * loss_weight`` with ``avg_factor`` the number of
positive anchors of the batch, given by the head. A loss that takes ``avg_factor`` says so with
the class attribute ``uses_avg_factor = True``; the head passes it to such losses only.
"""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from ppdet.core.workspace import register, serializable

__all__ = ["BetaSmoothL1Loss", "SigmoidFocalLoss", "sigmoid_focal_loss", "smooth_l1_loss"]


def sigmoid_focal_loss(logits, targets, gamma: float = 2.0, alpha: float = 0.25):
    """Element-wise focal loss (Lin et al. 2017), same formula as mmdet ``py_sigmoid_focal_loss``.

    Args:
        logits: float32 [N, C].
        targets: float32 [N, C] in {0, 1}.

    Returns:
        float32 [N, C]: ``BCE(logits, targets) * (alpha_t * (1 - p_t) ** gamma)``.
    """
    prob = F.sigmoid(logits)
    # 1 - p_t: the probability mass on the wrong side
    one_minus_pt = (1 - prob) * targets + prob * (1 - targets)
    weight = (alpha * targets + (1 - alpha) * (1 - targets)) * one_minus_pt.pow(gamma)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * weight


def smooth_l1_loss(pred, target, beta: float):
    """Element-wise smooth L1: ``0.5 d^2 / beta`` for ``|d| < beta``, else ``|d| - 0.5 beta``."""
    diff = paddle.abs(pred - target)
    if beta <= 0:
        return diff
    return paddle.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)


@register
@serializable
class SigmoidFocalLoss(nn.Layer):
    """Sigmoid focal loss on integer labels, ``sum(FL * label_weight) / avg_factor * loss_weight``.

    Args:
        gamma: focusing parameter (2.0).
        alpha: weight of positives (0.25).
        loss_weight: scale of the result.
    """

    uses_avg_factor = True

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25, loss_weight: float = 1.0):
        super().__init__()
        if gamma < 0 or not 0 <= alpha <= 1:
            raise ValueError(f"need gamma >= 0 and 0 <= alpha <= 1, got {gamma}, {alpha}")
        self.gamma = gamma
        self.alpha = alpha
        self.loss_weight = loss_weight

    def forward(self, pred, target, label_weight, avg_factor):
        """Scalar loss.

        Args:
            pred: float32 [N, C] logits.
            target: int [N] labels in [0, C]; C is background (all-zero one-hot).
            label_weight: float32 [N]; 0 for ignored anchors.
            avg_factor: float > 0, the normaliser (number of positives of the batch).
        """
        num_classes = pred.shape[-1]
        one_hot = F.one_hot(target.astype("int64"), num_classes + 1)[:, :num_classes]
        loss = sigmoid_focal_loss(pred, one_hot.astype(pred.dtype), self.gamma, self.alpha)
        loss = (loss * label_weight.unsqueeze(-1)).sum() / avg_factor
        return loss * self.loss_weight


@register
@serializable
class BetaSmoothL1Loss(nn.Layer):
    """Smooth L1 on box deltas, ``sum(SL1 * weight) / avg_factor * loss_weight``.

    Args:
        beta: transition point (RetinaNet baseline: 0.11, mmdet v1's 1/9); 0 gives L1.
        loss_weight: scale of the result.
    """

    uses_avg_factor = True

    def __init__(self, beta: float = 0.11, loss_weight: float = 1.0):
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = beta
        self.loss_weight = loss_weight

    def forward(self, pred, target, weight, avg_factor):
        """Scalar loss of [N, 4] ``pred``/``target`` with [N, 4] ``weight`` (1 for positives)."""
        loss = (smooth_l1_loss(pred, target, self.beta) * weight).sum() / avg_factor
        return loss * self.loss_weight
