"""mmdet / torchvision state_dict names -> our Paddle RetinaNet-GHM names: a rename table and one apply.

The table is written out name by name from explicit rules (print it with
``python -c "from ppdet_ghm.convert import mmdet_retinanet_table as t; print(t().dump())"``):

==========================================  ===================================================
torch (mmdet; torchvision drops ``backbone.``) Paddle (ppdet ResNet variant 'b' + our neck/head)
==========================================  ===================================================
``backbone.conv1.weight``                   ``backbone.conv1.conv1.conv.weight``
``backbone.bn1.{weight,bias}``              ``backbone.conv1.conv1.norm.{weight,bias}``
``backbone.bn1.running_{mean,var}``         ``backbone.conv1.conv1.norm._{mean,variance}``
``backbone.layer{s}.{b}.conv{1,2,3}``       ``backbone.res{s+1}.res{s+1}{a,b,..}.branch2{a,b,c}.conv``
``backbone.layer{s}.{b}.bn{1,2,3}``         ``backbone.res{s+1}.res{s+1}{a,b,..}.branch2{a,b,c}.norm``
``backbone.layer{s}.0.downsample.{0,1}``    ``backbone.res{s+1}.res{s+1}a.short.{conv,norm}``
``neck.lateral_convs.{i}.conv.*`` (i<3)     ``neck.lateral_convs.{i}.*``
``neck.fpn_convs.{i}.conv.*`` (i<5)         ``neck.fpn_convs.{i}.*``
``bbox_head.{cls,reg}_convs.{i}.conv.*``    ``head.{cls,reg}_convs.{i}.*``
``bbox_head.{cls,reg}_convs.{i}.gn.*``      ``head.{cls,reg}_norms.{i}.*`` (GN head)
``bbox_head.retina_{cls,reg}.*``            ``head.retina_{cls,reg}.*``
``bbox_head.loss_{cls,bbox}.acc_sum``       ``head.loss_{cls,bbox}.acc_sum`` (optional)
==========================================  ===================================================

Deliberately skipped (each listed by name): every BN's ``num_batches_tracked`` (Paddle's BN keeps no
counter; BN statistics are frozen in RetinaNet anyway), torchvision's ``fc.weight`` / ``fc.bias``
(the ImageNet classifier), and the GHM ``edges`` buffers, whose values are first checked against the
reference construction (our losses build the same edges themselves). Block letters follow ppdet's
``NameAdapter.fix_layer_warp_name`` (``res4b1``, ``res4b2``, ... when stage 4 has more than 10 blocks).
Conv and BN tensors have the same layout in both frameworks (OIHW, per-channel vectors), so values
are copied unchanged.

Architectures: ResNet-50/101/152 (Bottleneck: ``conv1-3``/``bn1-3`` -> ``branch2a-c``) and
ResNet-18/34 (BasicBlock: ``conv1-2``/``bn1-2`` -> ``branch2a-b``; stage 1 has no ``downsample``
/ ``short``, as in both frameworks); a head with ``stacked_convs`` convs per tower, plain (conv
with bias, the paper's) or GroupNorm (mmdet ``RetinaHead(norm_cfg=dict(type='GN', ...))``:
``ConvModule`` convs without bias plus ``.gn``; ours ``GHMRetinaHead(norm_groups=G)``:
``{cls,reg}_norms.{i}``). :func:`mmdet_architecture` reads them off the source names when they
are not given.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

#: Blocks per stage (layer1..layer4 = ppdet res2..res5): BasicBlock for 18/34, Bottleneck above.
RESNET_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
#: torch BatchNorm buffer/parameter name -> Paddle BatchNorm name.
BN_NAMES: dict[str, str] = {
    "weight": "weight",
    "bias": "bias",
    "running_mean": "_mean",
    "running_var": "_variance",
}
FPN_NUM_INS = 3  # lateral convs on C3, C4, C5
FPN_NUM_OUTS = 5  # P3..P7 (P6 from C5, P7 from P6)
HEAD_STACKED_CONVS = 4
#: Depths built from BasicBlock (two 3x3 convs per block); the others use Bottleneck (three convs).
BASIC_BLOCK_DEPTHS = (18, 34)

SKIP_BN_COUNTER = "BN num_batches_tracked: Paddle's BN has no counter"
SKIP_FC = "ImageNet classifier, not part of the detection backbone"
SKIP_EDGES = "GHM bin edges: checked against the reference values, rebuilt by our loss"
SKIP_NOT_BACKBONE = "not part of the backbone (backbone-only conversion)"


class ConversionError(ValueError):
    """The source does not fit the target; the message lists every offending key."""


@dataclass(frozen=True)
class RenameTable:
    """``renames``: source name -> target name (each required unless in ``optional``);
    ``skips``: source name -> why it is dropped (each may be absent from the source);
    ``optional``: renamed source names that may be absent (their targets default to zeros)."""

    renames: dict[str, str]
    skips: dict[str, str]
    optional: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self):
        targets = list(self.renames.values())
        if len(set(targets)) != len(targets):
            raise ValueError("rename table maps two source names to one target name")
        both = set(self.renames) & set(self.skips)
        if both:
            raise ValueError(f"rename table both renames and skips {sorted(both)}")

    def dump(self) -> str:
        """The whole table, one ``old -> new`` / ``old -> (skipped: why)`` line per entry."""
        lines = [f"{old} -> {new}" for old, new in self.renames.items()]
        lines += [f"{old} -> (skipped: {why})" for old, why in self.skips.items()]
        return "\n".join(lines)


def _ppdet_block_name(stage: int, num_blocks: int, index: int) -> str:
    """ppdet's bottleneck name in stage ``stage`` (2..5): ``res3b``; ``res4b7`` for deep stage 4."""
    if stage == 4 and num_blocks > 10:
        return "res4a" if index == 0 else f"res4b{index}"
    return f"res{stage}{chr(ord('a') + index)}"


