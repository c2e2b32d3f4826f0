"""The GPU benchmark and check script, on any machine: the eager baseline computes the op's forward, and without a
GPU both refuse clearly and write nothing."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from hybridtune.ops.reference import spike_lora_forward

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "spike_lora_op.py"
CHECK = ROOT / "benchmarks" / "gpu_check.sh"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("spike_lora_op_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("neuron", ["mt", "heaviside", "lif"])
def test_eager_baseline_matches_the_reference_forward(bench, neuron):
    a = bench.make_inputs(24, 32, 8, torch.float64, decode=False, device="cpu", seed=3)
    a["x"] = a["x"].expand(2, -1, -1).contiguous()
    a["reset"] = torch.rand(2, 24, generator=torch.Generator().manual_seed(0)) < 0.2
    a["state"] = torch.randn(2, 8, dtype=torch.float64)
    args = (a["x"], a["weight"], a["bias"], a["lora_A"], a["lora_B"], 2.0, neuron, a["threshold"], a["decay"],
            a["reset"], a["state"], 4)
    out_ref, spikes_ref, _ = spike_lora_forward(*args)
    out, spikes = bench.unfused_spike_lora(*args, "atan", 2.0)
    assert spikes_ref.abs().sum() > 0 and torch.equal(spikes, spikes_ref)
    torch.testing.assert_close(out, out_ref)


def test_eager_baseline_has_gradients_for_the_adapter(bench):
    a = bench.make_inputs(16, 32, 8, torch.float32, decode=True, device="cpu")
    leaves = [a[k].requires_grad_(True) for k in ("x", "lora_A", "lora_B", "threshold")]
    out, _ = bench.unfused_spike_lora(a["x"], a["weight"], a["bias"], a["lora_A"], a["lora_B"], 2.0, "mt",
                                      a["threshold"], a["decay"], None, None, 4, "atan", 2.0)
    grads = torch.autograd.grad(out.square().sum(), leaves)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_lora_bytes_counts_each_tensor_once(bench):
    fwd = bench.lora_bytes(4096, 4096, 16, 2, "fwd")
    assert fwd == 2 * (4096 * 4096 + 2 * 16 * 4096 + 4096 * 16)
    assert bench.lora_bytes(4096, 4096, 16, 2, "fwd_bwd") > 2 * fwd


def test_markdown_table(bench):
    row = dict(phase="decode", tokens=16, width=4096, rank=16, dtype="bfloat16", **{"pass": "fwd"}, fused_ms=0.02,
               speedup_vs_eager=2.5, speedup_vs_compile=None, bandwidth_fraction=0.71)
    table = bench.markdown_table(dict(device="X", copy_bandwidth_gbs=4300.0, neuron="mt", rows=[row]))
    assert "| decode | 16 | 4096 | 16 | bfloat16 | fwd | 0.020 | 2.50x | -x | 0.71 |" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_benchmark_without_cuda_exits_2_and_writes_nothing(bench, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert bench.main(["--quick", "--out", str(out)]) == 2
    assert not out.exists()
    assert "no CUDA device" in capsys.readouterr().err


def test_gpu_check_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(CHECK)], check=True)
    assert os.access(CHECK, os.X_OK)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="checks the no-GPU path")
def test_gpu_check_without_gpu_exits_3_and_writes_nothing(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", str(CHECK)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "no NVIDIA GPU" in proc.stderr
    assert not (tmp_path / "out").exists()
