"""No process of ours outlives the process that started it, even when that one dies by SIGKILL.

Paddle's DataLoader workers watch their parent only between batches, and a worker whose parent
is gone can block forever at exit (its multiprocessing queue's feeder thread writes into a pipe
that nobody reads any more; it also holds SIGTERM blocked, see ``engine.interrupt``). After a
``kill -9`` of ``ppdet-ghm train`` such a worker stayed alive, re-parented to PID 1, holding its
memory. Linux has a signal for this: ``prctl(PR_SET_PDEATHSIG, sig)`` makes the kernel send
``sig`` to the process when its parent dies.

- :func:`dataloader_workers_die_with_parent`: every Paddle DataLoader worker started afterwards
  gets SIGKILL when its parent dies (a worker holds nothing that needs saving).
- :func:`die_with_parent`: the calling process gets ``sig`` when its parent dies. The ranks
  started by ``paddle.distributed.launch`` use SIGTERM: a killed launcher makes every rank write its
  interrupt checkpoint and stop, as a SIGTERM of the launcher does.

Elsewhere than Linux both are no-ops.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import multiprocessing
import os
import signal
import sys

logger = logging.getLogger(__name__)

__all__ = ["dataloader_workers_die_with_parent", "die_with_parent"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PATCHED_FLAG = "_ppdet_ghm_dies_with_parent"


def die_with_parent(sig: int = signal.SIGKILL, parent_pid: int | None = None) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux).

    ``parent_pid``: the parent expected (default: the current one). If it is already gone (this
    process was re-parented before the request took effect), ``sig`` is sent at once.
    Returns whether the request was made.
    """
    if not sys.platform.startswith("linux"):
        return False
    parent_pid = os.getppid() if parent_pid is None else parent_pid
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as err:
        logger.warning("cannot ask to be stopped with the parent process: %s", err)
        return False
    if os.getppid() != parent_pid:  # the parent died before the request
        os.kill(os.getpid(), sig)
    return True


def _worker_loop_dying_with_parent(worker_loop, *args, **kwargs):
    parent = multiprocessing.parent_process()  # the DataLoader's process, even if already gone
    die_with_parent(signal.SIGKILL, parent.pid if parent is not None else None)
    return worker_loop(*args, **kwargs)


def dataloader_workers_die_with_parent():
    """Make every Paddle DataLoader worker started from now on die with its parent (idempotent).

    Wraps the worker entry point that ``paddle.io`` hands to ``multiprocessing.Process``.
    """
    from paddle.io.dataloader import dataloader_iter

    loop = dataloader_iter._worker_loop
    if getattr(loop, _PATCHED_FLAG, False):
        return
    wrapped = functools.partial(_worker_loop_dying_with_parent, loop)
    setattr(wrapped, _PATCHED_FLAG, True)
    dataloader_iter._worker_loop = wrapped
