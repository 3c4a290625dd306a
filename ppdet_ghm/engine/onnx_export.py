"""``model.onnx`` from an export folder: paddle2onnx, two repairs of its output, our metadata.

``ppdet-ghm export --onnx`` writes the Paddle inference model (``model.json``, ``model.pdiparams``,
``infer_cfg.yml``) and then calls :func:`convert_export`, which

1. runs paddle2onnx 2.1.0 (``pip install 'ppdet-ghm[onnx]'``) on ``model.json`` at opset
   :data:`OPSET`, in a child process: paddle2onnx aborts its process (SIGABRT) on an op it cannot
   convert, which here becomes a ``ValueError`` with paddle2onnx's log;
2. sets the ``max_output_boxes_per_class`` input of the graph's ``NonMaxSuppression`` to
   :data:`NMS_ALL_BOXES` (:func:`keep_all_nms_boxes`): paddle2onnx copies ``multiclass_nms3``'s
   ``nms_top_k=-1`` ("every candidate of a class") into it, and ONNX Runtime reads a value <= 0
   as "select no box", so the converted model would return no detection at all;
3. sets the ``epsilon`` of the ``InstanceNormalization`` nodes that paddle2onnx writes for
   ``group_norm`` (:func:`set_group_norm_epsilon`): Paddle 3 stores that attribute as a double
   and paddle2onnx 2.1.0 reads it as a float, so the converted epsilon is whatever was in memory
   (0, 1e-45, 1e+32, ... from run to run): the demo model converted with 0 instead of 1e-5, a
   smaller model with 1e+32 (scores off by 0.1);
4. stores in the model's metadata what :class:`~ppdet_ghm.engine.onnx_predictor.OnnxDetector`
   checks and needs (:func:`onnx_metadata`): the format version, the opset, the SHA-256 of the
   ``model.pdiparams`` it was converted from, and ``infer_cfg.yml`` itself (preprocessing, class
   names, category ids), so that the ``.onnx`` file runs on its own;
5. checks the model with ``onnx.checker`` and writes ``model.onnx`` atomically.

The NMS stays in the graph: paddle2onnx writes ``multiclass_nms3`` as ``NonMaxSuppression`` per
class (score > ``score_thr``, IoU > ``nms_iou_thr`` suppresses, boxes without +1, the best first,
ties to the lower index), then ``TopK`` of ``keep_top_k`` over the kept boxes of all classes
(ties to the lower class): the rule of Paddle's ``multiclass_nms3`` with ``nms_top_k=-1``.
``tests/engine/test_onnx.py`` compares its detections with the Paddle predictor's.

Ops of the exported program that paddle2onnx 2.1.0 refuses, and what the export writes instead:
``full_batch_size_like`` (PIR's scalar operand of ``1.0 / scale_factor``) -> ``full_like``
(:func:`ppdet_ghm.compat.onnx_convertible_scalars`, applied by every ``Trainer.export``).
Ops it converts into something else than they compute, repaired after conversion:
``multiclass_nms3`` (step 2) and ``group_norm`` (step 3).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys

import yaml

from ppdet_ghm.engine.checkpoint_io import atomic_file

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "META_FORMAT",
    "META_INFER_CFG",
    "META_OPSET",
    "META_PARAMS_SHA256",
    "NMS_ALL_BOXES",
    "ONNX_FILENAME",
    "OPSET",
    "MissingOnnxDependency",
    "convert_export",
    "default_opset",
    "file_sha256",
    "keep_all_nms_boxes",
    "onnx_metadata",
    "program_ops",
    "require",
    "set_group_norm_epsilon",
]

#: The ONNX opset we convert to and read (ONNX Runtime 1.32 runs it; NonMaxSuppression >= 11).
OPSET = 17
#: ``max_output_boxes_per_class`` written for Paddle's ``nms_top_k=-1``: more than any class has.
NMS_ALL_BOXES = 2**31 - 1
#: File name of the converted model in the export folder.
ONNX_FILENAME = "model.onnx"
#: Version of the metadata layout below.
FORMAT_VERSION = "1"
META_FORMAT = "ppdet_ghm.format"
META_OPSET = "ppdet_ghm.opset"
META_PARAMS_SHA256 = "ppdet_ghm.params_sha256"
META_INFER_CFG = "ppdet_ghm.infer_cfg"

_EXTRA_HINT = "pip install 'ppdet-ghm[onnx]' (or make setup, which installs requirements.lock)"


class MissingOnnxDependency(ImportError):
    """A package of the ``onnx`` extra is not installed (exit status 1 on the command line)."""

    exit_status = 1


def require(module: str):
    """Import ``module`` (``paddle2onnx``, ``onnx`` or ``onnxruntime``), or raise
    :class:`MissingOnnxDependency` naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingOnnxDependency(
            f"ONNX export and inference need the package {module!r}, which is not installed "
            f"({err}): {_EXTRA_HINT}"
        ) from err


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _program_file(model_dir: str) -> str:
    for name in ("model.json", "model.pdmodel"):
        if os.path.isfile(os.path.join(model_dir, name)):
            return name
    raise FileNotFoundError(
        f"no exported model in {model_dir!r}: expected model.json or model.pdmodel beside "
        "model.pdiparams (ppdet-ghm export writes them)"
    )


