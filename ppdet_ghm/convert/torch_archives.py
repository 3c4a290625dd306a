"""The two torch checkpoint formats: the zip archive (torch >= 1.6) and the legacy stream.

Each opens the file, unpickles its main object with :class:`~.torch_pickle.TorchUnpickler` and
fetches a storage's raw elements by key (checked against the sizes the pickle names); see
:mod:`ppdet_ghm.convert.torch_reader` for the layouts.
"""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zipfile
from typing import Any

import numpy as np

from ppdet_ghm.convert.torch_pickle import (
    StorageRef,
    TorchUnpickler,
    ascii_text,
    parse_storage_pid,
    run_unpickler,
    to_native,
)
from ppdet_ghm.safe_pickle import CheckpointError

#: Magic number and protocol version at the start of a legacy (non-zip) torch file.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001


class Archive:
    """The unpickled top-level object plus a way to fetch each storage's elements by key."""

    def __init__(self, obj: Any, storages: dict[str, StorageRef], stubbed: list[str]):
        self.obj = obj
        self.storages = storages
        self.stubbed = stubbed
        self._flat: dict[str, np.ndarray] = {}

    def read_raw(self, ref: StorageRef) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self):
        pass

    def flat(self, ref: StorageRef) -> np.ndarray:
        if ref.key not in self._flat:
            self._flat[ref.key] = to_native(self.read_raw(ref), ref.storage_type)
        return self._flat[ref.key]


class ZipArchive(Archive):
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
        storages: dict[str, StorageRef] = {}

        def persistent_load(pid):
            storage_type, key, numel, view = parse_storage_pid(pid, path)
            if view is not None:
                raise CheckpointError(f"{path}: storage views do not exist in the zip format")
            ref = storages.setdefault(key, StorageRef(storage_type, key, numel))
            if ref.storage_type.name != storage_type.name or ref.numel != numel:
                raise CheckpointError(f"{path}: storage {key} is named with two types or sizes")
            return ref

        unpickler = TorchUnpickler(
            io.BytesIO(zf.read(pkl[0])), source=path, persistent_load=persistent_load
        )
        obj = run_unpickler(unpickler, path)
        Archive.__init__(self, obj, storages, unpickler.stubbed_globals)

    def close(self):
        self.zf.close()

    def read_raw(self, ref: StorageRef) -> np.ndarray:
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


class LegacyArchive(Archive):
    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            data = f.read()
        stream = io.BytesIO(data)

        def plain(what: str):
            return run_unpickler(
                TorchUnpickler(stream, source=path, allow_discardable=False), path, what
            )

        if plain("magic number") != LEGACY_MAGIC_NUMBER:
            raise CheckpointError(
                f"{path}: not a torch checkpoint (no zip, no legacy magic number)"
            )
        version = plain("protocol version")
        if version != LEGACY_PROTOCOL_VERSION:
            raise CheckpointError(f"{path}: unsupported legacy protocol version {version!r}")
        plain("system info")
        storages: dict[str, StorageRef] = {}
        views: list[StorageRef] = []

        def persistent_load(pid):
            storage_type, key, numel, view = parse_storage_pid(pid, path)
            root = storages.setdefault(key, StorageRef(storage_type, key, numel))
            if root.storage_type.name != storage_type.name:
                raise CheckpointError(f"{path}: storage {key} is named with two types")
            if view is None:
                return root
            view_key, offset, view_size = view
            if not (isinstance(offset, int) and isinstance(view_size, int)):
                raise CheckpointError(f"{path}: malformed storage view {view!r}")
            ref = StorageRef(storage_type, key, view_size, view_offset=offset)
            views.append(ref)
            return ref

        unpickler = TorchUnpickler(stream, source=path, persistent_load=persistent_load)
        obj = run_unpickler(unpickler, path)
        keys = plain("storage keys")
        if not isinstance(keys, list) or sorted(map(ascii_text, keys)) != sorted(storages):
            raise CheckpointError(f"{path}: storage key list does not match the pickle's storages")
        # Each storage: little-endian int64 element count, then its bytes, in the listed order.
        self._spans: dict[str, tuple[int, int]] = {}
        pos = stream.tell()
        for key in map(ascii_text, keys):
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

    def read_raw(self, ref: StorageRef) -> np.ndarray:
        start, nbytes = self._spans[ref.key]
        return np.frombuffer(
            self._data,
            dtype=ref.storage_type.dtype,
            count=nbytes // ref.storage_type.dtype.itemsize,
            offset=start,
        )

    def flat(self, ref: StorageRef) -> np.ndarray:
        root = super().flat(self.storages[ref.key])
        return root[ref.view_offset : ref.view_offset + ref.numel]


def open_archive(path: str) -> Archive:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file {path}")
    if zipfile.is_zipfile(path):
        try:
            return ZipArchive(path)
        except zipfile.BadZipFile as err:
            raise CheckpointError(f"{path}: corrupt zip archive ({err})") from err
    if tarfile.is_tarfile(path):
        raise CheckpointError(
            f"{path}: tar-format torch checkpoint (torch < 0.4) is not supported; re-save it with "
            "a recent torch: torch.save(torch.load(path), new_path)"
        )
    return LegacyArchive(path)
