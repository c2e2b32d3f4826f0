"""What a plastic learner's ``recording(model)`` sets up: the spike recorder and, in escape mode, membrane noise.

Escape noise: while recording, each owned adapter gets an input perturbation switched on
(``SpikingLoraLinear.set_input_perturbation``: the layer applies it to the *adapter's* input only, in place of its
dropout, and adds the base contribution of the difference back exactly) that adds ``δ = η (A Aᵀ)⁻¹ A``, so the bottleneck membrane receives logistic noise ``η`` and the frozen base output is
unchanged. For LIF ``η[t] = ε[t] − d (1 − reset[t]) ε[t−1]``, so the membrane holds exactly ``ε[t]`` at step t and
noise never accumulates: a clean escape-noise neuron, ``P(s[t] = 1 | past) = σ(β (v[t] − θ))``. It keeps
the noise-free bottleneck current ``h = x Aᵀ`` of every call for the learner's score function, and replays its
perturbation if gradient checkpointing re-runs the forward. Outside ``recording`` the neurons are deterministic.

Example:
    >>> import torch
    >>> from hybridtune.testing import tiny_model, tiny_batch
    >>> from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
    >>> from hybridtune.learners.plasticity.targets import find_targets
    >>> pm = get_spiking_peft_model(tiny_model("llama"), spiking_lora_config(r=4, neuron="heaviside",
    ...                                                                    target_modules=["q_proj"]))
    >>> targets = find_targets(pm, {n: p for n, p in pm.named_parameters() if "lora_A" in n})
    >>> beta = {target_key(t): torch.full((4,), 40.0) for t in targets}
    >>> with torch.no_grad(), EscapeNoise(targets, beta, torch.Generator().manual_seed(0)) as noise:
    ...     _ = pm(**tiny_batch())
    >>> sorted(len(v) for v in noise.currents.values())
    [1, 1]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hybridtune.adapters.sequence import SequenceInfo
from hybridtune.learners.escape import logistic_noise, noise_projections
from hybridtune.learners.plasticity.targets import FactorTarget
from hybridtune.neurons.stats import recomputing

__all__ = ["EscapeNoise", "PlasticRecording", "target_key"]


def target_key(target: FactorTarget | tuple[str, str]) -> str:
    layer, adapter = target.key if isinstance(target, FactorTarget) else target
    return f"{layer}::{adapter}"


# -- escape noise ---------------------------------------------------------------------------------------------------
class _NoisyAdapterInput:
    """The escape-noise input perturbation of one target (an ``InputPerturbation`` of the spiking layer)."""

    def __init__(self, noise: EscapeNoise, target: FactorTarget):
        self.noise, self.target = noise, target
        self._eps: Tensor | None = None

    def perturb(self, x: Tensor, info: SequenceInfo | None) -> Tensor:
        t = self.target
        key = target_key(t)
        if recomputing():  # gradient checkpointing re-runs the forward: replay the same perturbation
            delta, self._eps = self.noise.replay[key]
            return x + delta
        active = [n for n in t.module.active_adapters if n in t.module.lora_A]
        if active != [t.adapter]:
            raise RuntimeError(f"escape noise on {t.layer}: adapter {t.adapter!r} must be the only active adapter "
                               f"(active: {active})")
        with torch.no_grad():
            a = t.lora_A.detach().float()
            h = x.detach().float() @ a.T  # noise-free bottleneck current, kept for the score function
            eps = logistic_noise(tuple(h.shape), self.noise.beta[key], generator=self.noise.generator,
                                 device=h.device)
            if t.kind == "lif":  # η[t] = ε[t] − d (1 − reset[t]) ε[t−1]: the membrane holds exactly ε[t]
                keep = torch.ones(h.shape[:2], dtype=h.dtype, device=h.device)
                if info is not None and info.matches(h.shape[0], h.shape[1]) and info.reset is not None:
                    keep = (~info.reset.to(h.device)).to(h.dtype)
                prev = F.pad(eps[:, :-1], (0, 0, 1, 0))
                eps = eps - t.decay().float() * keep[..., None] * prev
            delta = (eps @ self.noise.projection(t).to(eps.dtype)).to(x.dtype)
        self.noise.currents.setdefault(key, []).append(h)
        self._eps = eps
        if torch.is_grad_enabled():
            self.noise.replay[key] = (delta, eps)
        return x + delta

    def base_correction(self, weight: Tensor) -> Tensor:
        """What the layer adds so its frozen base sees the clean input: ``-δ Wᵀ = -ε (P Wᵀ)`` (``P`` the noise
        projection), a rank-r product instead of a second full base GEMM on ``x - (x + δ)``."""
        with torch.no_grad():
            m = self.noise.projection(self.target).to(torch.float32) @ weight.detach().t().float()  # [r, out]
            return (self._eps @ m).neg_().to(weight.dtype)


class EscapeNoise:
    """Context manager: escape noise on the given targets' bottleneck membranes (see the module docstring)."""

    def __init__(self, targets: list[FactorTarget], beta: Mapping[str, Tensor], generator: torch.Generator):
        self.targets, self.beta, self.generator = targets, beta, generator
        self.currents: dict[str, list[Tensor]] = {}
        self.replay: dict[str, Tensor] = {}
        self._on: list[FactorTarget] = []

    def __enter__(self) -> EscapeNoise:
        self._proj = noise_projections({target_key(t): t.lora_A for t in self.targets})
        try:
            for t in self.targets:
                try:
                    t.module.set_input_perturbation(t.adapter, _NoisyAdapterInput(self, t))
                except ValueError as err:  # the score function needs the very input the bottleneck saw
                    raise ValueError(f"escape noise on {t.layer}: {err}; set the adapter's dropout to 0 for rstdp "
                                     "with escape: true") from None
                self._on.append(t)
        except Exception:
            self.__exit__(None, None, None)  # leave no layer with the noise on
            raise
        return self

    def projection(self, target: FactorTarget) -> Tensor:
        """``(A Aᵀ)⁻¹ A`` of the target's current ``lora_A`` (computed for all targets on entering)."""
        return self._proj[target_key(target)]

    def __exit__(self, *exc: Any) -> None:
        for t in self._on:
            t.module.set_input_perturbation(t.adapter, None)
        self._on, self.replay = [], {}

    def pop_current(self, key: str) -> Tensor | None:
        calls = self.currents.get(key)
        return calls.pop(0) if calls else None


@dataclass
class PlasticRecording:
    """What a plastic learner's ``recording(model)`` yields: the spike recorder and, in escape mode, the noise; for
    ``rstdp``'s antithetic estimator, the tail blocks' call arguments (:class:`~hybridtune.learners.tail.TailCapture`)."""

    recorder: Any
    noise: EscapeNoise | None = None
    tail: Any = None
    stack: list = field(default_factory=list)

    def pop(self) -> list:
        return self.recorder.pop()

    def __enter__(self) -> PlasticRecording:
        try:
            self.recorder.__enter__()
            self.stack.append(self.recorder)
            for part in (self.noise, self.tail):
                if part is not None:
                    part.__enter__()
                    self.stack.append(part)
        except Exception:
            self.__exit__(None, None, None)  # a failed entry detaches what was attached
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        while self.stack:
            self.stack.pop().__exit__(*exc)