def _run_paddle2onnx(model_dir: str, program: str, save_file: str, opset: int) -> str:
    """paddle2onnx's command line in a child process; returns its log. ValueError with the log
    when it writes no model (an op it cannot convert aborts the child)."""
    require("paddle2onnx")
    cmd = [
        sys.executable,
        "-m",
        "paddle2onnx.command",
        "--model_dir",
        model_dir,
        "--model_filename",
        program,
        "--params_filename",
        "model.pdiparams",
        "--save_file",
        save_file,
        "--opset_version",
        str(opset),
        "--enable_onnx_checker",
        "True",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0 or not os.path.isfile(save_file) or os.path.getsize(save_file) == 0:
        tail = "\n".join(line for line in log.splitlines() if line.strip())[-3000:]
        raise ValueError(
            f"paddle2onnx could not convert {os.path.join(model_dir, program)} (exit status "
            f"{proc.returncode}); its log ends with:\n{tail}"
        )
    return log


def keep_all_nms_boxes(model) -> int:
    """Set ``max_output_boxes_per_class`` of every ``NonMaxSuppression`` whose value is <= 0 to
    :data:`NMS_ALL_BOXES`, in place; returns how many were set.

    The input must be an initializer or a ``Constant`` node (what paddle2onnx writes).

    Raises:
        ValueError: the model has no ``NonMaxSuppression``, or its limit is computed in the graph.
    """
    import numpy as np

    onnx = require("onnx")
    from onnx import numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    nms_nodes = [n for n in graph.node if n.op_type == "NonMaxSuppression"]
    if not nms_nodes:
        raise ValueError("the converted graph has no NonMaxSuppression: is this our detector?")
    changed = 0
    for node in nms_nodes:
        name = node.input[2] if len(node.input) > 2 else ""
        if name in initializers:
            tensor = initializers[name]
        elif name in constants:
            tensor = next(a.t for a in constants[name].attribute if a.name == "value")
        else:
            raise ValueError(
                f"NonMaxSuppression {node.name!r}: max_output_boxes_per_class {name!r} is not a "
                "constant"
            )
        value = numpy_helper.to_array(tensor)
        if value.size != 1:
            raise ValueError(f"NonMaxSuppression {node.name!r}: limit of shape {value.shape}")
        if int(value.reshape(-1)[0]) <= 0:
            fixed = np.full(value.shape, NMS_ALL_BOXES, dtype=np.int64)
            tensor.CopyFrom(numpy_helper.from_array(fixed, tensor.name))
            changed += 1
    onnx.checker.check_model(model)
    return changed


def program_ops(program_path: str | os.PathLike) -> list[dict]:
    """The ops of a PIR program file (``model.json``), nested blocks included, in order: dicts
    with ``"name"`` (``"group_norm"``, ...) and ``"attrs"`` (name -> value)."""
    import json

    with open(program_path) as f:
        program = json.load(f)
    ops = []

    def walk(node):
        if isinstance(node, dict):
            for op in node.get("ops", ()):
                name = str(op.get("#", ""))
                attrs = op.get("A") if isinstance(op.get("A"), list) else []
                values = {
                    a["N"]: a.get("AT", {}).get("D")
                    for a in attrs
                    if isinstance(a, dict) and "N" in a
                }
                ops.append({"name": name.split(".", 1)[-1], "attrs": values})
                walk(op.get("regions", []))
            for key, value in node.items():
                if key != "ops":
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(program.get("program", program))
    return ops


def set_group_norm_epsilon(model, program_path: str | os.PathLike) -> int:
    """Give every ``InstanceNormalization`` of ``model`` the ``epsilon`` of the program's
    ``group_norm`` ops, in place; returns how many nodes were set.

    paddle2onnx writes each ``group_norm`` as reshape + ``InstanceNormalization`` + affine, with
    an epsilon it did not read (see the module docstring). The program's group norms must share
    one epsilon and be the only source of ``InstanceNormalization`` (no ``instance_norm`` op).

    Raises:
        ValueError: the counts do not match, or the group norms have different epsilons.
    """
    from onnx import helper

    ops = program_ops(program_path)
    epsilons = {float(op["attrs"].get("epsilon", 1e-5)) for op in ops if op["name"] == "group_norm"}
    count = sum(op["name"] == "group_norm" for op in ops)
    nodes = [n for n in model.graph.node if n.op_type == "InstanceNormalization"]
    if any(op["name"] == "instance_norm" for op in ops) or len(nodes) != count:
        raise ValueError(
            f"{program_path}: {count} group_norm op(s) but {len(nodes)} InstanceNormalization "
            "node(s) in the converted graph: cannot tell which epsilon is whose"
        )
    if len(epsilons) > 1:
        raise ValueError(f"{program_path}: group_norm epsilons differ ({sorted(epsilons)})")
    for node in nodes:
        kept = [a for a in node.attribute if a.name != "epsilon"]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("epsilon", epsilons.copy().pop())])
    return len(nodes)


