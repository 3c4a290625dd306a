"""Read ``.pdparams`` / ``.pdopt`` files from untrusted sources without running their pickle.

``paddle.load`` reads these files with ``pickle.load`` (Paddle 3.3.1, ``paddle/framework/io.py``):
unpickling calls every global the file names, so a crafted file runs any code when it is loaded
(see ``docs/security.md``). :func:`safe_load` reads the same files with an unpickler whose
``find_class`` knows only what ``paddle.save`` writes for a state dict:

- ``numpy._core.multiarray._reconstruct`` / ``numpy.core.multiarray._reconstruct``,
  ``numpy.ndarray``, ``numpy.dtype``, ``numpy._core.multiarray.scalar`` (and the ``numpy.core``
  spellings of NumPy 1.x files): arrays and NumPy scalars;
- ``builtins.tuple`` (``paddle.save`` stores a tensor as ``(name, ndarray)``) and
  ``collections.OrderedDict``.

Any other global (``os.system``, ``builtins.eval`` ...) stops the load at once with
:class:`~ppdet_ghm.safe_pickle.UnsafeCheckpointError` naming it (the one restricted unpickler of
the package, :mod:`ppdet_ghm.safe_pickle`, also reads torch files); nothing of it is called. Object arrays are refused too.
Files in the safetensors format (``paddle.save(..., safetensors=True)``, ``safetensors.numpy``)
are read with safetensors, which has no code path at all.

The result is what ``paddle.load(path, return_numpy=True)`` gives for a state dict: ``{key:
ndarray}`` (nested dicts such as ``LR_Scheduler`` kept), with Paddle's split big parameters
joined and its name table dropped.

    ppdet-ghm check-weights UNTRUSTED.pdparams CLEAN.pdparams   # re-save a clean copy
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import struct
import sys

import numpy as np

from ppdet_ghm.safe_pickle import CheckpointError, RestrictedUnpickler, UnsafeCheckpointError

logger = logging.getLogger(__name__)

__all__ = [
    "UnsafeCheckpointError",
    "add_arguments",
    "ensure_safe",
    "main",
    "run",
    "safe_load",
    "sanitize",
]


def _numpy_global(name: str):
    from numpy._core import multiarray

    return getattr(multiarray, name)


_ALLOWED = {
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_global("_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_global("_reconstruct"),
    ("numpy._core.multiarray", "scalar"): lambda: _numpy_global("scalar"),
    ("numpy.core.multiarray", "scalar"): lambda: _numpy_global("scalar"),
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("builtins", "tuple"): lambda: tuple,
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
}


def _allowed_global(module: str, name: str):
    make = _ALLOWED.get((module, name))
    return None if make is None else make()


def _unpickler(file, path: str) -> RestrictedUnpickler:
    return RestrictedUnpickler(
        file,
        resolve=_allowed_global,
        refusal=lambda qualname: (
            f"{path}: refused: the file calls {qualname}, which a Paddle state dict never needs "
            "(nothing was executed). Load only files you trust with paddle.load."
        ),
        source=path,
        encoding="latin1",
    )


def _is_safetensors(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 2 <= header_len <= os.path.getsize(path) - 8 and head[8:9] == b"{"


def _unpack(value, path: str, key: str):
    """Paddle's stored values -> ndarrays (a tensor is stored as ``(name, ndarray)``)."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], np.ndarray):
        value = value[1]
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise UnsafeCheckpointError(f"{path}: refused: {key} is an object array")
        return value
    if isinstance(value, dict):
        return {k: _unpack(v, path, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_unpack(v, path, key) for v in value)
    return value


def safe_load(path: str | os.PathLike) -> dict:
    """A ``.pdparams`` / ``.pdopt`` state dict as NumPy arrays, without executing the file.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file needs a global outside the allowed set (module docstring).
        ValueError: not a pickled or safetensors state dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if _is_safetensors(path):
        from safetensors.numpy import load_file

        return dict(load_file(path))
    with open(path, "rb") as f:
        try:
            obj = _unpickler(f, path).load()
        except UnsafeCheckpointError:
            raise
        except Exception as err:  # any malformed pickle
            raise CheckpointError(
                f"{path}: not a Paddle state dict: {type(err).__name__}: {err}"
            ) from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a state dict (a {type(obj).__name__})")
    obj = dict(obj)
    big = obj.pop("UnpackBigParamInfor@@", None)  # Paddle splits tensors over 2**22 elements
    if isinstance(big, dict):
        for key, info in big.items():
            parts = [obj.pop(part) for part in info["slices"]]
            obj[key] = np.concatenate([_unpack(p, path, key) for p in parts]).reshape(
                info["OriginShape"]
            )
    obj.pop("StructuredToParameterName@@", None)
    return {k: _unpack(v, path, str(k)) for k, v in obj.items()}


def ensure_safe(weights: str | os.PathLike) -> list[str]:
    """Read every file of the checkpoint ``weights`` (a path without suffix, or its
    ``.pdparams``) that exists, ``.pdparams`` / ``.pdopt`` / ``.pdema``, with :func:`safe_load`,
    before code that uses ``paddle.load`` (ppdet's resume and pretrain loaders) touches them.

    Returns the files checked. Raises :class:`UnsafeCheckpointError` (nothing was executed).
    """
    prefix = os.fspath(weights)
    for suffix in (".pdparams", ".pdopt", ".pdema"):
        if prefix.endswith(suffix):
            prefix = prefix[: -len(suffix)]
    checked = []
    for suffix in (".pdparams", ".pdopt", ".pdema"):
        if os.path.isfile(prefix + suffix):
            safe_load(prefix + suffix)
            checked.append(prefix + suffix)
    return checked


def sanitize(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """Read ``src`` with :func:`safe_load` and write a copy holding arrays only (``paddle.save``
    format) to ``dst``; returns the state."""
    from ppdet_ghm.engine.checkpoint_io import atomic_paddle_save

    state = safe_load(src)
    atomic_paddle_save(state, dst)
    return state


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``ppdet-ghm check-weights`` / ``python -m ppdet_ghm.engine.safe_load`` arguments."""
    parser.add_argument("src", help="file to check")
    parser.add_argument("dst", nargs="?", help="where to write a clean copy (optional)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Check ``args.src`` (and write a clean copy to ``args.dst``); 0, or 1 with the reason."""
    try:
        state = sanitize(args.src, args.dst) if args.dst else safe_load(args.src)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    arrays = sum(isinstance(v, np.ndarray) for v in state.values())
    print(
        f"{args.src}: {len(state)} entries, {arrays} arrays, no code"
        + (f"; clean copy written to {args.dst}" if args.dst else "")
    )
    return 0


DESCRIPTION = "Check a .pdparams/.pdopt without executing it; optionally write a clean copy."


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ppdet_ghm.engine.safe_load", description=DESCRIPTION
    )
    return run(add_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
