"""Hugging Face module kinds recognised by structure: every tiny family, a renamed class, and what is not a kind."""

from collections import Counter

import pytest
import torch
from torch import nn

from hybridtune.conversion import ConversionConfig, convert
from hybridtune.module_kinds import (
    is_attention,
    is_conv1d,
    is_fused_experts,
    is_moe_block,
    linear_dims,
    norm_gain_offset,
    norm_kind,
)
from hybridtune.testing import tiny_model


def _kinds(model: nn.Module) -> Counter:
    found = Counter()
    for module in model.modules():
        kind = norm_kind(module)
        found.update({f"norm:{kind}": kind is not None, "conv1d": is_conv1d(module), "attention": is_attention(module),
                      "experts": is_fused_experts(module), "moe": is_moe_block(module),
                      "gain_offset": norm_gain_offset(module) > 0})
    return +found  # drop zero counts


# per family, two layers: the norms of each block, the q / k norms where the family has them, the final norm
EXPECTED = {
    "llama": {"norm:rms": 2 * 2 + 1, "attention": 2},
    "qwen3": {"norm:rms": 4 * 2 + 1, "attention": 2},
    "gemma3": {"norm:rms": 6 * 2 + 1, "attention": 2, "gain_offset": 6 * 2 + 1},
    "llama4": {"norm:rms": 2 * 2 + 1, "norm:l2": 1, "attention": 2, "experts": 1, "moe": 1},
    "gpt2": {"norm:layer": 2 * 2 + 1, "attention": 2, "conv1d": 4 * 2},
}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_every_tiny_family_has_the_kinds_its_architecture_has(family):
    assert dict(_kinds(tiny_model(family))) == EXPECTED[family]


def test_conversion_modules_are_not_mistaken_for_norms():
    # the threshold strategies have an eps and no parameters, like an L2 norm: they must not be counted as one
    converted = convert(tiny_model("llama"), ConversionConfig(compensation=False))
    assert _kinds(converted)["norm:rms"] == 5 and "norm:l2" not in _kinds(converted)


def test_structure_not_class_name_decides():
    class MyOwnRMSNorm(nn.Module):  # a new family's norm: same structure, unknown name
        def __init__(self):
            super().__init__()
            self.weight, self.variance_epsilon = nn.Parameter(torch.ones(8)), 1e-6

    class NotANormalisation(nn.Module):  # "Norm" in the name, but a 2-D weight
        def __init__(self):
            super().__init__()
            self.weight, self.eps = nn.Parameter(torch.ones(8, 8)), 1e-6

    assert norm_kind(MyOwnRMSNorm()) == "rms" and norm_kind(NotANormalisation()) is None
    assert norm_kind(nn.LayerNorm(8, elementwise_affine=False)) == "layer" and norm_kind(nn.RMSNorm(8)) == "rms"
    assert norm_gain_offset(MyOwnRMSNorm()) == 0.0


def test_linear_dims_of_linear_and_conv1d():
    from transformers.pytorch_utils import Conv1D

    assert linear_dims(nn.Linear(3, 5)) == (3, 5) and linear_dims(Conv1D(5, 3)) == (3, 5)
    assert linear_dims(nn.Embedding(4, 4)) is None and not is_conv1d(nn.Linear(3, 5))