def onnx_metadata(model) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX model as a dict."""
    return {prop.key: prop.value for prop in model.metadata_props}


def default_opset(model) -> int | None:
    """The version of the default (``ai.onnx``) domain the model imports, or None."""
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return int(opset.version)
    return None


def convert_export(model_dir: str | os.PathLike, save_file: str | None = None) -> str:
    """Convert the export folder ``model_dir`` to ONNX (see the module docstring).

    Args:
        model_dir: written by ``ppdet-ghm export`` (``model.json``/``.pdmodel``,
            ``model.pdiparams``, ``infer_cfg.yml``).
        save_file: the ``.onnx`` path (default ``<model_dir>/model.onnx``).

    Returns:
        the path written.

    Raises:
        MissingOnnxDependency: paddle2onnx or onnx is not installed.
        FileNotFoundError: a file of the export is missing.
        ValueError: paddle2onnx failed (its log is in the message), or wrote another opset.
    """
    onnx = require("onnx")
    model_dir = os.fspath(model_dir)
    save_file = save_file or os.path.join(model_dir, ONNX_FILENAME)
    program = _program_file(model_dir)
    params = os.path.join(model_dir, "model.pdiparams")
    cfg_path = os.path.join(model_dir, "infer_cfg.yml")
    for path in (params, cfg_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: is {model_dir} an export folder?")
    with open(cfg_path) as f:
        infer_cfg_text = f.read()
    yaml.safe_load(infer_cfg_text)  # a broken infer_cfg.yml fails here, not at inference

    with atomic_file(save_file) as raw:
        _run_paddle2onnx(model_dir, program, raw, OPSET)
        model = onnx.load(raw)
        opset = default_opset(model)
        if opset != OPSET:
            raise ValueError(f"paddle2onnx wrote opset {opset}, expected {OPSET}")
        changed = keep_all_nms_boxes(model)
        if program.endswith(".json"):
            set_group_norm_epsilon(model, os.path.join(model_dir, program))
        elif any(n.op_type == "InstanceNormalization" for n in model.graph.node):
            raise ValueError(
                f"{model_dir}/{program}: a group norm's epsilon is read from the PIR program "
                "(model.json); export with Paddle >= 3"
            )
        del model.metadata_props[:]
        for key, value in (
            (META_FORMAT, FORMAT_VERSION),
            (META_OPSET, str(OPSET)),
            (META_PARAMS_SHA256, file_sha256(params)),
            (META_INFER_CFG, infer_cfg_text),
        ):
            model.metadata_props.add(key=key, value=value)
        model.producer_name = "ppdet-ghm (paddle2onnx)"
        onnx.save(model, raw)
    logger.info(
        "ONNX model %s (opset %d; %d NMS limit(s) set to every box)", save_file, OPSET, changed
    )
    return save_file
