"""ppdet_ghm.convert.torch_reader: torch-format checkpoints written here without torch, read back.

The writer (tests/helpers/torch_files.py) reproduces torch's layouts byte for byte where it matters: the zip format
(``<archive>/data.pkl`` pickled at protocol 2 with ``('storage', torch.<T>Storage, key, 'cpu',
numel)`` persistent ids and ``torch._utils._rebuild_tensor_v2`` reduce calls, raw little-endian
storages in ``<archive>/data/<key>``, a ``byteorder`` record) and the legacy format (magic number,
protocol, sys info, main pickle, sorted storage keys, then ``int64 numel`` + bytes per storage).
"""

import collections
import io
import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest

from ppdet_ghm.convert import CheckpointError, UnsafeCheckpointError, load_torch_checkpoint
from tests.helpers.torch_files import (
    Global,
    Opaque,
    Storage,
    Tensor,
    TorchFormatPickler,
    contiguous,
    state_dict_fixture,
    write_legacy_checkpoint,
    write_zip_checkpoint,
)


def _assert_same(got, expected):
    assert list(got) == list(expected)
    for name, want in expected.items():
        assert got[name].dtype == want.dtype, name
        assert got[name].shape == want.shape, name
        assert got[name].flags.c_contiguous, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_bare_state_dict_round_trip(tmp_path, fmt):
    tensors, expected = state_dict_fixture()
    path = tmp_path / "ckpt.pth"
    sd = collections.OrderedDict(tensors)
    if fmt == "zip":
        write_zip_checkpoint(path, sd)
    else:
        write_legacy_checkpoint(path, sd)
    got = load_torch_checkpoint(path)
    _assert_same(got, expected)
    # the two views of the shared storage are independent copies
    got["transposed"][0, 0] = 100.0
    assert got["offset_block"][0, 0] == expected["offset_block"][0, 0]


def test_mmdet_style_wrapper_and_big_endian(tmp_path):
    tensors, expected = state_dict_fixture()
    ckpt = {
        "meta": {"epoch": 12, "CLASSES": ("person", "bicycle"), "config": "model = dict()"},
        "state_dict": collections.OrderedDict(tensors),
    }
    got = load_torch_checkpoint(write_zip_checkpoint(tmp_path / "m.pth", ckpt, byteorder="big"))
    _assert_same(got, expected)


def test_bfloat16_widened_exactly(tmp_path):
    values = np.array([1.0, -2.0, 3.140625, 1e-3], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)  # truncation: exact bf16 values
    want = (bits.astype(np.uint32) << 16).view(np.float32)
    t = Tensor(Storage("0", bits, type_name="BFloat16Storage"), 0, (4,), (1,))
    got = load_torch_checkpoint(write_zip_checkpoint(tmp_path / "b.pth", {"w": t}))
    assert got["w"].dtype == np.float32
    np.testing.assert_array_equal(got["w"], want)
    assert got["w"][0] == 1.0 and got["w"][1] == -2.0 and got["w"][2] == 3.140625


def test_mmengine_style_metadata_is_dropped_not_executed(tmp_path, caplog):
    """NumPy objects in meta, a message-hub object and optimizer tensors: stubbed and dropped.

    The message hub names a module that does not exist: loading still works, which shows the
    global is never imported, let alone called.
    """
    tensors, expected = state_dict_fixture()
    hub = Opaque(Global("mmengine.no_such_module", "HistoryBuffer"), (), {"_log": [1.0, 2.0]})
    ckpt = {
        "meta": {"seed": np.int64(3), "iters": np.arange(3), "dataset_meta": {"classes": ("a",)}},
        "state_dict": collections.OrderedDict(tensors),
        "message_hub": {"log_scalars": collections.OrderedDict(loss=hub)},
        "optimizer": {"state": {0: {"momentum_buffer": contiguous("9", np.ones(2, np.float32))}}},
    }
    with caplog.at_level("WARNING", logger="ppdet_ghm.convert.torch_reader"):
        got = load_torch_checkpoint(write_zip_checkpoint(tmp_path / "e.pth", ckpt))
    _assert_same(got, expected)
    text = caplog.text
    assert "mmengine.no_such_module.HistoryBuffer" in text and "not executed" in text
    assert "numpy" in text


class _Evil:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _evil_pickles(marker):
    command = f"touch {marker}"
    tensors, _ = state_dict_fixture()
    return {
        "in_meta": {"meta": _Evil(command), "state_dict": collections.OrderedDict(tensors)},
        "in_state_dict": collections.OrderedDict(tensors, evil=_Evil(command)),
        "top_level": _Evil(command),
    }


@pytest.mark.parametrize("where", ["in_meta", "in_state_dict", "top_level"])
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_malicious_pickle_refused_and_not_run(tmp_path, where, fmt):
    marker = tmp_path / "pwned"
    obj = _evil_pickles(marker)[where]
    path = tmp_path / "evil.pth"
    (write_zip_checkpoint if fmt == "zip" else write_legacy_checkpoint)(path, obj)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_torch_checkpoint(path)
    message = str(err.value)
    assert f"{os.system.__module__}.system" in message  # 'posix.system' on Linux
    assert str(path) in message
    assert not marker.exists()


