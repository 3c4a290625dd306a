"""Compatibility of paddledet 2.6.0 (2023) with the current Paddle / numpy / Pillow stack.

Every fix is applied by :func:`apply` (``import ppdet_ghm`` calls it), is idempotent, and patches
attributes of already-imported modules only: nothing in site-packages is edited. Each fix names the
breakage it repairs; ``tests/test_compat.py`` has a test per fix that fails without it.

=============================  =================================================================
breakage                       fix
=============================  =================================================================
numpy >= 2.4: ``int()`` of a   ``int`` in ``ppdet.engine.trainer`` / ``ppdet.utils.visualizer``
1-element array raises         accepts 1-element arrays (module globals shadow the builtin)
(``Trainer.predict``)
Pillow >= 10 removed           ``ImageDraw.textsize`` re-added on top of ``textbbox``
``ImageDraw.textsize``
Paddle >= 2.6 ``to_static``    ``Trainer`` export traces with ``full_graph=True``
defaults to
``full_graph=False``
Paddle 3 (PIR) rejects the     ``ppdet.modeling.ops.multiclass_nms`` calls
legacy static branch of        ``paddle._C_ops.multiclass_nms3`` in both modes
``multiclass_nms``
Paddle 3.3.1 oneDNN predictor  our FPN exports its upsampling without ``nearest_interp``
cannot run ``nearest_interp``  (``modeling.layers.upsample_nearest``); :func:`inference_config`
                               disables oneDNN for older exports that contain the op
paddle2onnx 2.1.0 has no       ``Trainer.export`` traces ``scalar - x``, ``scalar / x``, ... with
converter for                  the scalar as ``full_like(x)`` (:func:`onnx_convertible_scalars`):
``full_batch_size_like``,      same numbers, an op that converts
what PIR writes for a scalar
on the left of an operator
=============================  =================================================================
"""

import builtins
import contextlib
import functools
import io
import warnings

import numpy as np

_APPLIED_FLAG = "_ppdet_ghm_compat"


def import_ppdet_quietly():
    """Import ppdet with its optional-dependency chatter (lap, numba, motmetrics) swallowed.

    ppdet's loggers create their console handlers at import time with the ``sys.stdout`` of that
    moment; the handlers that captured our buffer are pointed back at the real ``sys.stdout``.
    """
    import logging
    import sys

    buffer = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buffer):
        warnings.simplefilter("ignore")
        import ppdet  # noqa: F401
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, logging.StreamHandler) and handler.stream is buffer:
                handler.setStream(sys.stdout)


def int_accepting_size1_arrays(x=0, *args):
    """``int`` as numpy < 2.4 had it: a 1-element array converts to its only element."""
    if not args and isinstance(x, np.ndarray) and x.size == 1:
        return builtins.int(x.reshape(()))
    return builtins.int(x, *args)


def _fix_numpy_int_of_arrays():
    from ppdet.engine import trainer
    from ppdet.utils import visualizer

    for module in (trainer, visualizer):
        module.int = int_accepting_size1_arrays


def _textsize(self, text, font=None, spacing=4, direction=None, features=None, language=None):
    """Pillow < 10 ``ImageDraw.textsize``: (width, height) of ``text``, from ``textbbox``."""
    left, top, right, bottom = self.textbbox(
        (0, 0),
        text,
        font=font,
        spacing=spacing,
        direction=direction,
        features=features,
        language=language,
    )
    return right - left, bottom - top


def _fix_pillow_textsize():
    from PIL import ImageDraw

    if not hasattr(ImageDraw.ImageDraw, "textsize"):
        ImageDraw.ImageDraw.textsize = _textsize


@contextlib.contextmanager
def full_graph_to_static():
    """Within the block, ``paddle.jit.to_static`` defaults to ``full_graph=True`` (AST tracing)."""
    import paddle

    original = paddle.jit.to_static
    paddle.jit.to_static = functools.partial(original, full_graph=True)
    try:
        yield
    finally:
        paddle.jit.to_static = original


def _fix_export_full_graph():
    from ppdet.engine.trainer import Trainer

    method = Trainer._get_infer_cfg_and_input_spec
    if getattr(method, _APPLIED_FLAG, False):
        return

    @functools.wraps(method)
    def traced_with_full_graph(self, *args, **kwargs):
        with full_graph_to_static():
            return method(self, *args, **kwargs)

    setattr(traced_with_full_graph, _APPLIED_FLAG, True)
    Trainer._get_infer_cfg_and_input_spec = traced_with_full_graph


