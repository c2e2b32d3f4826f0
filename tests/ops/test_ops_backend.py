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


def _pretend_gpu(monkeypatch, registered):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (9, 0))
    monkeypatch.setattr(backend, "_register_cuda", lambda: registered.append(True))


def test_auto_on_an_unverified_gpu_keeps_the_reference_and_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("HYBRIDTUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(backend.parity, "PACKAGE_STAMPS", tmp_path / "none.json")
    registered = []
    _pretend_gpu(monkeypatch, registered)
    info = backend.set_backend("auto")
    assert info["active"] == "torch" and not registered
    assert "parity check on sm_90" in info["reason"] and "gpu_check.sh" in info["reason"]


def test_auto_on_a_stamped_gpu_loads_the_kernel(monkeypatch, tmp_path):
    monkeypatch.setenv("HYBRIDTUNE_CACHE", str(tmp_path))
    registered = []
    _pretend_gpu(monkeypatch, registered)
    backend.parity.write_stamp("sm_90", {"tests": 40, "failures": 0, "errors": 0, "skipped": 0}, device="H100")
    info = backend.set_backend("auto")
    assert info["active"] == "cuda" and registered == [True]


def test_a_failed_or_empty_parity_run_writes_no_stamp(tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDTUNE_CACHE", str(tmp_path))
    for counts in ({"tests": 40, "failures": 1}, {"tests": 3, "skipped": 3}, {"tests": 5, "errors": 2}):
        with pytest.raises(ValueError, match="no stamp written"):
            backend.parity.write_stamp("sm_90", counts, device="H100")
    assert backend.parity.find_stamp("sm_90") is None


def test_junit_counts_sum_the_suites(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text('<testsuites><testsuite tests="5" failures="1" errors="0" skipped="2"/>'
                   '<testsuite tests="3" failures="0" errors="1" skipped="0"/></testsuites>')
    assert backend.parity.junit_counts(xml) == {"tests": 8, "failures": 1, "errors": 1, "skipped": 2}
