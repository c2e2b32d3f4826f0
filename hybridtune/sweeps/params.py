"""Sweep parameters: grid expansion, seeded random sampling, and checking them against the run config.

The sampling follows the W&B sweep distributions (``uniform``, ``log_uniform_values``, ``q_*`` rounded to multiples
of ``q`` and integers when ``q`` is an integer, ...), so a local random sweep explores the same space the W&B
controller would. :func:`check_parameters` runs before any trial: every parameter must be a run-config key, every
value must have the key's type, and must survive the trip through ``${args}`` (``--key=str(value)`` parsed back by
:func:`hybridtune.config.parse_override`), which is exactly what the trial sees.

Example:
    >>> import random
    >>> sample_value({"distribution": "int_uniform", "min": 2, "max": 4}, random.Random(0)) in (2, 3, 4)
    True
    >>> grid_trials({"a": {"distribution": "categorical", "values": [1, 2]},
    ...              "b": {"distribution": "constant", "value": True}})
    [{'a': 1, 'b': True}, {'a': 2, 'b': True}]
"""

from __future__ import annotations

import itertools
import math
import random
import re
from typing import Any

from hybridtune.config import config_type, load_config, parse_override
from hybridtune.config_schema import ConfigError, coerce

GRID_DISTRIBUTIONS = ("categorical", "constant", "int_uniform", "q_uniform")
_FLOAT_DISTRIBUTIONS = ("uniform", "log_uniform", "log_uniform_values", "inv_log_uniform", "inv_log_uniform_values",
                        "normal", "log_normal", "beta")


def format_arg(name: str, value: Any) -> str:
    """One ``${args}`` item exactly as the W&B agent writes it: ``--name=str(value)``."""
    return f"--{name}={value}"


def _quantize(x: float, q: float) -> float | int:
    v = round(x / q) * q
    return int(v) if isinstance(q, int) else float(v)


def sample_value(spec: dict[str, Any], rng: random.Random) -> Any:
    """One draw from a normalised parameter spec (see :func:`~hybridtune.sweeps.spec.normalise_parameter`)."""
    d = spec["distribution"]
    if d == "constant":
        return spec["value"]
    if d == "categorical":
        values, probs = spec["values"], spec.get("probabilities")
        return rng.choices(values, weights=probs)[0] if probs else rng.choice(values)
    if d == "int_uniform":
        return rng.randint(int(spec["min"]), int(spec["max"]))
    lo, hi = spec.get("min"), spec.get("max")
    if d in ("uniform", "q_uniform"):
        x = rng.uniform(lo, hi)
    elif d in ("log_uniform", "q_log_uniform"):  # min/max are natural logs
        x = math.exp(rng.uniform(lo, hi))
    elif d in ("log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values"):
        x = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    elif d == "inv_log_uniform":  # log(1/x) uniform in [min, max]
        x = math.exp(-rng.uniform(lo, hi))
    elif d in ("normal", "q_normal"):
        x = rng.gauss(spec["mu"], spec["sigma"])
    elif d in ("log_normal", "q_log_normal"):
        x = rng.lognormvariate(spec["mu"], spec["sigma"])
    elif d in ("beta", "q_beta"):
        x = rng.betavariate(spec["a"], spec["b"])
    else:
        raise ValueError(f"unknown distribution {d!r}")
    return _quantize(x, spec["q"]) if d.startswith("q_") else x


def grid_values(name: str, spec: dict[str, Any]) -> list[Any]:
    """The values a grid search takes for one parameter (``values``, ``value``, ``int_uniform``, ``q_uniform``)."""
    d = spec["distribution"]
    if d == "constant":
        return [spec["value"]]
    if d == "categorical":
        return list(spec["values"])
    if d == "int_uniform":
        return list(range(int(spec["min"]), int(spec["max"]) + 1))
    if d == "q_uniform":
        q = spec["q"]
        n = int(math.floor((spec["max"] - spec["min"]) / q + 1e-9))
        return [_quantize(spec["min"] + i * q, q) for i in range(n + 1)]
    raise ConfigError(f"grid search cannot enumerate distribution {d!r}; use values: [...] (or int_uniform / "
                      f"q_uniform), or method: random", f"parameters.{name}")


