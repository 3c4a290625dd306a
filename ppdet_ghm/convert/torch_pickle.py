"""What a torch checkpoint's pickle may name, and what each name becomes here (never torch's code).

The policy of :mod:`ppdet_ghm.convert.torch_reader`, in code: tensor globals (``torch._utils``
rebuild functions, typed storages, ``OrderedDict``, ``torch.Size``) map to recorders of their
arguments (:data:`TENSOR_GLOBALS`); globals of the non-weight parts of training checkpoints map to
inert stubs (:data:`DISCARDABLE_GLOBALS`, :class:`Opaque`); anything else refuses the file.
:class:`TorchUnpickler` is the package's restricted unpickler
(:class:`ppdet_ghm.safe_pickle.RestrictedUnpickler`) with this policy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ppdet_ghm.safe_pickle import CheckpointError, RestrictedUnpickler

#: Storage class name -> NumPy dtype of its little-endian raw bytes. ``BFloat16Storage`` is
#: read as ``uint16`` bit patterns and widened to ``float32``.
STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "BFloat16Storage": "<u2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "<i1",
    "ByteStorage": "<u1",
    "BoolStorage": "|b1",
}


class StorageType:
    """Stands for ``torch.<Name>Storage`` inside the pickle: carries the NumPy dtype only."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])

    def __repr__(self):
        return f"torch.{self.name}"


class StorageRef:
    """A storage named by a persistent id: ``numel`` elements of ``storage_type`` under ``key``.

    ``view_offset`` is in elements (legacy format storage views; 0 otherwise).
    """

    def __init__(self, storage_type: StorageType, key: str, numel: int, view_offset: int = 0):
        self.storage_type = storage_type
        self.key = key
        self.numel = numel
        self.view_offset = view_offset


class TensorRef:
    """A tensor as the pickle describes it; :meth:`materialize` turns it into an ndarray."""

    def __init__(self, storage: Any, storage_offset: Any, size: Any, stride: Any):
        self.storage = storage
        self.storage_offset = storage_offset
        self.size = size
        self.stride = stride

    def materialize(self, flat: np.ndarray, where: str) -> np.ndarray:
        """Elements of ``flat`` (the storage, 1-D, native order) at offset/size/stride, copied."""
        offset, size, stride = self.storage_offset, self.size, self.stride
        ok = (
            isinstance(offset, int)
            and isinstance(size, tuple)
            and isinstance(stride, tuple)
            and len(size) == len(stride)
            and all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride))
        )
        if not ok:
            raise CheckpointError(
                f"{where}: bad tensor geometry offset={offset!r} size={size!r} stride={stride!r}"
            )
        if any(s == 0 for s in size):
            return np.zeros(size, dtype=flat.dtype)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if offset >= flat.size or last >= flat.size:
            raise CheckpointError(
                f"{where}: tensor (offset {offset}, size {size}, stride {stride}) reaches element "
                f"{last}, beyond its storage of {flat.size} elements"
            )
        view = np.lib.stride_tricks.as_strided(
            flat[offset:],
            shape=size,
            strides=tuple(s * flat.itemsize for s in stride),
            writeable=False,
        )
        return np.array(view, copy=True, order="C")


def _rebuild_tensor(storage, storage_offset, size, stride):
    return TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, *meta):
    return TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return data


class _PickledOrderedDict(dict):
    """``collections.OrderedDict`` as unpickled here: a dict (insertion-ordered) that keeps the
    pickled instance state (``state_dict._metadata``) aside instead of setting attributes."""

    def __setstate__(self, state):
        self.pickled_state = state


def _size(*args):
    """``torch.Size(sequence)`` -> a plain tuple."""
    return tuple(*args)


#: ``(module, name)`` -> what the unpickler returns for it (tier 1 of the policy).
TENSOR_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("collections", "OrderedDict"): _PickledOrderedDict,
    ("torch", "Size"): _size,
    **{("torch", name): StorageType(name) for name in STORAGE_DTYPES},
}

#: Globals tolerated as inert stubs in the parts of a checkpoint that are discarded (tier 2):
#: exact ``module.name`` strings, or module prefixes ending in ``.``/``*``.
DISCARDABLE_GLOBALS: tuple[str, ...] = (
    "numpy.*",  # arrays, scalars, dtypes in meta (numpy.core.multiarray._reconstruct, ...)
    "mmengine.*",  # message_hub: HistoryBuffer, ConfigDict, ...
    "mmcv.*",
    "mmdet.*",
    "_codecs.encode",  # bytes of protocol-2 pickled NumPy arrays
    "copyreg._reconstructor",  # protocol 0/1 objects
    "argparse.Namespace",  # training-script args
    "collections.defaultdict",
    "builtins.set",
    "builtins.frozenset",
    "builtins.slice",
    "builtins.complex",
    "builtins.bytearray",
    "builtins.getattr",  # mmengine HistoryBuffer.statistics_methods: getattr(HistoryBuffer, 'min')
    "datetime.*",
    "pathlib.*",
    "torch.device",
    "torch.dtype",
    "torch.float32",
    "torch.float16",
    "torch.bfloat16",
    "torch.float64",
    "torch.int64",
    "torch.int32",
    "torch.uint8",
    "torch.bool",
    "torch.optim.*",
)


