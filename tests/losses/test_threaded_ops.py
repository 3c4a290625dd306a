"""losses.threaded_ops: Paddle's sigmoid and softplus kernels on several threads give
F.sigmoid's and F.softplus's bits at every size (pieces of 64-element multiples: the packets
and the scalar tail of one call), the lookup and the bin counts give paddle.gather's and
paddle.bincount's numbers, and each falls back to Paddle's op where the op does not apply.

Bits, not tolerances: both sides run the same kernel on the same numbers on this CPU (or copy
and count).
"""

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from ppdet_ghm.losses import threaded_ops
from tests.helpers.bits import assert_same_bits


@pytest.fixture(scope="module")
def ops():
    ops = threaded_ops.load_ops()
    assert ops is not None  # built and passed its self-check
    return ops


# around the op's per-thread minimum (2**18), odd tails, a 2-D [N, 80] level
SIZES = [(1,), (63,), (2**18 - 1,), (2**19,), (2**19 + 4099,), (9001, 80)]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_the_bits_of_paddles_kernels(ops, shape, threads):
    rng = np.random.default_rng(int(np.prod(shape)))
    values = rng.standard_normal(shape).astype("float32") * 12  # beyond softplus' threshold 20
    values.flat[:4] = [0.0, -0.0, np.inf, -np.inf] if values.size >= 4 else values.flat[:4]
    x = paddle.to_tensor(values)
    assert_same_bits(ops.threaded_sigmoid(x, threads), F.sigmoid(x), "sigmoid")
    assert_same_bits(ops.threaded_softplus(x, 1.0, 20.0, threads), F.softplus(x), "softplus")


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("size", [1, 2**19 + 4099])
def test_lookup_and_bincount_are_gathers_and_counts(ops, size, threads):
    rng = np.random.default_rng(size)
    table = paddle.to_tensor(rng.standard_normal(60).astype("float32"))
    index = paddle.to_tensor(rng.integers(0, 60, size).astype("int32"))
    assert_same_bits(
        ops.threaded_lookup(table, index, threads), paddle.gather(table, index), "lookup"
    )
    counts = ops.threaded_bincount(index, 60, threads)
    assert counts.dtype == paddle.int64
    np.testing.assert_array_equal(counts.numpy(), paddle.bincount(index, minlength=60).numpy())


def test_lookup_and_bincount_name_a_value_out_of_range(ops):
    table, index = paddle.ones([4]), paddle.to_tensor(np.array([0, 3, 4], "int32"))
    with pytest.raises(OSError, match="index 4 outside the table of 4"):
        ops.threaded_lookup(table, index, 2)
    with pytest.raises(OSError, match=r"value 4 outside \[0, 4\)"):
        ops.threaded_bincount(index, 4, 2)


def test_the_functions_use_the_threads_only_where_they_apply(ops, monkeypatch):
    calls = []
    monkeypatch.setattr(threaded_ops.cpp_ops, "math_threads", lambda: 2)
    real = ops.threaded_softplus

    class Spy:
        threaded_sigmoid = ops.threaded_sigmoid

        @staticmethod
        def threaded_softplus(*args):
            calls.append(args[-1])
            return real(*args)

    monkeypatch.setattr(threaded_ops, "_ops", Spy)
    big = paddle.randn([threaded_ops.MIN_ELEMENTS])
    assert_same_bits(threaded_ops.softplus(big), F.softplus(big), "softplus")
    assert calls == [2]
    threaded_ops.softplus(big[:100])  # small: Paddle's call
    needs_grad = paddle.randn([threaded_ops.MIN_ELEMENTS])
    needs_grad.stop_gradient = False
    out = threaded_ops.softplus(needs_grad)  # differentiable: Paddle's op
    assert not out.stop_gradient
    with paddle.no_grad():
        threaded_ops.softplus(needs_grad)
    assert calls == [2, 2]


def test_a_kernel_that_gives_other_numbers_is_not_used(monkeypatch, caplog):
    class Wrong:
        @staticmethod
        def threaded_sigmoid(x, threads):
            return F.sigmoid(x)

        @staticmethod
        def threaded_softplus(x, beta, threshold, threads):
            return F.softplus(x) * 1.5  # e.g. attributes read with another type

    monkeypatch.setattr(threaded_ops, "_ops", None)
    monkeypatch.setattr(threaded_ops.cpp_ops, "build", lambda *a, **k: Wrong)
    with caplog.at_level("INFO", logger=threaded_ops.__name__):
        assert threaded_ops.load_ops() is None
    assert "does not give Paddle's numbers" in caplog.text
    big = paddle.randn([threaded_ops.MIN_ELEMENTS])
    assert_same_bits(threaded_ops.softplus(big), F.softplus(big), "fallback")


def test_a_failed_build_keeps_paddles_call(tmp_path, monkeypatch, caplog):
    broken = tmp_path / threaded_ops.SOURCE.name
    broken.write_text('#include "paddle/extension.h"\nint broken( {\n')
    monkeypatch.setattr(threaded_ops, "SOURCE", broken)
    monkeypatch.setattr(threaded_ops, "_ops", None)
    monkeypatch.setenv("PPDET_GHM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(threaded_ops.cpp_ops, "math_threads", lambda: 2)
    with caplog.at_level("INFO", logger=threaded_ops.__name__):
        big = paddle.randn([threaded_ops.MIN_ELEMENTS])
        assert_same_bits(threaded_ops.sigmoid(big), F.sigmoid(big), "fallback")
    assert f"building {broken.name} in" in caplog.text  # the reason, once, in the log