def _conv_bn(renames: dict, skips: dict, conv_src: str, bn_src: str, dst: str) -> None:
    renames[f"{conv_src}.weight"] = f"{dst}.conv.weight"
    for torch_name, paddle_name in BN_NAMES.items():
        renames[f"{bn_src}.{torch_name}"] = f"{dst}.norm.{paddle_name}"
    skips[f"{bn_src}.num_batches_tracked"] = SKIP_BN_COUNTER


def resnet_table(src_prefix: str = "", dst_prefix: str = "", depth: int = 50) -> RenameTable:
    """torchvision-named ResNet (``conv1``, ``bn1``, ``layer{1-4}``) -> ppdet ResNet variant 'b'."""
    if depth not in RESNET_BLOCKS:
        raise ValueError(f"depth={depth} is not supported; choose one of {sorted(RESNET_BLOCKS)}")
    renames: dict[str, str] = {}
    skips: dict[str, str] = {}
    _conv_bn(renames, skips, f"{src_prefix}conv1", f"{src_prefix}bn1", f"{dst_prefix}conv1.conv1")
    for layer, num_blocks in enumerate(RESNET_BLOCKS[depth], start=1):
        stage = layer + 1
        for b in range(num_blocks):
            src = f"{src_prefix}layer{layer}.{b}"
            dst = f"{dst_prefix}res{stage}.{_ppdet_block_name(stage, num_blocks, b)}"
            branches = "ab" if depth in BASIC_BLOCK_DEPTHS else "abc"
            for i, branch in enumerate(branches, start=1):
                _conv_bn(renames, skips, f"{src}.conv{i}", f"{src}.bn{i}", f"{dst}.branch2{branch}")
            # BasicBlock stage 1 keeps 64 channels at stride 1: no projection shortcut
            if b == 0 and not (depth in BASIC_BLOCK_DEPTHS and layer == 1):
                _conv_bn(
                    renames, skips, f"{src}.downsample.0", f"{src}.downsample.1", f"{dst}.short"
                )
    return RenameTable(renames, skips)


