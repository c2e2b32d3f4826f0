"""The plasticity numerics give the same results on CUDA as on the CPU (float32 on the GPU vs float64 on the CPU)."""

from __future__ import annotations

import pytest
import torch

from hybridtune.learners.plasticity import (
    dense_reward_weights,
    projected_factor_grads,
    rstdp_update,
    stdp_update,
    trace_scan,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU"),
]


def _close(gpu, cpu, rel):
    assert gpu.is_cuda
    assert (gpu.double().cpu() - cpu).abs().max() <= rel * cpu.abs().max()


def test_cuda_matches_cpu(ref):
    s_pre, s_post = ref.random_spikes((4, 4096, 64), rate=0.2, seed=1), ref.random_spikes((4, 4096, 48), seed=2)
    reset, mask = ref.random_flags((4, 4096), 0.002, seed=3), ref.random_flags((4, 4096), 0.97, seed=4)
    reward = torch.randn(4, 4096, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    dev = torch.device("cuda")

    def on(x):
        return x.to(dev, torch.float32) if x.is_floating_point() else x.to(dev)

    _close(
        trace_scan(on(s_pre), 0.95, reset=on(reset), mask=on(mask)),
        trace_scan(s_pre, 0.95, reset=reset, mask=mask),
        1e-5,
    )
    kw = dict(decay_pre=0.9, decay_post=0.8, a_minus=1.05)
    _close(
        stdp_update(on(s_pre), on(s_post), reset=on(reset), mask=on(mask), **kw),
        stdp_update(s_pre, s_post, reset=reset, mask=mask, **kw),
        1e-5,
    )
    _close(
        dense_reward_weights(on(reward), 0.99, mask=on(mask), reset=on(reset)),
        dense_reward_weights(reward, 0.99, mask=mask, reset=reset),
        1e-4,
    )
    _close(
        rstdp_update(on(s_pre), on(s_post), on(reward), gamma=0.99, mask=on(mask), reset=on(reset), **kw),
        rstdp_update(s_pre, s_post, reward, gamma=0.99, mask=mask, reset=reset, **kw),
        1e-4,
    )
    lora_a = torch.randn(8, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    lora_b = torch.randn(48, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    x_pre, x_post = trace_scan(s_pre, 0.9), trace_scan(s_post, 0.8)
    cpu = projected_factor_grads(s_pre, x_pre, s_post, x_post, lora_a, lora_b, scaling=2.0)
    gpu = projected_factor_grads(on(s_pre), on(x_pre), on(s_post), on(x_post), on(lora_a), on(lora_b), scaling=2.0)
    for g_, c_ in zip(gpu, cpu):
        _close(g_, c_, 1e-5)
