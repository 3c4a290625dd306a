"""Alignment weights: every tensor of mmdet's RetinaNet-GHM state_dict, generated from a seed by NumPy.

Both sides load the same arrays: torch by mmdet's state_dict names, Paddle through the converter's
rename table (``ppdet_ghm.convert``). Nothing is downloaded or committed; the seed and a sha256 of
the arrays are written with the logs, and the Paddle side refuses to compare against logs made from
other arrays.

The weights are chosen so that no path of the network is trivial and no activation explodes:

- every BN gets a random weight, bias, running mean and a positive running variance (mmdet's default
  init zeroes the last BN of each residual block, which would hide a wrong residual branch);
- convs before a ReLU get He-normal weights, the others ``1/sqrt(fan_in)``; the last BN of each
  residual branch is scaled down a little so that 16 residual additions keep activations O(1);
- ``retina_cls`` gets the prior bias ``-log(99)`` plus noise, so that sigmoid scores spread around
  0.01 with a tail above the test score threshold 0.05 (non-empty detections, realistic GHM-C
  gradient norms);
- the GHM buffers are the reference's initial state: float32 edges exactly as mmdet builds them and
  zero ``acc_sum``.
"""

import hashlib
import math

import numpy as np

DEFAULT_SEED = 2019

RESNET50_BLOCKS = (3, 4, 6, 3)
RESNET50_WIDTHS = (64, 128, 256, 512)
NUM_CLASSES = 80
NUM_ANCHORS = 9
FPN_IN_CHANNELS = (512, 1024, 2048)
FPN_CHANNELS = 256
GHMC_BINS = 30
GHMR_BINS = 10


def _bn(prefix, channels):
    return [
        (f"{prefix}.weight", (channels,), "float32"),
        (f"{prefix}.bias", (channels,), "float32"),
        (f"{prefix}.running_mean", (channels,), "float32"),
        (f"{prefix}.running_var", (channels,), "float32"),
        (f"{prefix}.num_batches_tracked", (), "int64"),
    ]


def state_dict_spec():
    """``[(name, shape, dtype)]`` of mmdet 3.3.0's RetinaNet-GHM R50-FPN state_dict, in its order.

    Written out here so that the Paddle side needs no torch; the torch side checks it equals
    ``model.state_dict()`` (names, order, shapes, dtypes) before loading.
    """
    spec = [("backbone.conv1.weight", (64, 3, 7, 7), "float32")]
    spec += _bn("backbone.bn1", 64)
    in_ch = 64
    for stage, (blocks, width) in enumerate(zip(RESNET50_BLOCKS, RESNET50_WIDTHS, strict=True)):
        out_ch = width * 4
        for block in range(blocks):
            p = f"backbone.layer{stage + 1}.{block}"
            spec.append((f"{p}.conv1.weight", (width, in_ch, 1, 1), "float32"))
            spec += _bn(f"{p}.bn1", width)
            spec.append((f"{p}.conv2.weight", (width, width, 3, 3), "float32"))
            spec += _bn(f"{p}.bn2", width)
            spec.append((f"{p}.conv3.weight", (out_ch, width, 1, 1), "float32"))
            spec += _bn(f"{p}.bn3", out_ch)
            if block == 0:
                spec.append((f"{p}.downsample.0.weight", (out_ch, in_ch, 1, 1), "float32"))
                spec += _bn(f"{p}.downsample.1", out_ch)
            in_ch = out_ch
    for i, c in enumerate(FPN_IN_CHANNELS):
        spec.append((f"neck.lateral_convs.{i}.conv.weight", (FPN_CHANNELS, c, 1, 1), "float32"))
        spec.append((f"neck.lateral_convs.{i}.conv.bias", (FPN_CHANNELS,), "float32"))
    # P3-P5 outputs, then P6 from C5 ('on_input') and P7 from P6.
    for i, c in enumerate([FPN_CHANNELS] * 3 + [FPN_IN_CHANNELS[-1], FPN_CHANNELS]):
        spec.append((f"neck.fpn_convs.{i}.conv.weight", (FPN_CHANNELS, c, 3, 3), "float32"))
        spec.append((f"neck.fpn_convs.{i}.conv.bias", (FPN_CHANNELS,), "float32"))
    spec += [
        ("bbox_head.loss_cls.edges", (GHMC_BINS + 1,), "float32"),
        ("bbox_head.loss_cls.acc_sum", (GHMC_BINS,), "float32"),
        ("bbox_head.loss_bbox.edges", (GHMR_BINS + 1,), "float32"),
        ("bbox_head.loss_bbox.acc_sum", (GHMR_BINS,), "float32"),
    ]
    for tower in ("cls_convs", "reg_convs"):
        for i in range(4):
            p = f"bbox_head.{tower}.{i}.conv"
            spec.append((f"{p}.weight", (FPN_CHANNELS, FPN_CHANNELS, 3, 3), "float32"))
            spec.append((f"{p}.bias", (FPN_CHANNELS,), "float32"))
    for name, out in (("retina_cls", NUM_ANCHORS * NUM_CLASSES), ("retina_reg", NUM_ANCHORS * 4)):
        spec.append((f"bbox_head.{name}.weight", (out, FPN_CHANNELS, 3, 3), "float32"))
        spec.append((f"bbox_head.{name}.bias", (out,), "float32"))
    return spec


