"""ppdet-ghm: GHM RetinaNet (Li, Liu, Wang, AAAI 2019) as a PaddleDetection plugin.

Importing the package imports ppdet quietly, applies the compatibility fixes of
:mod:`ppdet_ghm.compat` and registers every module of ours in ppdet's workspace, so that
``ppdet.core.workspace.load_config`` + ``create`` find ``GHMCLoss``, ``GHMRetinaHead`` and the rest.
"""

from ppdet_ghm import compat

compat.import_ppdet_quietly()
compat.apply()

from ppdet_ghm import losses, modeling  # noqa: E402,F401  (imported to register in ppdet)
from ppdet_ghm.builder import build_model, load_config  # noqa: E402

__all__ = ["build_model", "load_config"]

__version__ = "0.1.0"
