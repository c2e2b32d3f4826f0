"""Typed construction of nested dataclasses from plain dicts (YAML), with errors that name the key and the file.

This is the machinery only; :mod:`hybridtune.config` declares the run schema. Supported field types: ``bool``,
``int``, ``float``, ``str``, ``Literal[...]``, ``X | None``, ``list[X]``, ``tuple[X, ...]``, ``dict[str, X]``,
``typing.Any`` and nested dataclasses.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Inner:
    ...     lr: float = 1e-3
    >>> build(Inner, {"lr": 2}).lr
    2.0
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """Invalid configuration. ``str(err)`` names the source file (if any), the dotted key and what is allowed."""

    def __init__(self, message: str, key: str = "", source: str | None = None):
        self.key, self.source, self.detail = key, source, message
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key + ': ' if key else ''}{message}")

    def with_source(self, source: str | None) -> ConfigError:
        return ConfigError(self.detail, self.key, source)


def closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f"did you mean '{match[0]}'? " if match else ""


def _check_finite(value: Any, key: str) -> None:
    """Reject nan / inf anywhere (also inside free-form options): no setting of the project means "infinite", and a
    non-finite number only surfaces much later as NaN weights or a crash. ``null`` is the way to say "no limit"."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"got {value!r}; must be a finite number (use null where the key allows no limit)", key)
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{key}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{key}[{i}]")


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def is_union(tp: Any) -> bool:
    """``X | Y`` or ``Optional[X]``."""
    return get_origin(tp) in (Union, types.UnionType)


_is_union = is_union


def coerce(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against ``tp`` and return it normalised (ints accepted for floats, lists for tuples)."""
    if tp is Any:
        _check_finite(value, key)
        return value
    origin = get_origin(tp)
    if _is_union(tp):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(option, value, key)
            except ConfigError as exc:
                errors.append(exc.detail)
        if len(errors) == 1:  # X | None: the one real type's reason (e.g. "must be finite") says more
            raise ConfigError(f"{errors[0]}" + ("" if "null" in errors[0] else "; or null"), key)
        raise ConfigError(f"got {value!r}; expected {' or '.join(_type_name(o) for o in options)}", key)
    if origin is Literal:
        if value not in get_args(tp):
            allowed = ", ".join(repr(a) for a in get_args(tp))
            hint = closest(str(value), [str(a) for a in get_args(tp)])
            raise ConfigError(f"got {value!r}; {hint}allowed: {allowed}", key)
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return build(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"got {value!r}; expected a list", key)
        (item_tp, *_rest) = get_args(tp) or (Any,)
        items = [coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"got {value!r}; expected a mapping", key)
        _k, val_tp = get_args(tp) or (str, Any)
        return {str(k): coerce(val_tp, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"got {value!r}; expected true or false", key)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"got {value!r}; expected an integer", key)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _check_finite(value, key)
            return float(value)
        raise ConfigError(f"got {value!r}; expected a number", key)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a run name given as 123
        raise ConfigError(f"got {value!r}; expected a string", key)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"got {value!r}; expected {_type_name(tp)}", key)


def build(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from mapping ``data``, validating every key; runs ``cls.validate()`` if defined."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping for section {cls.__name__}, got {data!r}", prefix)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            raise ConfigError(
                f"unknown key; {closest(str(name), list(fields))}valid keys here: {', '.join(sorted(fields))}", key)
        kwargs[name] = coerce(hints[name], value, key)
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ConfigError as exc:  # a section may name its keys in full (conversion.divisor): keep those
            full = exc.key if not prefix or exc.key.startswith(prefix + ".") else f"{prefix}.{exc.key}" if exc.key \
                else prefix
            raise ConfigError(exc.detail, full) from None
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-data form of a dataclass tree (tuples become lists) for YAML / JSON / W&B."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def field_type(cls: type, dotted: str) -> Any:
    """The declared type at ``dotted`` inside ``cls`` (walking nested dataclasses), or ConfigError if absent."""
    tp: Any = cls
    walked = []
    for part in dotted.split("."):
        while _is_union(tp):  # Optional[Section]
            tp = next(a for a in get_args(tp) if a is not type(None))
        if not dataclasses.is_dataclass(tp):
            if get_origin(tp) is dict or tp is Any:
                return Any
            raise ConfigError(f"'{'.'.join(walked)}' is not a section and has no sub-keys", dotted)
        hints = get_type_hints(tp)
        if part not in hints:
            where = ".".join(walked) or "the top level"
            raise ConfigError(f"unknown key; {closest(part, list(hints))}valid keys in {where}: "
                              f"{', '.join(sorted(hints))}", dotted)
        tp = hints[part]
        walked.append(part)
    return tp


__all__ = ["ConfigError", "build", "coerce", "to_dict", "field_type", "closest", "is_union"]
