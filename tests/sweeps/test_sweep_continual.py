"""Sweeps sweep any run-config key, ``continual.*`` included, and run ``hybridtune continual`` trials."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridtune.cli import main
from hybridtune.config import ConfigError
from hybridtune.sweeps import parse_sweep, validate_sweep
from hybridtune.sweeps.params import check_parameters

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "configs" / "sweeps" / "continual_replay.yaml"


def test_the_continual_replay_sweep_checks_and_lists_its_trials(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the spec names its base config relative to the repository
    spec = validate_sweep(SPEC)
    assert spec.names == ["continual.replay.share"] and spec.base_config == "configs/continual/replay.yaml"
    assert main(["sweep", str(SPEC), "--local", "--check"]) == 0
    out = capsys.readouterr().out
    assert "3 trials" in out and "--continual.replay.share=0.5" in out


def _spec(parameters: dict) -> object:
    return parse_sweep({"program": str(ROOT / "configs" / "continual" / "replay.yaml"), "method": "grid",
                        "metric": {"name": "metrics/avg_final_ppl"},
                        "command": ["${env}", "hybridtune", "continual", "${program}", "${args}"],
                        "parameters": parameters}, source="sweep.yaml")


@pytest.mark.parametrize(("parameters", "key", "fragment"), [
    ({"continual.replay.shar": {"values": [0.1]}}, "parameters.continual.replay.shar", "did you mean 'share'"),
    ({"continual.replay.share": {"values": [0.1, 1.5]}}, "parameters.continual.replay.share", "[0, 1)"),
    ({"continual.adapter": {"values": ["per_task"]}}, "parameters.continual.adapter", "replay"),
])
def test_bad_continual_parameters_fail_before_any_trial(parameters, key, fragment):
    with pytest.raises(ConfigError) as err:
        check_parameters(_spec(parameters))
    assert err.value.key.startswith(key) and fragment in str(err.value) and "sweep.yaml" in str(err.value)
