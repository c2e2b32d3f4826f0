"""Sweep files: structure, command forms, base-config detection, launcher rewriting, macro expansion."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridtune.config_schema import ConfigError
from hybridtune.sweeps.command import apply_launcher, expand_command, wrap_with_recorder
from hybridtune.sweeps.spec import load_sweep, parse_sweep

GOOD = """\
program: configs/sweeps/base.yaml
method: grid
metric:
  name: eval_ppl_after
  goal: minimize
parameters:
  adapter.r:
    values: [4, 8]
  learners.0.lr:
    distribution: log_uniform_values
    min: 0.0001
    max: 0.003
command:
  - ${env}
  - hybridtune
  - train
  - ${program}
  - ${args}
"""

SWEEPS = sorted((Path(__file__).parents[2] / "configs" / "sweeps").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_file_parses_and_finds_the_base_config(tmp_path):
    spec = load_sweep(write(tmp_path, GOOD))
    assert spec.method == "grid" and spec.metric == "eval_ppl_after" and spec.goal == "minimize"
    assert spec.names == ["adapter.r", "learners.0.lr"]
    assert spec.parameters["adapter.r"]["distribution"] == "categorical"
    assert spec.parameters["learners.0.lr"]["distribution"] == "log_uniform_values"
    assert spec.base_config == "configs/sweeps/base.yaml"
    assert spec.command[-1] == "${args}"


@pytest.mark.parametrize("command, base", [
    (["${env}", "hybridtune", "train", "runs/a.yaml", "${args}"], "runs/a.yaml"),
    (["${env}", "python", "-m", "hybridtune.cli", "train", "b.yml", "${args}"], "b.yml"),
    (["${env}", "${interpreter}", "${program}", "${args}"], None),
])
def test_base_config_detection(command, base):
    spec = parse_sweep({"method": "grid", "metric": {"name": "m"}, "program": "train.py", "command": command,
                        "parameters": {"adapter.r": {"value": 4}}})
    assert spec.base_config == base


def test_missing_distribution_is_inferred_like_wandb():
    spec = parse_sweep({"method": "random", "metric": {"name": "m"}, "program": "x.py",
                        "parameters": {"a.i": {"min": 1, "max": 4}, "a.f": {"min": 0.1, "max": 0.5},
                                       "a.c": {"value": 3}}})
    assert [spec.parameters[k]["distribution"] for k in ("a.i", "a.f", "a.c")] == ["int_uniform", "uniform",
                                                                                  "constant"]
    assert spec.command == ["${env}", "${interpreter}", "${program}", "${args}"]


@pytest.mark.parametrize("command_yaml", [
    "command: [${env}, hybridtune, train, c.yaml, ${args}]\n",          # YAML cannot even read it
    'command: ["${env}", "hybridtune", "train", "c.yaml", "${args}"]\n',  # readable, but not the block form
])
def test_flow_list_command_is_refused_with_the_block_form(tmp_path, command_yaml):
    text = GOOD.split("command:")[0] + command_yaml
    with pytest.raises(ConfigError) as err:
        load_sweep(write(tmp_path, text))
    message = str(err.value)
    assert "command" in message and "block list" in message and "  - ${args}" in message
    assert str(tmp_path / "sweep.yaml") in message


@pytest.mark.parametrize("command, needle", [
    (["${env}", "hybridtune", "train", "c.yaml"], "missing ${args}"),
    (["${env}", "hybridtune", "train", "${args}", "c.yaml"], "must be the last item"),
    (["${env}", "hybridtune", "train", "c.yaml", "${args_no_boolean_flags}"], "not supported"),
    ("${env} hybridtune train c.yaml ${args}", "single string"),
])
def test_bad_commands(command, needle):
    with pytest.raises(ConfigError) as err:
        parse_sweep({"method": "grid", "metric": {"name": "m"}, "command": command,
                     "parameters": {"adapter.r": {"value": 4}}})
    assert needle in str(err.value) and err.value.key == "command"


@pytest.mark.parametrize("data, key, needle", [
    ({"method": "grdi"}, "method", "did you mean 'grid'"),
    ({"metric": None}, "metric", "best trial"),
    ({"metric": {"name": "m", "goal": "lowest"}}, "metric.goal", "minimize"),
    ({"parameters": {"adapter": {"parameters": {"r": {"values": [4]}}}}}, "parameters.adapter", "dotted key"),
    ({"parameters": {"adapter.r": {"distribution": "log_uniform_value", "min": 1, "max": 2}}},
     "parameters.adapter.r.distribution", "did you mean 'log_uniform_values'"),
    ({"parameters": {"adapter.r": {"vales": [4]}}}, "parameters.adapter.r.vales", "did you mean 'values'"),
    ({"parameters": {"adapter.r": {"min": 8, "max": 4}}}, "parameters.adapter.r", "greater than max"),
    ({"programm": "x.py"}, "programm", "did you mean 'program'"),
    ({"program": "cfg.yaml", "command": None}, "command", "run config"),
])
def test_structural_errors_name_the_key(data, key, needle):
    base = {"method": "grid", "metric": {"name": "m"}, "program": "x.py",
            "parameters": {"adapter.r": {"values": [4]}}}
    base.update(data)
    base = {k: v for k, v in base.items() if not (k == "command" and v is None)}
    with pytest.raises(ConfigError) as err:
        parse_sweep(base, source="s.yaml")
    assert err.value.key == key and needle in str(err.value) and "s.yaml" in str(err.value)


def test_expand_command_matches_the_wandb_agent():
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    params = {"adapter.r": 8, "conversion.compensation": False, "learners.0.options.tau_pre": 4.5,
              "conversion.coverage": ["ffn_act", "attention"], "tracking.run_name": "a b"}
    words = expand_command(["${env}", "hybridtune", "train", "c.yaml", "${args}"], params, program=None)
    agent = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})["args"]
    assert words == ["/usr/bin/env", "hybridtune", "train", "c.yaml", *agent]


def test_expand_command_envvar_and_program():
    words = expand_command(["${env}", "${interpreter}", "${program}", "--tag=${envvar:HT_TAG}", "${args}"],
                           {"a": 1}, program="p.py", environ={"HT_TAG": "x1"})
    assert words[2:] == ["p.py", "--tag=x1", "--a=1"]


def test_launchers_rewrite_the_template():
    cmd = ["${env}", "hybridtune", "train", "c.yaml", "${args}"]
    assert apply_launcher(cmd, "none", 4) == cmd
    acc = apply_launcher(cmd, "accelerate", 2, cpu=True)
    assert acc[:4] == ["${env}", "ACCELERATE_USE_CPU=1", "accelerate", "launch"] and "--multi_gpu" in acc
    assert acc[-5:] == ["-m", "hybridtune.cli", "train", "c.yaml", "${args}"]
    assert "--cpu" in apply_launcher(cmd, "accelerate", 1, cpu=True)
    gpu = apply_launcher(cmd, "accelerate", 2, cpu=False)
    assert "ACCELERATE_USE_CPU=1" not in gpu and "--num_processes=2" in gpu
    script = apply_launcher(["${env}", "${interpreter}", "${program}", "${args}"], "torchrun", 2, cpu=True,
                            program="t.py")
    assert script[-2:] == ["${program}", "${args}"] and "--nproc_per_node=2" in script
    with pytest.raises(ConfigError, match="already starts a launcher"):
        apply_launcher(["${env}", "accelerate", "launch", "t.py", "${args}"], "torchrun", 2, cpu=True)
    with pytest.raises(ConfigError, match="cannot put"):
        apply_launcher(["${env}", "bash", "run.sh", "${args}"], "torchrun", 2, cpu=True)


def test_recorder_wraps_the_command(tmp_path):
    words = wrap_with_recorder(["${env}", "hybridtune", "train", "c.yaml", "${args}"], tmp_path, "eval/ppl",
                               timeout=30, quiet=True)
    assert words[1:3] == ["-m", "hybridtune.sweeps.trial"]
    assert f"--out={tmp_path.resolve()}" in words and "--metric=eval/ppl" in words and "--timeout=30" in words
    assert words[words.index("--") + 1:] == ["${env}", "hybridtune", "train", "c.yaml", "${args}"]


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_shipped_sweep_files_are_valid(path, monkeypatch):
    from hybridtune.sweeps import validate_sweep

    monkeypatch.chdir(Path(__file__).parents[2])  # paths in the files are relative to the repository root
    spec = validate_sweep(path.relative_to(Path(__file__).parents[2]))
    assert spec.base_config and Path(spec.base_config).is_file()


def test_there_are_shipped_sweep_files():
    assert len(SWEEPS) >= 3
