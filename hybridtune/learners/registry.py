"""The learner registry: built-ins, ``register_learner``, entry points, and ``module:attr`` references.

A name resolves, in order, to: a factory registered in this process with :func:`register_learner`; a built-in
(imported lazily, so ``import hybridtune.learners`` stays cheap); a factory advertised by an installed package in the
entry-point group ``hybridtune.learners``; or, when the name has the form ``package.module:attr``, that attribute.
A factory is any callable returning a :class:`~hybridtune.learners.protocol.Learner`; keyword arguments of
:func:`learner` are passed to it.

A third-party package advertises a learner in its ``pyproject.toml``::

    [project.entry-points."hybridtune.learners"]
    hebbian = "my_pkg.rules:HebbianLearner"

Example:
    >>> from hybridtune.learners import learner
    >>> sur = learner("surrogate", params="lora_B", lr=1e-3)
    >>> (sur.name, sur.params)
    ('surrogate', 'lora_B')
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from typing import Any

from ..config_schema import closest
from .protocol import Learner, check_learner

ENTRY_POINT_GROUP = "hybridtune.learners"

# name -> "module:attr"; imported on first use. New in-tree learners add a line here and nothing else.
_BUILTINS: dict[str, str] = {
    "surrogate": "hybridtune.learners.surrogate:SurrogateLearner",
    "stdp": "hybridtune.learners.plasticity.stdp_learner:STDPLearner",
    "rstdp": "hybridtune.learners.plasticity.rstdp_learner:RSTDPLearner",
    "eprop": "hybridtune.learners.eprop.learner:EpropLearner",
}

_REGISTRY: dict[str, Callable[..., Learner]] = {}


class UnknownLearnerError(KeyError):
    """A learner name that resolves to nothing; the message lists what is available."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0])


def register_learner(name: str, factory: Callable[..., Learner], *, overwrite: bool = False) -> None:
    """Make ``factory`` available as ``learner(name, ...)`` in this process.

    Example:
        >>> from hybridtune.learners import register_learner, SurrogateLearner
        >>> register_learner("sgd-surrogate", lambda **kw: SurrogateLearner(optimizer="SGD", **kw), overwrite=True)
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"learner name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"learner factory for {name!r} must be callable, got {type(factory).__name__}")
    if not overwrite and (name in _REGISTRY or name in _BUILTINS):
        raise ValueError(f"a learner named {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = factory


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _load(ref: str, what: str) -> Callable[..., Learner]:
    module_name, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise UnknownLearnerError(f"{what}: cannot import {ref!r}: {exc}") from exc
    return obj


def available_learners() -> list[str]:
    """Names :func:`learner` accepts right now (registered, built-in, and installed through entry points)."""
    return sorted({*_REGISTRY, *_BUILTINS, *_entry_points()})


def get_factory(name: str) -> Callable[..., Learner]:
    """The factory behind ``name`` (see the module docstring for the lookup order)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _BUILTINS:
        return _load(_BUILTINS[name], f"built-in learner {name!r}")
    eps = _entry_points()
    if name in eps:
        try:
            return eps[name].load()
        except Exception as exc:  # a broken third-party package must say which one
            raise UnknownLearnerError(f"learner {name!r} from entry point {eps[name].value!r} "
                                      f"(group {ENTRY_POINT_GROUP}) failed to load: {exc}") from exc
    if ":" in name:
        return _load(name, f"learner {name!r}")
    names = available_learners()
    raise UnknownLearnerError(f"unknown learner {name!r}; {closest(name, names)}available: {', '.join(names)} "
                              f"(or 'package.module:factory', or a package in entry-point group {ENTRY_POINT_GROUP})")


def learner(name: str, **kwargs: Any) -> Learner:
    """Build the learner registered as ``name`` with ``kwargs`` (e.g. ``params="lora_B"``, ``lr=1e-3``)."""
    obj = get_factory(name)(**kwargs)
    return check_learner(obj, f"learner {name!r}")


__all__ = ["ENTRY_POINT_GROUP", "UnknownLearnerError", "register_learner", "learner", "available_learners",
           "get_factory"]
