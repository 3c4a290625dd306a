"""Read a PyTorch ``.pth`` state_dict into NumPy arrays without torch and without running the pickle.

A torch checkpoint is a pickle whose tensors point at raw storages kept beside it. Unpickling calls
whatever globals the pickle names, so loading an untrusted ``.pth`` with ``pickle`` (or with
``torch.load(weights_only=False)``) runs arbitrary code. This reader never calls a global it does
not know: :class:`TorchUnpickler` (the package's one restricted unpickler,
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

import logging
import os
from typing import Any

import numpy as np

from ppdet_ghm.convert.torch_archives import Archive, open_archive
from ppdet_ghm.convert.torch_pickle import Opaque, StorageRef, TensorRef
from ppdet_ghm.safe_pickle import CheckpointError

logger = logging.getLogger(__name__)


def _describe(value: Any) -> str:
    if isinstance(value, Opaque):
        return f"an object built by {value.global_name} (not executed)"
    return f"a {type(value).__name__}"


def _find_state_dict(obj: Any, path: str) -> dict:
    """Bare state_dict, or the ``state_dict`` entry of an mmdet/mmcv/mmengine checkpoint."""
    if isinstance(obj, Opaque):
        raise CheckpointError(f"{path}: the checkpoint is {_describe(obj)}, not a dict")
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: the checkpoint is {_describe(obj)}, not a dict")
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return obj["state_dict"]
    if any(isinstance(v, TensorRef) for v in obj.values()):
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
    archive = open_archive(path)
    try:
        return _extract(archive, path)
    finally:
        archive.close()


def _extract(archive: Archive, path: str) -> dict[str, np.ndarray]:
    state = _find_state_dict(archive.obj, path)
    bad = [
        f"{k!r} is {_describe(v)}"
        for k, v in state.items()
        if not isinstance(k, str) or not isinstance(v, TensorRef)
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
        if not isinstance(ref.storage, StorageRef):
            raise CheckpointError(
                f"{path}: tensor {name!r} has no storage ({_describe(ref.storage)})"
            )
        out[name] = ref.materialize(archive.flat(ref.storage), where=f"{path}: {name!r}")
    return out
