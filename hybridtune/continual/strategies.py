"""Continual-learning strategies as objects: which adapter trains and answers for which domain, what else goes
into a batch, and what else shapes the update.

A :class:`~hybridtune.continual.trainer.ContinualTrainer` runs one *adapter strategy* plus any number of other
strategies; each overrides only the hooks it needs (the defaults do nothing):

- ``begin_stage(ctx)``: before the stage's trainer is built (and re-played on resume for completed stages):
  structural changes such as adding the task's adapter;
- ``wrap_learners(ctx, learners)``: the stage's learners, possibly wrapped (a regulariser adds its gradient);
- ``replay_plan(ctx)``: blocks to mix into every micro-batch;
- ``end_stage(ctx)``: after the stage's row of the matrix was measured (fill a buffer, estimate a Fisher);
- ``state_dict`` / ``load_state_dict``: what ``--resume`` needs (tensors and plain data).

Built in: :class:`SharedAdapter`, :class:`PerTaskAdapters` (adapter strategies), :class:`Replay`, :class:`EWC`.
The numerics are pure functions (:func:`replay_quotas`, :func:`replay_indices`, :func:`ewc_penalty`,
:func:`ewc_gradient`, :func:`ewc_pull`, :func:`fisher_diagonal`) that the tests hold against direct formulas.

Example:
    >>> replay_quotas(10, 3)
    [4, 3, 3]
    >>> from hybridtune.continual.config import ContinualSection
    >>> [type(s).__name__ for s in build_strategies(ContinualSection(adapter="per_task"))]
    ['PerTaskAdapters']
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from hybridtune.continual.config import ContinualSection
from hybridtune.continual.data import Domain
from hybridtune.learners import Learner, Observation, SetupContext
from hybridtune.neurons import reset_state
from hybridtune.perplexity import model_nll
from hybridtune.trainers.sampler import select


@dataclass
class StageContext:
    """What a strategy hook may use. ``model`` is the unwrapped (peft) model; ``trainer`` the stage's trainer (None
    in ``begin_stage``, which runs before it exists); ``params`` the parameters the stage trained (``end_stage``)."""

    stage: int
    domains: Sequence[Domain]
    model: torch.nn.Module
    accelerator: Any = None
    seed: int = 0
    trainer: Any = None
    model_keys: Sequence[str] = ("input_ids", "attention_mask")
    batch_context: Any = None
    batch_size: int = 1  # blocks per micro-batch and process (trainer.batch_size)

    @property
    def domain(self) -> Domain:
        return self.domains[self.stage]


class ContinualStrategy:
    """Base class: every hook is a no-op (see the module docstring)."""

    name = "strategy"

    def begin_stage(self, ctx: StageContext) -> None: ...

    def wrap_learners(self, ctx: StageContext, learners: list[Learner]) -> list[Learner]:
        return learners

    def replay_plan(self, ctx: StageContext) -> ReplayPlan | None:
        return None

    def end_stage(self, ctx: StageContext) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


class AdapterStrategy(ContinualStrategy):
    """Decides which adapter trains in each stage and which answers for each domain at evaluation."""

    def adapter_for(self, domain: int, after_stage: int) -> str | None:
        """The adapter to activate when evaluating ``domain`` after ``after_stage`` (-1: before training); None =
        leave the model as it is."""
        return None


class SharedAdapter(AdapterStrategy):
    """One adapter for the whole sequence: what was trainable when the sequence started is trainable in every stage
    (a local learner's ``setup`` may have frozen its parameters for the previous stage's DDP wrap)."""

    name = "shared"

    def __init__(self) -> None:
        self.trainable: set[str] | None = None

    def begin_stage(self, ctx: StageContext) -> None:
        if self.trainable is None:
            self.trainable = {n for n, p in ctx.model.named_parameters() if p.requires_grad}
            if not self.trainable:
                raise ValueError("the model has no trainable parameters: attach an adapter before training")
        for n, p in ctx.model.named_parameters():
            p.requires_grad_(n in self.trainable)


class PerTaskAdapters(AdapterStrategy):
    """A fresh named adapter ``<prefix><k>`` per domain, added after the previous stage's ``accelerator.prepare``
    (the stage trainer re-prepares the model and builds fresh optimizers, so DDP sees the new parameters). Earlier
    adapters are inactive and frozen, so their domains' perplexity cannot change. Evaluation on domain ``j`` after
    stage ``i`` routes to ``<prefix><min(j, max(i, 0))>``: a trained domain gets its own adapter, an unseen one the
    latest adapter. The model's initial adapter is the template (its config) and is removed in stage 0."""

    name = "per_task"

    def __init__(self, prefix: str = "task") -> None:
        self.prefix = prefix
        self.template: Any = None

    def adapter_name(self, task: int) -> str:
        return f"{self.prefix}{task}"

    def adapter_for(self, domain: int, after_stage: int) -> str:
        return self.adapter_name(min(domain, max(after_stage, 0)))

    def begin_stage(self, ctx: StageContext) -> None:
        model = ctx.model
        for attr in ("peft_config", "add_adapter", "set_adapter", "delete_adapter"):
            if not hasattr(model, attr):
                raise TypeError(f"per_task adapters need a peft model (missing {attr}); build it with "
                                f"hybridtune.get_spiking_peft_model or peft.get_peft_model")
        initial = model.active_adapter
        if self.template is None:
            self.template = copy.deepcopy(model.peft_config[initial])
        name = self.adapter_name(ctx.stage)
        if name not in model.peft_config:
            model.add_adapter(name, copy.deepcopy(self.template))
        model.set_adapter(name)  # trainable: this adapter only (peft freezes the others, neurons included)
        if ctx.stage == 0 and initial != name and not initial.startswith(self.prefix):
            model.delete_adapter(initial)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "prefix": self.prefix}


