"""Gradient alignment: does a learner's update point downhill? A diagnostic for any learner, run only when asked.

For each held-out batch, :func:`gradient_alignment`

1. computes the true gradient of the mean next-token loss w.r.t. the learners' parameters by a *separate* backward
   (``torch.autograd.grad``; no ``.grad`` is touched, the parameters' ``requires_grad`` flags are restored);
2. runs the learners through one trainer-like step on the same batch (recording, forward, backward if a learner
   asks for it, ``observe``, ``step``), reads the update each parameter received, and then puts everything back:
   parameter values, ``.grad``, and every learner's ``state_dict`` (optimizer moments, baselines, step counters);
3. reports the cosine between the update and ``−gradient`` per parameter group (``lora_A``, ``lora_B``,
   ``threshold``, ``decay``, ``other``) and over all of them together (``all``), averaged over batches — over the
   parameters the learners *update* (:func:`~hybridtune.learners.protocol.learning_parameters`: e.g. ``eprop``'s
   top ``top_blocks`` blocks only), and once more over every owned parameter (``all_owned``). A parameter a
   learner owns but never moves would otherwise count as a zero update against what is often the largest part of
   the gradient, and the cosine would judge the choice of what learns rather than the direction of the rule.

A cosine near 0 means the rule moves the adapters in a direction unrelated to the loss; 1 means steepest descent.
The update is what the learner applies, after its optimizer: Adam's per-coordinate scaling lowers the cosine of
even an exact gradient, on a model with many parameters far below 0.5. ``estimate=True`` therefore also reports the
rule's own direction (``estimate/<group>``: what the learner hands its optimizer as ``.grad``), the number to look
at when writing a new rule; the update's cosine says where the parameters actually went.

Example:
    >>> import torch
    >>> from hybridtune.testing import tiny_model, tiny_batch
    >>> from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
    >>> from hybridtune.learners import SetupContext, SurrogateLearner
    >>> pm = get_spiking_peft_model(tiny_model("llama"), spiking_lora_config(r=4, target_modules=["q_proj"]))
    >>> owned = {n: p for n, p in pm.named_parameters() if p.requires_grad}
    >>> sgd = SurrogateLearner(lr=0.1, optimizer="SGD", scheduler="constant", max_grad_norm=None)
    >>> sgd.setup(SetupContext(model=pm, accelerator=None, params=owned, total_steps=1))
    >>> b = {**tiny_batch(), "labels": tiny_batch()["input_ids"]}
    >>> round(gradient_alignment(pm, [sgd], [b])["all"], 4)  # plain SGD on the surrogate gradient: exactly downhill
    1.0
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack

import torch
from torch import Tensor, nn

from .protocol import Learner, Observation, learning_parameters, owned_parameters

__all__ = ["gradient_alignment", "parameter_group"]

_GROUPS = (("lora_A", "lora_A"), ("lora_B", "lora_B"), ("log_threshold", "threshold"), ("decay_logit", "decay"))


def parameter_group(name: str) -> str:
    """``lora_A`` / ``lora_B`` / ``threshold`` / ``decay`` / ``other`` for a parameter name."""
    return next((group for key, group in _GROUPS if key in name), "other")


def _owned(learners: Sequence[Learner]) -> tuple[dict[str, nn.Parameter], list[str]]:
    """Every owned parameter, and the names of those the learners update."""
    owned: dict[str, nn.Parameter] = {}
    learning: list[str] = []
    for lr in learners:
        try:
            params = owned_parameters(lr)
            moving = learning_parameters(lr)
        except TypeError as err:
            raise TypeError(f"gradient_alignment: {err}") from None
        if not params:
            raise ValueError(f"gradient_alignment: learner {getattr(lr, 'name', lr)!r} has no parameters; call its "
                             "setup (or build a Trainer) first")
        owned.update(params)
        learning.extend(moving)
    return owned, learning


def _nll(model: nn.Module, batch: Mapping[str, Tensor], keys: Sequence[str]) -> tuple[Tensor, Tensor]:
    from hybridtune.neurons import reset_state
    from hybridtune.perplexity import model_nll

    reset_state(model)  # blocks are independent sequences, as in the trainer
    return model_nll(model, batch, keys)


def _true_gradient(model: nn.Module, owned: Mapping[str, nn.Parameter], batch: Mapping[str, Tensor],
                   keys: Sequence[str]) -> dict[str, Tensor]:
    flags = {n: p.requires_grad for n, p in owned.items()}
    try:
        for p in owned.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            nll, n = _nll(model, batch, keys)
            grads = torch.autograd.grad(nll.sum() / n.clamp_min(1), list(owned.values()), allow_unused=True)
    finally:
        for name, p in owned.items():
            p.requires_grad_(flags[name])
    return {n: (g if g is not None else torch.zeros_like(p)).detach().float()
            for (n, p), g in zip(owned.items(), grads)}


class _Estimates:
    """Optimizer step pre-hooks keeping the ``.grad`` each learner's torch optimizer is about to apply: the rule's own
    estimate, before any per-coordinate scaling (Adam) or momentum."""

    def __init__(self, learners: Sequence[Learner], owned: Mapping[str, nn.Parameter]):
        self.names = {id(p): n for n, p in owned.items()}
        self.kept: dict[str, Tensor] = {}
        self.covered: set[str] = set()  # owned by a learner with an optimizer (the others: estimate = update)
        self.handles = []
        for lr in learners:
            opt = getattr(lr, "optimizer", None)
            while isinstance(getattr(opt, "optimizer", None), torch.optim.Optimizer):
                opt = opt.optimizer  # Accelerate's wrapper steps the torch optimizer inside it
            if isinstance(opt, torch.optim.Optimizer):
                self.covered.update(self.names[id(p)] for g in opt.param_groups for p in g["params"]
                                    if id(p) in self.names)
                self.handles.append(opt.register_step_pre_hook(self._keep))

    def _keep(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) in self.names and p.grad is not None:
                    self.kept[self.names[id(p)]] = -p.grad.detach().float().clone()  # a descent direction

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _learner_update(model: nn.Module, learners: Sequence[Learner], owned: Mapping[str, nn.Parameter],
                    batch: Mapping[str, Tensor], keys: Sequence[str]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(update, estimate)`` per owned parameter: what the learners applied, and what their optimizers were handed
    (``−.grad``; the update itself for a parameter whose learner applies its rule without a torch optimizer)."""
    before = {n: p.detach().clone() for n, p in owned.items()}
    grads = {n: (p.grad.clone() if p.grad is not None else None) for n, p in owned.items()}
    states = [copy.deepcopy(lr.state_dict()) for lr in learners]
    backprop = any(lr.uses_backward for lr in learners)
    estimates = _Estimates(learners, owned)
    try:
        for p in owned.values():
            p.grad = None
        with ExitStack() as stack:
            recordings = []
            for lr in learners:
                cm = lr.recording(model)
                recordings.append(stack.enter_context(cm) if cm is not None else None)
            with torch.set_grad_enabled(backprop):
                nll, n = _nll(model, batch, keys)
                if backprop:
                    (nll.sum() / n.clamp_min(1)).backward()
            for lr, rec in zip(learners, recordings):
                lr.observe(Observation(batch=batch, token_nll=nll.detach(), recording=rec))
        for lr in learners:
            lr.step()
        update = {n: (p.detach() - before[n]).float() for n, p in owned.items()}
        estimate = {n: (estimates.kept.get(n, torch.zeros_like(u)) if n in estimates.covered else u)
                    for n, u in update.items()}
        return update, estimate
    finally:
        estimates.remove()
        with torch.no_grad():
            for n, p in owned.items():
                p.copy_(before[n])
                p.grad = grads[n]
        for lr, state in zip(learners, states):
            lr.reset()
            lr.load_state_dict(state)


