"""Reading a W&B sweep file: structure, search method, metric, parameters and the trial command.

A sweep file is standard W&B sweep YAML; hybridtune adds only rules that keep the file usable both by the W&B agent
and by the local runner:

- parameter names are dotted run-config keys (``learners.0.lr``, ``adapter.r``), never nested ``parameters``;
- ``command`` is a YAML *block* list ending with ``${args}`` (``${args}`` becomes ``--key=value`` for every swept
  parameter; ``hybridtune train CONFIG [overrides...]`` takes them last);
- ``metric.name`` is required: the summary picks the best trial by it.

Every problem is a :class:`~hybridtune.config_schema.ConfigError` naming the sweep file and the key (exit code 2).

Example:
    >>> spec = parse_sweep({"program": "cfg.yaml", "method": "grid",
    ...                     "metric": {"name": "eval/ppl", "goal": "minimize"},
    ...                     "command": ["${env}", "hybridtune", "train", "${program}", "${args}"],
    ...                     "parameters": {"adapter.r": {"values": [4, 8]}}})
    >>> spec.names, spec.base_config, spec.goal
    (['adapter.r'], 'cfg.yaml', 'minimize')
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hybridtune.config_schema import ConfigError, closest

METHODS = ("grid", "random", "bayes")
GOALS = ("minimize", "maximize")
TOP_LEVEL_KEYS = ("program", "method", "metric", "parameters", "command", "name", "description", "project", "entity",
                  "early_terminate", "run_cap", "controller", "job", "image_uri")
# distribution -> (required keys, defaults); mirrors the W&B sweep schema
DISTRIBUTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "constant": (("value",), {}),
    "categorical": (("values",), {}),
    "int_uniform": (("min", "max"), {}),
    "uniform": (("min", "max"), {}),
    "q_uniform": (("min", "max"), {"q": 1.0}),
    "log_uniform": (("min", "max"), {}),
    "log_uniform_values": (("min", "max"), {}),
    "q_log_uniform": (("min", "max"), {"q": 1.0}),
    "q_log_uniform_values": (("min", "max"), {"q": 1.0}),
    "inv_log_uniform": (("min", "max"), {}),
    "inv_log_uniform_values": (("min", "max"), {}),
    "normal": ((), {"mu": 0.0, "sigma": 1.0}),
    "q_normal": ((), {"mu": 0.0, "sigma": 1.0, "q": 1.0}),
    "log_normal": ((), {"mu": 0.0, "sigma": 1.0}),
    "q_log_normal": ((), {"mu": 0.0, "sigma": 1.0, "q": 1.0}),
    "beta": ((), {"a": 1.0, "b": 1.0}),
    "q_beta": ((), {"a": 1.0, "b": 1.0, "q": 1.0}),
}
PARAM_KEYS = ("distribution", "value", "values", "probabilities", "min", "max", "q", "mu", "sigma", "a", "b")
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
ARGS_MACRO = "${args}"
# argument macros other than ${args}: they bypass the --key=value form every rank parses identically
OTHER_ARG_MACROS = ("${args_no_equals}", "${args_no_hyphens}", "${args_no_boolean_flags}", "${args_json}",
                    "${args_json_file}", "${args_append_hydra}", "${args_override_hydra}")
BLOCK_LIST_HELP = ("write `command` as a YAML block list, one item per line, ending with ${args}:\n"
                   "command:\n  - ${env}\n  - hybridtune\n  - train\n  - configs/my_run.yaml\n  - ${args}")


@dataclass
class SweepSpec:
    """A validated sweep file. ``raw`` is the mapping as written (what the W&B server receives, command aside)."""

    raw: dict[str, Any]
    method: str
    metric: str
    goal: str
    parameters: dict[str, dict[str, Any]]  # name -> normalised spec with an explicit ``distribution``
    command: list[str]
    program: str | None = None
    base_config: str | None = None
    run_cap: int | None = None
    source: str | None = None
    names: list[str] = field(default_factory=list)

    def error(self, message: str, key: str = "") -> ConfigError:
        return ConfigError(message, key, self.source)


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep YAML file (structure only; :func:`check_parameters` checks it against RunConfig)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep file not found: {p}", source=str(p))
    text = p.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        if re.search(r"^\s*command\s*:\s*\[", text, re.MULTILINE):
            raise ConfigError(f"`command` is a flow list ([...]) that YAML cannot read (its ${{...}} macros clash "
                              f"with flow syntax); {BLOCK_LIST_HELP}", "command", str(p)) from None
        raise ConfigError(f"not valid YAML: {exc}", source=str(p)) from None
    if not isinstance(data, dict):
        raise ConfigError("a sweep file is a mapping (program, method, metric, parameters, command)", source=str(p))
    if "command" in data and _command_is_flow(text):
        raise ConfigError(f"`command` is written as a flow list ([...]); {BLOCK_LIST_HELP}", "command", str(p))
    return parse_sweep(data, source=str(p))


def _command_is_flow(text: str) -> bool:
    root = yaml.compose(text)
    for key_node, value_node in getattr(root, "value", []):
        if getattr(key_node, "value", None) == "command" and isinstance(value_node, yaml.SequenceNode):
            return bool(value_node.flow_style)
    return False


def parse_sweep(data: dict[str, Any], source: str | None = None) -> SweepSpec:
    """Check the structure of a sweep mapping and normalise it into a :class:`SweepSpec`."""
    def fail(message: str, key: str = "") -> ConfigError:
        return ConfigError(message, key, source)

    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise fail(f"unknown sweep key; {closest(str(key), list(TOP_LEVEL_KEYS))}"
                       f"valid keys: {', '.join(TOP_LEVEL_KEYS)}", str(key))
    method = data.get("method")
    if method not in METHODS:
        raise fail(f"got {method!r}; {closest(str(method), list(METHODS))}allowed: {', '.join(METHODS)}", "method")
    metric = data.get("metric")
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str) or not metric["name"]:
        raise fail("needed to pick the best trial: metric: {name: <key in the trial's report.json>, goal: minimize}",
                   "metric")
    goal = metric.get("goal", "minimize")
    if goal not in GOALS:
        raise fail(f"got {goal!r}; allowed: minimize, maximize", "metric.goal")
    run_cap = data.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or isinstance(run_cap, bool) or run_cap < 1):
        raise fail(f"got {run_cap!r}; must be a positive integer", "run_cap")
    program = data.get("program")
    if program is not None and not isinstance(program, str):
        raise fail(f"got {program!r}; expected a path (a run config YAML or a script)", "program")
    parameters = _parse_parameters(data.get("parameters"), fail)
    command = _parse_command(data.get("command"), program, fail)
    base = base_config_of(command, program)
    return SweepSpec(raw=copy.deepcopy(data), method=method, metric=metric["name"], goal=goal, parameters=parameters,
                     command=command, program=program, base_config=base, run_cap=run_cap, source=source,
                     names=list(parameters))


def _parse_parameters(params: Any, fail) -> dict[str, dict[str, Any]]:
    if not isinstance(params, dict) or not params:
        raise fail("give at least one parameter, named by its dotted run-config key, e.g.\n"
                   "parameters:\n  adapter.r: {values: [4, 8]}", "parameters")
    out: dict[str, dict[str, Any]] = {}
    for name, spec in params.items():
        key = f"parameters.{name}"
        if not isinstance(name, str) or not name:
            raise fail(f"parameter names are dotted run-config keys (e.g. adapter.r), got {name!r}", key)
        if not isinstance(spec, dict):
            raise fail(f"got {spec!r}; expected a mapping such as {{values: [...]}} or {{value: x}}", key)
        if "parameters" in spec:
            raise fail(f"nested `parameters` are not supported: name the leaf by its dotted key instead "
                       f"(e.g. {name}.<sub-key>: {{values: [...]}})", key)
        for k in spec:
            if k not in PARAM_KEYS:
                raise fail(f"unknown parameter field; {closest(str(k), list(PARAM_KEYS))}"
                           f"valid fields: {', '.join(PARAM_KEYS)}", f"{key}.{k}")
        out[name] = normalise_parameter(spec, key, fail)
    return out


def normalise_parameter(spec: dict[str, Any], key: str, fail) -> dict[str, Any]:
    """Fill in ``distribution`` (inferred as W&B does) and its defaults; check the required fields."""
    spec = dict(spec)
    dist = spec.get("distribution")
    if dist is None:
        if "values" in spec:
            dist = "categorical"
        elif "value" in spec:
            dist = "constant"
        elif "min" in spec and "max" in spec:
            both_int = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
            dist = "int_uniform" if both_int else "uniform"
        else:
            raise fail("give `values: [...]`, `value: x`, `min`/`max`, or a `distribution`", key)
    if dist not in DISTRIBUTIONS:
        raise fail(f"got {dist!r}; {closest(str(dist), list(DISTRIBUTIONS))}allowed: {', '.join(DISTRIBUTIONS)}",
                   f"{key}.distribution")
    required, defaults = DISTRIBUTIONS[dist]
    for r in required:
        if r not in spec:
            raise fail(f"distribution {dist} needs `{r}`", key)
    for k, v in defaults.items():
        spec.setdefault(k, v)
    spec["distribution"] = dist
    if dist == "categorical":
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise fail(f"got {values!r}; expected a non-empty list", f"{key}.values")
        probs = spec.get("probabilities")
        if probs is not None and (not isinstance(probs, list) or len(probs) != len(values)
                                  or any(not isinstance(x, (int, float)) or x < 0 for x in probs)
                                  or abs(sum(probs) - 1.0) > 1e-6):
            raise fail("expected one non-negative probability per value, summing to 1", f"{key}.probabilities")
    for k in ("min", "max", "q", "mu", "sigma", "a", "b"):
        if k in spec and (not isinstance(spec[k], (int, float)) or isinstance(spec[k], bool)):
            raise fail(f"got {spec[k]!r}; expected a number", f"{key}.{k}")
    if "min" in spec and "max" in spec and spec["min"] > spec["max"]:
        raise fail(f"min ({spec['min']}) is greater than max ({spec['max']})", key)
    if dist == "int_uniform" and not all(float(spec[k]).is_integer() for k in ("min", "max")):
        raise fail("int_uniform needs integer min and max", key)
    if dist.endswith("_values") and spec["min"] <= 0:
        raise fail(f"{dist} needs min > 0 (it samples the logarithm)", f"{key}.min")
    if spec.get("q", 1) <= 0 or spec.get("sigma", 1) <= 0 or spec.get("a", 1) <= 0 or spec.get("b", 1) <= 0:
        raise fail("q, sigma, a and b must be > 0", key)
    return spec


def _parse_command(command: Any, program: str | None, fail) -> list[str]:
    if command is None:
        if program is None:
            raise fail("give `command` (a block list ending with ${args}) or `program`", "command")
        if Path(program).suffix in (".yaml", ".yml"):
            raise fail(f"program {program!r} is a run config, which the W&B default command would run with "
                       f"python; {BLOCK_LIST_HELP.replace('configs/my_run.yaml', '${program}')}", "command")
        return list(DEFAULT_COMMAND)
    if isinstance(command, str):
        raise fail(f"got a single string; {BLOCK_LIST_HELP}", "command")
    if not isinstance(command, list) or not command:
        raise fail(f"got {command!r}; {BLOCK_LIST_HELP}", "command")
    items = []
    for i, item in enumerate(command):
        if isinstance(item, (dict, list)) or item is None:
            raise fail(f"item {i} is {item!r}, not a word (an unquoted ${{...}} inside a flow list reads as a "
                       f"mapping); {BLOCK_LIST_HELP}", "command")
        items.append(str(item))
    for macro in OTHER_ARG_MACROS:
        if macro in items:
            raise fail(f"{macro} is not supported: use ${{args}}, which passes --key=value (the form "
                       f"`hybridtune train` and every rank parse identically)", "command")
    if ARGS_MACRO not in items:
        raise fail(f"missing ${{args}}, so the swept values would never reach the trial; {BLOCK_LIST_HELP}",
                   "command")
    if items.count(ARGS_MACRO) > 1 or items[-1] != ARGS_MACRO:
        raise fail(f"${{args}} must be the last item, once: `hybridtune train CONFIG [overrides...]` takes the "
                   f"overrides last; {BLOCK_LIST_HELP}", "command")
    if "${program}" in items and program is None:
        raise fail("the command uses ${program} but the sweep file has no `program`", "program")
    return items


def base_config_of(command: list[str], program: str | None) -> str | None:
    """The run config the trials start from: the word after ``train`` in ``hybridtune train CONFIG``, else the first
    ``.yaml``/``.yml`` word of the command (``${program}`` resolved). ``None`` means the RunConfig defaults."""
    words = [program if (w == "${program}" and program) else w for w in command]
    for i, word in enumerate(words[:-1]):
        if word in ("train", "continual") and i > 0 and Path(words[i - 1]).name.startswith("hybridtune"):
            nxt = words[i + 1]
            if not nxt.startswith("-") and not nxt.startswith("${"):
                return nxt
    for word in words:
        if Path(word).suffix in (".yaml", ".yml") and not word.startswith("-"):
            return word
    return None


__all__ = ["SweepSpec", "load_sweep", "parse_sweep", "normalise_parameter", "base_config_of", "METHODS",
           "DISTRIBUTIONS", "DEFAULT_COMMAND", "ARGS_MACRO", "BLOCK_LIST_HELP"]
