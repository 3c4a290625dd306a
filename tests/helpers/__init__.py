"""Shared pieces of the tests (not tests themselves): paths, the tiny engine config, torch-format
checkpoint writers and specs, and the worker scripts that distributed tests launch."""

from pathlib import Path

#: The repository root.
REPO = Path(__file__).resolve().parents[2]
