"""Compatibility of paddledet 2.6.0 (2023) with the current Paddle / numpy / Pillow stack.

Every fix is applied by :func:`apply` (``import ppdet_ghm`` calls it), is idempotent, and patches
attributes of already-imported modules only: nothing in site-packages is edited.
"""

import contextlib
import io
import warnings


def import_ppdet_quietly():
    """Import ppdet with its optional-dependency chatter (lap, numba, motmetrics) swallowed."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        import ppdet  # noqa: F401


def apply():
    """Apply every compatibility fix (idempotent)."""