# -- replay ---------------------------------------------------------------------------------------------------------
def replay_quotas(capacity: int, domains: int) -> list[int]:
    """Blocks each of ``domains`` earlier domains keeps in a buffer of ``capacity``: an even split, the first
    domains taking the remainder."""
    if domains < 1:
        return []
    base, extra = divmod(capacity, domains)
    return [base + (1 if i < extra else 0) for i in range(domains)]


def replay_count(share: float, batch_size: int) -> int:
    """Replayed blocks per micro-batch and process: ``floor(share * batch_size + 1/2)``; ValueError unless that
    leaves at least one replayed and one current block."""
    n = math.floor(share * batch_size + 0.5)
    if share > 0 and not 1 <= n < batch_size:
        raise ValueError(f"continual.replay.share={share} with trainer.batch_size={batch_size} gives {n} replayed "
                         f"block(s) per micro-batch; it must give between 1 and batch_size - 1 (raise the batch size "
                         f"or change the share)")
    return n


def replay_indices(buffer_size: int, count: int, seed: int, stage: int, cursor: int) -> torch.Tensor:
    """Buffer rows for global micro-batch ``cursor`` of ``stage``: a pure function of its arguments (resume draws
    the same rows), distinct rows when the buffer is large enough, else drawn with replacement."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + stage * 100_003 + cursor)
    if count <= buffer_size:
        return torch.randperm(buffer_size, generator=gen)[:count]
    return torch.randint(0, buffer_size, (count,), generator=gen)


class ReplayBuffer:
    """At most ``capacity`` training blocks of earlier domains, split evenly among them (:func:`replay_quotas`).

    Each domain's blocks are a seeded random subset of its training blocks; when a domain arrives, the others are
    trimmed to their new quota (keeping a prefix of their subset, so the kept blocks stay a random subset).
    """

    def __init__(self, capacity: int, seed: int = 0):
        if capacity < 1:
            raise ValueError(f"replay buffer capacity must be >= 1, got {capacity}")
        self.capacity, self.seed = capacity, seed
        self.kept: dict[int, dict[str, torch.Tensor]] = {}

    def add(self, domain: int, tensors: Mapping[str, torch.Tensor]) -> None:
        n = tensors["input_ids"].shape[0]
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * (domain + 1))
        order = torch.randperm(n, generator=gen)[: self.capacity]
        self.kept[domain] = {k: v[order].clone() for k, v in tensors.items()}
        for d, quota in zip(sorted(self.kept), replay_quotas(self.capacity, len(self.kept))):
            self.kept[d] = {k: v[:quota].clone() for k, v in self.kept[d].items()}  # no hidden storage

    def __len__(self) -> int:
        return sum(t["input_ids"].shape[0] for t in self.kept.values())

    def tensors(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """All kept blocks (domain order) and, per block, the index of the domain it came from."""
        domains = sorted(self.kept)
        keys = self.kept[domains[0]].keys()
        blocks = {k: torch.cat([self.kept[d][k] for d in domains]) for k in keys}
        source = torch.cat([torch.full((self.kept[d]["input_ids"].shape[0],), d) for d in domains])
        return blocks, source

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "seed": self.seed, "kept": {str(d): dict(t) for d, t in self.kept.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.capacity, self.seed = int(state["capacity"]), int(state["seed"])
        self.kept = {int(d): dict(t) for d, t in state["kept"].items()}


@dataclass
class ReplayPlan:
    """What a stage trainer mixes in: ``per_batch`` rows of ``blocks`` per micro-batch and process."""

    blocks: dict[str, torch.Tensor]
    source: torch.Tensor
    per_batch: int
    seed: int
    stage: int

    def global_rows(self, cursor: int, world: int) -> torch.Tensor:
        return replay_indices(self.blocks["input_ids"].shape[0], self.per_batch * world, self.seed, self.stage, cursor)

    def rows(self, cursor: int, world: int, rank: int) -> torch.Tensor:
        """This rank's buffer rows for global micro-batch ``cursor``."""
        return self.global_rows(cursor, world)[rank * self.per_batch:(rank + 1) * self.per_batch]


