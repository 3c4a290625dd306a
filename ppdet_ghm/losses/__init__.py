"""The losses of the detector, registered in ppdet's workspace on import.

- :mod:`.ghm`: ``GHMCLoss`` / ``GHMRLoss`` (the paper's) and the binning and weights they share;
- :mod:`.baseline`: ``SigmoidFocalLoss`` / ``BetaSmoothL1Loss``, the Focal + Smooth-L1 baseline
  the paper compares against;
- :mod:`.threaded_ops`: the GHM-C loss's per-element work (sigmoid, softplus, bin counts, weight
  lookup) on all math threads, with the numbers of Paddle's one-thread ops.
"""

from ppdet_ghm.losses.baseline import (
    BetaSmoothL1Loss,
    SigmoidFocalLoss,
    sigmoid_focal_loss,
    smooth_l1_loss,
)
from ppdet_ghm.losses.ghm import (
    GHMCLoss,
    GHMRLoss,
    ghm_bin_index,
    ghm_bin_weights,
    ghmc_edges,
    ghmc_loss,
    ghmr_edges,
    ghmr_loss,
)

__all__ = [
    "BetaSmoothL1Loss",
    "GHMCLoss",
    "GHMRLoss",
    "SigmoidFocalLoss",
    "ghm_bin_index",
    "ghm_bin_weights",
    "ghmc_edges",
    "ghmc_loss",
    "ghmr_edges",
    "ghmr_loss",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
]
