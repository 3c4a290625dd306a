"""modeling.cpp_ops through the four extensions that raise (the threaded GHM ops fall back
instead, tests/losses): a source that does not compile is an error naming the source, the build
folder and the compiler's message, raised as the extension's own "unavailable" error, and
remembered (no second build in the process); and the thread count the ops take from Paddle."""

import pytest

from ppdet_ghm.engine import threaded_momentum
from ppdet_ghm.modeling import cpp_ops, frozen_bn, onednn_conv, threaded_conv


@pytest.mark.parametrize(
    ("module", "unavailable"),
    [
        (onednn_conv, onednn_conv.OnednnUnavailable),
        (threaded_conv, threaded_conv.ThreadedConvUnavailable),
        (frozen_bn, frozen_bn.FrozenBnUnavailable),
        (threaded_momentum, threaded_momentum.ThreadedMomentumUnavailable),
    ],
    ids=["onednn_conv", "threaded_conv", "frozen_bn", "threaded_momentum"],
)
def test_a_failed_build_names_the_compiler_error(tmp_path, monkeypatch, module, unavailable):
    broken = tmp_path / module.SOURCE.name
    broken.write_text('#include "paddle/extension.h"\nint broken( {\n')
    monkeypatch.setattr(module, "SOURCE", broken)
    monkeypatch.setattr(module, "_ops", None)
    monkeypatch.setenv("PPDET_GHM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(unavailable, match=f"building {broken.name} in") as err:
        module.load_ops()
    assert "error" in str(err.value)  # the compiler's message travels with the error
    with pytest.raises(unavailable):  # remembered: no second build
        module.load_ops()


@pytest.mark.parametrize("count", [1, 3])
def test_math_threads_follows_paddle(set_math_threads, count):
    set_math_threads(count)
    assert cpp_ops.math_threads() == count
