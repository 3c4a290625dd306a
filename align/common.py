"""Shared pieces of the alignment steps: arguments, log files, tensor summaries, weight identity,
results written atomically.

Log files are reprod_log's format (``np.save`` of a ``{name: ndarray}`` dict): the torch side writes
them with NumPy alone (``reprod_log`` imports paddle), the Paddle side with ``ReprodLogger``; both load
with ``ReprodDiffHelper.load_info``.
"""

import argparse
import contextlib
import hashlib
import os

import numpy as np

from align import weights
from align.weights import check_same_weights, weights_meta

ALIGN_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(ALIGN_DIR)
DEFAULT_LOGS = os.path.join(ALIGN_DIR, "logs")
DEFAULT_CONFIG = os.path.join(REPO_DIR, "configs", "retinanet_ghm_r50_fpn_1x_coco.yml")

META_INPUTS_SHA = "meta.inputs_sha256"
# Prefix of the keys of chained (end-to-end) results, compared with the same torch values as the
# isolated ones (see chained_view).
CHAINED = "chained."

# GHM momenta of the reference config, by log-key prefix. In a chained comparison an ``acc_sum``
# (an EMA of bin counts) changes only when an element's g crosses a bin edge, by (1 - momentum)
# per element: chained acc_sum rows allow ACC_SUM_FLIPS such elements.
GHM_MOMENTUM = {"ghmc": 0.75, "ghmr": 0.7}
ACC_SUM_FLIPS = 2


@contextlib.contextmanager
def replaced_atomically(path: str):
    """Yield a temporary path beside ``path`` (same extension, for writers that go by it, such as
    ``savefig``); renamed over ``path`` when the block ends cleanly, removed when it raises: a
    reader never finds a half-written result, and a failed write leaves the last one."""
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{ext}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def acc_sum_flip_limit(key: str):
    """Max abs change of a chained ``acc_sum`` row: ACC_SUM_FLIPS elements changing bins."""
    return ACC_SUM_FLIPS * (1.0 - GHM_MOMENTUM[key])


def base_parser(step_doc: str):
    """Arguments every step takes: side, log folders, weight seed, Paddle config."""
    parser = argparse.ArgumentParser(
        description=step_doc, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--side", choices=("torch", "paddle"), required=True)
    parser.add_argument(
        "--logs", default=DEFAULT_LOGS, help="folder of the torch logs (read or written)"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="folder for the Paddle log and the diff log (default: --logs)",
    )
    parser.add_argument("--seed", type=int, default=weights.DEFAULT_SEED, help="weight seed")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="our model's ppdet config")
    return parser


def log_path(folder: str, step: str, side: str):
    return os.path.join(folder, f"{step}_{side}.npy")


def save_log(path: str, data: dict):
    """Write ``data`` as reprod_log does (``np.save`` of the dict); values must be ndarrays."""
    for key, val in data.items():
        if not isinstance(val, np.ndarray):
            raise TypeError(f"log value {key!r} is {type(val).__name__}, not ndarray")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.save(path, data)


def load_log(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} is missing: regenerate the torch logs with `python -m align.run_all --torch`"
        )
    return np.load(path, allow_pickle=True).tolist()


def feature_map(name: str, x: np.ndarray):
    """Log entry of a feature map or head output ``x`` [N, C, H, W], whole, as float32.

    Whole maps, not summaries: the reference's outputs of one step are the inputs that the next
    step feeds to our piece (step 2 runs our FPN on the torch C3-C5, and so on).
    """
    return {name: np.ascontiguousarray(x, dtype=np.float32)}


