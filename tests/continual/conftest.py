"""Continual tests share the trainer tests' fixtures: helper modules, toy learners, a fresh Accelerate state."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_trainer_fixtures", Path(__file__).parents[1] / "trainers" / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

_fresh_accelerate_state = _fixtures._fresh_accelerate_state
th = _fixtures.th
toy = _fixtures.toy
helpers_dir = _fixtures.helpers_dir
