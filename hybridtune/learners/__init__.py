"""Learners: the protocol, the registry, composition by parameter group, and the ``surrogate`` learner, and
:func:`gradient_alignment` (does a learner's update point downhill?).

A learner owns a group of adapter parameters and updates them; the trainer calls every learner the same way (see
:mod:`hybridtune.learners.protocol`). Learners never import the trainer. Local plasticity math lives in
``hybridtune.learners.plasticity`` and is imported only by the learners that use it.

Example:
    >>> from hybridtune.learners import learner, available_learners
    >>> "surrogate" in available_learners()
    True
    >>> learner("surrogate", params="lora_B", lr=5e-4).params
    'lora_B'
"""

from __future__ import annotations

from .alignment import gradient_alignment
from .groups import ParameterGroupError, assign_parameters, split_parameters
from .protocol import (
    Learner,
    Observation,
    OptimDefaults,
    ParameterOwner,
    ParamSpec,
    SetupContext,
    apply_update,
    check_learner,
    mean_across_ranks,
    owned_parameters,
)
from .registry import (
    ENTRY_POINT_GROUP,
    UnknownLearnerError,
    available_learners,
    get_factory,
    learner,
    register_learner,
)
from .surrogate import SurrogateLearner, build_scheduler, resolve_optimizer

__all__ = [
    "Learner", "Observation", "OptimDefaults", "ParamSpec", "SetupContext", "apply_update", "check_learner",
    "mean_across_ranks", "ParameterGroupError", "assign_parameters", "split_parameters", "ENTRY_POINT_GROUP",
    "UnknownLearnerError", "available_learners", "get_factory", "learner", "register_learner", "SurrogateLearner",
    "build_scheduler", "resolve_optimizer", "gradient_alignment", "ParameterOwner", "owned_parameters",
]
