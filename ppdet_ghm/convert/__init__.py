"""PyTorch checkpoints (mmdet RetinaNet-GHM, torchvision ResNet) -> Paddle ``.pdparams``.

- :func:`load_torch_checkpoint`: ``.pth`` -> ``{name: ndarray}`` without torch and without running
  the pickle (restricted unpickler; policy in :mod:`ppdet_ghm.convert.torch_reader`).
- :func:`convert_state_dict`: rename table + one strict check against the Paddle model's shapes
  (:mod:`ppdet_ghm.convert.mapping`).
- :func:`main`: ``python -m ppdet_ghm.convert SRC DST [--backbone-only] [--verbose]``.
"""

from ppdet_ghm.convert.cli import main, save_pdparams_atomic
from ppdet_ghm.convert.mapping import (
    ConversionError,
    RenameTable,
    convert_state_dict,
    mmdet_retinanet_table,
    torchvision_resnet_table,
)
from ppdet_ghm.convert.torch_reader import load_torch_checkpoint
from ppdet_ghm.safe_pickle import CheckpointError, UnsafeCheckpointError

__all__ = [
    "CheckpointError",
    "ConversionError",
    "RenameTable",
    "UnsafeCheckpointError",
    "convert_state_dict",
    "load_torch_checkpoint",
    "main",
    "mmdet_retinanet_table",
    "save_pdparams_atomic",
    "torchvision_resnet_table",
]
