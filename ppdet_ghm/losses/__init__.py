"""GHM losses (GHM-C, GHM-R), registered in ppdet's workspace on import."""

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
    "GHMCLoss",
    "GHMRLoss",
    "ghm_bin_index",
    "ghm_bin_weights",
    "ghmc_edges",
    "ghmc_loss",
    "ghmr_edges",
    "ghmr_loss",
]
