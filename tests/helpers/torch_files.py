"""Torch-format checkpoints written without torch (the layouts of torch.save, byte for byte where
it matters): the zip format (``<archive>/data.pkl`` pickled at protocol 2 with ``('storage',
torch.<T>Storage, key, 'cpu', numel)`` persistent ids and ``torch._utils._rebuild_tensor_v2`` reduce
calls, raw little-endian storages in ``<archive>/data/<key>``, a ``byteorder`` record) and the
legacy format (magic number, protocol, sys info, main pickle, sorted storage keys, then ``int64
numel`` + bytes per storage)."""

import collections
import io
import pickle
import struct
import zipfile

import numpy as np

STORAGE_NAMES = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float64"): "DoubleStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
}


class Global:
    """A ``module.name`` reference the pickler writes as a GLOBAL opcode (no import needed)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # only so that pickle accepts it as a reduce callable
        raise AssertionError("never called")


class Storage:
    """A torch storage: ``data`` (1-D) stored under ``key``; ``type_name`` e.g. ``FloatStorage``."""

    def __init__(self, key, data, type_name=None):
        self.key = key
        self.data = np.ascontiguousarray(data).reshape(-1)
        self.type_name = type_name or STORAGE_NAMES[self.data.dtype]


class Tensor:
    """A tensor view of a :class:`Storage`: ``storage_offset``, ``size``, ``stride`` in elements."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = (
            storage,
            offset,
            tuple(size),
            tuple(stride),
        )


class Opaque:
    """An object whose pickle calls ``callable_global(*args)`` and then sets ``state``."""

    def __init__(self, callable_global, args=(), state=None):
        self.callable_global, self.args, self.state = callable_global, args, state


REBUILD_V2 = Global("torch._utils", "_rebuild_tensor_v2")


class TorchFormatPickler(pickle._Pickler):
    """Protocol-2 pickler writing torch's persistent ids and GLOBAL opcodes for our stand-ins."""

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file, storages):
        super().__init__(file, protocol=2)
        self.storages = storages  # key -> Storage, filled as storages are met
        self.pid_extra = ()  # legacy format: (view_metadata,)

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            self.storages[obj.key] = obj
            storage_type = Global("torch", obj.type_name)
            return ("storage", storage_type, obj.key, "cpu", obj.data.size, *self.pid_extra)
        return None

    def save_marker_global(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[Global] = save_marker_global

    def reducer_override(self, obj):
        if isinstance(obj, Tensor):
            args = (obj.storage, obj.offset, obj.size, obj.stride, False, collections.OrderedDict())
            return (REBUILD_V2, args)
        if isinstance(obj, Opaque):
            return (obj.callable_global, tuple(obj.args), obj.state)
        return NotImplemented


def _raw(storage):
    return storage.data.astype(storage.data.dtype.newbyteorder("<"), copy=False).tobytes()


def write_zip_checkpoint(path, obj, archive="archive", byteorder="little"):
    """Write ``obj`` (dicts/lists of :class:`Tensor` and plain values) as torch's zip format."""
    buf = io.BytesIO()
    storages = {}
    TorchFormatPickler(buf, storages).dump(obj)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{archive}/data.pkl", buf.getvalue())
        zf.writestr(f"{archive}/.format_version", "1")
        if byteorder is not None:
            zf.writestr(f"{archive}/byteorder", byteorder)
        for key, storage in storages.items():
            data = storage.data
            if byteorder == "big":
                data = data.astype(data.dtype.newbyteorder(">"))
                zf.writestr(f"{archive}/data/{key}", data.tobytes())
            else:
                zf.writestr(f"{archive}/data/{key}", _raw(storage))
        zf.writestr(f"{archive}/version", "3\n")
    return path


def write_legacy_checkpoint(path, obj):
    """Write ``obj`` in torch's legacy (torch < 1.6) format."""
    f = io.BytesIO()
    pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
    pickle.dump(1001, f, protocol=2)
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"long": 8}}
    pickle.dump(sys_info, f, protocol=2)
    storages = {}
    pickler = TorchFormatPickler(f, storages)
    pickler.pid_extra = (None,)
    pickler.dump(obj)
    keys = sorted(storages)
    pickle.dump(keys, f, protocol=2)
    for key in keys:
        f.write(struct.pack("<q", storages[key].data.size))
        f.write(_raw(storages[key]))
    with open(path, "wb") as out:
        out.write(f.getvalue())
    return path


def contiguous(key, array):
    """A contiguous tensor holding ``array`` in its own storage."""
    array = np.asarray(array)
    strides = tuple(s // array.itemsize for s in np.array(array, order="C").strides)
    return Tensor(Storage(key, array), 0, array.shape, strides)


def state_dict_fixture():
    """(tensors by name, expected arrays by name): strided, offset, shared, fp16, int64, 0-d."""
    base = np.arange(24, dtype=np.float32) * 0.5 - 3.0
    shared = Storage("0", base)
    half = np.array([0.5, -1.25, 65504.0, 6.1035156e-05], dtype=np.float16)
    ints = np.array([[-(2**40), 7], [3, 2**62]], dtype=np.int64)
    tensors = {
        # (4, 6) row-major storage read transposed: size (6, 4), stride (1, 6)
        "transposed": Tensor(shared, 0, (6, 4), (1, 6)),
        # rows 1..3, columns 2..3 of the same storage: offset 8, size (3, 2), stride (6, 1)
        "offset_block": Tensor(shared, 8, (3, 2), (6, 1)),
        "half": contiguous("1", half),
        "ints": contiguous("2", ints),
        "scalar": Tensor(Storage("3", np.array([53], dtype=np.int64)), 0, (), ()),
        "empty": Tensor(Storage("4", np.zeros(0, np.float32)), 0, (0, 3), (3, 1)),
        "flags": contiguous("5", np.array([True, False, True])),
        "double": contiguous("6", np.array([1.0 / 3.0, -2.5e-300])),
    }
    expected = {
        "transposed": base.reshape(4, 6).T,
        "offset_block": base.reshape(4, 6)[1:4, 2:4],
        "half": half,
        "ints": ints,
        "scalar": np.array(53, dtype=np.int64),
        "empty": np.zeros((0, 3), np.float32),
        "flags": np.array([True, False, True]),
        "double": np.array([1.0 / 3.0, -2.5e-300]),
    }
    return tensors, expected
