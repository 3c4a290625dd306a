"""Read a PyTorch ``.pth`` state_dict into NumPy arrays without torch and without running the pickle.

A torch checkpoint is a pickle whose tensors point at raw storages kept beside it. Unpickling calls
whatever globals the pickle names, so loading an untrusted ``.pth`` with ``pickle`` (or with
``torch.load(weights_only=False)``) runs arbitrary code. This reader never calls a global it does
not know: :class:`_TorchUnpickler` (the package's one restricted unpickler,
:class:`ppdet_ghm.safe_pickle.RestrictedUnpickler`, with the torch policy) resolves every name the
pickle asks for to one of three things.

Policy for globals (``module.name`` as the pickle spells it):

1. **Tensor globals** (:data:`TENSOR_GLOBALS`): ``torch._utils._rebuild_tensor_v2`` /
   ``_rebuild_tensor`` / ``_rebuild_parameter`` / ``_rebuild_parameter_with_state``, the typed
   storage classes (``torch.FloatStorage``, ``HalfStorage``, ``BFloat16Storage``, ...),
   ``collections.OrderedDict`` and ``torch.Size``. Each maps to a small function of ours that only
   records its arguments (a storage reference, offset, size, stride); torch's own code is never
   called, and torch need not be installed.
2. **Discardable globals** (:data:`DISCARDABLE_GLOBALS`): names that legitimately appear in the
   *non-weight* parts of training checkpoints (NumPy arrays and scalars in ``meta``, mmengine's
   ``HistoryBuffer`` in ``message_hub``, ``argparse.Namespace``, ``torch.device`` ...). Each resolves
   to an inert stub class that records its arguments and state and does nothing else. A stub inside
   the returned state_dict is an error; stubs elsewhere (meta, message hub, optimizer state) are
   dropped with the rest of those parts, and their names are logged.
3. **Anything else** (``posix.system``, ``builtins.eval``, ``subprocess.Popen``, an unknown class ...)
   refuses the whole file at once with :class:`UnsafeCheckpointError` naming the global and the file.

Formats: the zip format (torch >= 1.6: ``<archive>/data.pkl`` + ``<archive>/data/<key>`` raw
storages + ``<archive>/byteorder``) and the legacy format (torch < 1.6: magic number, protocol
version and system info pickles, the main pickle, the list of storage keys, then each storage as a
little-endian int64 element count followed by its bytes). The older tar format (torch < 0.4) and
TorchScript archives are refused with a clear message.

Tensors are rebuilt from ``(storage, storage_offset, size, stride)`` with
``np.lib.stride_tricks.as_strided`` after checking that every element lies inside the storage, then
copied into a C-contiguous array in native byte order. ``bfloat16`` (no NumPy dtype) is widened to
``float32`` exactly.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import tarfile
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

from ppdet_ghm.safe_pickle import CheckpointError, RestrictedUnpickler

logger = logging.getLogger(__name__)

#: Magic number and protocol version at the start of a legacy (non-zip) torch file.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

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


class _StorageType:
    """Stands for ``torch.<Name>Storage`` inside the pickle: carries the NumPy dtype only."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])

    def __repr__(self):
        return f"torch.{self.name}"


class _StorageRef:
    """A storage named by a persistent id: ``numel`` elements of ``storage_type`` under ``key``.

    ``view_offset`` is in elements (legacy format storage views; 0 otherwise).
    """

    def __init__(self, storage_type: _StorageType, key: str, numel: int, view_offset: int = 0):
        self.storage_type = storage_type
        self.key = key
        self.numel = numel
        self.view_offset = view_offset


class _TensorRef:
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
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, *meta):
    return _TensorRef(storage, storage_offset, size, stride)


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
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
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


class _Opaque:
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


class _TorchUnpickler(RestrictedUnpickler):
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
                f"Opaque[{qualname}]", (_Opaque,), {"global_name": qualname}
            )
        return self._stubs[qualname]

    def _unexpected_persistent_id(self, pid):
        raise CheckpointError(f"{self.source}: unexpected persistent id {pid!r}")


