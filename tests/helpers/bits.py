"""Bit-for-bit comparison of float32 arrays, for ops that must give Paddle's own numbers."""

import numpy as np


def assert_same_bits(a, b, what):
    """``a`` and ``b`` (tensors or arrays) have one shape, are float32 and equal to the bit."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, what
    assert a.dtype == b.dtype == np.float32, what
    np.testing.assert_array_equal(a.view(np.int32), b.view(np.int32), err_msg=what)
