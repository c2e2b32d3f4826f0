"""The runnable examples in the eprop docstrings (golden values written by hand) hold."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("suffix", [".feedback", ".rule", ".top", ".learner"])
def test_docstring_examples(suffix):
    module = importlib.import_module("hybridtune.learners.eprop" + suffix)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0