def _is_discardable(qualname: str) -> bool:
    for pattern in DISCARDABLE_GLOBALS:
        if pattern.endswith("*"):
            if qualname.startswith(pattern[:-1]):
                return True
        elif qualname == pattern:
            return True
    return False


class Opaque:
    """Inert stand-in for a discardable global and for anything built from it.

    Creating, calling, filling (``__setstate__``, ``append``, ``__setitem__``) only records data;
    nothing of the named global is ever imported or run.
    """

    global_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args = (args, kwargs)
        obj.items = []
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return type(self)(*args, **kwargs)

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items.append((key, value))

    def append(self, value):
        self.items.append(value)

    def extend(self, values):
        self.items.extend(values)

    def add(self, value):
        self.items.append(value)

    def __repr__(self):
        return f"<not executed: {self.global_name}>"


class TorchUnpickler(RestrictedUnpickler):
    """The package's restricted unpickler with the torch policy of the module docstring: tensor
    globals map to our recorders, discardable ones to inert stubs, anything else is refused."""

    def __init__(
        self,
        file,
        source: str,
        persistent_load: Callable[[Any], Any] | None = None,
        allow_discardable: bool = True,
    ):
        self._allow_discardable = allow_discardable
        self._stubs: dict[str, type] = {}
        super().__init__(
            file,
            resolve=self._resolve_global,
            refusal=lambda qualname: (
                f"{source}: refused to load: the pickle names the global {qualname!r}, which is "
                "not needed to store tensors (only torch storages, torch._utils._rebuild_tensor*, "
                "collections.OrderedDict and torch.Size are; see ppdet_ghm.convert.torch_reader). "
                "Nothing from the file was executed."
            ),
            persistent_load=persistent_load or self._unexpected_persistent_id,
            source=source,
        )

    @property
    def stubbed_globals(self) -> list[str]:
        """``module.name`` of every discardable global the pickle named, sorted."""
        return sorted(self._stubs)

    def _resolve_global(self, module: str, name: str):
        if (module, name) in TENSOR_GLOBALS:
            return TENSOR_GLOBALS[(module, name)]
        qualname = f"{module}.{name}"
        if not (self._allow_discardable and _is_discardable(qualname)):
            return None
        if qualname not in self._stubs:
            self._stubs[qualname] = type(
                f"Opaque[{qualname}]", (Opaque,), {"global_name": qualname}
            )
        return self._stubs[qualname]

    def _unexpected_persistent_id(self, pid):
        raise CheckpointError(f"{self.source}: unexpected persistent id {pid!r}")


def run_unpickler(unpickler: TorchUnpickler, path: str, what: str = "pickle") -> Any:
    """``unpickler.load()``; any failure other than ours becomes a :class:`CheckpointError`."""
    try:
        return unpickler.load()
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable {what} ({type(exc).__name__}: {exc})") from exc


def ascii_text(value):
    return value.decode("ascii") if isinstance(value, bytes) else value


def parse_storage_pid(pid: Any, source: str) -> tuple[StorageType, str, int, tuple | None]:
    """``('storage', storage_type, key, location, numel[, view_metadata])`` -> its parts."""
    if not isinstance(pid, tuple) or not pid or ascii_text(pid[0]) != "storage":
        kind = ascii_text(pid[0]) if isinstance(pid, tuple) and pid else pid
        raise CheckpointError(
            f"{source}: unsupported persistent id {kind!r} (only tensor storages are read; "
            "a pickled nn.Module is not a state_dict)"
        )
    if len(pid) not in (5, 6):
        raise CheckpointError(f"{source}: malformed storage id {pid!r}")
    storage_type, key, _location, numel = pid[1:5]
    view = pid[5] if len(pid) == 6 else None
    if not isinstance(storage_type, StorageType):
        raise CheckpointError(f"{source}: storage id names {storage_type!r}, not a torch storage")
    key = ascii_text(key)
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
        raise CheckpointError(f"{source}: malformed storage id {pid!r}")
    return storage_type, key, numel, view


def to_native(raw: np.ndarray, storage_type: StorageType) -> np.ndarray:
    """1-D little-endian storage -> native byte order; bfloat16 bit patterns -> float32."""
    if storage_type.name == "BFloat16Storage":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(raw.dtype.newbyteorder("="), copy=False)
