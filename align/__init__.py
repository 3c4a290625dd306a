"""Alignment harness: every stage of our RetinaNet-GHM against mmdet 3.3.0's, step by step.

``python -m align.run_all`` runs the Paddle side of each numbered step against the committed torch
logs in ``align/logs`` and prints one table; ``--torch`` regenerates the torch logs first (needs the
PyTorch reference of ``requirements-torch.txt``). See ``align/README.md``.
"""
