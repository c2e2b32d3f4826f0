"""The runnable examples in the plasticity docstrings (golden values written by hand) hold."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["", ".traces", ".stdp", ".factors", ".bounds", ".rstdp"]


@pytest.mark.parametrize("suffix", MODULES)
def test_docstring_examples(suffix):
    module = importlib.import_module("hybridtune.learners.plasticity" + suffix)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0
