"""Shared pytest setup: ppdet_ghm is imported once so every registered module is in ppdet's workspace."""

import paddle
import pytest

import ppdet_ghm  # noqa: F401


@pytest.fixture
def set_math_threads():
    """Sets the math library's threads for one test, then back to Paddle's start value."""
    yield paddle.base.core.set_num_threads
    paddle.base.core.set_num_threads(
        paddle.get_flags(["FLAGS_paddle_num_threads"])["FLAGS_paddle_num_threads"]
    )