def torchvision_resnet_table(depth: int = 50) -> RenameTable:
    """torchvision ``resnet{depth}`` state_dict -> ppdet ResNet names (no prefix), ``fc.*`` skipped."""
    base = resnet_table("", "", depth)
    return RenameTable(base.renames, {**base.skips, "fc.weight": SKIP_FC, "fc.bias": SKIP_FC})


def mmdet_retinanet_table(
    depth: int = 50, stacked_convs: int = HEAD_STACKED_CONVS, head_norm: bool = False
) -> RenameTable:
    """mmdet RetinaNet / RetinaNet-GHM R-FPN state_dict -> our full-model names.

    Args:
        depth: ResNet depth (18, 34, 50, 101, 152).
        stacked_convs: convs per head tower (mmdet ``RetinaHead.stacked_convs``).
        head_norm: the towers are conv (no bias) + GroupNorm (mmdet ``norm_cfg=dict(type='GN')``,
            ours ``norm_groups``); False: conv with bias, no norm (the paper's head).
    """
    base = resnet_table("backbone.", "backbone.", depth)
    renames = dict(base.renames)
    skips = dict(base.skips)
    for kind, count in (("lateral_convs", FPN_NUM_INS), ("fpn_convs", FPN_NUM_OUTS)):
        for i in range(count):
            for p in ("weight", "bias"):
                renames[f"neck.{kind}.{i}.conv.{p}"] = f"neck.{kind}.{i}.{p}"
    for tower, norms in (("cls_convs", "cls_norms"), ("reg_convs", "reg_norms")):
        for i in range(stacked_convs):
            renames[f"bbox_head.{tower}.{i}.conv.weight"] = f"head.{tower}.{i}.weight"
            if head_norm:
                for p in ("weight", "bias"):
                    renames[f"bbox_head.{tower}.{i}.gn.{p}"] = f"head.{norms}.{i}.{p}"
            else:
                renames[f"bbox_head.{tower}.{i}.conv.bias"] = f"head.{tower}.{i}.bias"
    for conv in ("retina_cls", "retina_reg"):
        for p in ("weight", "bias"):
            renames[f"bbox_head.{conv}.{p}"] = f"head.{conv}.{p}"
    optional = []
    for loss in ("loss_cls", "loss_bbox"):
        renames[f"bbox_head.{loss}.acc_sum"] = f"head.{loss}.acc_sum"
        optional.append(f"bbox_head.{loss}.acc_sum")
        skips[f"bbox_head.{loss}.edges"] = SKIP_EDGES
    return RenameTable(renames, skips, frozenset(optional))


def mmdet_backbone_table(
    depth: int = 50, stacked_convs: int = HEAD_STACKED_CONVS, head_norm: bool = False
) -> RenameTable:
    """mmdet RetinaNet state_dict -> ppdet ResNet names (no prefix); neck and head skipped."""
    full = mmdet_retinanet_table(depth, stacked_convs, head_norm)
    renames = {}
    skips = {}
    for old, new in full.renames.items():
        if old.startswith("backbone."):
            renames[old] = new[len("backbone.") :]
        else:
            skips[old] = SKIP_NOT_BACKBONE
    for old, why in full.skips.items():
        skips[old] = why if old.startswith("backbone.") else SKIP_NOT_BACKBONE
    return RenameTable(renames, skips)


def reference_ghm_edges(name: str, num_edges: int) -> np.ndarray:
    """float32 edges as mmdet builds them: ``arange(bins + 1) / bins``, then GHM-C adds 1e-6 to the
    last edge and GHM-R sets it to 1e3 (same construction as mmdet GHMC / GHMR)."""
    bins = num_edges - 1
    edges = np.arange(num_edges, dtype=np.float32) / np.float32(bins)
    if ".loss_cls." in name:
        edges[-1] += np.float32(1e-6)
    else:
        edges[-1] = np.float32(1e3)
    return edges


