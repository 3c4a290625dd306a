"""Shared pytest setup: ppdet_ghm is imported once so every registered module is in ppdet's workspace."""

import ppdet_ghm  # noqa: F401
