"""The learner interface: what the trainer calls, and the small data objects it passes.

A learner owns a group of adapter parameters (split once by :func:`hybridtune.learners.assign_parameters`) and
updates them. The trainer drives every learner through the same calls, in this order per optimizer step::

    setup(ctx)                          once, before the model is wrapped for DDP (set requires_grad here)
    for each micro-batch:
        with recording(model) or nullcontext():   # a local rule asks for spike recording here
            forward; backward if any learner has uses_backward
            observe(Observation)        # accumulate statistics (traces, correlations); no update yet
    step()                              # apply the update at the optimizer-step boundary; False = skipped
    metrics()                           # floats for the tracker, e.g. {"update_norm": ...}

``reset()`` throws away what was accumulated since the last ``step`` (gradients, statistics); the trainer calls it
when the inf/NaN guard skips a step. ``state_dict`` / ``load_state_dict`` carry everything needed to resume the same
trajectory (optimizer and scheduler state, traces, baselines) as tensors or plain data.

Two optional members: ``owned_parameters()`` (:class:`ParameterOwner`: the parameters a learner owns, for diagnostics)
and ``save_pretrained(directory)`` (what the adapter was trained with and should travel with it, written beside the
adapter by :func:`save_beside_adapter`).

Local (no-grad) rules must keep replicas identical under DDP: average the update across ranks with
:func:`mean_across_ranks` before applying it (:func:`apply_update`), once per ``step``.

Example:
    >>> import torch
    >>> from hybridtune.learners.protocol import Learner, apply_update
    >>> p = torch.nn.Parameter(torch.zeros(2), requires_grad=False)
    >>> round(apply_update({"w": p}, {"w": torch.ones(2)}, scale=0.5), 4)  # the update norm
    0.7071
    >>> p.tolist()
    [0.5, 0.5]
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Union, runtime_checkable

import torch

# Which adapter parameters a learner claims: "all", "rest" (whatever no other learner claims), a regex searched in
# the parameter name (e.g. "lora_A"), or a list of regexes (their union).
ParamSpec = Union[str, Sequence[str]]


@dataclass
class OptimDefaults:
    """Run-wide optimisation settings (the ``trainer`` config section) that optimizer-based learners fall back on."""

    scheduler: str = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0


@dataclass
class SetupContext:
    """Everything a learner may need at setup time.

    ``model`` is the unwrapped (peft) model; ``params`` the group this learner owns, by name; ``total_steps`` the
    number of optimizer steps the run will take (for schedules); ``accelerator`` the run's ``Accelerator`` (for
    ``prepare``, ``reduce``, ``clip_grad_norm_``).
    """

    model: torch.nn.Module
    accelerator: Any
    params: dict[str, torch.nn.Parameter]
    total_steps: int
    defaults: OptimDefaults = field(default_factory=OptimDefaults)


@dataclass
class Observation:
    """What one micro-batch forward produced, handed to every learner's ``observe``.

    ``batch`` holds ``input_ids``, ``attention_mask``, ``labels`` and, when the data provides it, ``doc_start``
    (True where a new document starts: traces reset there). ``token_nll`` is the detached per-token negative
    log-likelihood ``[B, L-1]`` (0 where no target), a ready-made dense reward for three-factor rules. ``recording``
    is what this learner's ``recording(model)`` context yielded, or None.
    """

    batch: Mapping[str, torch.Tensor]
    token_nll: torch.Tensor
    recording: Any = None


@runtime_checkable
class Learner(Protocol):
    """The surface every learner implements (a structural protocol: no base class needed)."""

    name: str
    params: ParamSpec
    uses_backward: bool  # True: the trainer runs backward on the loss for this learner's parameters

    def setup(self, ctx: SetupContext) -> None: ...

    def recording(self, model: torch.nn.Module) -> AbstractContextManager | None: ...

    def observe(self, obs: Observation) -> None: ...

    def step(self) -> bool: ...

    def reset(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def metrics(self) -> dict[str, float]: ...


@runtime_checkable
class ParameterOwner(Protocol):
    """An optional part of the learner surface: the parameters it owns, by name, once ``setup`` ran.

    Diagnostics that must look at a learner's parameters from outside (e.g.
    :func:`hybridtune.learners.alignment.gradient_alignment`) read them here instead of the learner's private state.
    Return the live parameters (not copies), empty before ``setup``.
    """

    def owned_parameters(self) -> Mapping[str, torch.nn.Parameter]: ...


class OwnsParameters:
    """Mixin for learners that keep their parameters in ``self._params`` (filled by ``setup``): implements
    :class:`ParameterOwner` once for all of them."""

    _params: dict[str, torch.nn.Parameter]

    def owned_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The parameters this learner owns, by name (empty before ``setup``)."""
        return dict(getattr(self, "_params", {}))

    def learning_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The owned parameters this learner can change (all of them unless a learner says otherwise, e.g.
        ``eprop`` leaves the blocks below ``top_blocks`` at their initial values)."""
        return self.owned_parameters()


def owned_parameters(learner: Any) -> dict[str, torch.nn.Parameter]:
    """The parameters ``learner`` owns (see :class:`ParameterOwner`); a TypeError if it does not say."""
    if not isinstance(learner, ParameterOwner):
        raise TypeError(f"{type(learner).__name__} does not name its parameters: implement owned_parameters() "
                        f"(see hybridtune.learners.protocol.ParameterOwner)")
    return dict(learner.owned_parameters())


def learning_parameters(learner: Any) -> dict[str, torch.nn.Parameter]:
    """The owned parameters ``learner`` updates: its optional ``learning_parameters()``, else all it owns. A learner
    that owns parameters it never moves (kept for checkpoints, or frozen by a depth profile) names the ones it moves
    there, so diagnostics judge its update where it has one."""
    owned = owned_parameters(learner)
    subset = getattr(learner, "learning_parameters", None)
    if not callable(subset):
        return owned
    chosen = dict(subset())
    stray = sorted(set(chosen) - set(owned))
    if stray:
        raise ValueError(f"{type(learner).__name__}.learning_parameters() names {stray[:3]}, which it does not own")
    return chosen


def save_beside_adapter(learners: Sequence[Any], directory: str | os.PathLike) -> list[Path]:
    """Let each learner that keeps something an adapter was trained with write it into the adapter's
    ``save_pretrained`` directory (an optional ``save_pretrained(directory)`` method returning the file written, or
    None; e.g. ``eprop``'s random feedback matrices). Returns the files written. Call it where the adapter is saved,
    on the process that writes the adapter."""
    written = []
    for lrn in learners:
        save = getattr(lrn, "save_pretrained", None)
        path = save(directory) if callable(save) else None
        if path is not None:
            written.append(Path(path))
    return written


def check_learner(obj: Any, where: str = "learner") -> Learner:
    """Return ``obj`` if it implements :class:`Learner`, else a TypeError naming the missing members."""
    members = ("name", "params", "uses_backward", "setup", "recording", "observe", "step", "reset", "state_dict",
               "load_state_dict", "metrics")
    missing = [m for m in members if not hasattr(obj, m)]
    if missing:
        raise TypeError(f"{where}: {type(obj).__name__} is not a Learner; missing: {', '.join(missing)} "
                        f"(see hybridtune.learners.protocol.Learner)")
    return obj


def mean_across_ranks(accelerator: Any, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Average each tensor over data-parallel ranks (identity on one process) so every rank applies the same update.

    Reduce the *update* (or the statistics it is computed from) of a local rule here before applying it; without
    this, ranks that saw different data drift apart.
    """
    if accelerator is None or getattr(accelerator, "num_processes", 1) == 1:
        return dict(tensors)
    return {name: accelerator.reduce(t.detach().contiguous(), reduction="mean") for name, t in tensors.items()}


@torch.no_grad()
def apply_update(params: Mapping[str, torch.nn.Parameter], deltas: Mapping[str, torch.Tensor],
                 scale: float = 1.0) -> float:
    """``p += scale * delta`` for every named delta, in place and without autograd; returns the update's L2 norm."""
    total = 0.0
    for name, delta in deltas.items():
        if name not in params:
            raise KeyError(f"update for {name!r}, which this learner does not own")
        p = params[name]
        step = delta.to(device=p.device, dtype=p.dtype) * scale
        p.add_(step)
        total += float(step.float().pow(2).sum())
    return total ** 0.5


__all__ = ["Learner", "ParamSpec", "OptimDefaults", "SetupContext", "Observation", "ParameterOwner",
           "owned_parameters", "learning_parameters", "save_beside_adapter", "check_learner", "mean_across_ranks",
           "apply_update"]