class Replay(ContinualStrategy):
    """Experience replay: ``share`` of every micro-batch from a bounded buffer of earlier domains (stage 0 has no
    earlier domain and trains on its own data only)."""

    name = "replay"

    def __init__(self, share: float, buffer_blocks: int = 64, seed: int = 0):
        if not 0.0 < share < 1.0:
            raise ValueError(f"replay share must be in (0, 1), got {share}")
        self.share = share
        self.buffer = ReplayBuffer(buffer_blocks, seed)

    def replay_plan(self, ctx: StageContext) -> ReplayPlan | None:
        if len(self.buffer) == 0:
            return None
        blocks, source = self.buffer.tensors()
        return ReplayPlan(blocks, source, replay_count(self.share, ctx.batch_size), self.buffer.seed, ctx.stage)

    def end_stage(self, ctx: StageContext) -> None:
        self.buffer.add(ctx.stage, ctx.domain.train)

    def state_dict(self) -> dict[str, Any]:
        return {"share": self.share, "buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.share = float(state["share"])
        self.buffer.load_state_dict(state["buffer"])

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "share": self.share, "buffer_blocks": self.buffer.capacity}


# -- EWC ------------------------------------------------------------------------------------------------------------
def ewc_penalty(params: Mapping[str, torch.Tensor], fisher: Mapping[str, torch.Tensor],
                anchor: Mapping[str, torch.Tensor], const: Mapping[str, float], strength: float) -> float:
    """``(strength/2) * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2`` from the accumulated sums ``fisher = sum_k F_k``,
    ``anchor = sum_k F_k theta*_k`` and, per parameter, ``const = sum_k sum_i F_k,i theta*_k,i^2`` (one pass, any
    number of tasks). Parameters without a Fisher entry are not penalised."""
    total = 0.0
    for name, theta in params.items():
        if name in fisher:
            f, a, t = fisher[name].double(), anchor[name].double(), theta.detach().double().cpu()
            total += float((f * t * t - 2.0 * a * t).sum()) + const[name]
    return 0.5 * strength * total


def ewc_gradient(theta: torch.Tensor, fisher: torch.Tensor, anchor: torch.Tensor, strength: float) -> torch.Tensor:
    """d penalty / d theta ``= strength * (F theta - A)`` (``F``, ``A`` the accumulated sums of :func:`ewc_penalty`)."""
    return strength * (fisher.to(theta) * theta - anchor.to(theta))


