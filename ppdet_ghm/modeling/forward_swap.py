"""Give chosen sublayers of a model another ``forward``, per instance, and find them again.

How the CPU training layers are switched (:mod:`~ppdet_ghm.modeling.onednn_conv`,
:mod:`~ppdet_ghm.modeling.threaded_conv`, :mod:`~ppdet_ghm.modeling.frozen_bn`): the layer
objects, their parameters, names and state dict stay as they are; only the bound ``forward`` of
each chosen instance changes. :func:`switch_setting` reads the config keys that turn a switch on.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import paddle.nn as nn

__all__ = ["swap_forward", "swapped_layers", "switch_setting"]


def swap_forward(
    model: nn.Layer, forward: Callable, accept: Callable[[nn.Layer], bool], **attributes
) -> int:
    """Bind ``forward(layer, *inputs)`` as the ``forward`` of every sublayer of ``model`` (itself
    included) that ``accept(layer)`` admits, after setting ``attributes`` on it (what ``forward``
    reads); returns how many layers were swapped."""
    count = 0
    for layer in model.sublayers(include_self=True):
        if accept(layer):
            for name, value in attributes.items():
                setattr(layer, name, value)
            layer.forward = types.MethodType(forward, layer)
            count += 1
    return count


def swapped_layers(model: nn.Layer, forward: Callable) -> list[str]:
    """Names of ``model``'s sublayers whose ``forward`` is ``forward`` (see :func:`swap_forward`)."""
    return [
        name
        for name, layer in model.named_sublayers(include_self=True)
        if getattr(layer.forward, "__func__", None) is forward
    ]


def switch_setting(value, key: str):
    """The config key ``key`` of a switch as True, False or ``"auto"`` (bools or their strings,
    any case); ValueError naming the key for anything else."""
    if isinstance(value, str) and value.lower() in ("true", "false", "auto"):
        value = {"true": True, "false": False}.get(value.lower(), "auto")
    if value not in (True, False, "auto"):
        raise ValueError(f"config key {key}: expected true, false or auto, got {value!r}")
    return value
