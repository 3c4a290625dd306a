"""CPU memory that is freed and allocated again every iteration, kept instead of returned.

glibc's malloc serves each block above its mmap threshold (128 KB at start, raised to the largest
block it has seen freed, at most 32 MB) with a fresh ``mmap`` and returns it with ``munmap`` when
it is freed, and it trims its heap whenever more than twice that threshold is free at its top.
Paddle's CPU allocator hands tensors straight to malloc, so in training every large activation
and gradient is memory that the kernel must fault in and zero page by page, iteration after
iteration: one R50 RetinaNet training iteration on 2 x 512 x 512 images took 71,000-129,000 page
faults (2-core Intel Xeon; BENCHMARKS.md, "Why we lose", item 7). :func:`keep_freed_memory` makes
malloc carve every block from its heap and keep freed memory there for the next allocation
(``M_MMAP_MAX = 0``, ``M_TRIM_THRESHOLD`` 2 GB): 1,600-5,700 page faults per iteration from the
third on, 2-9 % less time per iteration. Where tensors live changes, not what is
computed. A heap that never shrinks also keeps the holes between blocks that are still in use:
training the demo config for 1000 iterations, the trainer's resident memory then grew by about
60 MB per epoch (12 % after the warm-up; 4.6 % over 2000 iterations with glibc's defaults), so
:func:`release_freed_memory` (``malloc_trim``) hands every free page back at the end of each
training epoch; the next iteration faults in what it needs once. Evaluation and inference hand
nothing back: over images of many sizes the heap holds what the largest needed plus holes (R50
over 100 random sizes: peak 1.44x that of glibc's defaults, flat after the first 50 images, and
1.37x faster; ``python -m bench.infer_memory``, docs/reliability.md).

``ppdet_ghm.engine.tasks.setup_runtime`` applies it on a CPU device (config key
``keep_freed_memory``, default true; ``-o keep_freed_memory=false`` keeps glibc's defaults).
"""

from __future__ import annotations

import ctypes
import logging
import platform

logger = logging.getLogger(__name__)

__all__ = ["keep_freed_memory", "release_freed_memory"]

# mallopt parameters of glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # the largest int: return heap memory only past 2 GB free at its top


_kept = False  # whether keep_freed_memory() is in effect in this process


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep large freed blocks in its heap for reuse (see the module doc).

    Returns True when applied, False where the C library is not glibc (nothing changes)."""
    global _kept
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _kept = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not _kept:
        logger.warning("glibc's mallopt refused the settings: freed CPU memory is returned")
    return _kept


def release_freed_memory() -> bool:
    """Return every free page of the heap to the system (``malloc_trim(0)``) when
    :func:`keep_freed_memory` is in effect; returns whether it ran."""
    if not _kept:
        return False
    trim = ctypes.CDLL(None).malloc_trim
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True
