"""``ppdet-ghm plot-gradients``: the paper's gradient figures from a model and a data set.

Runs the model in eval mode (no gradient) over N images of the configured data set, assigns
anchors with the head's own training-target code (``GHMRetinaHead.get_targets``), collects the
classification gradient norms ``g = |sigmoid(x) - p*|`` of the valid elements (label weight > 0)
and the ASL1 gradient norms ``gr = |d| / sqrt(d^2 + mu^2)`` of the positives' box coordinates,
and writes to ``--out``:

- ``cls_gradient_norm.png``: distribution of g, log y (paper Figure 1, left);
- ``cls_reweighting.png``: reweighted gradient norm of CE, FL and GHM-C vs g and each loss's
  share of the total gradient per g bin (paper Figure 1, middle and right);
- ``reg_gradient_norm.png``: distribution of gr, the gradient norm of SL1, ASL1 and GHM-R vs |d|,
  and their shares per gr bin;
- ``gradients.json`` / ``gradients.npz``: every plotted number (histogram counts per level and
  pooled, GHM weights, curves, shares) and the run's metadata.

Images are read with the EvalReader's transforms (deterministic: no flip) from the train or val
data set. GHM weights in the figures are those of the pooled collected set with momentum 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import numpy as np
import paddle

from ppdet_ghm.analysis import gradient_stats as S

logger = logging.getLogger(__name__)

__all__ = [
    "add_arguments",
    "build_loader",
    "collect",
    "level_outputs",
    "run",
    "write_outputs",
]

GT_FIELDS = ("gt_bbox", "gt_class", "is_crowd")
FIGURES = {
    "cls_distribution": "cls_gradient_norm.png",
    "cls_reweighting": "cls_reweighting.png",
    "reg": "reg_gradient_norm.png",
}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``plot-gradients`` (the CLI adds them to its sub-command parser)."""
    from ppdet_ghm.builder import add_config_arguments

    add_config_arguments(parser, config_help="model/data config (YAML); -o weights=W: the model")
    parser.add_argument("--images", type=int, default=100, help="number of images (default 100)")
    parser.add_argument("--out", default="output/gradients", help="output directory")
    parser.add_argument(
        "--split",
        choices=("train", "val"),
        default="train",
        help="data set to read: TrainDataset or EvalDataset of the config (default train, as the "
        "paper's training-time view); both with the EvalReader's deterministic transforms",
    )
    parser.add_argument(
        "--bins",
        type=int,
        default=None,
        help="g bins of the classification figures and GHM-C (default: the config's GHM-C bins, "
        "30 if the model has no GHM-C loss)",
    )
    parser.add_argument("--focal-gamma", type=float, default=None, help="FL gamma (default: the "
                        "config's focal loss, else 2)")  # fmt: skip
    parser.add_argument("--focal-alpha", type=float, default=None, help="FL alpha (default: the "
                        "config's focal loss, else 0.25)")  # fmt: skip
    parser.add_argument("--sl1-beta", type=float, default=None, help="Smooth L1 beta (default: "
                        "the config's, else 0.11 as the reference RetinaNet)")  # fmt: skip
    parser.add_argument("--mu", type=float, default=None, help="ASL1 mu and GHM-R bins come from "
                        "the config's GHM-R loss; this overrides mu (default 0.02 without one)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward (default 1)")
    return parser


# --------------------------------------------------------------------------------------------
# Model outputs and targets per level
# --------------------------------------------------------------------------------------------
def level_outputs(model, batch: dict):
    """Per-level numpy outputs and training targets of one batch, model in eval mode.

    Uses ``head.get_targets`` and ``split_targets`` (the head's own assignment) and flattens like
    the head's ``level_losses``: rows ordered (image, y, x, anchor).

    Returns a list over levels of dicts with ``logits`` [M, K], ``labels`` [M] (K = background),
    ``label_weights`` [M], ``bbox_pred`` [M, 4], ``bbox_targets`` [M, 4], ``bbox_weights`` [M, 4].
    """
    from ppdet_ghm.modeling.head import split_targets

    head = model.head
    with paddle.no_grad():
        body_feats = model.backbone(batch)
        neck_feats = model.neck(body_feats)
        cls_logits, bbox_deltas = head(neck_feats)
        featmap_sizes = [tuple(x.shape[2:]) for x in cls_logits]
        gt_boxes, gt_labels = split_targets(batch)
        labels, label_weights, box_targets, box_weights, _ = head.get_targets(
            featmap_sizes, gt_boxes, gt_labels, batch["im_shape"]
        )
    labels, label_weights = labels.numpy(), label_weights.numpy()
    box_targets, box_weights = box_targets.numpy(), box_weights.numpy()
    num_anchors = head.anchor_generator.num_anchors
    num_classes = head.num_classes
    out, start = [], 0
    for logits, deltas in zip(cls_logits, bbox_deltas, strict=True):
        end = start + logits.shape[2] * logits.shape[3] * num_anchors
        out.append(
            {
                # (N, A*K, H, W) -> (N, H, W, A*K) -> (N*H*W*A, K), as the head's level_losses
                "logits": logits.transpose([0, 2, 3, 1]).reshape([-1, num_classes]).numpy(),
                "labels": labels[:, start:end].reshape(-1),
                "label_weights": label_weights[:, start:end].reshape(-1),
                "bbox_pred": deltas.transpose([0, 2, 3, 1]).reshape([-1, 4]).numpy(),
                "bbox_targets": box_targets[:, start:end].reshape(-1, 4),
                "bbox_weights": box_weights[:, start:end].reshape(-1, 4),
            }
        )
        start = end
    return out


