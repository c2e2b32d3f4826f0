"""The one override parser: ``key.sub=value`` / ``--key.sub=value`` items, read the same way by ``train``,
``quickstart``, ``continual``, ``validate``, ``convert`` and every sweep trial.

An item's value is YAML (``[a, b]``, ``null``, ``true``), with the strings W&B's ``${args}`` makes of Python values
read back (``1e-05``, ``inf``, ``None``). A key is a dotted path through the config's sections; a digit addresses an
item of a list (``learners.0.lr``). The key is checked against the declared types before it is applied, so a typo
fails with the nearest valid key.

Example:
    >>> parse_override("--learners.0.lr=1e-05")
    ('learners.0.lr', 1e-05)
    >>> apply_overrides({"trainer": {"steps": 3}}, ["trainer.steps=5", "continual.domains=[a, b]"])
    {'trainer': {'steps': 5}, 'continual': {'domains': ['a', 'b']}}
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from hybridtune.config_schema import ConfigError, closest, is_union

# key.sub=value or --key.sub=value; a bare --flag is not an override
OVERRIDE = re.compile(r"^(--)?[A-Za-z_][\w-]*(\.[\w-]+)*=")
_FLOAT = re.compile(r"^[-+]?((\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|inf|nan)$", re.IGNORECASE)


def is_override(arg: str) -> bool:
    """True for ``key.sub=value`` / ``--key.sub=value`` (what a command line collects as overrides)."""
    return bool(OVERRIDE.match(arg))


def parse_override(item: str) -> tuple[str, Any]:
    """``key.sub=value`` or ``--key.sub=value`` -> (dotted key, YAML-parsed value)."""
    text = item[2:] if item.startswith("--") else item
    if "=" not in text:
        raise ConfigError(f"override {item!r} is not of the form key.sub=value (or --key.sub=value)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key, _python_scalar(value)


def _python_scalar(value: Any) -> Any:
    """Undo what ``str()`` does to Python values on the way through W&B's ``${args}``.

    YAML 1.1 reads ``1e-05`` (no dot) and ``inf`` as strings, and ``str(None)`` is ``'None'``; sweeps produce all three.
    """
    if isinstance(value, str):
        if value == "None":
            return None
        if _FLOAT.match(value) and not value.isdigit():
            return float(value)
    return value


def key_type(root: type, dotted: str) -> Any:
    """The declared type at ``dotted`` inside dataclass ``root``; a digit indexes a list. ConfigError naming the
    key, the nearest valid one and the valid keys where it goes wrong."""
    tp: Any = root
    walked: list[str] = []
    for part in dotted.split("."):
        while is_union(tp):  # Optional[Section]
            tp = next(a for a in get_args(tp) if a is not type(None))
        if get_origin(tp) in (list, tuple):
            if not part.isdigit():
                where = ".".join(walked)
                raise ConfigError(f"{where} is a list: address an item by its index, e.g. {where}.0.{part}", dotted)
            tp = (get_args(tp) or (Any,))[0]
        elif part.isdigit():
            raise ConfigError(f"'{'.'.join(walked) or 'the top level'}' is not a list; only lists take an index",
                              dotted)
        elif dataclasses.is_dataclass(tp):
            hints = {f.name: get_type_hints(tp)[f.name] for f in dataclasses.fields(tp) if f.init}
            if part not in hints:
                where = ".".join(walked) or "the top level"
                raise ConfigError(f"unknown key; {closest(part, list(hints))}valid keys in {where}: "
                                  f"{', '.join(sorted(hints))}", dotted)
            tp = hints[part]
        elif get_origin(tp) is dict or tp is Any:
            return Any  # free-form mapping (e.g. a learner's options, checked by the learner's own schema)
        else:
            raise ConfigError(f"'{'.'.join(walked)}' is not a section and has no sub-keys", dotted)
        walked.append(part)
    return tp


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Set ``data[a][b]...`` for ``a.b...`` (creating mappings on the way; a digit indexes an existing list)."""
    node: Any = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        if isinstance(node, list) and part.isdigit():
            node = _item(node, int(part), dotted)
            continue
        node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"cannot set a sub-key of a value ({node!r})", dotted)
    last = parts[-1]
    if isinstance(node, list) and last.isdigit():
        _item(node, int(last), dotted)
        node[int(last)] = value
    else:
        node[last] = value


def _item(items: list, index: int, dotted: str) -> Any:
    if index >= len(items):
        raise ConfigError(f"index {index} is past the end of the list ({len(items)} items; e.g. learners.N needs "
                          f"N+1 learners in the config)", dotted)
    return items[index]


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...], root: type | None = None) -> dict:
    """A copy of ``data`` with every override applied in order (keys checked against ``root`` when given)."""
    out = copy.deepcopy(data)
    for item in overrides:
        key, value = parse_override(item)
        if root is not None:
            key_type(root, key)
        set_dotted(out, key, value)
    return out


__all__ = ["OVERRIDE", "is_override", "parse_override", "key_type", "set_dotted", "apply_overrides"]
