"""Sweep parameters: grid / random expansion, and the checks against RunConfig that run before any trial."""

from __future__ import annotations

import math
import random

import pytest

from hybridtune.config_schema import ConfigError
from hybridtune.sweeps.params import (
    check_parameters,
    format_arg,
    grid_trials,
    grid_values,
    random_trials,
    sample_value,
)
from hybridtune.sweeps.spec import normalise_parameter, parse_sweep


def fail(message, key=""):
    return ConfigError(message, key)


def p(**spec):
    return normalise_parameter(spec, "parameters.x", fail)


def spec_with(parameters, base=None, method="grid"):
    command = ["${env}", "hybridtune", "train", str(base), "${args}"] if base else \
        ["${env}", "${interpreter}", "${program}", "${args}"]
    return parse_sweep({"method": method, "metric": {"name": "m"}, "program": "t.py", "command": command,
                        "parameters": parameters}, source="sweep.yaml")


def test_grid_is_the_cartesian_product_in_file_order():
    trials = grid_trials({"a": p(values=[1, 2, 3]), "b": p(values=[True, False]), "c": p(value="x")})
    assert len(trials) == 6
    assert trials[:2] == [{"a": 1, "b": True, "c": "x"}, {"a": 1, "b": False, "c": "x"}]
    assert {t["a"] for t in trials} == {1, 2, 3}


def test_grid_discretises_int_uniform_and_q_uniform_and_refuses_continuous():
    assert grid_values("x", p(distribution="int_uniform", min=2, max=5)) == [2, 3, 4, 5]
    assert grid_values("x", p(distribution="q_uniform", min=0.0, max=1.0, q=0.25)) == [0.0, 0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ConfigError, match="method: random") as err:
        grid_values("x", p(distribution="uniform", min=0.0, max=1.0))
    assert err.value.key == "parameters.x"


def test_random_trials_are_seeded():
    params = {"lr": p(distribution="log_uniform_values", min=1e-4, max=1e-2), "r": p(values=[4, 8, 16])}
    assert random_trials(params, 5, seed=3) == random_trials(params, 5, seed=3)
    assert random_trials(params, 5, seed=3) != random_trials(params, 5, seed=4)


@pytest.mark.parametrize("spec, check", [
    (dict(distribution="uniform", min=-1.0, max=2.0), lambda v: -1 <= v <= 2),
    (dict(distribution="int_uniform", min=3, max=5), lambda v: isinstance(v, int) and 3 <= v <= 5),
    (dict(distribution="q_uniform", min=0, max=10, q=2), lambda v: isinstance(v, int) and v % 2 == 0),
    (dict(distribution="q_uniform", min=0.0, max=1.0, q=0.1), lambda v: abs(v * 10 - round(v * 10)) < 1e-9),
    (dict(distribution="log_uniform", min=0.0, max=2.0), lambda v: 1 <= v <= math.exp(2)),
    (dict(distribution="log_uniform_values", min=1e-4, max=1e-2), lambda v: 1e-4 <= v <= 1e-2),
    (dict(distribution="inv_log_uniform_values", min=0.1, max=10.0), lambda v: 0.1 <= v <= 10),
    (dict(distribution="inv_log_uniform", min=0.0, max=2.0), lambda v: math.exp(-2) <= v <= 1),
    (dict(distribution="q_log_uniform_values", min=2, max=64, q=2), lambda v: isinstance(v, int) and v % 2 == 0),
    (dict(distribution="normal", mu=5.0, sigma=0.001), lambda v: abs(v - 5) < 0.01),
    (dict(distribution="log_normal", mu=0.0, sigma=1.0), lambda v: v > 0),
    (dict(distribution="beta", a=2.0, b=2.0), lambda v: 0 <= v <= 1),
    (dict(values=["a", "b"], probabilities=[0.0, 1.0]), lambda v: v == "b"),
])
def test_every_distribution_samples_in_its_support(spec, check):
    rng = random.Random(0)
    draws = [sample_value(p(**spec), rng) for _ in range(200)]
    assert all(check(v) for v in draws), draws[:5]


def test_log_uniform_values_is_uniform_in_log_space():
    rng = random.Random(1)
    draws = [sample_value(p(distribution="log_uniform_values", min=1e-4, max=1e-2), rng) for _ in range(4000)]
    below = sum(v < 1e-3 for v in draws) / len(draws)  # 1e-3 is the geometric midpoint
    assert 0.45 < below < 0.55


def test_good_parameters_pass_including_booleans_nested_keys_and_lists():
    spec = spec_with({"adapter.r": {"values": [4, 8]}, "conversion.compensation": {"values": [True, False]},
                      "learners.0.options.tau_pre": {"values": [2.0, 8.0]},
                      "learners.0.lr": {"distribution": "log_uniform_values", "min": 0.0001, "max": 0.003},
                      "conversion.coverage": {"values": [["ffn_act"], ["ffn_act", "linear_inputs"]]},
                      "adapter.neuron": {"values": ["mt", "lif"]}})
    check_parameters(spec, grid_trials({k: v for k, v in spec.parameters.items() if k != "learners.0.lr"}))


@pytest.mark.parametrize("parameters, key, needle", [
    ({"adapter.thresold": {"values": [0.1]}}, "parameters.adapter.thresold", "did you mean 'threshold'"),
    ({"adaptr.r": {"values": [4]}}, "parameters.adaptr", "did you mean 'adapter'"),
    ({"adapter.r": {"values": [4, "big"]}}, "parameters.adapter.r", "expected an integer"),
    ({"adapter.r": {"distribution": "uniform", "min": 2.0, "max": 8.0}}, "parameters.adapter.r", "int_uniform"),
    ({"adapter.neuron": {"values": ["mt", "izhikevich"]}}, "parameters.adapter.neuron", "allowed"),
    ({"tracking.run_name": {"values": ["yes"]}}, "parameters.tracking.run_name", "round trip"),
    ({"adapter.r": {"values": [0, 4]}}, "parameters.adapter.r", "rank must be >= 1"),
    ({"learners.1.lr": {"values": [0.001]}}, "parameters.learners.1.lr", "learners.N"),
    ({"learners.lr": {"values": [0.001]}}, "parameters.learners.lr", "learners.0.lr"),
    ({"adapter.r.x": {"values": [1]}}, "parameters.adapter.r.x", "not a section"),
])
def test_bad_parameters_fail_naming_the_key(parameters, key, needle):
    with pytest.raises(ConfigError) as err:
        check_parameters(spec_with(parameters))
    assert err.value.key.startswith(key), (err.value.key, str(err.value))
    assert needle in str(err.value) and "sweep.yaml" in str(err.value)


def test_values_are_checked_against_the_base_config(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("learners:\n  - name: surrogate\n    params: lora_A\n  - name: surrogate\n    params: lora_B\n")
    check_parameters(spec_with({"learners.1.lr": {"values": [0.01]}}, base=base))
    missing = spec_with({"adapter.r": {"values": [4]}}, base=tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="base config") as err:
        check_parameters(missing)
    assert err.value.key == "command"


def test_format_arg_is_the_agent_form():
    assert format_arg("adapter.r", 8) == "--adapter.r=8"
    assert format_arg("conversion.compensation", False) == "--conversion.compensation=False"
