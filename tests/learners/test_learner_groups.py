"""Composition by parameter group: one split, a partition of the trainable parameters, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hybridtune.learners import ParameterGroupError, assign_parameters, learner, split_parameters


def toy() -> nn.Module:
    m = nn.Module()
    m.layer0 = nn.ModuleDict({"lora_A": nn.Linear(3, 2, bias=False), "lora_B": nn.Linear(2, 3, bias=False)})
    m.layer1 = nn.ModuleDict({"lora_A": nn.Linear(3, 2, bias=False), "lora_B": nn.Linear(2, 3, bias=False)})
    m.base = nn.Linear(3, 3)
    m.base.requires_grad_(False)  # frozen: never part of any group
    return m


def names(groups):
    return [sorted(g) for g in groups]


def test_regex_groups_partition_the_trainable_parameters():
    groups = split_parameters(toy(), ["lora_A", "lora_B"])
    assert names(groups) == [["layer0.lora_A.weight", "layer1.lora_A.weight"],
                             ["layer0.lora_B.weight", "layer1.lora_B.weight"]]


def test_rest_takes_what_others_leave_whatever_the_order():
    a = split_parameters(toy(), ["rest", r"layer1\..*lora_B"])
    b = split_parameters(toy(), [r"layer1\..*lora_B", "rest"])
    assert names(a) == names(b)[::-1]
    assert names(a)[1] == ["layer1.lora_B.weight"] and len(names(a)[0]) == 3


def test_list_of_regexes_is_a_union():
    (group, rest) = split_parameters(toy(), [["layer0.*lora_A", "layer1.*lora_B"], "rest"])
    assert sorted(group) == ["layer0.lora_A.weight", "layer1.lora_B.weight"]
    assert len(rest) == 2


def test_overlap_is_rejected_naming_both_learners():
    with pytest.raises(ParameterGroupError) as err:
        split_parameters(toy(), ["all", "lora_B"], ["stdp", "surrogate"])
    assert "surrogate and stdp both claim 2 parameter(s)" in str(err.value)


def test_unowned_trainable_parameters_are_rejected():
    with pytest.raises(ParameterGroupError) as err:
        split_parameters(toy(), ["lora_A"])
    assert "2 trainable parameter(s) belong to no learner" in str(err.value)
    assert "layer0.lora_B.weight" in str(err.value)


@pytest.mark.parametrize("specs, message", [
    (["lora_C"], "matches no trainable parameter"),
    (["rest", "rest"], "only one learner may claim 'rest'"),
    (["all", "rest"], "'rest' is left with no parameters"),
    (["[unclosed"], "not a valid regex"),
    ([[]], "empty params spec"),
])
def test_bad_specs(specs, message):
    with pytest.raises(ParameterGroupError, match=message):
        split_parameters(toy(), specs)


def test_a_model_without_trainable_parameters():
    with pytest.raises(ParameterGroupError, match="no trainable parameters"):
        split_parameters(nn.Linear(2, 2).requires_grad_(False), ["all"])


def test_assign_parameters_uses_each_learners_spec_on_a_peft_model():
    from peft import LoraConfig, get_peft_model

    from hybridtune.testing import tiny_model

    model = get_peft_model(tiny_model("gpt2"), LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    a, b = assign_parameters(model, [learner("surrogate", params="lora_A"), learner("surrogate", params="rest")])
    assert a and b and all("lora_A" in n for n in a) and all("lora_B" in n for n in b)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(a) | set(b) == trainable
    assert all(isinstance(p, torch.nn.Parameter) for p in a.values())
