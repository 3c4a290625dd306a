"""The ``>>>`` examples of the public entry points run and print what they say."""

import doctest
import os

import pytest

from ppdet_ghm import builder
from ppdet_ghm.losses import ghm
from tests.helpers import REPO


@pytest.mark.parametrize(
    "obj", [ghm.GHMCLoss, ghm.GHMRLoss, builder.build_model], ids=lambda o: o.__qualname__
)
def test_docstring_example(obj, monkeypatch):
    monkeypatch.chdir(REPO)  # the examples use repository paths
    finder = doctest.DocTestFinder(recurse=False)
    (test,) = finder.find(obj, obj.__qualname__, globs={})
    assert test.examples, f"{obj.__qualname__} has no example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test, out=lambda text: print(text, end=""))
    result = runner.summarize(verbose=False)
    assert result.failed == 0 and result.attempted == len(test.examples), os.linesep