def collect(model, loader, num_images: int, cls_stats, reg_stats, progress: bool = True) -> dict:
    """Run ``num_images`` images of ``loader`` through ``model``; fill the two accumulators.

    Returns the counters per level: ``anchors`` (all), ``valid_anchors`` (label weight > 0),
    ``positives`` (labels < K among valid), ``images``.
    """
    from tqdm import tqdm

    num_levels = cls_stats.num_levels
    counters = {k: [0] * num_levels for k in ("anchors", "valid_anchors", "positives")}
    seen = 0
    model.eval()
    bar = tqdm(total=num_images, desc="plot-gradients", unit="img", disable=not progress)
    for batch in loader:
        batch_size = int(batch["image"].shape[0])
        if seen + batch_size > num_images:  # keep exactly num_images: trim the last batch
            batch = _take(batch, num_images - seen)
            batch_size = num_images - seen
        levels = level_outputs(model, batch)
        if len(levels) != num_levels:
            raise ValueError(f"model has {len(levels)} levels, accumulators {num_levels}")
        for lvl, out in enumerate(levels):
            valid = out["label_weights"] > 0
            counters["anchors"][lvl] += int(valid.size)
            counters["valid_anchors"][lvl] += int(valid.sum())
            counters["positives"][lvl] += int(
                (valid & (out["labels"] < out["logits"].shape[1])).sum()
            )
            cls_stats.update(lvl, out["logits"], out["labels"], out["label_weights"])
            reg_stats.update(lvl, out["bbox_pred"], out["bbox_targets"], out["bbox_weights"])
        seen += batch_size
        bar.update(batch_size)
        if seen >= num_images:
            break
    bar.close()
    if seen < num_images:
        logger.warning("the data set has %d images only (asked for %d)", seen, num_images)
    counters["images"] = seen
    return counters


