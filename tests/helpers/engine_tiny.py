"""A tiny variant of configs/demo.yml and a tiny shapes set, for the engine tests (not a test file).

The config is written next to the data: it takes ``configs/demo.yml`` as its base (so the shipped
config is what gets exercised) and shrinks images (64 px), widths and the schedule.
"""

from pathlib import Path

from ppdet_ghm.data.demo_data import DemoDataSpec, generate
from tests.helpers import REPO

TINY_SPEC = DemoDataSpec(
    seed=5, num_train=4, num_val=2, image_size=64, min_size=8, max_size=32, empty_ratio=0.0
)

_NORMALIZE = "{is_scale: false, mean: [123.675, 116.28, 103.53], std: [58.395, 57.12, 57.375]}"

TINY_CONFIG = f"""
_BASE_: ['{REPO / "configs" / "demo.yml"}']
epoch: 2
snapshot_epoch: 1
log_iter: 1
worker_num: 0
onednn_conv: auto  # the CPU training default (the demo config itself keeps Paddle's convolutions)
TrainReader:
  sample_transforms:
    - Decode: {{}}
    - RandomFlip: {{prob: 0.5}}
    - Resize: {{target_size: [64, 64], keep_ratio: true, interp: 1}}
    - NormalizeImage: {_NORMALIZE}
    - Permute: {{}}
  batch_size: 2
EvalReader:
  sample_transforms:
    - Decode: {{}}
    - Resize: {{target_size: [64, 64], keep_ratio: true, interp: 1}}
    - NormalizeImage: {_NORMALIZE}
    - Permute: {{}}
  batch_size: 2
TestReader:
  sample_transforms:
    - Decode: {{}}
    - Resize: {{target_size: [64, 64], keep_ratio: true, interp: 1}}
    - NormalizeImage: {_NORMALIZE}
    - Permute: {{}}
LearningRate:
  base_lr: 0.01
  schedulers:
    - !PiecewiseDecay {{gamma: 0.1, milestones: [1]}}
    - !LinearWarmup {{start_factor: 0.1, steps: 3}}
CSPDarkNet:
  width_mult: 0.125
RetinaFPN:
  out_channel: 16
GHMRetinaHead:
  feat_channels: 16
  stacked_convs: 1
"""


# The paper's backbone kind instead of the demo's: ResNet with frozen BN statistics (norm_eval)
# and a frozen stem + res2, so CPU training fuses every BN with its ReLU / shortcut
# (ppdet_ghm.modeling.frozen_bn) beside the oneDNN convolutions; and the paper's optimizer (SGD
# with momentum, L2 decay, clip 35) instead of the demo's AdamW, its update run as one threaded
# call also on one math thread (ppdet_ghm.engine.threaded_momentum).
FROZEN_BN_BACKBONE = """
threaded_momentum: true
OptimizerBuilder:
  clip_grad_by_norm: 35.0
  regularizer: {type: L2, factor: 0.0001}
  optimizer: {type: Momentum, momentum: 0.9}
RetinaNet:
  backbone: NormEvalResNet
NormEvalResNet:
  depth: 18
  freeze_at: 0
  return_idx: [1, 2, 3]
  norm_eval: true
"""


def make_tiny(root: Path, frozen_bn: bool = False) -> tuple[str, dict]:
    """Write the tiny data set and config under ``root``; returns (config path, overrides).
    ``frozen_bn``: a ResNet-18 with frozen BN statistics instead of the demo's backbone, trained
    with SGD + momentum instead of AdamW."""
    data = root / "data"
    generate(TINY_SPEC, data)
    config = root / "tiny.yml"
    config.write_text(TINY_CONFIG + (FROZEN_BN_BACKBONE if frozen_bn else ""))
    overrides = {
        "TrainDataset.dataset_dir": str(data),
        "EvalDataset.dataset_dir": str(data),
        "TestDataset.dataset_dir": str(data),
    }
    return str(config), overrides