def _cosine(a: list[Tensor], b: list[Tensor]) -> float:
    if not a:
        return 0.0
    x, y = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    denom = float(x.norm() * y.norm())
    return float(x @ y) / denom if denom > 0 else 0.0


def gradient_alignment(model: nn.Module, learners: Sequence[Learner], batches: Iterable[Mapping[str, Tensor]],
                       keys: Sequence[str] | None = None, estimate: bool = False) -> dict[str, float]:
    """Mean cosine between the learners' update and ``−∇loss`` over ``batches``: per group and ``all`` over the
    parameters the learners update, ``all_owned`` over every parameter they own.

    ``estimate``: also report, under ``estimate/<group>``, the cosine of the rule's own estimate, i.e. what a
    learner hands its torch optimizer as ``.grad`` before Adam's per-coordinate scaling or momentum (for a learner
    that applies its rule without a torch optimizer, the update itself). Plain SGD makes the two equal.

    ``model`` is the (unwrapped) peft model the learners were set up on; each batch holds ``input_ids``,
    ``attention_mask``, ``labels`` and optionally ``doc_start``. Nothing is changed: parameters, gradients and the
    learners' state are restored after every batch. ``keys``: what the model is called with (default: the batch's
    ``input_ids``, ``attention_mask`` and ``doc_start``).
    """
    owned, learning = _owned(learners)
    groups: dict[str, list[str]] = {}
    for name in learning:
        groups.setdefault(parameter_group(name), []).append(name)
    groups["all"] = learning
    groups["all_owned"] = list(owned)
    sums: dict[str, float] = {}
    count = 0
    for batch in batches:
        use = tuple(keys) if keys is not None else tuple(k for k in ("input_ids", "attention_mask", "doc_start")
                                                          if k in batch)
        grad = _true_gradient(model, owned, batch, use)
        update, est = _learner_update(model, learners, owned, batch, use)
        for group, names in groups.items():
            downhill = [-grad[n] for n in names]
            sums[group] = sums.get(group, 0.0) + _cosine([update[n] for n in names], downhill)
            if estimate:
                key = f"estimate/{group}"
                sums[key] = sums.get(key, 0.0) + _cosine([est[n] for n in names], downhill)
        count += 1
    if count == 0:
        raise ValueError("gradient_alignment: no batches given")
    return {k: v / count for k, v in sums.items()}
