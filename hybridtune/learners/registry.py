"""The learner registry: built-ins, ``register_learner``, entry points, and ``module:attr`` references.

A name resolves, in order, to: a factory registered in this process with :func:`register_learner`; a built-in
(imported lazily, so ``import hybridtune.learners`` stays cheap); a factory advertised by an installed package in the
entry-point group ``hybridtune.learners``; or, when the name has the form ``package.module:attr``, that attribute.
A factory is any callable returning a :class:`~hybridtune.learners.protocol.Learner`; keyword arguments of
:func:`learner` are passed to it. A learner's *options* (every keyword but ``params``, ``lr`` and ``name``) are typed
by a dataclass: the built-ins' are in :mod:`.options`; a factory declares its own as ``options_type`` (a class
attribute, or ``register_learner(..., options_type=...)``). :func:`learner` builds them with the config schema, so an
unknown key or a wrong type is a :class:`~hybridtune.config_schema.ConfigError` naming ``options.<key>`` and the
valid keys; a factory without ``options_type`` gets its keywords unchecked.

A third-party package advertises a learner in its ``pyproject.toml``::

    [project.entry-points."hybridtune.learners"]
    hebbian = "my_pkg.rules:HebbianLearner"

Example:
    >>> from hybridtune.learners import learner
    >>> sur = learner("surrogate", params="lora_B", lr=1e-3)
    >>> (sur.name, sur.params)
    ('surrogate', 'lora_B')
    >>> learner("stdp", tau_pr=4.0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    hybridtune.config_schema.ConfigError: options.tau_pr: unknown key; did you mean 'tau_pre'? valid keys here: ...
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
from collections.abc import Callable, Mapping
from typing import Any

from ..config_schema import build, closest
from ..lazy import import_object
from . import options as builtin_options
from .protocol import Learner, check_learner

ENTRY_POINT_GROUP = "hybridtune.learners"

# name -> "module:attr"; imported on first use. New in-tree learners add a line here and nothing else.
_BUILTINS: dict[str, str] = {
    "surrogate": "hybridtune.learners.surrogate:SurrogateLearner",
    "stdp": "hybridtune.learners.plasticity.stdp_learner:STDPLearner",
    "rstdp": "hybridtune.learners.plasticity.rstdp_learner:RSTDPLearner",
    "eprop": "hybridtune.learners.eprop.learner:EpropLearner",
}

# name -> the dataclass of its options (the learner's keyword arguments besides params, lr and name)
_BUILTIN_OPTIONS: dict[str, type] = {
    "surrogate": builtin_options.SurrogateOptions,
    "stdp": builtin_options.STDPOptions,
    "rstdp": builtin_options.RSTDPOptions,
    "eprop": builtin_options.EpropOptions,
}
COMMON_KEYS = ("params", "lr", "name")  # every learner takes these; they are not options

_REGISTRY: dict[str, Callable[..., Learner]] = {}
_REGISTERED_OPTIONS: dict[str, type | None] = {}


class UnknownLearnerError(KeyError):
    """A learner name that resolves to nothing; the message lists what is available."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0])


def register_learner(name: str, factory: Callable[..., Learner], *, overwrite: bool = False,
                     options_type: type | None = None) -> None:
    """Make ``factory`` available as ``learner(name, ...)`` in this process; ``options_type`` (a dataclass, default:
    ``factory.options_type`` if it has one) types its options.

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
    if options_type is not None and not dataclasses.is_dataclass(options_type):
        raise TypeError(f"options_type for {name!r} must be a dataclass, got {options_type!r}")
    _REGISTRY[name] = factory
    _REGISTERED_OPTIONS[name] = options_type


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _load(ref: str, what: str) -> Callable[..., Learner]:
    try:
        return import_object(ref)
    except (ImportError, AttributeError) as exc:
        raise UnknownLearnerError(f"{what}: cannot import {ref!r}: {exc}") from exc


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


def options_type(name: str) -> type | None:
    """The dataclass typing the options of learner ``name`` (None: the factory declares none)."""
    if name in _REGISTRY:
        declared = _REGISTERED_OPTIONS.get(name)
        return declared if declared is not None else getattr(_REGISTRY[name], "options_type", None)
    found = getattr(get_factory(name), "options_type", None)  # a learner may declare its own (built-ins too)
    if name in _BUILTINS and not dataclasses.is_dataclass(found):
        return _BUILTIN_OPTIONS[name]
    return found if dataclasses.is_dataclass(found) else None


def check_options(name: str, options: Mapping[str, Any], key: str = "options") -> dict[str, Any]:
    """``options`` checked against learner ``name``'s options dataclass (ConfigError naming ``key.<option>`` and
    the valid keys); returns the given options, normalised (ints for floats, ...). Unchecked without a dataclass."""
    tp = options_type(name)
    if tp is None:
        return dict(options)
    built = build(tp, dict(options), key)
    return {k: getattr(built, k) for k in options}


def learner(name: str, **kwargs: Any) -> Learner:
    """Build the learner registered as ``name`` with ``kwargs`` (e.g. ``params="lora_B"``, ``lr=1e-3``, and its
    typed options, see :func:`check_options`)."""
    common = {k: v for k, v in kwargs.items() if k in COMMON_KEYS}
    options = check_options(name, {k: v for k, v in kwargs.items() if k not in COMMON_KEYS})
    obj = get_factory(name)(**common, **options)
    return check_learner(obj, f"learner {name!r}")


__all__ = ["ENTRY_POINT_GROUP", "UnknownLearnerError", "register_learner", "learner", "available_learners",
           "get_factory", "options_type", "check_options", "COMMON_KEYS"]
