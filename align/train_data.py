"""Step 13's shared pieces, in NumPy only: data arrays, batch order, schedule, initial weights.

Both sides of ``align/step13_train.py`` import this module; it imports neither paddle nor torch
(NumPy, PIL and the standard library), so the torch side never imports paddle and the Paddle side
never torch. Everything both sides must agree on is computed here once:

- the data: the generated shapes set (``ppdet_ghm.data.demo_data``, default spec 800 + 200
  images of 256 px) decoded once into fixed arrays, normalised as the reference
  (RGB, ``(x - mean) / std`` with mmdet's / our readers' mean and std on 0-255 values, float32,
  NCHW), no flip, no resize (256 is already a multiple of 32, so padding to 32 adds nothing);
  gt boxes ``[x1, y1, x1 + w, y1 + h]`` (mmdet ``CocoDataset`` and ppdet ``COCODataSet`` both do
  this) and labels ``category_id - 1``; images without objects are kept (the demo's
  ``allow_empty``) and trained on as negatives by both sides;
- the batch order: per epoch ``default_rng([seed, epoch]).permutation(num_train)``, cut into
  batches of 8, last incomplete batch dropped;
- the learning rate of every iteration (:func:`lr_at`), which each side sets on its optimizer
  before the step;
- a NumPy initialisation with mmdet's distributions (:func:`numpy_init`), used for the short CI
  prefix where torch is absent; the long runs start from mmdet's own ``init_weights()`` (saved by
  the torch side as NumPy arrays).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

#: mmdet ``DetDataPreprocessor`` / our readers' ``NormalizeImage``: RGB mean and std on 0-255.
MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
BATCH_SIZE = 8
NUM_CLASSES = 4
LEVELS = ("P3", "P4", "P5", "P6", "P7")
GHMC_BINS = 30
GHMR_BINS = 10


# ----------------------------------------------------------------------------- optimizer settings


@dataclasses.dataclass(frozen=True)
class OptimSettings:
    """One optimizer and schedule, the same on both sides.

    ``adamw``: the demo's (configs/_base_/demo_detector.yml): AdamW lr 0.002, betas (0.9, 0.999),
    eps 1e-8, decoupled weight decay 0.05 on every parameter, linear warmup over 50 iterations
    from 0.001 x lr, then cosine decay to 0 over the remaining iterations (ppdet ``LinearWarmup`` +
    ``CosineDecay`` as the demo's ``PiecewiseDecay`` evaluates them; mmdet ``LinearLR(start_factor
    =0.001, end=50)`` + ``CosineAnnealingLR(begin=50, T_max=iters-50, eta_min=0)``), global L2
    gradient clipping at 35.
    ``sgd``: the reference's optimizer, scaled to batch 8 (mmdet 0.01 for 16 images): SGD
    momentum 0.9, L2 weight decay 1e-4 added to the gradient after clipping at 35, the same
    warmup, then the 1x schedule's steps (x0.1 at 8/12 and 11/12 of the run).
    """

    name: str
    base_lr: float
    weight_decay: float
    warmup_iters: int = 50
    warmup_factor: float = 0.001
    clip: float = 35.0
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


OPTIMS = {
    "adamw": OptimSettings("adamw", base_lr=0.002, weight_decay=0.05),
    "sgd": OptimSettings("sgd", base_lr=0.005, weight_decay=1e-4),
}


def optim_of(args) -> OptimSettings:
    """A run's optimizer: ``OPTIMS[args.optim]`` with ``args.warmup_iters`` warmup iterations when
    that is given (a warmup ablation; both sides train with it)."""
    optim = OPTIMS[args.optim]
    warmup = getattr(args, "warmup_iters", None)
    if warmup is None:
        return optim
    if not 0 < warmup < args.iters:
        raise ValueError(f"--warmup-iters must be in 1 .. {args.iters - 1}, got {warmup}")
    return dataclasses.replace(optim, warmup_iters=warmup)


def lr_at(it: int, optim: OptimSettings, iters: int) -> float:
    """Learning rate of iteration ``it`` (0-based) of a run of ``iters`` iterations.

    Warmup (both): ``base * (f * (1 - it / W) + it / W)`` for ``it < W`` (ppdet ``LinearWarmup``;
    equals mmdet ``LinearLR``'s ``f + (1 - f) * it / W``). After it, adamw: ``base * 0.5 *
    (1 + cos(pi * (it - W) / (iters - W)))``; sgd: ``base``, x0.1 from ``iters * 8 // 12`` and
    x0.01 from ``iters * 11 // 12``.
    """
    w = optim.warmup_iters
    if it < w:
        alpha = it / w
        return optim.base_lr * (optim.warmup_factor * (1 - alpha) + alpha)
    if optim.name == "adamw":
        return optim.base_lr * 0.5 * (1.0 + math.cos(math.pi * (it - w) / max(iters - w, 1)))
    factor = 1.0
    if it >= iters * 8 // 12:
        factor *= 0.1
    if it >= iters * 11 // 12:
        factor *= 0.1
    return optim.base_lr * factor


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class DataArgs:
    """The generated set: ``ppdet_ghm.data.demo_data.DemoDataSpec`` fields that step 13 varies."""

    num_train: int = 800
    num_val: int = 200
    image_size: int = 256
    seed: int = 0
    image_format: str = "jpg"
    kind: str = "shapes"  # DemoDataSpec.kind: "shapes" (the demo's) or "marks"

    def tag(self) -> str:
        return (
            f"{self.kind}_s{self.seed}_n{self.num_train}_v{self.num_val}_{self.image_size}px_"
            f"{self.image_format}"
        )


def normalise(images_uint8: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] uint8 RGB -> [N, 3, H, W] float32 ``(x - MEAN) / STD`` (mmdet order of ops)."""
    x = images_uint8.astype(np.float32)
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _read_split(coco_dir: Path, split: str):
    from PIL import Image

    coco = json.loads((coco_dir / "annotations" / f"instances_{split}.json").read_text())
    images = sorted(coco["images"], key=lambda r: r["id"])
    per_image = {r["id"]: [] for r in images}
    for ann in sorted(coco["annotations"], key=lambda a: a["id"]):
        per_image[ann["image_id"]].append(ann)
    pixels, boxes, labels, counts = [], [], [], []
    for record in images:
        with Image.open(coco_dir / split / record["file_name"]) as im:
            pixels.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        anns = per_image[record["id"]]
        counts.append(len(anns))
        for ann in anns:
            x, y, w, h = (float(v) for v in ann["bbox"])
            boxes.append([x, y, x + w, y + h])
            labels.append(ann["category_id"] - 1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return {
        "images": normalise(np.stack(pixels)),
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, dtype=np.int64),
        "offsets": offsets,
        "image_ids": np.array([r["id"] for r in images], dtype=np.int64),
    }


def prepare(data_dir: str, args: DataArgs) -> dict:
    """Generate the demo set (``args.kind``) under ``data_dir/coco`` and write its fixed arrays.

    Generation imports ``ppdet_ghm.data.demo_data``, which (through the ``ppdet_ghm`` package)
    imports paddle: run this once, in its own command (``python -m align.step13_train --prepare``),
    before either side. Writes ``{split}_{images,boxes,labels,offsets,image_ids}.npy`` and
    ``meta.json`` (spec and the sha256 of every array).
    """
    from ppdet_ghm.data.demo_data import DemoDataSpec, generate

    out = Path(data_dir)
    coco_dir = out / "coco"
    spec = DemoDataSpec(
        seed=args.seed,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.image_size,
        image_format=args.image_format,
        kind=args.kind,
    )
    generate(spec, coco_dir)
    meta = {"spec": dataclasses.asdict(spec), "sha256": {}}
    for split in ("train", "val"):
        arrays = _read_split(coco_dir, split)
        for key, value in arrays.items():
            path = out / f"{split}_{key}.npy"
            np.save(path, value)
            meta["sha256"][f"{split}_{key}"] = hashlib.sha256(value.tobytes()).hexdigest()
    (out / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return meta


def data_dir_for(root: str, args: DataArgs) -> str:
    return os.path.join(root, args.tag())


def load(data_dir: str, split: str = "train") -> dict:
    """The arrays of ``split`` (images memory-mapped) and the digest of the whole folder."""
    meta_path = Path(data_dir) / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{meta_path} is missing: run `python -m align.step13_train --prepare` first"
        )
    meta = json.loads(meta_path.read_text())
    keys = ("images", "boxes", "labels", "offsets", "image_ids")
    out = {
        k: np.load(
            os.path.join(data_dir, f"{split}_{k}.npy"), mmap_mode="r" if k == "images" else None
        )
        for k in keys
    }
    digest = hashlib.sha256(json.dumps(meta["sha256"], sort_keys=True).encode()).digest()
    out["digest"] = np.frombuffer(digest, dtype=np.uint8).copy()
    out["annotation_file"] = str(
        Path(data_dir) / "coco" / "annotations" / f"instances_{split}.json"
    )
    return out


def batch_order(num_images: int, iters: int, seed: int, batch_size: int = BATCH_SIZE):
    """``[iters, batch_size]`` image indices: per epoch a seeded permutation, drop_last."""
    per_epoch = num_images // batch_size
    if per_epoch < 1:
        raise ValueError(f"{num_images} images give no full batch of {batch_size}")
    batches = []
    epoch = 0
    while len(batches) < iters:
        perm = np.random.default_rng([seed, epoch]).permutation(num_images)
        batches.extend(perm[: per_epoch * batch_size].reshape(per_epoch, batch_size))
        epoch += 1
    return np.stack(batches[:iters]).astype(np.int64)


def batch(data: dict, indices) -> dict:
    """Images [B, 3, H, W] float32 and per-image gt boxes [G_i, 4] / labels [G_i] of ``indices``."""
    images = np.ascontiguousarray(data["images"][np.asarray(indices)], dtype=np.float32)
    offsets = data["offsets"]
    boxes = [np.array(data["boxes"][offsets[i] : offsets[i + 1]]) for i in indices]
    labels = [np.array(data["labels"][offsets[i] : offsets[i + 1]]) for i in indices]
    return {"images": images, "gt_boxes": boxes, "gt_labels": labels}


def corrupt_annotations(split: dict, wrong_class: float, missing: float, seed: int = 0) -> dict:
    """``split`` (a :func:`load` dict) with noisy annotations, the outliers of the paper's argument.

    Each gt box independently, from ``default_rng([seed, 1701])``: with probability ``missing``
    it is dropped (an object left unannotated, trained on as background), else with probability
    ``wrong_class`` its label becomes one of the other classes, uniformly. The same draw for every
    run of one data set (training seed and loss do not enter), so both losses and both sides see
    the same corrupted set. Returns a new dict (images shared) whose ``digest`` covers the noise.
    """
    for name, value in (("wrong_class", wrong_class), ("missing", missing)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    num_boxes = len(split["labels"])
    rng = np.random.default_rng([seed, 1701])
    drop = rng.random(num_boxes) < missing
    flip = (rng.random(num_boxes) < wrong_class) & ~drop
    shift = rng.integers(1, NUM_CLASSES, num_boxes)  # another class: label + 1 .. C - 1, mod C
    labels = np.where(flip, (split["labels"] + shift) % NUM_CLASSES, split["labels"])
    keep = ~drop
    image_of_box = np.repeat(np.arange(len(split["offsets"]) - 1), np.diff(split["offsets"]))
    counts = np.bincount(image_of_box[keep], minlength=len(split["offsets"]) - 1)
    out = dict(split)
    out["boxes"] = split["boxes"][keep]
    out["labels"] = labels[keep].astype(np.int64)
    out["offsets"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    noise = f"wrong_class={wrong_class!r} missing={missing!r} seed={seed}".encode()
    out["digest"] = np.frombuffer(
        hashlib.sha256(split["digest"].tobytes() + noise).digest(), dtype=np.uint8
    ).copy()
    out["noise"] = {"dropped": int(drop.sum()), "wrong_class": int(flip.sum()), "of": num_boxes}
    return out


# ----------------------------------------------------------------------------- initial weights


def mmdet_r18_spec() -> list[tuple[str, tuple[int, ...]]]:
    """``[(name, shape)]`` of step 13's mmdet model (ResNet-18, FPN 64, GN head, 4 classes),
    floating-point entries only (no ``num_batches_tracked``; GHM edges / acc_sum excluded), in
    mmdet's state_dict order. The torch side checks it against the real model."""

    def bn(name, c):
        return [(f"{name}.{p}", (c,)) for p in ("weight", "bias", "running_mean", "running_var")]

    spec = [("backbone.conv1.weight", (64, 3, 7, 7))] + bn("backbone.bn1", 64)
    cin = 64
    for layer, width in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            p = f"backbone.layer{layer}.{b}"
            spec += [(f"{p}.conv1.weight", (width, cin, 3, 3))] + bn(f"{p}.bn1", width)
            spec += [(f"{p}.conv2.weight", (width, width, 3, 3))] + bn(f"{p}.bn2", width)
            if b == 0 and layer > 1:
                spec += [(f"{p}.downsample.0.weight", (width, cin, 1, 1))]
                spec += bn(f"{p}.downsample.1", width)
            cin = width
    for i, c in enumerate((128, 256, 512)):
        spec += [(f"neck.lateral_convs.{i}.conv.weight", (64, c, 1, 1))]
        spec += [(f"neck.lateral_convs.{i}.conv.bias", (64,))]
    for i, c in enumerate((64, 64, 64, 512, 64)):
        spec += [(f"neck.fpn_convs.{i}.conv.weight", (64, c, 3, 3))]
        spec += [(f"neck.fpn_convs.{i}.conv.bias", (64,))]
    for tower in ("cls_convs", "reg_convs"):
        for i in range(2):
            spec += [(f"bbox_head.{tower}.{i}.conv.weight", (64, 64, 3, 3))]
            spec += [(f"bbox_head.{tower}.{i}.gn.{p}", (64,)) for p in ("weight", "bias")]
    spec += [
        ("bbox_head.retina_cls.weight", (9 * NUM_CLASSES, 64, 3, 3)),
        ("bbox_head.retina_cls.bias", (9 * NUM_CLASSES,)),
        ("bbox_head.retina_reg.weight", (36, 64, 3, 3)),
        ("bbox_head.retina_reg.bias", (36,)),
    ]
    return spec


def numpy_init(seed: int) -> dict[str, np.ndarray]:
    """mmdet's initial distributions for :func:`mmdet_r18_spec`, drawn with NumPy from ``seed``.

    As mmdet 3.3's ``init_weights()`` (measured on the model): backbone convs Kaiming normal
    (fan_out, ReLU gain), BN weight 1 / bias 0 except every block's ``bn2`` weight 0
    (``zero_init_residual``), FPN convs Xavier uniform with bias 0, head tower convs and
    ``retina_*`` Normal(0, 0.01), GN weight 1 / bias 0, ``retina_cls`` bias ``-log(99)``;
    running mean 0, running var 1. For the CI prefix only (no torch there).
    """
    rng = np.random.default_rng([seed, 13])
    out = {}
    for name, shape in mmdet_r18_spec():
        if name.endswith("running_var"):
            value = np.ones(shape)
        elif name.endswith("running_mean") or (name.endswith(".bias") and "retina_cls" not in name):
            value = np.zeros(shape)
        elif len(shape) == 1:  # BN / GN weight
            value = np.zeros(shape) if name.endswith("bn2.weight") else np.ones(shape)
        elif name.startswith("backbone."):
            std = math.sqrt(2.0 / (shape[0] * shape[2] * shape[3]))
            value = rng.normal(0.0, std, shape)
        elif name.startswith("neck."):
            rf = shape[2] * shape[3]
            bound = math.sqrt(6.0 / (shape[0] * rf + shape[1] * rf))
            value = rng.uniform(-bound, bound, shape)
        else:
            value = rng.normal(0.0, 0.01, shape)
        if name == "bbox_head.retina_cls.bias":
            value = np.full(shape, -math.log(99.0))
        out[name] = value.astype(np.float32)
    return out


def with_backbone(arrays: dict[str, np.ndarray], path: str) -> dict[str, np.ndarray]:
    """``arrays`` with every ``backbone.*`` entry (BN statistics included) taken from the weights
    file ``path`` (mmdet names, e.g. a run's ``--save-weights`` output): a pretrained backbone
    under a fresh neck and head, the paper's starting point at our scale."""
    with np.load(path) as f:
        saved = {k: f[k] for k in f.files}
    out = dict(arrays)
    for name, value in arrays.items():
        if not name.startswith("backbone."):
            continue
        if name not in saved:
            raise KeyError(f"{path}: no entry {name!r} (a step-13 weights file has every one)")
        if saved[name].shape != value.shape:
            raise ValueError(
                f"{path}: {name!r} has shape {saved[name].shape}, the model {value.shape}"
            )
        out[name] = saved[name].astype(value.dtype)
    return out


def perturbed(arrays: dict[str, np.ndarray], scale: float, seed: int) -> dict[str, np.ndarray]:
    """Every array times ``1 + scale * N(0, 1)`` elementwise (``default_rng([seed, 99])``, names
    in sorted order): a start that differs from ``arrays`` by about ``scale`` relative, to measure
    how far two runs of one framework drift apart on their own."""
    rng = np.random.default_rng([seed, 99])
    out = {}
    for name in sorted(arrays):
        value = arrays[name]
        noise = rng.standard_normal(value.shape)
        out[name] = (value * (1.0 + scale * noise)).astype(value.dtype)
    return {name: out[name] for name in arrays}


def without_head_norm(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` for the reference's head (mmdet ``RetinaHead`` without ``norm_cfg``, ours
    ``norm_groups: 0``): the towers' GroupNorm entries dropped, a zero bias after each tower conv
    (mmdet's init of a conv without norm: Normal(0, 0.01) weight, bias 0). The conv weights are
    the same draws, so the run differs from the GroupNorm one by the norm only."""
    out = {}
    for name, value in arrays.items():
        if name.startswith("bbox_head.") and ".gn." in name:
            continue
        out[name] = value
        if name.startswith(("bbox_head.cls_convs.", "bbox_head.reg_convs.")):
            out[name.replace(".weight", ".bias")] = np.zeros(value.shape[0], value.dtype)
    return out


def start_arrays(arrays: dict[str, np.ndarray], args) -> dict[str, np.ndarray]:
    """The initial weights a run trains from: ``arrays`` (the seeded init, mmdet names) for the
    run's head (``--head-norm none``: :func:`without_head_norm`), with its ``--backbone-from``
    file, then its ``--perturb-init`` applied. Both sides call this, so both start from the same
    arrays (the weights digest in the logs checks it)."""
    if getattr(args, "head_norm", "gn") == "none":
        arrays = without_head_norm(arrays)
    path = getattr(args, "backbone_from", None)
    if path:
        arrays = with_backbone(arrays, path)
    scale = getattr(args, "perturb_init", 0.0) or 0.0
    if scale:
        arrays = perturbed(arrays, scale, args.seed)
    return arrays


def weights_digest(state_dict: dict[str, np.ndarray]) -> np.ndarray:
    """sha256 over names, shapes and bytes (sorted by name), as 32 uint8."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        value = np.ascontiguousarray(state_dict[name])
        h.update(name.encode())
        h.update(str(value.shape).encode())
        h.update(value.tobytes())
    return np.frombuffer(h.digest(), dtype=np.uint8).copy()


# ----------------------------------------------------------------------------- logs


def run_name(loss: str, optim: str, seed: int, iters: int, kind: str = "shapes") -> str:
    """``step13_{loss}_{optim}_s{seed}_it{iters}``, then ``_{kind}`` for another data kind."""
    name = f"step13_{loss}_{optim}_s{seed}_it{iters}"
    return name if kind == "shapes" else f"{name}_{kind}"


def run_name_of(args) -> str:
    """:func:`run_name` of parsed step-13 arguments, plus ``_<dtype>`` unless float32 and
    ``_<tag>`` if given: the stem of every file of one run (logs, detections, figures)."""
    name = run_name(args.loss, args.optim, args.seed, args.iters, args.data_kind)
    name = name if args.dtype == "float32" else f"{name}_{args.dtype}"
    tag = getattr(args, "tag", "")
    return f"{name}_{tag}" if tag else name


def detections_to_coco(per_image, image_ids) -> list[dict]:
    """COCO results from per-image ``(boxes [K, 4] x1y1x2y2, scores [K], labels [K] 0-based)``."""
    results = []
    for (boxes, scores, labels), image_id in zip(per_image, image_ids, strict=True):
        for box, score, label in zip(boxes, scores, labels, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(label) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    return results


def finish_log(log: dict, acc: dict, train_s: float, weights_digest, data_digest) -> dict:
    """The run's log as saved by both sides: per-iteration lists as float64 arrays, ``acc_sum``
    histories stacked to [iters, bins], wall time and the weights / data digests (``meta.*``)."""
    out = {k: np.asarray(v, dtype=np.float64) for k, v in log.items()}
    for k, v in acc.items():
        if v:
            out[k] = np.stack(v)
    out["meta.train_wall_s"] = np.array([train_s])
    out["meta.weights_sha256"] = weights_digest
    out["meta.data_sha256"] = data_digest
    return out