def _scalar_like(ref_var, value, dtype):
    """The scalar operand of ``value - ref_var`` (``/``, ``**``, ...) as a tensor of ``ref_var``'s
    shape, through ``full_like`` (PIR writes ``full_batch_size_like``, whose shape broadcasts the
    same way)."""
    import paddle

    out = paddle.full_like(ref_var, float(value), dtype=dtype)
    out.stop_gradient = True
    return out


@contextlib.contextmanager
def onnx_convertible_scalars():
    """Within the block, a traced ``scalar <op> tensor`` with a dynamic dimension (e.g.
    ``1.0 / scale_factor`` [N, 2]) gets its scalar from ``full_like`` instead of
    ``full_batch_size_like``, which paddle2onnx 2.1.0 cannot convert ("Due to the unsupported
    operators, the conversion is aborted"). The elementwise result is the same: both hold the
    scalar in every element the operator reads."""
    from paddle.pir import math_op_patch

    original = math_op_patch.create_tensor_with_batchsize
    math_op_patch.create_tensor_with_batchsize = _scalar_like
    try:
        yield
    finally:
        math_op_patch.create_tensor_with_batchsize = original


def _fix_export_onnx_convertible():
    from ppdet.engine.trainer import Trainer

    method = Trainer.export
    if getattr(method, _APPLIED_FLAG, False):
        return

    @functools.wraps(method)
    def export_with_convertible_scalars(self, *args, **kwargs):
        with onnx_convertible_scalars():
            return method(self, *args, **kwargs)

    setattr(export_with_convertible_scalars, _APPLIED_FLAG, True)
    Trainer.export = export_with_convertible_scalars


def multiclass_nms(
    bboxes,
    scores,
    score_threshold,
    nms_top_k,
    keep_top_k,
    nms_threshold=0.3,
    normalized=True,
    nms_eta=1.0,
    background_label=-1,
    return_index=False,
    return_rois_num=True,
    rois_num=None,
    name=None,
):
    """``ppdet.modeling.ops.multiclass_nms`` through ``multiclass_nms3`` in dygraph and PIR alike.

    Same signature and return value ``(out, nms_rois_num, index)`` as ppdet's; ``index`` is None
    unless ``return_index``.
    """
    import paddle

    out, index, nms_rois_num = paddle._C_ops.multiclass_nms3(
        bboxes,
        scores,
        rois_num,
        score_threshold,
        nms_top_k,
        keep_top_k,
        nms_threshold,
        normalized,
        nms_eta,
        background_label,
    )
    return out, nms_rois_num, (index if return_index else None)


def _fix_multiclass_nms():
    from ppdet.modeling import ops

    ops.multiclass_nms = multiclass_nms


def inference_config(model_dir, model_name="model", use_onednn=True):
    """A CPU ``paddle.inference.Config`` for ``model_dir/model_name.{json|pdmodel, pdiparams}``.

    oneDNN is on unless ``use_onednn=False`` or the program contains a ``nearest_interp`` op:
    Paddle 3.3.1's oneDNN predictor fails on that op at the first run
    (``ConvertPirAttribute2RuntimeAttribute not support``). Models exported by this package
    since ``modeling.layers.upsample_nearest`` do not contain it.
    """
    import logging
    import os

    from paddle import inference

    prefix = os.path.join(model_dir, model_name)
    for suffix in (".json", ".pdmodel"):
        if os.path.exists(prefix + suffix):
            program = prefix + suffix
            break
    else:
        raise FileNotFoundError(
            f"no exported model in {model_dir!r}: expected {model_name}.json or "
            f"{model_name}.pdmodel beside {model_name}.pdiparams"
        )
    config = inference.Config(program, prefix + ".pdiparams")
    config.disable_gpu()
    if use_onednn and _has_nearest_interp(program):
        logging.getLogger(__name__).warning(
            "%s contains nearest_interp, which Paddle 3.3.1's oneDNN predictor cannot run: "
            "oneDNN off (re-export with this version of ppdet_ghm to run with oneDNN)",
            program,
        )
        use_onednn = False
    if use_onednn:
        config.enable_mkldnn()
    else:
        config.disable_mkldnn()
    return config


def _has_nearest_interp(program_path) -> bool:
    """Whether the exported program (PIR JSON or protobuf ``.pdmodel``) has a nearest_interp op."""
    with open(program_path, "rb") as f:
        return b"nearest_interp" in f.read()


def apply():
    """Apply every compatibility fix (idempotent)."""
    _fix_numpy_int_of_arrays()
    _fix_pillow_textsize()
    _fix_export_full_graph()
    _fix_export_onnx_convertible()
    _fix_multiclass_nms()
