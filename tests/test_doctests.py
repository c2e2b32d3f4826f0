"""Every runnable example in the package's docstrings holds (they are documentation, so they must not rot)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import hybridtune

MODULES = sorted(m.name for m in pkgutil.walk_packages(hybridtune.__path__, "hybridtune."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS, report=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"


def test_the_walk_finds_the_packages():
    assert {"hybridtune.neurons.graded", "hybridtune.conversion.outliers.sink", "hybridtune.cli"} <= set(MODULES)