def _run(unpickler: _TorchUnpickler, path: str, what: str = "pickle") -> Any:
    """``unpickler.load()``; any failure other than ours becomes a :class:`CheckpointError`."""
    try:
        return unpickler.load()
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable {what} ({type(exc).__name__}: {exc})") from exc


def _ascii(value):
    return value.decode("ascii") if isinstance(value, bytes) else value


def _parse_storage_pid(pid: Any, source: str) -> tuple[_StorageType, str, int, tuple | None]:
    """``('storage', storage_type, key, location, numel[, view_metadata])`` -> its parts."""
    if not isinstance(pid, tuple) or not pid or _ascii(pid[0]) != "storage":
        kind = _ascii(pid[0]) if isinstance(pid, tuple) and pid else pid
        raise CheckpointError(
            f"{source}: unsupported persistent id {kind!r} (only tensor storages are read; "
            "a pickled nn.Module is not a state_dict)"
        )
    if len(pid) not in (5, 6):
        raise CheckpointError(f"{source}: malformed storage id {pid!r}")
    storage_type, key, _location, numel = pid[1:5]
    view = pid[5] if len(pid) == 6 else None
    if not isinstance(storage_type, _StorageType):
        raise CheckpointError(f"{source}: storage id names {storage_type!r}, not a torch storage")
    key = _ascii(key)
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
        raise CheckpointError(f"{source}: malformed storage id {pid!r}")
    return storage_type, key, numel, view


def _to_native(raw: np.ndarray, storage_type: _StorageType) -> np.ndarray:
    """1-D little-endian storage -> native byte order; bfloat16 bit patterns -> float32."""
    if storage_type.name == "BFloat16Storage":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(raw.dtype.newbyteorder("="), copy=False)


class _Archive:
    """The unpickled top-level object plus a way to fetch each storage's elements by key."""

    def __init__(self, obj: Any, storages: dict[str, _StorageRef], stubbed: list[str]):
        self.obj = obj
        self.storages = storages
        self.stubbed = stubbed
        self._flat: dict[str, np.ndarray] = {}

    def read_raw(self, ref: _StorageRef) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self):
        pass

    def flat(self, ref: _StorageRef) -> np.ndarray:
        if ref.key not in self._flat:
            self._flat[ref.key] = _to_native(self.read_raw(ref), ref.storage_type)
        return self._flat[ref.key]


class _ZipArchive(_Archive):
    def __init__(self, path: str):
        self.path = path
        self.zf = zipfile.ZipFile(path)
        try:
            self._open(path)
        except BaseException:
            self.zf.close()
            raise

    def _open(self, path: str):
        zf = self.zf
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            hint = (
                " (a TorchScript archive?)"
                if any(n.endswith("constants.pkl") for n in names)
                else ""
            )
            raise CheckpointError(f"{path}: zip file without exactly one <archive>/data.pkl{hint}")
        self.prefix = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if self.prefix + "byteorder" in names:
            byteorder = zf.read(self.prefix + "byteorder").decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise CheckpointError(f"{path}: unknown byteorder record {byteorder!r}")
        self.byteorder = byteorder
        storages: dict[str, _StorageRef] = {}

        def persistent_load(pid):
            storage_type, key, numel, view = _parse_storage_pid(pid, path)
            if view is not None:
                raise CheckpointError(f"{path}: storage views do not exist in the zip format")
            ref = storages.setdefault(key, _StorageRef(storage_type, key, numel))
            if ref.storage_type.name != storage_type.name or ref.numel != numel:
                raise CheckpointError(f"{path}: storage {key} is named with two types or sizes")
            return ref

        unpickler = _TorchUnpickler(
            io.BytesIO(zf.read(pkl[0])), source=path, persistent_load=persistent_load
        )
        obj = _run(unpickler, path)
        _Archive.__init__(self, obj, storages, unpickler.stubbed_globals)

    def close(self):
        self.zf.close()

    def read_raw(self, ref: _StorageRef) -> np.ndarray:
        name = f"{self.prefix}data/{ref.key}"
        dtype = ref.storage_type.dtype
        if self.byteorder == "big":
            dtype = dtype.newbyteorder(">")
        try:
            info = self.zf.getinfo(name)
        except KeyError:
            raise CheckpointError(f"{self.path}: storage record {name} is missing") from None
        expected = ref.numel * dtype.itemsize
        if info.file_size != expected:
            raise CheckpointError(
                f"{self.path}: storage record {name} holds {info.file_size} bytes, its id says "
                f"{ref.numel} x {dtype.itemsize} = {expected}"
            )
        try:
            raw = self.zf.read(name)
        except zipfile.BadZipFile as err:
            raise CheckpointError(f"{self.path}: corrupt storage record {name} ({err})") from err
        return np.frombuffer(raw, dtype=dtype)