def _take(batch: dict, n: int) -> dict:
    return {k: v[:n] for k, v in batch.items()}


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------
def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | np.floating) and not math.isfinite(float(value)):
        return None  # NaN (empty bins) -> null
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_outputs(out_dir: str | Path, cls_summary: dict, reg_summary: dict, meta: dict) -> dict:
    """Write the three PNGs, ``gradients.json`` (NaN -> null) and ``gradients.npz``.

    Returns ``{name: path}`` of what was written.
    """
    from ppdet_ghm.analysis import plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    subtitle = meta.get("subtitle", "")
    paths = {
        "cls_distribution": plots.plot_cls_distribution(
            cls_summary, out_dir / FIGURES["cls_distribution"], subtitle
        ),
        "cls_reweighting": plots.plot_cls_reweighting(
            cls_summary, out_dir / FIGURES["cls_reweighting"], subtitle
        ),
        "reg": plots.plot_reg(reg_summary, out_dir / FIGURES["reg"], subtitle),
    }
    data = {"meta": meta, "cls": cls_summary, "reg": reg_summary}
    paths["json"] = out_dir / "gradients.json"
    paths["json"].write_text(json.dumps(_jsonable(data), indent=1))
    paths["npz"] = out_dir / "gradients.npz"
    arrays = {f"cls/{k}": np.asarray(v) for k, v in cls_summary.items()}
    arrays.update({f"reg/{k}": np.asarray(v) for k, v in reg_summary.items()})
    np.savez_compressed(paths["npz"], **arrays)
    return paths


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------
def _loss_settings(head, args) -> dict:
    """Hyperparameters of the figures: from the model's losses, overridden by the arguments."""
    from ppdet_ghm.losses import GHMCLoss, GHMRLoss

    cls_loss, reg_loss = head.loss_cls, head.loss_bbox
    s = {"bins": 30, "focal_gamma": 2.0, "focal_alpha": 0.25, "sl1_beta": 0.11, "mu": 0.02,
         "ghmr_bins": 10}  # fmt: skip
    if isinstance(cls_loss, GHMCLoss):
        s["bins"] = int(cls_loss.bins)
    else:  # the Focal baseline: its gamma / alpha
        s["focal_gamma"] = float(getattr(cls_loss, "gamma", s["focal_gamma"]))
        s["focal_alpha"] = float(getattr(cls_loss, "alpha", s["focal_alpha"]))
    if isinstance(reg_loss, GHMRLoss):
        s["mu"], s["ghmr_bins"] = float(reg_loss.mu), int(reg_loss.bins)
    else:  # the Smooth L1 baseline: its beta
        s["sl1_beta"] = float(getattr(reg_loss, "beta", s["sl1_beta"]))
    for key in ("bins", "focal_gamma", "focal_alpha", "sl1_beta", "mu"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    return s


def build_loader(cfg, split: str, batch_size: int):
    """Reader with the EvalReader's transforms over the chosen split, gt kept per image."""
    from ppdet.core.workspace import create

    dataset = cfg["TrainDataset" if split == "train" else "EvalDataset"]
    # the annotations are needed for the targets; eval data sets usually load images only
    fields = list(getattr(dataset, "data_fields", ["image"]))
    dataset.data_fields = fields + [f for f in GT_FIELDS if f not in fields]
    reader_cfg = cfg["EvalReader"]
    reader_cfg["batch_size"] = batch_size
    reader_cfg["collate_batch"] = False  # per-image gt lists (split_targets)
    return create("EvalReader")(dataset, 0)


def run(args: argparse.Namespace) -> dict:
    """Build the model, load weights, collect gradient norms and write figures and data.

    Returns ``{name: path}`` of the written files.
    """
    from ppdet.core.workspace import create  # noqa: F401  (ppdet's workspace is set up)
    from ppdet.utils.checkpoint import load_pretrain_weight

    from ppdet_ghm.analysis import plots  # noqa: F401  (fail early if matplotlib is missing)
    from ppdet_ghm.builder import build_model, parse_overrides

    if args.images < 1:
        raise ValueError(f"--images must be >= 1, got {args.images}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    overrides = parse_overrides(args.opt)  # dotted keys, as the ppdet-ghm command line
    model, cfg = _build(build_model, args.config, overrides)
    weights = cfg.get("weights")
    if weights:
        stem = str(weights).removesuffix(".pdparams")
        if not (Path(stem + ".pdparams").exists() or Path(str(weights)).exists()):
            raise FileNotFoundError(
                f"weights {weights!r} not found (the config's or -o weights=...); train first, "
                "or pass -o weights=null to look at an untrained model"
            )
        load_pretrain_weight(model, weights)
    else:
        logger.warning("no weights given (-o weights=...): the figures show an untrained model")
    model.eval()

    settings = _loss_settings(model.head, args)
    num_levels = len(model.head.anchor_generator.strides)
    cls_stats = S.ClsGradientStats(
        bins=settings["bins"], num_levels=num_levels, focal_gamma=settings["focal_gamma"]
    )
    reg_stats = S.RegGradientStats(mu=settings["mu"], num_levels=num_levels)
    loader = build_loader(cfg, args.split, args.batch_size)
    counters = collect(model, loader, args.images, cls_stats, reg_stats)

    cls_summary = S.summarize_cls(cls_stats, focal_alpha=settings["focal_alpha"])
    reg_summary = S.summarize_reg(
        reg_stats, ghmr_bins=settings["ghmr_bins"], hist_bins=settings["bins"],
        sl1_beta=settings["sl1_beta"],
    )  # fmt: skip
    config_name = Path(args.config).name
    weights_name = "/".join(Path(str(weights)).parts[-2:]) if weights else "untrained"
    num_valid, num_pos = sum(counters["valid_anchors"]), sum(counters["positives"])
    subtitle = (
        f"{config_name} | weights: {weights_name} | {counters['images']} {args.split} images | "
        f"{num_valid:,} valid anchors x {model.head.num_classes} classes, {num_pos:,} positives"
    )
    meta = {
        "config": str(args.config),
        "weights": str(weights) if weights else None,
        "split": args.split,
        "overrides": args.opt,
        "settings": settings,
        "num_classes": int(model.head.num_classes),
        "levels": [f"P{i + 3}" for i in range(num_levels)],
        "subtitle": subtitle,
        **counters,
    }
    paths = write_outputs(args.out, cls_summary, reg_summary, meta)
    logger.info("plot-gradients: %s", ", ".join(str(p) for p in paths.values()))
    return paths


def _build(build_model, config: str, overrides: dict):
    """The model (eval) and the merged global config."""
    from ppdet.core.workspace import global_config

    model = build_model(config, overrides=overrides or None)
    return model, global_config
