"""The depth profile of eprop: block ``k`` below the top learns at ``lr · block_decay ** k``, none below ``top_blocks``."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from hybridtune.learners import Observation, SetupContext
from hybridtune.learners.depth import block_index, count_blocks, depth_weights
from hybridtune.learners.eprop import EpropLearner
from hybridtune.testing import tiny_config, tiny_model

_spec = importlib.util.spec_from_file_location("eprop_tests", Path(__file__).parent / "test_eprop_learner.py")
eprop_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eprop_tests)


def test_block_index_count_and_weights_golden():
    assert block_index("base_model.model.model.layers.12.self_attn.o_proj.lora_A.default.weight") == 12
    assert block_index("base_model.model.transformer.h.3.mlp.c_proj.lora_B.default.weight") == 3
    assert block_index("base_model.model.lm_head.weight") is None
    assert count_blocks(tiny_model("llama")) == 2 and count_blocks(tiny_model("gpt2")) == 2
    names = [f"m.layers.{i}.mlp.down_proj.lora_B" for i in range(5)] + ["m.norm.neuron"]
    assert list(depth_weights(names, 5, top_blocks=3, block_decay=0.5).values()) == [0.0, 0.0, 0.25, 0.5, 1.0, 1.0]
    assert set(depth_weights(names, 5).values()) == {1.0}


def four_blocks():
    cfg = tiny_config("llama")
    cfg.num_hidden_layers = 4
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def sgd_update(model, b, pattern, **options):
    """One SGD step at lr 1 without clipping: the update is −(weight × estimate)."""
    owned = {n: p for n, p in model.named_parameters() if re.search(pattern, n)}
    ep = EpropLearner(params=pattern, lr=1.0, optimizer="SGD", scheduler="constant", max_grad_norm=None,
                      feedback="residual", **options)
    ep.setup(SetupContext(model=model, accelerator=None, params=owned, total_steps=1))
    before = {k: p.detach().clone() for k, p in owned.items()}
    with torch.no_grad(), ep.recording(model) as rec:
        model(**{k: b[k] for k in eprop_tests.KEYS})
        ep.observe(Observation(batch=b, token_nll=torch.zeros(1), recording=rec))
    assert ep.step()
    update = {k: before[k] - p.detach().clone() for k, p in owned.items()}
    with torch.no_grad():
        for k, p in owned.items():
            p.copy_(before[k])
    return update, ep


def test_depth_profile_scales_each_blocks_update_by_its_weight_and_freezes_the_rest():
    """Naive parity: the update with top_blocks=3, block_decay=0.5 equals, parameter by parameter, the uniform
    update times 0.5 ** (blocks below the top) -- 0 for the bottom block, whose estimate is never computed."""
    model = eprop_tests.adapted(four_blocks(), ["o_proj", "down_proj"], "lif", learn=True)
    b = eprop_tests.batch()
    pattern = r"(lora_|neuron)"
    uniform, _ = sgd_update(model, b, pattern)
    weighted, ep = sgd_update(model, b, pattern, top_blocks=3, block_decay=0.5)
    assert set(weighted) == set(uniform) and len(uniform) > 8
    for name, step in uniform.items():
        below = 3 - int(re.search(r"layers\.(\d+)\.", name).group(1))
        want = 0.0 if below >= 3 else 0.5 ** below
        assert ep.weights[name] == want
        if want == 0:
            assert torch.equal(weighted[name], torch.zeros_like(step)), name
        else:
            torch.testing.assert_close(weighted[name], want * step, rtol=1e-4, atol=1e-6)  # float32 p - Δ
    moved = {re.search(r"layers\.(\d+)\.", n).group(1) for n, s in uniform.items() if s.abs().sum() > 0}
    assert len(moved) == 4  # every block has an estimate to scale
    assert all(int(re.search(r"layers\.(\d+)\.", t.layer).group(1)) > 0 for t in ep._by_key.values())


def test_depth_options_are_checked():
    with pytest.raises(ValueError, match="top_blocks"):
        EpropLearner(top_blocks=0)
    with pytest.raises(ValueError, match="block_decay"):
        EpropLearner(block_decay=1.5)
    model = eprop_tests.adapted(four_blocks(), ["down_proj"])
    owned = {n: p for n, p in model.named_parameters() if "layers.0." in n and "lora_" in n}
    with pytest.raises(ValueError, match="top_blocks"):
        EpropLearner(params="lora_", top_blocks=2).setup(
            SetupContext(model=model, accelerator=None, params=owned, total_steps=1))
