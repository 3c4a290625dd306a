"""Unpickling with an allow-list: the one restricted unpickler of the package.

A pickle calls every global it names while it is loaded, so reading weights from an untrusted
source with ``pickle`` (``paddle.load``, ``torch.load(weights_only=False)``) runs whatever the file
asks for. :class:`RestrictedUnpickler` resolves each global through a function given by the
caller and refuses the whole file, with :class:`UnsafeCheckpointError` naming the global, for any
name that function does not know. Its two users differ only in what they allow:

- ``ppdet_ghm.engine.safe_load``: Paddle ``.pdparams`` / ``.pdopt`` (NumPy arrays, tuples,
  ``OrderedDict``);
- ``ppdet_ghm.convert.torch_reader``: torch ``.pth`` (tensor rebuild functions and storages,
  mapped to recorders of ours; inert stubs for the non-weight parts of training checkpoints).
"""

from __future__ import annotations

import _compat_pickle
import pickle
from collections.abc import Callable
from typing import Any

__all__ = ["CheckpointError", "RestrictedUnpickler", "UnsafeCheckpointError"]


class CheckpointError(ValueError):
    """A weights file that is not what its reader understands, or whose content is inconsistent."""


class UnsafeCheckpointError(CheckpointError):
    """The file names a global outside the allowed set (or holds what may not be loaded, such as
    object arrays); nothing of it was executed."""


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals come from ``resolve`` only.

    Args:
        file: a binary file object positioned at the pickle.
        resolve: ``(module, name) -> object`` for an allowed global, or None to refuse it. Python 2
            spellings (``__builtin__``, ``copy_reg``, ...) are mapped first, as
            ``pickle.Unpickler`` does with ``fix_imports``.
        refusal: ``"module.name" -> message`` of the :class:`UnsafeCheckpointError` raised for
            a refused global.
        persistent_load: called with each persistent id (torch's storages); None refuses them
            with :class:`UnsafeCheckpointError`.
        source: the file's name, for messages.
        encoding: how Python 2 ``str`` objects are decoded (``latin1`` for NumPy arrays).
    """

    def __init__(
        self,
        file,
        *,
        resolve: Callable[[str, str], Any],
        refusal: Callable[[str], str],
        persistent_load: Callable[[Any], Any] | None = None,
        source: str = "<pickle>",
        encoding: str = "ASCII",
    ):
        super().__init__(file, encoding=encoding)
        self._resolve = resolve
        self._refusal = refusal
        self._persistent_load = persistent_load
        self.source = source

    def find_class(self, module, name):
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        found = self._resolve(module, name)
        if found is None:
            raise UnsafeCheckpointError(self._refusal(f"{module}.{name}"))
        return found

    def persistent_load(self, pid):
        if self._persistent_load is None:
            raise UnsafeCheckpointError(f"{self.source}: refused: persistent id {pid!r:.80}")
        return self._persistent_load(pid)
