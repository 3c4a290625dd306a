"""Checkpoint files written atomically, and the latest complete checkpoint of a folder.

A training checkpoint ``<dir>/<name>`` is three files: ``<name>.pdparams`` (model state),
``<name>.pdopt`` (optimizer state with ppdet's ``last_epoch``, the LR scheduler inside) and
``<name>.meta.json`` (``{"epoch": epochs done, "iteration": iterations done, "data_seed"}``, plus
``"step"``, batches done inside the current epoch, for an interrupt checkpoint).

- **Atomic.** Every file is written to a temporary file in the same folder, flushed to disk
  (``fsync``) and renamed over its final name (``os.replace``, atomic on POSIX): a crash or a kill
  mid-write leaves the previous file or none, never a truncated one.
- **Complete.** ``.meta.json`` is removed before the other two are replaced, and written last:
  a checkpoint counts as complete when its meta parses and both files exist.
  :func:`find_latest_checkpoint` returns the complete one with the most iterations done
  (``-r auto`` on the command line).
- **No half checkpoint.** A write error (a full disk, ...) while saving removes the files the
  checkpoint already had and raises :class:`CheckpointWriteError`, which names the file, the error
  and the last complete checkpoint left in the folder (exit status 1 on the command line).
- ppdet's own ``save_model`` (its ``Checkpointer``: epoch snapshots, ``best_model``) is made atomic
  within :func:`atomic_ppdet_saves`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path

import paddle

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "CheckpointWriteError",
    "atomic_file",
    "atomic_paddle_save",
    "atomic_ppdet_saves",
    "find_latest_checkpoint",
    "is_complete",
    "read_meta",
    "save_checkpoint",
    "write_meta",
]

#: The files of a training checkpoint besides ``.meta.json``.
CHECKPOINT_SUFFIXES = (".pdparams", ".pdopt")
META_SUFFIX = ".meta.json"
_DATA_SUFFIXES = (".pdparams", ".pdema", ".pdopt")


class CheckpointWriteError(OSError):
    """Checkpoint ``prefix`` could not be written (file ``path``: ``error``); its files were
    removed. ``last_complete``: the newest complete checkpoint of the folder, or None."""

    exit_status = 1  # the command line prints the message and exits with it

    def __init__(self, prefix: str, path: str, error: OSError, last_complete: str | None):
        self.prefix, self.path, self.error, self.last_complete = prefix, path, error, last_complete
        code = f"[Errno {error.errno}] " if error.errno else ""
        super().__init__(
            f"cannot write checkpoint {prefix}: {path}: {code}{error.strerror or error}; its "
            f"files were removed; last complete checkpoint: {last_complete or 'none'}"
        )


def _remove_checkpoint(prefix: str):
    """Remove every file of checkpoint ``prefix`` (meta first: it is never left describing
    files that are gone)."""
    for suffix in (META_SUFFIX, *_DATA_SUFFIXES):
        with contextlib.suppress(FileNotFoundError):
            os.remove(prefix + suffix)


@contextlib.contextmanager
def _writing_checkpoint_file(prefix: str, path: str):
    """On a write error inside the block: remove checkpoint ``prefix``, raise
    :class:`CheckpointWriteError` naming ``path``."""
    try:
        yield
    except CheckpointWriteError:
        raise
    except OSError as err:
        _remove_checkpoint(prefix)
        latest = find_latest_checkpoint(os.path.dirname(prefix) or ".")
        raise CheckpointWriteError(prefix, path, err, latest) from err


def _fsync_dir(directory: str):
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """Yield a temporary path in ``path``'s folder; on a clean exit it is synced to disk and
    renamed to ``path`` (atomic), on an exception it is removed and ``path`` is untouched."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # the mode open() would give, not mkstemp's 0600
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def atomic_paddle_save(obj, path: str | os.PathLike):
    """``paddle.save(obj, path)``, atomically (see :func:`atomic_file`)."""
    with atomic_file(path) as tmp:
        paddle.save(obj, tmp)


def _write_json(data: dict, path: str):
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=1)


def write_meta(prefix: str, meta: dict):
    """Write ``<prefix>.meta.json`` (atomically), after the checkpoint's other files."""
    missing = [s for s in CHECKPOINT_SUFFIXES if not os.path.isfile(prefix + s)]
    if missing:
        raise FileNotFoundError(f"{prefix}: no {missing} to describe: write them first")
    with _writing_checkpoint_file(prefix, prefix + META_SUFFIX):
        _write_json(meta, prefix + META_SUFFIX)


def read_meta(prefix: str) -> dict | None:
    """The parsed ``<prefix>.meta.json``, or None when missing or unreadable."""
    try:
        with open(prefix + META_SUFFIX) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def is_complete(prefix: str) -> bool:
    """Whether ``<prefix>`` is a complete checkpoint (module docstring)."""
    if read_meta(prefix) is None:
        return False
    return all(os.path.isfile(prefix + suffix) for suffix in CHECKPOINT_SUFFIXES)


def find_latest_checkpoint(directory: str | os.PathLike) -> str | None:
    """The complete checkpoint of ``directory`` with the most iterations done (path without
    suffix), or None if there is none. Ties go to the newer meta file."""
    candidates = []
    for meta_path in Path(directory).glob("*" + META_SUFFIX):
        prefix = str(meta_path)[: -len(META_SUFFIX)]
        if not is_complete(prefix):
            logger.info("%s: incomplete checkpoint, ignored", prefix)
            continue
        iteration = read_meta(prefix).get("iteration", -1)
        candidates.append((int(iteration), meta_path.stat().st_mtime_ns, prefix))
    return max(candidates)[2] if candidates else None


def save_checkpoint(
    model_state: dict,
    optimizer,
    save_dir: str,
    save_name: str,
    last_epoch: int,
    ema_model: dict | None = None,
):
    """ppdet's ``save_model`` (same arguments, same files), atomic, on rank 0 only.

    Removes ``<save_name>.meta.json`` first, so a crash before the caller writes the new meta
    never pairs the old meta with new files. A write error removes the checkpoint's files and
    raises :class:`CheckpointWriteError`.
    """
    if paddle.distributed.get_rank() != 0:
        return
    prefix = os.path.join(save_dir, save_name)
    os.makedirs(save_dir, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.remove(prefix + META_SUFFIX)
    if ema_model is None:
        files = [(".pdparams", model_state)]
    else:  # ppdet keeps the EMA weights in .pdparams and the raw ones in .pdema
        files = [(".pdparams", ema_model), (".pdema", model_state)]
    state = optimizer.state_dict()
    state["last_epoch"] = last_epoch
    files.append((".pdopt", state))
    for suffix, obj in files:
        with _writing_checkpoint_file(prefix, prefix + suffix):
            atomic_paddle_save(obj, prefix + suffix)
    logger.info("saved checkpoint %s", prefix)


@contextlib.contextmanager
def atomic_ppdet_saves():
    """Within the block, ppdet's ``Checkpointer`` saves through :func:`save_checkpoint`."""
    from ppdet.engine import callbacks

    original = callbacks.save_model
    callbacks.save_model = save_checkpoint
    try:
        yield
    finally:
        callbacks.save_model = original