def ewc_pull(theta: torch.Tensor, fisher: torch.Tensor, anchor: torch.Tensor, strength: float,
             rate: float) -> torch.Tensor:
    """The proximal step for parameters no gradient reaches: ``-min(1, rate*strength*F) * (theta - A/F)`` (toward
    the Fisher-weighted anchor, never past it; zero where ``F == 0``)."""
    f, a = fisher.to(theta), anchor.to(theta)
    target = torch.where(f > 0, a / f.clamp_min(torch.finfo(f.dtype).tiny), theta)
    return -(rate * strength * f).clamp(max=1.0) * (theta - target)


def fisher_diagonal(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor],
                    params: Mapping[str, torch.nn.Parameter], blocks: int, keys: Sequence[str] = ("input_ids",),
                    batch_context: Any = None, accelerator: Any = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: the mean over ``blocks`` training blocks (a seeded subset, split over ranks) of the
    squared gradient of each block's mean token NLL with respect to ``params``; identical on every rank."""
    world = getattr(accelerator, "num_processes", 1) if accelerator is not None else 1
    rank = getattr(accelerator, "process_index", 0) if accelerator is not None else 0
    device = next(iter(params.values())).device
    n_all = tensors["input_ids"].shape[0]
    chosen = torch.randperm(n_all, generator=torch.Generator().manual_seed(seed))[: min(blocks, n_all)]
    names = list(params)
    sums = {n: torch.zeros_like(params[n], dtype=torch.float32) for n in names}
    flags = {n: p.requires_grad for n, p in params.items()}
    was_training = model.training
    model.eval()
    try:
        for p in params.values():
            p.requires_grad_(True)
        for i in range(rank, len(chosen), world):
            batch = {k: v.to(device) for k, v in select(tensors, chosen[i:i + 1]).items()}
            reset_state(model)
            ctx: AbstractContextManager = batch_context(batch) if batch_context is not None else nullcontext()
            with torch.enable_grad(), ctx:
                nll, count = model_nll(model, batch, keys)
                loss = nll.sum() / count.clamp_min(1)
                grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
            for n, g in zip(names, grads):
                if g is not None:
                    sums[n] += g.detach().float() ** 2
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
        model.train(was_training)
    if world > 1:
        sums = {n: accelerator.reduce(s.contiguous(), reduction="sum") for n, s in sums.items()}
    return {n: (s / len(chosen)).cpu() for n, s in sums.items()}


class EWC(ContinualStrategy):
    """Elastic weight consolidation on the adapter parameters (see ``RegularizerSection``). After each stage the
    Fisher of that stage's domain is estimated, normalised to mean 1 and added to the running sums; from the next
    stage on, every learner is wrapped by :class:`EWCLearner`."""

    name = "ewc"

    def __init__(self, strength: float = 1.0, fisher_blocks: int = 16, local_rate: float = 0.0):
        if strength < 0 or fisher_blocks < 1 or local_rate < 0:
            raise ValueError("ewc needs strength >= 0, fisher_blocks >= 1, local_rate >= 0")
        self.strength, self.fisher_blocks, self.local_rate = float(strength), int(fisher_blocks), float(local_rate)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        self.const: dict[str, float] = {}
        self.tasks = 0

    def end_stage(self, ctx: StageContext) -> None:
        params = dict(ctx.trainer.owned)
        fisher = fisher_diagonal(ctx.model, ctx.domain.train, params, self.fisher_blocks, ctx.model_keys,
                                 ctx.batch_context, ctx.accelerator, seed=ctx.seed + ctx.stage)
        total = sum(float(f.double().sum()) for f in fisher.values())
        count = sum(f.numel() for f in fisher.values())
        scale = count / total if total > 0 else 0.0  # mean 1 over all penalised entries: strength is scale-free
        for name, f in fisher.items():
            f = f * scale
            theta = params[name].detach().float().cpu()
            self.fisher[name] = self.fisher.get(name, torch.zeros_like(f)) + f
            self.anchor[name] = self.anchor.get(name, torch.zeros_like(f)) + f * theta
            self.const[name] = self.const.get(name, 0.0) + float((f.double() * theta.double() ** 2).sum())
        self.tasks += 1

    def wrap_learners(self, ctx: StageContext, learners: list[Learner]) -> list[Learner]:
        if self.tasks == 0 or self.strength == 0:
            return learners
        return [EWCLearner(lr, self) for lr in learners]

    def penalty(self, params: Mapping[str, torch.Tensor]) -> float:
        return ewc_penalty(params, self.fisher, self.anchor, self.const, self.strength)

    def state_dict(self) -> dict[str, Any]:
        return {"fisher": dict(self.fisher), "anchor": dict(self.anchor), "const": self.const, "tasks": self.tasks}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.fisher, self.anchor = dict(state["fisher"]), dict(state["anchor"])
        self.const = {k: float(v) for k, v in state["const"].items()}
        self.tasks = int(state["tasks"])

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "strength": self.strength, "fisher_blocks": self.fisher_blocks,
                "local_rate": self.local_rate}


