"""The ``surrogate`` learner: backprop through the spiking adapters, any torch optimizer and scheduler by name.

The spikes' backward uses the adapters' surrogate gradient; this learner only owns the optimisation: an optimizer
(any ``torch.optim`` class by name, case-insensitive, or ``"package.module:Class"``), an LR schedule (the
``transformers`` schedules by name — ``constant``, ``linear``, ``cosine``, ``cosine_with_min_lr``, ... — with warmup,
or any ``torch.optim.lr_scheduler`` class by name), gradient clipping, and the inf/NaN check on the gradient: a
non-finite gradient norm skips the step (under fp16 the grad scaler decides and this learner reports its verdict).

Example:
    >>> import torch
    >>> from hybridtune.learners import SurrogateLearner, SetupContext
    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> sur = SurrogateLearner(lr=0.1, optimizer="SGD", scheduler="constant", max_grad_norm=None)
    >>> sur.setup(SetupContext(model=None, accelerator=None, params={"w": w}, total_steps=10))
    >>> (w * w).sum().backward(); sur.step()
    True
    >>> [round(v, 3) for v in w.tolist()]
    [0.8, 0.8, 0.8]
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch

from .protocol import Observation, OwnsParameters, ParamSpec, SetupContext

_HF_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
                 "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay")


def resolve_optimizer(name: str) -> type[torch.optim.Optimizer]:
    """``"adamw"`` / ``"AdamW"`` / ``"SGD"`` / ``"package.module:Class"`` -> the optimizer class."""
    if ":" in name:
        module, _, attr = name.partition(":")
        return getattr(importlib.import_module(module), attr)
    classes = {n.lower(): getattr(torch.optim, n) for n in dir(torch.optim)
               if isinstance(getattr(torch.optim, n), type) and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
               and n != "Optimizer"}
    if name.lower() not in classes:
        raise ValueError(f"unknown optimizer {name!r}; torch.optim has: {', '.join(sorted(classes))} "
                         f"(or give 'package.module:Class')")
    return classes[name.lower()]


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                    kwargs: Mapping[str, Any] | None = None):
    """An LR scheduler stepped once per optimizer step: a ``transformers`` schedule name or a torch class name."""
    kwargs = dict(kwargs or {})
    if name in _HF_SCHEDULES:
        from transformers import get_scheduler

        if name == "constant" and warmup_steps > 0:
            name = "constant_with_warmup"  # HF's plain "constant" ignores warmup silently
        return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps,
                             scheduler_specific_kwargs=kwargs or None)
    classes = {n.lower(): getattr(torch.optim.lr_scheduler, n) for n in dir(torch.optim.lr_scheduler)
               if isinstance(getattr(torch.optim.lr_scheduler, n), type)}
    if name.lower() in classes:
        return classes[name.lower()](optimizer, **kwargs)
    raise ValueError(f"unknown scheduler {name!r}; use one of {', '.join(_HF_SCHEDULES)} or a "
                     f"torch.optim.lr_scheduler class name (e.g. StepLR) with scheduler_kwargs")


class SurrogateLearner(OwnsParameters):
    """Backprop learner. ``None`` for scheduler / warmup / weight decay means the trainer's default.

    Args:
        params: which adapter parameters this learner owns (see :mod:`hybridtune.learners.groups`).
        lr: learning rate.
        optimizer: torch optimizer name (``AdamW``, ``SGD``, ``Adam``, ...) or ``package.module:Class``.
        optimizer_kwargs: extra keyword arguments for the optimizer (``betas``, ``momentum``, ...).
        scheduler, warmup_steps, scheduler_kwargs: the LR schedule (see :func:`build_scheduler`).
        weight_decay: passed to the optimizer.
        max_grad_norm: clip the global gradient norm to this; ``"default"`` takes the trainer's value, ``None``
            disables clipping (the norm is still checked for inf/NaN).
    """

    uses_backward = True

    def __init__(self, params: ParamSpec = "all", lr: float = 1e-3, optimizer: str = "AdamW",
                 optimizer_kwargs: Mapping[str, Any] | None = None, scheduler: str | None = None,
                 warmup_steps: int | None = None, scheduler_kwargs: Mapping[str, Any] | None = None,
                 weight_decay: float | None = None, max_grad_norm: float | None | str = "default",
                 name: str = "surrogate"):
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        resolve_optimizer(optimizer)  # fail at construction, before any model work
        self.name, self.params, self.lr = name, params, float(lr)
        self.optimizer_name, self.optimizer_kwargs = optimizer, dict(optimizer_kwargs or {})
        self.scheduler_name, self.warmup_steps, self.scheduler_kwargs = scheduler, warmup_steps, scheduler_kwargs
        self.weight_decay, self.max_grad_norm = weight_decay, max_grad_norm
        self.optimizer = self.scheduler = self.accelerator = None
        self._params: dict[str, torch.nn.Parameter] = {}
        self._last: dict[str, float] = {}
        self.steps_applied = 0
        self.steps_skipped = 0

    # -- protocol -------------------------------------------------------------------------------------------------
    def setup(self, ctx: SetupContext) -> None:
        d = ctx.defaults
        self.accelerator, self._params = ctx.accelerator, dict(ctx.params)
        for p in self._params.values():
            p.requires_grad_(True)
        wd = d.weight_decay if self.weight_decay is None else self.weight_decay
        if self.max_grad_norm == "default":
            self.max_grad_norm = d.max_grad_norm
        opt = resolve_optimizer(self.optimizer_name)(list(self._params.values()), lr=self.lr, weight_decay=wd,
                                                     **self.optimizer_kwargs)
        name = self.scheduler_name or d.scheduler
        warmup = d.warmup_steps if self.warmup_steps is None else self.warmup_steps
        # The scheduler is stepped by this learner once per optimizer step; it is deliberately NOT passed through
        # accelerator.prepare, whose wrapper steps it num_processes times per call.
        self.scheduler = build_scheduler(name, opt, warmup, ctx.total_steps, self.scheduler_kwargs)
        self.optimizer = ctx.accelerator.prepare(opt) if ctx.accelerator is not None else opt

    def recording(self, model: torch.nn.Module) -> AbstractContextManager | None:
        return None  # backprop needs no spike recording

    def observe(self, obs: Observation) -> None:
        return None  # gradients accumulate in .grad through backward

    def step(self) -> bool:
        params = list(self._params.values())
        acc = self.accelerator
        scaler = getattr(acc, "scaler", None) if acc is not None else None
        if self.max_grad_norm is not None:
            norm = (acc.clip_grad_norm_(params, self.max_grad_norm) if acc is not None
                    else torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm))
        else:
            grads = [p.grad for p in params if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        norm = float(norm)
        lr = self.optimizer.param_groups[0]["lr"]
        if scaler is None and not torch.isfinite(torch.tensor(norm)):
            applied = False  # inf/NaN gradient: skip the update, keep the schedule where it is
        else:
            self.optimizer.step()
            applied = not getattr(self.optimizer, "step_was_skipped", False)
        if applied:
            self.scheduler.step()
            self.steps_applied += 1
        else:
            self.steps_skipped += 1
        self.optimizer.zero_grad(set_to_none=True)
        self._last = {"lr": lr, "grad_norm": norm}
        return applied


    def reset(self) -> None:
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            for p in self._params.values():
                p.grad = None

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "steps_applied": self.steps_applied, "steps_skipped": self.steps_skipped}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps_applied = int(state.get("steps_applied", 0))
        self.steps_skipped = int(state.get("steps_skipped", 0))

    def metrics(self) -> dict[str, float]:
        return dict(self._last)

    def __repr__(self) -> str:
        return (f"SurrogateLearner(params={self.params!r}, lr={self.lr}, optimizer={self.optimizer_name!r}, "
                f"scheduler={self.scheduler_name!r})")


__all__ = ["SurrogateLearner", "resolve_optimizer", "build_scheduler"]