def ghm_edges(bins: int, last: float | None = None, last_increment: float = 0.0):
    """Edges as mmdet builds them: float32 ``arange(bins + 1) / bins``, then the last edge changed."""
    edges = np.arange(bins + 1, dtype=np.float32) / np.float32(bins)
    if last is not None:
        edges[-1] = np.float32(last)
    edges[-1] += np.float32(last_increment)
    return edges


def _is_residual_last_bn(name):
    return ".bn3." in name or ".downsample.1." in name


def _conv_std(name, shape):
    fan_in = int(np.prod(shape[1:]))
    if name.startswith("bbox_head.retina_cls"):
        return 0.7 / math.sqrt(fan_in)
    if name.startswith("bbox_head.retina_reg"):
        return 0.3 / math.sqrt(fan_in)
    if name.startswith("neck."):
        return 1.0 / math.sqrt(fan_in)
    if name.endswith("conv3.weight") or ".downsample.0." in name:
        return 1.0 / math.sqrt(fan_in)  # no ReLU follows before the residual sum
    return math.sqrt(2.0 / fan_in)  # He normal: a ReLU follows


def generate_state_dict(seed: int = DEFAULT_SEED):
    """``{mmdet name: ndarray}`` for every entry of :func:`state_dict_spec`, deterministic in ``seed``.

    One ``np.random.default_rng(seed)`` stream is consumed in spec order, so the arrays depend only on
    the seed and on NumPy's PCG64 / normal / uniform algorithms (the checksum catches any change).
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape, dtype in state_dict_spec():
        leaf = name.rsplit(".", 1)[1]
        if name.endswith("num_batches_tracked"):
            arr = np.zeros(shape, dtype=np.int64)
        elif name == "bbox_head.loss_cls.edges":
            arr = ghm_edges(GHMC_BINS, last_increment=1e-6)
        elif name == "bbox_head.loss_bbox.edges":
            arr = ghm_edges(GHMR_BINS, last=1e3)
        elif leaf == "acc_sum":
            arr = np.zeros(shape, dtype=np.float32)
        elif leaf == "running_mean":
            arr = rng.normal(0.0, 0.2, size=shape)
        elif leaf == "running_var":
            arr = rng.uniform(0.5, 2.0, size=shape)
        elif len(shape) == 4:
            arr = rng.normal(0.0, _conv_std(name, shape), size=shape)
        elif leaf == "weight":  # BN affine
            if _is_residual_last_bn(name):
                arr = rng.uniform(0.3, 0.8, size=shape)
            else:
                arr = rng.uniform(0.6, 1.4, size=shape)
        elif name == "bbox_head.retina_cls.bias":
            arr = -math.log((1 - 0.01) / 0.01) + rng.normal(0.0, 0.3, size=shape)
        elif leaf == "bias":
            arr = rng.normal(0.0, 0.1, size=shape)
        else:
            raise ValueError(f"no generation rule for {name}")
        arr = np.array(arr, dtype=dtype, order="C")
        if arr.shape != shape:
            raise ValueError(f"{name}: generated {arr.shape}, spec says {shape}")
        out[name] = arr
    return out


def checksum(state_dict):
    """sha256 over names, dtypes, shapes and bytes of every array, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        arr = np.asarray(state_dict[name], order="C")
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


# Log entries naming the weights a log was made from (both sides write them, align.common
# refuses to compare logs whose entries differ).
META_SHA = "meta.weights_sha256"
META_SEED = "meta.weights_seed"


def weights_meta(seed: int, state_dict: dict):
    """Log entries naming the weights: the seed and the sha256 of the arrays (as 32 uint8)."""
    digest = bytes.fromhex(checksum(state_dict))
    return {
        META_SHA: np.frombuffer(digest, dtype=np.uint8).copy(),
        META_SEED: np.array([seed], dtype=np.int64),
    }


def check_same_weights(torch_log: dict, paddle_meta: dict, path: str):
    """Refuse to compare logs made from different weights (seed or NumPy stream changed)."""
    for key in (META_SHA, META_SEED):
        if key not in torch_log:
            raise ValueError(f"{path} has no {key}: regenerate the torch logs")
        if not np.array_equal(torch_log[key], paddle_meta[key]):
            raise ValueError(
                f"{path} was made from other weights ({key} differs: torch "
                f"{torch_log[key].tobytes().hex()}, here {paddle_meta[key].tobytes().hex()}); "
                "check --seed, or NumPy's generator changed: regenerate the torch logs"
            )
