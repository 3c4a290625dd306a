"""modeling.cpp_ops through the four extensions that raise (the threaded GHM ops fall back
instead, tests/losses): a source that does not compile is an error naming the source, the build
folder and the compiler's message, raised as the extension's own "unavailable" error, and
remembered (no second build in the process); the cache key (source, shared header, version); the
thread count the ops take from Paddle; and every C++ file in the package's data."""

import fnmatch

import pytest

from ppdet_ghm.engine import threaded_momentum
from ppdet_ghm.modeling import cpp_ops, frozen_bn, onednn_conv, threaded_conv
from tests.helpers import REPO


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


def test_every_cpp_source_ships_with_the_package():
    """pyproject's package-data covers every C++ source and header the ops compile at first use:
    an installed wheel without one could not build that op."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["package-data"]["ppdet_ghm"]
    package = REPO / "ppdet_ghm"
    sources = sorted(
        path.relative_to(package).as_posix()
        for path in package.rglob("*")
        if path.suffix in (".cc", ".h")
    )
    assert "modeling/cpp_ops.h" in sources and len(sources) == 6
    for source in sources:
        assert any(fnmatch.fnmatch(source, pattern) for pattern in patterns), source


def test_the_cache_key_follows_the_source_the_shared_header_and_the_version(tmp_path, monkeypatch):
    """A change to ``cpp_ops.h`` must rebuild every op (a stale build would be loaded)."""
    source, header = tmp_path / "op.cc", tmp_path / "cpp_ops.h"
    source.write_text('#include "cpp_ops.h"\n')
    header.write_text("// one\n")
    monkeypatch.setattr(cpp_ops, "HEADER", header)
    keys = {cpp_ops.cache_key(source), cpp_ops.cache_key(source, "-O3")}
    header.write_text("// two\n")
    keys.add(cpp_ops.cache_key(source))
    source.write_text('#include "cpp_ops.h"\nint x;\n')
    keys.add(cpp_ops.cache_key(source))
    assert len(keys) == 4 and all(len(k) == 12 for k in keys)
