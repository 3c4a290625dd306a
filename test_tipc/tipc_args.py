"""Argument types shared by the TIPC entry points (``python -m test_tipc.<script>``)."""

import argparse


def str_to_bool(text: str) -> bool:
    """``True`` / ``False`` as the TIPC txt files write them (also 1 / 0, yes / no)."""
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")
