"""Building our C++ custom ops (``paddle.utils.cpp_extension``) once, cached on disk.

One build per source text and text of ``cpp_ops.h`` (the helpers the sources share, on the include
path), Paddle version and whatever else the caller names in ``version``, under
``$PPDET_GHM_CACHE`` (default ``~/.cache/ppdet_ghm``) / ``<name>-<key>``; concurrent
processes wait for one build. The compiler's output is kept back and shown only when the build
fails (:class:`BuildError` carries its error lines). :func:`math_threads` tells the ops how many
threads Paddle's CPU math runs on.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import hashlib
import logging
import os
import sys
import tempfile
from pathlib import Path

import paddle

__all__ = ["BuildError", "build", "build_directory", "cache_key", "math_threads"]

logger = logging.getLogger(__name__)

# helpers shared by the ops' sources (#include "cpp_ops.h"): part of every build and its key
HEADER = Path(__file__).with_name("cpp_ops.h")


class BuildError(RuntimeError):
    """The compiler or the loader failed (the message names the source, folder and errors)."""


def build_directory(name: str, key: str) -> Path:
    """``$PPDET_GHM_CACHE`` (default ``~/.cache/ppdet_ghm``) / ``<name>-<key>``."""
    root = os.environ.get("PPDET_GHM_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "ppdet_ghm"
    )
    return Path(root) / f"{name}-{key}"


def cache_key(source: Path, version: str = "") -> str:
    """12 hex digits of the SHA-256 of ``source``, ``cpp_ops.h``, Paddle's version and
    ``version``: a change to any of them is a new build."""
    text = source.read_bytes() + HEADER.read_bytes() + f"{paddle.__version__} {version}".encode()
    return hashlib.sha256(text).hexdigest()[:12]


def build(
    name: str,
    source: Path,
    *,
    version: str = "",
    include_paths: list[str] = (),
    ldflags: list[str] = (),
    cflags: tuple[str, ...] = ("-O2",),
):
    """The module of custom ops ``ppdet_ghm_<name>`` compiled from ``source`` (built on first
    use, then loaded from the cache). ``version``: what else the binary depends on (library
    versions), part of the cache key, as are ``cflags`` (the compiler's flags) when they are
    not the default. Raises BuildError."""
    if tuple(cflags) != ("-O2",):
        version = f"{version} {' '.join(cflags)}"
    directory = build_directory(name, cache_key(source, version))
    directory.mkdir(parents=True, exist_ok=True)
    module = f"ppdet_ghm_{name}"
    from paddle.utils.cpp_extension import load

    with open(directory / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same key
        if not (directory / module).exists():
            logger.info("building %s in %s (once, ~15 s)", source.name, directory)
        # Paddle's load() runs setup.py in a child process, whose messages (and the compiler's)
        # go to file descriptors 1 and 2: kept in a file, shown only if the build fails
        chatter = tempfile.TemporaryFile(mode="w+")
        try:
            with _output_to(chatter):
                return load(
                    name=module,
                    sources=[str(source)],
                    extra_include_paths=[str(HEADER.parent), *include_paths],
                    extra_cxx_cflags=list(cflags),
                    extra_ldflags=list(ldflags),
                    build_directory=str(directory),
                    verbose=False,
                )
        except Exception as err:
            chatter.seek(0)
            lines = chatter.read().splitlines()
            errors = [line for line in lines if "error" in line.lower()][:12] or lines[-12:]
            raise BuildError(
                f"building {source.name} in {directory} failed: {err}\n" + "\n".join(errors)
            ) from err
        finally:
            chatter.close()


@contextlib.contextmanager
def _output_to(file):
    """Send file descriptors 1 and 2 (this process's and its children's stdout and stderr) to
    ``file`` while the block runs."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(file.fileno(), 1)
        os.dup2(file.fileno(), 2)
        with contextlib.redirect_stdout(file), contextlib.redirect_stderr(file):
            yield
    finally:
        file.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def math_threads() -> int:
    """Threads of Paddle's CPU math (``paddle.base.core.set_num_threads`` sets them in its
    OpenMP runtime); 1 where no OpenMP runtime is loaded."""
    query = _omp_max_threads()
    return max(1, int(query())) if query else 1


@functools.cache
def _omp_max_threads():
    """``omp_get_max_threads`` of the OpenMP runtime Paddle loaded (looked up once; its value
    changes with ``set_num_threads``), or None."""
    for name in ("libiomp5.so", "libgomp.so.1"):
        try:
            return ctypes.CDLL(name, mode=os.RTLD_NOLOAD).omp_get_max_threads
        except (OSError, AttributeError):
            continue
    return None
