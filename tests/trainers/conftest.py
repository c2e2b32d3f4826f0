"""Trainer tests: a fresh Accelerate state per test, and the helper modules handed out as fixtures.

Test modules are not importable by name (``--import-mode=importlib``), so ``trainer_helpers.py`` and
``toy_learners.py`` are loaded from their files here; subprocess scripts put this directory on ``sys.path``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _fresh_accelerate_state(fresh_accelerate_state):
    """Every trainer test gets fresh Accelerate singletons (tests/conftest.py)."""
    yield


@pytest.fixture(scope="session")
def th():
    """``trainer_helpers``: lora_model, pattern_blocks, run_config, tiny_model_dir, corpus_file, tiny_run_yaml."""
    return _load("trainer_helpers")


@pytest.fixture(scope="session")
def toy():
    """``toy_learners``: HebbianA, a local learner that records spikes and updates lora_A without backward."""
    return _load("toy_learners")


@pytest.fixture(scope="session")
def helpers_dir() -> Path:
    return HERE
