"""Shared pieces of the alignment steps: arguments, log files, tensor summaries, weight identity.

Log files are reprod_log's format (``np.save`` of a ``{name: ndarray}`` dict): the torch side writes
them with NumPy alone (``reprod_log`` imports paddle), the Paddle side with ``ReprodLogger``; both load
with ``ReprodDiffHelper.load_info``.
"""

import argparse
import hashlib
import os

import numpy as np

from align import weights

ALIGN_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(ALIGN_DIR)
DEFAULT_LOGS = os.path.join(ALIGN_DIR, "logs")
DEFAULT_CONFIG = os.path.join(REPO_DIR, "configs", "retinanet_ghm_r50_fpn_1x_coco.yml")

# Logged feature maps are cut to at most this many elements (every s-th channel) so that the
# committed torch logs stay small; every channel is still covered by its spatial mean.
MAX_LOGGED_ELEMENTS = 40_000

META_SHA = "meta.weights_sha256"
META_SEED = "meta.weights_seed"


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


def weights_meta(seed: int, state_dict: dict):
    """Log entries naming the weights: the seed and the sha256 of the arrays (as 32 uint8)."""
    digest = bytes.fromhex(weights.checksum(state_dict))
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


def summarise_map(name: str, x: np.ndarray, max_elements: int = MAX_LOGGED_ELEMENTS):
    """Log entries for a feature map ``x`` [N, C, H, W]: every s-th channel, and all channel means.

    Returns ``{name: x[:, ::s], name + ".chmean": x.mean((2, 3))}`` with the smallest ``s`` that
    keeps ``x[:, ::s]`` within ``max_elements``; the means are taken in float64.
    """
    n, c, h, w = x.shape
    stride = max(1, -(-n * c * h * w // max_elements))
    return {
        name: np.ascontiguousarray(x[:, ::stride], dtype=np.float32),
        name + ".chmean": x.astype(np.float64).mean(axis=(2, 3)).astype(np.float32),
    }


def sha256_of_file(path: str):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def log_name(step, args):
    """The name of a step's log files: ``STEP``, or what the step's ``log_name(args)`` says."""
    return step.log_name(args) if hasattr(step, "log_name") else step.STEP


def run_side(step, args, ctx=None):
    """Run one side of ``step`` (a step module); the Paddle side also compares and reports.

    The torch side writes ``<logs>/<STEP>_torch.npy``. The Paddle side reads it, checks that it was
    made from the same weights, writes ``<out>/<STEP>_paddle.npy`` (with ``ReprodLogger``) and
    ``<out>/<STEP>_diff.log`` (with ``ReprodDiffHelper``), and returns the table rows.

    Args:
        step: a module with ``STEP``, ``DIFF_LOG_THRESHOLD``, ``build_parser()``,
            ``torch_side(ctx, args)``, ``paddle_side(ctx, args)``, ``judge(args, torch_log,
            paddle_log)`` and optionally ``log_name(args)``.
        ctx: a shared ``TorchContext`` / ``PaddleContext`` (built here when None).
    """
    out = args.out or args.logs
    name = log_name(step, args)
    if args.side == "torch":
        if ctx is None:
            from align.torch_ref import TorchContext

            ctx = TorchContext(args.seed)
        log = step.torch_side(ctx, args)
        log.update(weights_meta(args.seed, ctx.state_dict))
        save_log(log_path(args.logs, name, "torch"), log)
        return []
    torch_path = log_path(args.logs, name, "torch")
    torch_log = load_log(torch_path)
    if ctx is None:
        from align.paddle_ref import PaddleContext

        ctx = PaddleContext(args.seed, args.config)
    check_same_weights(torch_log, ctx.meta, torch_path)
    log = step.paddle_side(ctx, args)
    log.update(ctx.meta)
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
    return int(any(r.status != report.STATUS_PASS for r in rows))
