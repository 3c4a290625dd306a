"""``python -m ppdet_ghm.convert SRC DST [--backbone-only] [--verbose] [--config CFG]``.

Full model (default): an mmdet RetinaNet(-GHM) R50-FPN checkpoint -> ``DST.pdparams`` holding every
entry of our model's ``state_dict()`` (``backbone.*``, ``neck.*``, ``head.*``): load it with ppdet's
``weights:`` / ``load_weight``. The target names and shapes come from the model built from
``--config`` (default: the shipped GHM config), so the conversion is checked against the real model.

``--backbone-only``: a torchvision ImageNet ResNet-50 (or the backbone of an mmdet checkpoint) ->
ppdet ResNet names without prefix (``conv1.conv1.conv.weight``, ``res2.res2a.branch2a...``), the
layout of ppdet's own ImageNet weights: use it as ``pretrain_weights:``; ppdet's
``load_pretrain_weight`` matches each name to the model's ``backbone.<name>``.

DST is written atomically: a temporary file in DST's directory, fsync, ``os.replace``; on any error
no DST is created and an existing DST is left as it was.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from ppdet_ghm.convert.mapping import ConversionError, choose_table, convert_state_dict
from ppdet_ghm.convert.torch_reader import load_torch_checkpoint

logger = logging.getLogger(__name__)


def backbone_target_shapes(depth: int = 50) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of ppdet's ``ResNet(depth, variant='b')``, the backbone of our model."""
    from ppdet.modeling.backbones.resnet import ResNet

    resnet = ResNet(depth=depth, variant="b", norm_type="bn", freeze_at=0, return_idx=[1, 2, 3])
    return {k: tuple(v.shape) for k, v in resnet.state_dict().items()}


#: Our GHM config, relative to the repository root (``configs/`` sits beside the package).
DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "configs",
    "retinanet_ghm_r50_fpn_1x_coco.yml",
)


def model_target_shapes(config: str | None = None) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of our whole model, built by ``ppdet_ghm.builder.build_model(config)``."""
    try:
        from ppdet_ghm.builder import build_model
    except ImportError as err:
        raise ConversionError(
            f"cannot build the model to learn its names and shapes ({err}); "
            "only --backbone-only conversion works without it"
        ) from err
    config = DEFAULT_CONFIG if config is None else config
    if not os.path.isfile(config):
        raise ConversionError(f"model config {config} not found; pass --config")
    model = build_model(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def save_pdparams_atomic(state: Mapping[str, np.ndarray], dst: str | os.PathLike) -> None:
    """``paddle.save`` of ``{name: ndarray}`` to ``dst``, atomically
    (:func:`ppdet_ghm.engine.checkpoint_io.atomic_paddle_save`: temp file, fsync, replace)."""
    from ppdet_ghm.engine.checkpoint_io import atomic_paddle_save

    atomic_paddle_save({k: np.ascontiguousarray(v) for k, v in state.items()}, dst)


DESCRIPTION = (
    "Convert a PyTorch checkpoint (mmdet RetinaNet-GHM, or with --backbone-only a torchvision "
    "ResNet-50) to Paddle .pdparams, strictly: every tensor mapped or skipped by name, every model "
    "parameter filled, every shape checked."
)


def _pdparams_path(value: str) -> str:
    if not value.endswith(".pdparams"):
        raise argparse.ArgumentTypeError(
            f"DST must end with .pdparams (ppdet's loaders append that suffix), got {value!r}"
        )
    return value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The converter's arguments (``ppdet-ghm convert`` and ``python -m ppdet_ghm.convert``)."""
    parser.add_argument("src", help="torch checkpoint (.pth; zip or legacy format; never executed)")
    parser.add_argument(
        "dst", type=_pdparams_path, help="output .pdparams path (written atomically)"
    )
    parser.add_argument(
        "--backbone-only",
        action="store_true",
        help="write ResNet backbone weights for ppdet `pretrain_weights` (fc.* dropped)",
    )
    parser.add_argument("--verbose", action="store_true", help="print every `old -> new`")
    parser.add_argument(
        "--config",
        default=None,
        help="model config giving the target names/shapes (full model only; default: "
        "configs/retinanet_ghm_r50_fpn_1x_coco.yml)",
    )
    return parser


def _parser() -> argparse.ArgumentParser:
    return add_arguments(
        argparse.ArgumentParser(prog="python -m ppdet_ghm.convert", description=DESCRIPTION)
    )


def _summary(src: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray], backbone_only: bool):
    table = choose_table(src, backbone_only)
    written = Counter("backbone" if backbone_only else k.split(".", 1)[0] for k in out)
    mapped = sum(1 for k in src if k in table.renames and table.renames[k] in out)
    skipped = Counter(table.skips[k] for k in src if k in table.skips)
    lines = [
        f"{len(src)} source tensors: {mapped} renamed, {sum(skipped.values())} skipped; "
        f"{len(out)} written ({', '.join(f'{p}: {n}' for p, n in sorted(written.items()))}); "
        f"{len(out) - mapped} filled with zeros"
    ]
    lines += [f"  skipped {n}: {why}" for why, n in sorted(skipped.items())]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Convert ``args.src`` to ``args.dst``; returns 0, or 1 on a conversion error (message on
    stderr)."""
    if args.backbone_only and args.config is not None:
        print(
            "error: --config selects the full model; it has no effect with --backbone-only",
            file=sys.stderr,
        )
        return 1
    mapping_logger = logging.getLogger("ppdet_ghm.convert.mapping")
    handler = None
    if args.verbose:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        mapping_logger.addHandler(handler)
        mapping_logger.setLevel(logging.INFO)
        mapping_logger.propagate = False
    try:
        src = load_torch_checkpoint(args.src)
        if args.backbone_only:
            shapes = backbone_target_shapes()
        else:
            shapes = model_target_shapes(args.config)
        out = convert_state_dict(
            src, shapes, backbone_only=args.backbone_only, verbose=args.verbose
        )
        save_pdparams_atomic(out, args.dst)
    except (ValueError, OSError) as exc:  # CheckpointError, ConversionError, config errors
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if handler is not None:
            mapping_logger.removeHandler(handler)
            mapping_logger.propagate = True
            mapping_logger.setLevel(logging.NOTSET)
    print(_summary(src, out, args.backbone_only))
    print(f"wrote {args.dst}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ppdet_ghm.convert``: parse ``argv`` and :func:`run`."""
    return run(_parser().parse_args(argv))
