"""Shared step-13 data (tests.helpers.step13: the CI prefix's tiny set), prepared once."""

import pytest

from align import step13_train
from tests.helpers.step13 import STEP13_TINY_DATA


@pytest.fixture(scope="session")
def step13_data_root(tmp_path_factory):
    """A data root holding the tiny set's arrays (``--prepare`` once per session)."""
    root = str(tmp_path_factory.mktemp("step13_data"))
    assert step13_train.main(["--prepare", "--data-root", root, *STEP13_TINY_DATA]) == 0
    return root
