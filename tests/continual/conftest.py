"""Continual tests share the trainer tests' fixtures: helper modules, toy learners, a fresh Accelerate state."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location("_trainer_fixtures", Path(__file__).parents[1] / "trainers" / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

_fresh_accelerate_state = _fixtures._fresh_accelerate_state
th = _fixtures.th
toy = _fixtures.toy
helpers_dir = _fixtures.helpers_dir


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Every continual test module (tiny models): one intra-op thread (several threads on a busy 2-core machine are ~100x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