def test_plain_malicious_pickle_file_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Evil(f"touch {marker}")))
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system|os\.system|nt\.system"):
        load_torch_checkpoint(path)
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # control: an ordinary unpickler does run it
    assert marker.exists()


@pytest.mark.parametrize(
    "module,name,shown",
    [
        ("builtins", "eval", "builtins.eval"),
        ("__builtin__", "exec", "builtins.exec"),  # Python 2 spelling, mapped as pickle does
        ("subprocess", "Popen", "subprocess.Popen"),
        ("torch", "load", "torch.load"),
        ("shutil", "rmtree", "shutil.rmtree"),
    ],
)
def test_other_dangerous_globals_refused(tmp_path, module, name, shown):
    obj = {"state_dict": {}, "meta": Opaque(Global(module, name), ("1+1",))}
    path = write_zip_checkpoint(tmp_path / "g.pth", obj)
    with pytest.raises(UnsafeCheckpointError, match=f"'{shown}'"):
        load_torch_checkpoint(path)


def test_discardable_object_inside_state_dict_is_an_error(tmp_path):
    tensors, _ = state_dict_fixture()
    sd = collections.OrderedDict(tensors, anchors=np.arange(3.0), count=3)
    for i, obj in enumerate([sd, {"state_dict": sd, "meta": {}}]):
        with pytest.raises(CheckpointError) as err:
            load_torch_checkpoint(write_zip_checkpoint(tmp_path / f"n{i}.pth", obj))
        assert "'anchors' is an object built by numpy" in str(err.value)
        assert "'count' is a int" in str(err.value)


@pytest.mark.parametrize(
    "offset,size,stride,what",
    [
        (0, (5, 5), (5, 1), "beyond its storage"),  # 25 elements from a 24-element storage
        (20, (2, 3), (3, 1), "beyond its storage"),
        (0, (2, 3), (-1, 1), "bad tensor geometry"),
        (-1, (2,), (1,), "bad tensor geometry"),
        (0, (2, 3), (1,), "bad tensor geometry"),
    ],
)
def test_out_of_bounds_geometry_refused(tmp_path, offset, size, stride, what):
    t = Tensor(Storage("0", np.zeros(24, np.float32)), offset, size, stride)
    with pytest.raises(CheckpointError, match=what):
        load_torch_checkpoint(write_zip_checkpoint(tmp_path / "o.pth", {"w": t}))


def test_storage_record_size_mismatch(tmp_path):
    path = write_zip_checkpoint(tmp_path / "s.pth", {"w": contiguous("0", np.ones(4, np.float32))})
    broken = tmp_path / "broken.pth"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(broken, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info.filename, data[:-4] if info.filename.endswith("data/0") else data)
    with pytest.raises(CheckpointError, match=r"holds 12 bytes, its id says 4 x 4 = 16"):
        load_torch_checkpoint(broken)


def test_corrupt_storage_bytes_fail_the_crc(tmp_path):
    path = write_zip_checkpoint(tmp_path / "c.pth", {"w": contiguous("0", np.arange(64.0))})
    blob = bytearray(path.read_bytes())
    at = blob.index(np.arange(64.0).tobytes())  # stored uncompressed: flip one byte of the data
    blob[at + 100] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="corrupt storage record archive/data/0"):
        load_torch_checkpoint(path)


def test_truncated_legacy_file(tmp_path):
    path = write_legacy_checkpoint(tmp_path / "t.pth", {"w": contiguous("0", np.ones(4))})
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(CheckpointError, match="truncated inside storage 0"):
        load_torch_checkpoint(path)


def test_refuses_non_checkpoints(tmp_path):
    tar_path = tmp_path / "old.tar"
    with tarfile.open(tar_path, "w") as tar:
        info = tarfile.TarInfo("pickle")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(CheckpointError, match="tar-format"):
        load_torch_checkpoint(tar_path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00not a pickle at all")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_torch_checkpoint(junk)
    other = tmp_path / "int.pth"
    other.write_bytes(pickle.dumps(12345, protocol=2))
    with pytest.raises(CheckpointError, match="no legacy magic number"):
        load_torch_checkpoint(other)
    with pytest.raises(FileNotFoundError):
        load_torch_checkpoint(tmp_path / "absent.pth")
    lists = write_zip_checkpoint(tmp_path / "list.pth", [1, 2])
    with pytest.raises(CheckpointError, match="not a dict"):
        load_torch_checkpoint(lists)
    no_sd = write_zip_checkpoint(tmp_path / "nosd.pth", {"model": {}, "epoch": 3})
    with pytest.raises(CheckpointError, match=r"top-level keys: \['epoch', 'model'\]"):
        load_torch_checkpoint(no_sd)


def test_pickled_module_persistent_id_refused(tmp_path):
    """A whole pickled nn.Module (legacy 'module' persistent id) is not a state_dict."""

    class ModulePickler(TorchFormatPickler):
        def persistent_id(self, obj):
            if obj == "MODULE":
                return ("module", Global("torch.nn", "Linear"), "linear.py", "source")
            return None

    f = io.BytesIO()
    for value in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(value, f, protocol=2)
    ModulePickler(f, {}).dump({"model": "MODULE"})
    path = tmp_path / "module.pth"
    path.write_bytes(f.getvalue())
    with pytest.raises(CheckpointError, match=r"torch\.nn\.Linear|unsupported persistent id"):
        load_torch_checkpoint(path)