def _check_edges(name: str, edges: np.ndarray, target_shapes: Mapping[str, tuple]) -> str | None:
    """Why ``edges`` cannot be dropped (wrong shape/values, or bins != the target's acc_sum), or None."""
    if edges.ndim != 1 or edges.shape[0] < 2:
        return f"{name}: shape {edges.shape} is not a 1-D edge vector"
    acc_target = "head." + name.split(".", 1)[1].replace(".edges", ".acc_sum")
    if acc_target in target_shapes and tuple(target_shapes[acc_target]) != (edges.shape[0] - 1,):
        return (
            f"{name}: {edges.shape[0] - 1} bins, but the model's {acc_target} has shape "
            f"{tuple(target_shapes[acc_target])}"
        )
    expected = reference_ghm_edges(name, edges.shape[0])
    if not np.allclose(edges.astype(np.float64), expected, rtol=1e-6, atol=0.0):
        return f"{name}: values {edges.tolist()} differ from the reference {expected.tolist()}"
    return None


def _shape(value) -> tuple[int, ...]:
    return tuple(int(d) for d in value)


def mmdet_architecture(src: Mapping[str, np.ndarray]) -> dict:
    """``{"depth", "stacked_convs", "head_norm"}`` read off torch state_dict names.

    depth: from the number of blocks per ``layer{1-4}`` and whether blocks have a ``conv3``
    (Bottleneck) or not (BasicBlock); stacked_convs: the number of ``bbox_head.cls_convs.{i}``;
    head_norm: whether ``bbox_head.cls_convs.0.gn.weight`` exists. Works for torchvision names
    (no ``backbone.`` prefix) too. A value that cannot be read is returned as the R50 default
    (50, 4, False), so that the table's strict check names what does not fit.
    """
    prefix = "backbone." if any(k.startswith("backbone.") for k in src) else ""
    blocks = []
    for layer in range(1, 5):
        head = f"{prefix}layer{layer}."
        indices = {int(k[len(head) :].split(".", 1)[0]) for k in src if k.startswith(head)}
        blocks.append(max(indices) + 1 if indices else 0)
    bottleneck = f"{prefix}layer1.0.conv3.weight" in src
    depth = 50
    for candidate, counts in RESNET_BLOCKS.items():
        if tuple(blocks) == counts and (candidate not in BASIC_BLOCK_DEPTHS) == bottleneck:
            depth = candidate
            break
    convs = {
        int(k.split(".")[2])
        for k in src
        if k.startswith("bbox_head.cls_convs.") and k.count(".") > 3
    }
    return {
        "depth": depth,
        "stacked_convs": max(convs) + 1 if convs else HEAD_STACKED_CONVS,
        "head_norm": "bbox_head.cls_convs.0.gn.weight" in src,
    }


def choose_table(
    src: Mapping[str, np.ndarray],
    backbone_only: bool,
    depth: int | None = None,
    stacked_convs: int | None = None,
    head_norm: bool | None = None,
) -> RenameTable:
    """mmdet layout (any key under ``backbone.``) or torchvision layout, for the requested target.

    ``depth`` / ``stacked_convs`` / ``head_norm`` left None are read off the source names
    (:func:`mmdet_architecture`).
    """
    found = mmdet_architecture(src)
    depth = found["depth"] if depth is None else depth
    stacked_convs = found["stacked_convs"] if stacked_convs is None else stacked_convs
    head_norm = found["head_norm"] if head_norm is None else head_norm
    mmdet_layout = any(k.startswith("backbone.") for k in src)
    if backbone_only:
        if mmdet_layout:
            return mmdet_backbone_table(depth, stacked_convs, head_norm)
        return torchvision_resnet_table(depth)
    if not mmdet_layout:
        raise ConversionError(
            "the source has no 'backbone.*' keys: it looks like an ImageNet (torchvision) ResNet; "
            "convert it with backbone_only=True (--backbone-only)"
        )
    return mmdet_retinanet_table(depth, stacked_convs, head_norm)