def grid_trials(parameters: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Cartesian product of every parameter's grid values, in file order (the last parameter varies fastest)."""
    names = list(parameters)
    axes = [grid_values(n, parameters[n]) for n in names]
    return [dict(zip(names, combo)) for combo in itertools.product(*axes)]


def random_trials(parameters: dict[str, dict[str, Any]], count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` independent seeded draws of every parameter."""
    rng = random.Random(seed)
    return [{n: sample_value(s, rng) for n, s in parameters.items()} for _ in range(count)]


def representative_values(spec: dict[str, Any], seed: int = 0, draws: int = 4) -> list[Any]:
    """Values that stand for a parameter's range when checking types: all listed values, or bounds plus draws."""
    d = spec["distribution"]
    if d == "constant":
        return [spec["value"]]
    if d == "categorical":
        return list(spec["values"])
    rng = random.Random(seed)
    out = [sample_value(spec, rng) for _ in range(draws)]
    if d in ("int_uniform",):
        out += [int(spec["min"]), int(spec["max"])]
    elif d in ("uniform", "log_uniform_values", "inv_log_uniform_values"):
        out += [spec["min"], spec["max"]]
    return out


def _round_trip(name: str, tp: Any, value: Any) -> Any:
    try:
        expected = coerce(tp, value, name)
    except ConfigError as exc:
        raise ConfigError(f"value {value!r} has the wrong type: {exc.detail}", name) from None
    arg = format_arg(name, value)
    _, parsed = parse_override(arg)
    try:
        got = coerce(tp, parsed, name)
    except ConfigError:
        got = _Mismatch(parsed)
    if got != expected:
        raise ConfigError(f"value {value!r} reaches the trial as `{arg}` (W&B ${{args}} writes str(value)), which "
                          f"parses back as {parsed!r}; choose a value that survives that round trip", name)
    return expected


class _Mismatch:
    def __init__(self, value: Any):
        self.value = value

    def __eq__(self, other: Any) -> bool:
        return False

    __hash__ = None  # type: ignore[assignment]


def _distribution_fits(name: str, tp: Any, spec: dict[str, Any]) -> None:
    d = spec["distribution"]
    q_is_int = isinstance(spec.get("q"), int)
    gives_floats = d in _FLOAT_DISTRIBUTIONS or (d.startswith("q_") and not q_is_int)
    if tp is int and gives_floats:
        raise ConfigError(f"distribution {d} gives floats but {name} is an integer; use int_uniform, a q_* "
                          f"distribution with an integer q, or values: [...]", name)


def check_parameters(spec, trials: list[dict[str, Any]] | None = None, seed: int = 0) -> None:
    """Fail before the first trial if a parameter is not a run-config key, a value has the wrong type or would not
    survive ``${args}``, or the resulting config is invalid (checked with :func:`hybridtune.config.load_config` on
    the sweep's base config, one parameter at a time, and on every given trial)."""
    def named(exc: ConfigError, name: str) -> ConfigError:
        key = exc.key if exc.key.startswith(name) else name
        return ConfigError(exc.detail, f"parameters.{key}", spec.source)

    for name, pspec in spec.parameters.items():
        try:
            tp = config_type(name)
            _distribution_fits(name, tp, pspec)
            for value in representative_values(pspec, seed):
                _round_trip(name, tp, value)
        except ConfigError as exc:
            raise named(exc, name) from None
    base = spec.base_config
    first = {n: representative_values(p, seed)[0] for n, p in spec.parameters.items()}
    combos: list[tuple[str | None, dict[str, Any]]] = [(None, first)]
    for name, pspec in spec.parameters.items():
        combos += [(name, {**first, name: v}) for v in representative_values(pspec, seed)]
    combos += [(None, t) for t in (trials or [])]
    try:
        load_config(base, [])
    except ConfigError as exc:
        raise ConfigError(f"the base config named in the sweep command is not usable ({exc}); relative paths are "
                          f"taken from the directory you run the sweep in", "command", spec.source) from None
    for culprit, combo in combos:
        try:
            load_config(base, [format_arg(k, v) for k, v in combo.items()])
        except ConfigError as exc:
            who = culprit or _culprit(exc.key, combo)
            raise ConfigError(f"{exc.detail} (at {exc.key or 'the config'}, with {_show(combo)})",
                              f"parameters.{who}", spec.source) from None
        except (IndexError, KeyError, TypeError, AttributeError) as exc:
            who = culprit or ", ".join(combo)
            raise ConfigError(f"cannot apply {_show(combo)} to the base config {base or '(defaults)'}: "
                              f"{type(exc).__name__}: {exc} (e.g. learners.N needs N+1 learners in the base "
                              f"config)", f"parameters.{who}", spec.source) from None


def _culprit(key: str, combo: dict[str, Any]) -> str:
    norm = re.sub(r"\[(\d+)\]", r".\1", key or "")
    hits = [n for n in combo if norm == n or norm.startswith(n + ".") or n.startswith(norm + ".")]
    return ", ".join(hits or list(combo))


def _show(combo: dict[str, Any]) -> str:
    return " ".join(format_arg(k, v) for k, v in combo.items())


__all__ = ["format_arg", "sample_value", "grid_values", "grid_trials", "random_trials", "representative_values",
           "config_type", "check_parameters", "GRID_DISTRIBUTIONS"]  # config_type: hybridtune.config's, re-exported