class EWCLearner:
    """Wraps any learner: before a backprop learner's ``step`` the EWC gradient is added to its parameters' ``.grad``
    (once per optimizer step, after DDP's averaging; identical on every rank because it depends on the parameters
    only); after a local learner's ``step`` its parameters get the proximal pull of :func:`ewc_pull`."""

    def __init__(self, inner: Learner, ewc: EWC):
        self.inner, self.ewc = inner, ewc
        self.mine: dict[str, torch.nn.Parameter] = {}
        self.accelerator: Any = None
        self._penalty = 0.0

    name = property(lambda self: self.inner.name)
    params = property(lambda self: self.inner.params)
    uses_backward = property(lambda self: self.inner.uses_backward)

    def setup(self, ctx: SetupContext) -> None:
        self.accelerator = ctx.accelerator
        self.mine = {n: p for n, p in ctx.params.items() if n in self.ewc.fisher}
        self.inner.setup(ctx)

    def recording(self, model: torch.nn.Module):
        return self.inner.recording(model)

    def observe(self, obs: Observation) -> None:
        self.inner.observe(obs)

    def step(self) -> bool:
        ewc = self.ewc
        self._penalty = ewc.penalty(self.mine)
        if self.inner.uses_backward:
            scaler = getattr(self.accelerator, "scaler", None) if self.accelerator is not None else None
            scale = float(scaler.get_scale()) if scaler is not None else 1.0  # fp16: grads are still scaled here
            with torch.no_grad():
                for name, p in self.mine.items():
                    g = ewc_gradient(p.detach(), ewc.fisher[name].to(p.device), ewc.anchor[name].to(p.device),
                                     ewc.strength) * scale
                    p.grad = g.to(p.dtype) if p.grad is None else p.grad + g.to(p.grad.dtype)
            return self.inner.step()
        applied = self.inner.step()
        if ewc.local_rate > 0:
            with torch.no_grad():
                for name, p in self.mine.items():
                    p.add_(ewc_pull(p.detach(), ewc.fisher[name].to(p.device), ewc.anchor[name].to(p.device),
                                    ewc.strength, ewc.local_rate).to(p.dtype))
        return applied

    def reset(self) -> None:
        self.inner.reset()

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def metrics(self) -> dict[str, float]:
        return {**self.inner.metrics(), "ewc_penalty": self._penalty}


def build_strategies(section: ContinualSection, seed: int = 0) -> list[ContinualStrategy]:
    """The strategy objects a ``continual`` config section describes (adapter strategy first)."""
    out: list[ContinualStrategy] = [PerTaskAdapters() if section.adapter == "per_task" else SharedAdapter()]
    if section.replay.share > 0:
        out.append(Replay(section.replay.share, section.replay.buffer_blocks, seed))
    reg = section.regularizer
    if reg.name == "ewc":
        out.append(EWC(reg.strength, reg.fisher_blocks, reg.local_rate))
    return out


__all__ = ["StageContext", "ContinualStrategy", "AdapterStrategy", "SharedAdapter", "PerTaskAdapters", "Replay",
           "ReplayBuffer", "ReplayPlan", "EWC", "EWCLearner", "replay_quotas", "replay_count", "replay_indices",
           "ewc_penalty", "ewc_gradient", "ewc_pull", "fisher_diagonal", "build_strategies"]
