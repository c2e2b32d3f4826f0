"""Composition by parameter group: split a model's trainable adapter parameters among learners, once.

Each learner claims parameters with a spec: ``"all"``, ``"rest"`` (everything no other learner claims), a regex
searched in the parameter name (``"lora_A"``, ``r"layers\\.(0|1)\\..*lora_B"``), or a list of regexes. The split is
a partition of the trainable parameters: a parameter claimed twice, a spec that matches nothing, or a trainable
parameter nobody owns is an error that names the parameters and learners involved. Order of the learners never
changes the result.

Example:
    >>> import torch
    >>> m = torch.nn.ModuleDict({"lora_A": torch.nn.Linear(2, 2), "lora_B": torch.nn.Linear(2, 2)})
    >>> groups = split_parameters(m, ["lora_A", "rest"])
    >>> [sorted(g) for g in groups]
    [['lora_A.bias', 'lora_A.weight'], ['lora_B.bias', 'lora_B.weight']]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from .protocol import ParamSpec


class ParameterGroupError(ValueError):
    """The learners' parameter specs do not partition the trainable parameters."""


def _patterns(spec: ParamSpec, label: str) -> list[re.Pattern]:
    items = [spec] if isinstance(spec, str) else list(spec)
    if not items:
        raise ParameterGroupError(f"{label}: empty params spec; use 'all', 'rest', a regex or a list of regexes")
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ParameterGroupError(f"{label}: params entries must be strings (regexes), got {item!r}")
        try:
            out.append(re.compile(item))
        except re.error as exc:
            raise ParameterGroupError(f"{label}: params {item!r} is not a valid regex: {exc}") from None
    return out


def _sample(names: Sequence[str], n: int = 4) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


def split_parameters(model: torch.nn.Module, specs: Sequence[ParamSpec],
                     labels: Sequence[str] | None = None) -> list[dict[str, torch.nn.Parameter]]:
    """Partition ``model``'s trainable parameters by ``specs`` (one per learner); see the module docstring."""
    labels = list(labels) if labels is not None else [f"learner {i}" for i in range(len(specs))]
    if len(labels) != len(specs):
        raise ValueError("labels and specs differ in length")
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not trainable:
        raise ParameterGroupError("the model has no trainable parameters: attach an adapter first "
                                  "(hybridtune.get_spiking_peft_model) or mark the parameters to train")
    rest_idx = [i for i, s in enumerate(specs) if s == "rest"]
    if len(rest_idx) > 1:
        raise ParameterGroupError(f"only one learner may claim 'rest'; {', '.join(labels[i] for i in rest_idx)} do")
    groups: list[dict[str, torch.nn.Parameter]] = [{} for _ in specs]
    owner: dict[str, int] = {}
    for i, spec in enumerate(specs):
        if spec == "rest":
            continue
        if spec == "all":
            matched = list(trainable)
        else:
            pats = _patterns(spec, labels[i])
            matched = [n for n in trainable if any(p.search(n) for p in pats)]
            if not matched:
                raise ParameterGroupError(
                    f"{labels[i]}: params {spec!r} matches no trainable parameter; trainable names look like: "
                    f"{_sample(list(trainable))}")
        clashes = [n for n in matched if n in owner]
        if clashes:
            other = labels[owner[clashes[0]]]
            raise ParameterGroupError(
                f"{labels[i]} and {other} both claim {len(clashes)} parameter(s): {_sample(clashes)}; "
                f"make their params specs disjoint (e.g. 'lora_A' and 'lora_B')")
        for n in matched:
            owner[n] = i
            groups[i][n] = trainable[n]
    unowned = [n for n in trainable if n not in owner]
    if rest_idx:
        if not unowned:
            raise ParameterGroupError(f"{labels[rest_idx[0]]}: params 'rest' is left with no parameters")
        groups[rest_idx[0]] = {n: trainable[n] for n in unowned}
    elif unowned:
        raise ParameterGroupError(
            f"{len(unowned)} trainable parameter(s) belong to no learner: {_sample(unowned)}; widen a learner's "
            f"params (or give one params: rest), or freeze them (requires_grad=False)")
    return groups


def assign_parameters(model: torch.nn.Module, learners: Sequence[Any]) -> list[dict[str, torch.nn.Parameter]]:
    """:func:`split_parameters` with each learner's own ``params`` spec, labelled by its name and position."""
    labels = [f"learners[{i}] ({getattr(lr, 'name', type(lr).__name__)})" for i, lr in enumerate(learners)]
    return split_parameters(model, [lr.params for lr in learners], labels)


__all__ = ["ParameterGroupError", "split_parameters", "assign_parameters"]
