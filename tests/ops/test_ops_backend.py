"""Backend selection: explicit, visible, never a silent downgrade from a requested ``cuda``."""

from __future__ import annotations

import pytest
import torch

from hybridtune.ops import backend


@pytest.fixture(autouse=True)
def restore_backend(monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    saved = (backend._STATE.configured, backend._STATE.active, backend._STATE.reason)
    yield
    backend._STATE.configured, backend._STATE.active, backend._STATE.reason = saved


def test_torch_backend_is_reported():
    info = backend.set_backend("torch")
    assert info["active"] == "torch" and info["requested"] == "torch" and info["source"] == "config"
    assert "reference" in info["reason"]


def test_env_var_is_read_and_validated(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "torch")
    info = backend.set_backend(None)
    assert info["source"] == "env" and info["active"] == "torch" and backend.ENV_VAR in info["reason"]
    monkeypatch.setenv(backend.ENV_VAR, "triton")
    with pytest.raises(ValueError, match="HYBRIDTUNE_OP_BACKEND='triton'.*auto, torch, cuda"):
        backend.set_backend(None)


def test_config_wins_over_env(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "cuda")
    assert backend.set_backend("torch")["active"] == "torch"


def test_bad_config_name():
    with pytest.raises(ValueError, match="backend='fast'"):
        backend.set_backend("fast")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_cuda_requested_without_gpu_raises():
    with pytest.raises(RuntimeError, match="no CUDA device.*'auto' or 'torch'"):
        backend.set_backend("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_auto_without_gpu_uses_reference_and_says_why():
    info = backend.set_backend("auto")
    assert info["active"] == "torch" and "no CUDA device" in info["reason"]
