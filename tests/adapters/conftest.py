"""Helpers shared by the adapter tests, handed out as fixtures (test modules are not importable by name)."""

from __future__ import annotations

import pytest
import torch

from hybridtune.adapters import BottleneckNeuron, get_spiking_peft_model, spiking_lora_config
from hybridtune.testing import tiny_model

TARGETS = {"gpt2": ["c_attn", "c_proj", "c_fc"]}
DEFAULT_TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]


def targets(family: str) -> list[str]:
    return TARGETS.get(family, DEFAULT_TARGETS)


def perturb(model, seed: int = 0) -> None:
    """Give every adapter nonzero B, varied thresholds and decays, so a lossy save/load would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        for m in model.modules():
            if isinstance(m, BottleneckNeuron):
                m.set_threshold(torch.rand(m.rank, generator=g) * 0.1 + 0.02)
                if hasattr(m, "decay_logit"):
                    m.decay_logit.copy_(torch.randn(m.rank, generator=g))


def spiking(family: str = "llama", neuron: str = "lif", seed: int = 0, **kwargs):
    cfg = spiking_lora_config(r=4, neuron=neuron, target_modules=kwargs.pop("target_modules", targets(family)),
                              threshold=0.05, **kwargs)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # peft initialises lora_A from the global generator
        model = get_spiking_peft_model(tiny_model(family, seed=seed), cfg)
    perturb(model, seed)
    return model.eval()


@pytest.fixture
def make_spiking():
    """``make_spiking(family, neuron, seed, **spiking_lora_config kwargs)`` -> a perturbed spiking peft model."""
    return spiking


@pytest.fixture
def family_targets():
    return targets
