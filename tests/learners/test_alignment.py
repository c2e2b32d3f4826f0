"""gradient_alignment: the cosine of a learner's update with −∇loss, per group, leaving everything as it was."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
from hybridtune.learners import SetupContext, SurrogateLearner
from hybridtune.learners.alignment import gradient_alignment, parameter_group
from hybridtune.learners.eprop import EpropLearner
from hybridtune.learners.plasticity.stdp_learner import STDPLearner
from hybridtune.testing import tiny_batch, tiny_model

_spec = importlib.util.spec_from_file_location("eprop_tests", Path(__file__).parent / "eprop" / "test_eprop_learner.py")
eprop_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eprop_tests)


def batches(n=2):
    out = []
    for seed in range(n):
        b = tiny_batch(batch=2, seq=12, seed=seed)
        b["labels"] = b["input_ids"].clone()
        out.append(b)
    return out


def setup(learner, model, pattern):
    owned = {n: p for n, p in model.named_parameters() if re.search(pattern, n)}
    learner.setup(SetupContext(model=model, accelerator=None, params=owned, total_steps=10))
    return owned


def test_sgd_on_the_surrogate_gradient_is_exactly_downhill_and_nothing_changes():
    model = get_spiking_peft_model(tiny_model("llama"), spiking_lora_config(r=4, neuron="lif", threshold=0.02,
                                                                           init_b_std=0.05,
                                                                           target_modules=["q_proj", "down_proj"]))
    sgd = SurrogateLearner(lr=0.1, optimizer="SGD", optimizer_kwargs={"momentum": 0.9}, scheduler="constant",
                           max_grad_norm=None)
    owned = setup(sgd, model, "lora_")
    before = {n: p.detach().clone() for n, p in owned.items()}
    state = sgd.optimizer.state_dict()
    cos = gradient_alignment(model, [sgd], batches())
    assert set(cos) == {"lora_A", "lora_B", "threshold", "decay", "all", "all_owned"}
    for group, value in cos.items():
        assert value == pytest.approx(1.0, abs=1e-5), group
    assert all(torch.equal(p, before[n]) and p.grad is None for n, p in owned.items())
    assert sgd.optimizer.state_dict()["state"] == state["state"] == {}  # the momentum buffers were not kept


def test_eprop_with_an_exact_path_is_downhill_and_stdp_is_not():
    model = eprop_tests.adapted(eprop_tests.one_block(), ["down_proj"], "lif")
    ep = EpropLearner(params="lora_", lr=1.0, optimizer="SGD", scheduler="constant", max_grad_norm=None)
    setup(ep, model, "lora_")
    cos = gradient_alignment(model, [ep], batches())
    assert cos["all"] > 0.99 and cos["lora_B"] > 0.99
    assert ep.steps == 0  # its state was restored

    stdp = STDPLearner(params="lora_", lr=0.05)
    model2 = eprop_tests.adapted(eprop_tests.one_block(), ["down_proj"], "lif")
    setup(stdp, model2, "lora_")
    cos = gradient_alignment(model2, [stdp], batches())
    assert -1.0 <= cos["all"] <= 1.0 and cos["all"] < 0.9


def test_the_cosine_is_taken_over_the_parameters_the_learner_updates():
    """eprop with top_blocks=1 on a 2-block model leaves block 0 at its initial values: ``all`` and the groups judge
    block 1 only (there the residual path is exact, so plain SGD is downhill), ``all_owned`` counts block 0's zero
    update against its gradient too."""
    model = get_spiking_peft_model(tiny_model("llama"), spiking_lora_config(r=4, neuron="lif", threshold=0.02,
                                                                           init_b_std=0.05,
                                                                           target_modules=["down_proj"]))
    ep = EpropLearner(params="lora_B", lr=1.0, optimizer="SGD", scheduler="constant", max_grad_norm=None,
                      top_blocks=1)
    owned = setup(ep, model, "lora_B")
    learning = ep.learning_parameters()
    assert len(owned) == 2 and list(learning) == [n for n in owned if ".layers.1." in n]
    cos = gradient_alignment(model, [ep], batches())
    assert set(cos) == {"lora_B", "all", "all_owned"}
    assert cos["all"] == pytest.approx(cos["lora_B"]) and cos["all"] > 0.99
    assert 0 < cos["all_owned"] < cos["all"] - 0.01


def test_the_estimate_is_the_rule_before_its_optimizer():
    """Adam rescales each coordinate, so an exact gradient's *update* is not parallel to it; the *estimate* (what the
    learner hands its optimizer) still is. Plain SGD makes the two equal; a learner without a torch optimizer (stdp)
    reports its update as its estimate."""
    model = get_spiking_peft_model(tiny_model("llama"), spiking_lora_config(r=4, neuron="lif", threshold=0.02,
                                                                           init_b_std=0.05,
                                                                           target_modules=["q_proj", "down_proj"]))
    adam = SurrogateLearner(lr=0.1, optimizer="AdamW", scheduler="constant", max_grad_norm=1e-3)  # clipping kept
    setup(adam, model, "lora_")
    cos = gradient_alignment(model, [adam], batches(), estimate=True)
    assert cos["estimate/all"] == pytest.approx(1.0, abs=1e-5) and cos["estimate/lora_A"] == pytest.approx(1.0, abs=1e-5)
    assert cos["all"] < 0.99  # Adam's first step is the gradient's sign
    assert "estimate/all" not in gradient_alignment(model, [adam], batches())

    model = eprop_tests.adapted(eprop_tests.one_block(), ["down_proj"], "lif")
    ep = EpropLearner(params="lora_", lr=1.0, optimizer="SGD", scheduler="constant", max_grad_norm=None)
    setup(ep, model, "lora_")
    cos = gradient_alignment(model, [ep], batches(), estimate=True)
    for group in ("all", "lora_A", "lora_B"):
        assert cos[f"estimate/{group}"] == pytest.approx(cos[group], abs=1e-5)

    model = eprop_tests.adapted(eprop_tests.one_block(), ["down_proj"], "lif")
    stdp = STDPLearner(params="lora_", lr=0.05)
    setup(stdp, model, "lora_")
    cos = gradient_alignment(model, [stdp], batches(), estimate=True)
    assert cos["estimate/all"] == pytest.approx(cos["all"], abs=1e-6)


def test_groups_and_errors():
    assert [parameter_group(n) for n in ("x.lora_A.w", "x.lora_B.w", "n.log_threshold", "n.decay_logit", "z")] == [
        "lora_A", "lora_B", "threshold", "decay", "other"]
    with pytest.raises(ValueError, match="setup"):
        gradient_alignment(torch.nn.Linear(2, 2), [SurrogateLearner()], batches())


def test_learners_name_their_parameters_through_the_protocol():
    """gradient_alignment reads owned_parameters(), never private state; a learner that does not name its parameters
    gets a TypeError that says what to implement."""
    from hybridtune.learners import ParameterOwner, owned_parameters

    model = get_spiking_peft_model(tiny_model("llama"), spiking_lora_config(r=4, neuron="lif", threshold=0.02,
                                                                           target_modules=["down_proj"]))
    for lrn in (SurrogateLearner(), EpropLearner(), STDPLearner()):
        assert isinstance(lrn, ParameterOwner) and owned_parameters(lrn) == {}
        owned = setup(lrn, model, "lora_")
        got = owned_parameters(lrn)
        assert set(got) == set(owned) and all(got[n] is owned[n] for n in owned)

    class Anonymous:
        name, params, uses_backward = "anon", "all", False

    with pytest.raises(TypeError, match="owned_parameters"):
        gradient_alignment(model, [Anonymous()], batches())