def convert_state_dict(
    src: Mapping[str, np.ndarray],
    target_shapes: Mapping[str, tuple],
    backbone_only: bool = False,
    verbose: bool = False,
    depth: int | None = None,
    stacked_convs: int | None = None,
    head_norm: bool | None = None,
) -> dict[str, np.ndarray]:
    """Rename ``src`` by the table, check it against ``target_shapes``, return ``{target: array}``.

    Args:
        src: torch state_dict as NumPy arrays: mmdet RetinaNet(-GHM) names, or, with
            ``backbone_only``, torchvision ResNet names (mmdet names also work: neck/head skipped).
        target_shapes: ``{name: shape}`` of the Paddle layer the result is for:
            the whole model's ``state_dict()`` (``backbone.*``, ``neck.*``, ``head.*``), or with
            ``backbone_only`` the ppdet ``ResNet``'s own ``state_dict()`` (no prefix).
        backbone_only: convert for a bare ResNet (ppdet ``pretrain_weights``).
        verbose: log every ``old -> new`` (and every skip) at INFO on this module's logger.
        depth: ResNet depth of both sides (18, 34, 50, 101, 152); None: read off the source
            names (:func:`mmdet_architecture`).
        stacked_convs: convs per head tower; None: read off the source names.
        head_norm: GroupNorm head towers (mmdet ``norm_cfg=dict(type='GN')``, ours
            ``norm_groups``); None: read off the source names.

    Returns:
        ``{target name: array}`` in ``target_shapes`` order, arrays unchanged (dtype as in ``src``).
        ``head.loss_{cls,bbox}.acc_sum`` missing from ``src`` is filled with float32 zeros, the GHM
        losses' initial state.

    Raises:
        ConversionError: listing together every source key neither renamed nor skipped, every target
            key left unfilled, every shape mismatch (both shapes), every renamed key the target
            lacks, and GHM edges that differ from the reference.
    """
    table = choose_table(src, backbone_only, depth, stacked_convs, head_norm)
    shapes = {k: _shape(v) for k, v in target_shapes.items()}
    unmapped, misshaped, no_target, bad_values = [], [], [], []
    renamed: dict[str, np.ndarray] = {}
    for old, value in src.items():
        if old in table.skips:
            if table.skips[old] == SKIP_EDGES:
                problem = _check_edges(old, np.asarray(value), shapes)
                if problem:
                    bad_values.append(problem)
                    continue
            if verbose:
                logger.info("%s -> (skipped: %s)", old, table.skips[old])
            continue
        if old not in table.renames:
            unmapped.append(old)
            continue
        new = table.renames[old]
        if new not in shapes:
            if old in table.optional:
                if verbose:
                    logger.info("%s -> (skipped: the model has no %s)", old, new)
                continue
            no_target.append(f"{old} -> {new}")
            continue
        if tuple(value.shape) != shapes[new]:
            misshaped.append(f"{old} {tuple(value.shape)} -> {new} {shapes[new]}")
            continue
        if verbose:
            logger.info("%s -> %s", old, new)
        renamed[new] = value

    inverse = {new: old for old, new in table.renames.items()}
    defaulted = {
        inverse[new] for new in shapes if new not in renamed and inverse.get(new) in table.optional
    }
    missing = []
    for new in shapes:
        if new in renamed:
            continue
        old = inverse.get(new)
        if old in defaulted:
            continue
        if old is not None and (old in src):
            continue  # already reported as misshaped
        missing.append(f"{new} (from {old})" if old else f"{new} (no source name maps to it)")

    problems = []
    for title, items in (
        ("source keys neither renamed nor skipped", unmapped),
        ("target keys not filled", missing),
        ("shape mismatches (source -> target)", misshaped),
        ("renamed keys the target does not have", no_target),
        ("GHM edges that differ from the reference", bad_values),
    ):
        if items:
            problems.append(f"{title} ({len(items)}):\n  " + "\n  ".join(items))
    if problems:
        raise ConversionError("state_dict conversion failed:\n" + "\n".join(problems))

    out: dict[str, np.ndarray] = {}
    for new in shapes:
        if new in renamed:
            out[new] = renamed[new]
        else:
            out[new] = np.zeros(shapes[new], dtype=np.float32)
            if verbose:
                logger.info("(not in source: zeros, the initial GHM state) -> %s", new)
    return out