class _LegacyArchive(_Archive):
    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            data = f.read()
        stream = io.BytesIO(data)

        def plain(what: str):
            return _run(_TorchUnpickler(stream, source=path, allow_discardable=False), path, what)

        if plain("magic number") != LEGACY_MAGIC_NUMBER:
            raise CheckpointError(
                f"{path}: not a torch checkpoint (no zip, no legacy magic number)"
            )
        version = plain("protocol version")
        if version != LEGACY_PROTOCOL_VERSION:
            raise CheckpointError(f"{path}: unsupported legacy protocol version {version!r}")
        plain("system info")
        storages: dict[str, _StorageRef] = {}
        views: list[_StorageRef] = []

        def persistent_load(pid):
            storage_type, key, numel, view = _parse_storage_pid(pid, path)
            root = storages.setdefault(key, _StorageRef(storage_type, key, numel))
            if root.storage_type.name != storage_type.name:
                raise CheckpointError(f"{path}: storage {key} is named with two types")
            if view is None:
                return root
            view_key, offset, view_size = view
            if not (isinstance(offset, int) and isinstance(view_size, int)):
                raise CheckpointError(f"{path}: malformed storage view {view!r}")
            ref = _StorageRef(storage_type, key, view_size, view_offset=offset)
            views.append(ref)
            return ref

        unpickler = _TorchUnpickler(stream, source=path, persistent_load=persistent_load)
        obj = _run(unpickler, path)
        keys = plain("storage keys")
        if not isinstance(keys, list) or sorted(map(_ascii, keys)) != sorted(storages):
            raise CheckpointError(f"{path}: storage key list does not match the pickle's storages")
        # Each storage: little-endian int64 element count, then its bytes, in the listed order.
        self._spans: dict[str, tuple[int, int]] = {}
        pos = stream.tell()
        for key in map(_ascii, keys):
            ref = storages[key]
            if pos + 8 > len(data):
                raise CheckpointError(f"{path}: truncated before storage {key}")
            (numel,) = struct.unpack("<q", data[pos : pos + 8])
            if numel != ref.numel:
                raise CheckpointError(
                    f"{path}: storage {key} holds {numel} elements, id says {ref.numel}"
                )
            nbytes = numel * ref.storage_type.dtype.itemsize
            if pos + 8 + nbytes > len(data):
                raise CheckpointError(f"{path}: truncated inside storage {key}")
            self._spans[key] = (pos + 8, nbytes)
            pos += 8 + nbytes
        self._data = data
        for ref in views:
            if ref.view_offset < 0 or ref.view_offset + ref.numel > storages[ref.key].numel:
                raise CheckpointError(f"{path}: storage view outside storage {ref.key}")
        super().__init__(obj, storages, unpickler.stubbed_globals)

    def read_raw(self, ref: _StorageRef) -> np.ndarray:
        start, nbytes = self._spans[ref.key]
        return np.frombuffer(
            self._data,
            dtype=ref.storage_type.dtype,
            count=nbytes // ref.storage_type.dtype.itemsize,
            offset=start,
        )

    def flat(self, ref: _StorageRef) -> np.ndarray:
        root = super().flat(self.storages[ref.key])
        return root[ref.view_offset : ref.view_offset + ref.numel]