def arrays_sha256(arrays):
    """sha256 (as 32 uint8) of a sequence of arrays: dtype, shape and bytes of each, in order."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return np.frombuffer(h.digest(), dtype=np.uint8).copy()


def reference_outputs(args, step: str, keys, inputs_sha_key: str | None = None, torch_log=None):
    """The reference's logged outputs ``keys`` of an earlier ``step``: the inputs of an isolated step.

    Read from ``<args.logs>/<step>_torch.npy``. When ``torch_log`` (the isolated step's own torch
    log) carries ``inputs_sha_key``, the arrays must hash to it: the reference computed the isolated
    step's numbers from exactly these inputs (same weights, same batch, deterministic torch).
    """
    path = log_path(args.logs, step, "torch")
    log = load_log(path)
    missing = [k for k in keys if k not in log]
    if missing:
        raise ValueError(f"{path} has no {missing[:3]}: regenerate the torch logs")
    arrays = [log[k] for k in keys]
    if torch_log is not None and inputs_sha_key is not None:
        if inputs_sha_key not in torch_log:
            raise ValueError(f"the torch log has no {inputs_sha_key}: regenerate the torch logs")
        if not np.array_equal(torch_log[inputs_sha_key], arrays_sha256(arrays)):
            raise ValueError(
                f"{path} does not hold the inputs the reference used ({inputs_sha_key} differs): "
                "regenerate the torch logs (python -m align.run_all --torch)"
            )
    return arrays


def chained_view(torch_log: dict, keys):
    """``{CHAINED + k: torch_log[k]}`` for ``keys``: what our chained (end-to-end) outputs are
    compared with. Chained rows run our whole network up to the piece, so their differences add
    the float32 drift of every earlier piece on this CPU's kernels to the piece's own."""
    return {CHAINED + k: torch_log[k] for k in keys}


def sha256_of_file(path: str):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def log_name(step, args):
    """The name of a step's log files: ``STEP``, or what the step's ``log_name(args)`` says."""
    return step.log_name(args) if hasattr(step, "log_name") else step.STEP


def uses_weights(step):
    """Whether ``step`` runs the model with the alignment weights (its module's ``USES_WEIGHTS``).

    Steps that check a piece without the network (data reading, metric, schedule, optimizer,
    initialisation) set ``USES_WEIGHTS = False``: their sides get ``ctx=None`` and their logs carry
    no weights checksum.
    """
    return getattr(step, "USES_WEIGHTS", True)


def run_side(step, args, ctx=None):
    """Run one side of ``step`` (a step module); the Paddle side also compares and reports.

    The torch side writes ``<logs>/<STEP>_torch.npy``. The Paddle side reads it, checks that it was
    made from the same weights, writes ``<out>/<STEP>_paddle.npy`` (with ``ReprodLogger``) and
    ``<out>/<STEP>_diff.log`` (with ``ReprodDiffHelper``), and returns the table rows.

    Args:
        step: a module with ``STEP``, ``DIFF_LOG_THRESHOLD``, ``build_parser()``,
            ``torch_side(ctx, args)``, ``paddle_side(ctx, args)``, ``judge(args, torch_log,
            paddle_log)`` and optionally ``log_name(args)`` and ``USES_WEIGHTS``.
        ctx: a shared ``TorchContext`` / ``PaddleContext`` (built here when None).
    """
    out = args.out or args.logs
    name = log_name(step, args)
    with_weights = uses_weights(step)
    if args.side == "torch":
        if ctx is None and with_weights:
            from align.torch_ref import TorchContext

            ctx = TorchContext(args.seed)
        log = step.torch_side(ctx if with_weights else None, args)
        if with_weights:
            log.update(weights_meta(args.seed, ctx.state_dict))
        save_log(log_path(args.logs, name, "torch"), log)
        return []
    torch_path = log_path(args.logs, name, "torch")
    torch_log = load_log(torch_path)
    if with_weights:
        if ctx is None:
            from align.paddle_ref import PaddleContext

            ctx = PaddleContext(args.seed, args.config)
        check_same_weights(torch_log, ctx.meta, torch_path)
        log = step.paddle_side(ctx, args)
        log.update(ctx.meta)
    else:
        log = step.paddle_side(None, args)
    from reprod_log import ReprodLogger

    from align import report

    logger = ReprodLogger()
    for key, val in log.items():
        logger.add(key, np.asarray(val))
    os.makedirs(out, exist_ok=True)
    logger.save(log_path(out, name, "paddle"))
    report.write_diff_log(
        torch_log, log, os.path.join(out, f"{name}_diff.log"), step.DIFF_LOG_THRESHOLD
    )
    return step.judge(args, torch_log, log)


def main(step, argv=None):
    """Command line of one step: run the side asked for; the Paddle side prints its table rows."""
    from align import report

    args = step.build_parser().parse_args(argv)
    rows = run_side(step, args)
    if args.side == "torch":
        print(f"wrote {log_path(args.logs, log_name(step, args), 'torch')}")
        return 0
    print(report.format_table(rows))
    return int(any(r.status == report.STATUS_FAIL for r in rows))
