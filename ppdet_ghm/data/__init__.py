"""Data for the demo: a deterministic generated COCO-format shapes set (:mod:`.demo_data`)."""

from ppdet_ghm.data.demo_data import CATEGORIES, DemoDataSpec, generate, validate

__all__ = ["CATEGORIES", "DemoDataSpec", "generate", "validate"]