def _open_archive(path: str) -> _Archive:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file {path}")
    if zipfile.is_zipfile(path):
        try:
            return _ZipArchive(path)
        except zipfile.BadZipFile as err:
            raise CheckpointError(f"{path}: corrupt zip archive ({err})") from err
    if tarfile.is_tarfile(path):
        raise CheckpointError(
            f"{path}: tar-format torch checkpoint (torch < 0.4) is not supported; re-save it with "
            "a recent torch: torch.save(torch.load(path), new_path)"
        )
    return _LegacyArchive(path)


def _describe(value: Any) -> str:
    if isinstance(value, _Opaque):
        return f"an object built by {value.global_name} (not executed)"
    return f"a {type(value).__name__}"


def _find_state_dict(obj: Any, path: str) -> dict:
    """Bare state_dict, or the ``state_dict`` entry of an mmdet/mmcv/mmengine checkpoint."""
    if isinstance(obj, _Opaque):
        raise CheckpointError(f"{path}: the checkpoint is {_describe(obj)}, not a dict")
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: the checkpoint is {_describe(obj)}, not a dict")
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return obj["state_dict"]
    if any(isinstance(v, _TensorRef) for v in obj.values()):
        return obj  # bare state_dict; entries that are not tensors are reported by the caller
    raise CheckpointError(
        f"{path}: neither a state_dict (name -> tensor) nor a dict with a 'state_dict' entry; "
        f"top-level keys: {sorted(map(str, obj))[:20]}"
    )


def load_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state_dict of a torch ``.pth`` as ``{name: C-contiguous ndarray}``, in file order.

    Reads zip and legacy torch files without torch and without executing the pickle (see the module
    docstring for the policy). Accepts a bare state_dict or a dict with a ``state_dict`` entry
    (mmcv/mmdet ``{'meta', 'state_dict', 'optimizer'}``, mmengine's ``{'meta', 'state_dict',
    'message_hub', 'optimizer', 'param_schedulers'}``); everything beside ``state_dict`` is dropped
    without being materialised. Dtypes follow the storages (float32/16/64, int64/32/16/8, uint8,
    bool); bfloat16 becomes float32.

    Raises:
        UnsafeCheckpointError: the pickle names a global outside the allowed set (file refused).
        CheckpointError: not a torch checkpoint, inconsistent storages, or a state_dict entry that
            is not a tensor.
        FileNotFoundError: no such file.

    Example (an mmdet RetinaNet-GHM checkpoint to our model's weights; the command line does the
    same with ``ppdet-ghm convert retinanet_ghm.pth retinanet_ghm.pdparams``)::

        from ppdet_ghm.convert import convert_state_dict, load_torch_checkpoint
        from ppdet_ghm.convert.cli import model_target_shapes, save_pdparams_atomic

        torch_state = load_torch_checkpoint("retinanet_ghm.pth")  # never executes the pickle
        ours = convert_state_dict(torch_state, model_target_shapes())  # strict: names, shapes
        save_pdparams_atomic(ours, "retinanet_ghm.pdparams")
    """
    path = os.fspath(path)
    archive = _open_archive(path)
    try:
        return _extract(archive, path)
    finally:
        archive.close()


def _extract(archive: _Archive, path: str) -> dict[str, np.ndarray]:
    state = _find_state_dict(archive.obj, path)
    bad = [
        f"{k!r} is {_describe(v)}"
        for k, v in state.items()
        if not isinstance(k, str) or not isinstance(v, _TensorRef)
    ]
    if bad:
        raise CheckpointError(f"{path}: state_dict entries that are not tensors: {'; '.join(bad)}")
    if archive.stubbed:
        logger.warning(
            "%s: dropped non-weight data built from %s (not executed)",
            path,
            ", ".join(archive.stubbed),
        )
    out: dict[str, np.ndarray] = {}
    for name, ref in state.items():
        if not isinstance(ref.storage, _StorageRef):
            raise CheckpointError(
                f"{path}: tensor {name!r} has no storage ({_describe(ref.storage)})"
            )
        out[name] = ref.materialize(archive.flat(ref.storage), where=f"{path}: {name!r}")
    return out
