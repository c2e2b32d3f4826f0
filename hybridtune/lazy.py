"""Lazy public names for a package: ``import hybridtune.x`` stays cheap, and an optional part fails only when used.

Example:
    >>> __getattr__, __dir__ = lazy_attributes("hybridtune", {"corpus": "hybridtune.data"}, {})
    >>> __getattr__("corpus").__name__
    'corpus'
    >>> __dir__()
    ['corpus']
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def import_object(ref: str) -> Any:
    """The object a ``"package.module:attr.sub"`` reference names (``ImportError`` / ``AttributeError`` as Python
    raises them; callers turn them into their own error naming the key).

    Example:
        >>> import_object("hybridtune.lazy:import_object").__name__
        'import_object'
    """
    module, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


def lazy_attributes(package: str, table: Mapping[str, str],
                    namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``table`` maps a public name to the module defining it
    (``.sub`` relative to the package, or absolute; ``module:attr`` when the attribute is named otherwise). A
    resolved name is cached in ``namespace`` (the package's ``globals()``)."""

    def __getattr__(name: str) -> Any:
        target = table.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = target.partition(":")
        value = getattr(importlib.import_module(module, package), attr or name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(table)

    return __getattr__, __dir__
