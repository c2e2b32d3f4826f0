"""Antithetic node perturbation: a gradient estimate for spiking LoRA factors from forwards only.

Perturb a set of nodes ``u`` (here: each adapter's bottleneck current ``h = A x`` and its output ``o = s B y``) by
``± σ ξ`` with ``ξ ~ N(0, I)``, run the model once with each sign, and read the per-token losses ``ℓ±[t]``. For a
smooth loss, ``(ℓ⁺ − ℓ⁻) / (2σ) · ξ`` is an unbiased estimate (to O(σ²)) of ``∂ℓ/∂u`` — the antithetic pair cancels
the loss's own value, so no baseline is needed. Credit is per token: the node at token ``k`` only changes the losses
of tokens ``t ≥ k`` (causal attention), so it is credited with ``c[k] = Σ_{t≥k} γ^{t−k} (ℓ⁺[t] − ℓ⁻[t]) / (2σ)``
(``γ = 1`` unbiased; smaller ``γ`` trades bias for variance; the sum stops at document starts). Factor gradients then
follow by the layer's own local chain rule: ``∂L/∂B ≈ s Σ_k ĝ_o[k] y[k]ᵀ``, ``∂L/∂A ≈ Σ_k ĝ_h[k] x[k]ᵀ``.

Cost: two extra forwards per pair and micro-batch. Variance: each token's estimate carries the noise of every
perturbed unit, so it grows with their number (``r`` per layer on the bottleneck, the layer's width on the output,
times the number of layers); averaging over tokens and pairs brings it down as ``1/(tokens · pairs)``.

Noise is never stored at layer width: every draw is regenerated from ``(seed, layer, node, pair)``.

Example:
    >>> import torch
    >>> c = antithetic_credit(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]]), 0.5, gamma=1.0)
    >>> c.tolist()   # [(1 + 2), 2] / (2 · 0.5)
    [[3.0, 2.0]]
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from hybridtune.adapters.sequence import SequenceInfo
from hybridtune.learners.escape import noise_projections
from hybridtune.learners.plasticity.targets import FactorTarget
from hybridtune.learners.plasticity.traces import discounted_reverse_cumsum

__all__ = ["antithetic_credit", "node_noise", "perturbed"]


def antithetic_credit(loss_plus: Tensor, loss_minus: Tensor, sigma: float, gamma: float = 1.0, *,
                      reset: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """Per-token credit ``c[k] = Σ_{t≥k} γ^(t−k) (ℓ⁺[t] − ℓ⁻[t]) / (2σ)`` of the nodes at token k; ``[..., L]``."""
    diff = (loss_plus.float() - loss_minus.float()) / (2.0 * sigma)
    return discounted_reverse_cumsum(diff, gamma, reset=reset, mask=mask)


def node_noise(shape: tuple[int, ...], seed: int, layer: str, node: str, pair: int,
               device: torch.device | str = "cpu") -> Tensor:
    """Standard normal noise, a pure function of ``(seed, layer, node, pair)`` (regenerated, never stored)."""
    digest = hashlib.sha256(f"{seed}:{layer}:{node}:{pair}".encode()).digest()
    gen = torch.Generator(device=device)
    gen.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return torch.randn(shape, generator=gen, device=device)


class _BottleneckNoise:
    """The layer's input perturbation (``SpikingLoraLinear.set_input_perturbation``): adds
    ``δ = sign σ ξ (A Aᵀ)⁻¹ A`` so that ``δ Aᵀ = sign σ ξ`` reaches the bottleneck current; ``base_correction`` keeps
    the frozen base output clean."""

    def __init__(self, target: FactorTarget, projection: Tensor, scale: Tensor, seed: int, pair: int, sign: float):
        self.target, self.projection, self.scale = target, projection, scale
        self.seed, self.pair, self.sign = seed, pair, sign
        self._eps: Tensor | None = None

    def perturb(self, x: Tensor, info: SequenceInfo | None) -> Tensor:
        shape = (*x.shape[:-1], self.projection.shape[0])
        xi = node_noise(shape, self.seed, self.target.layer, "h", self.pair, x.device)
        self._eps = self.sign * xi * self.scale.to(x.device)
        return x + (self._eps @ self.projection.to(x.device, torch.float32)).to(x.dtype)

    def base_correction(self, weight: Tensor) -> Tensor:
        m = self.projection.to(weight.device, torch.float32) @ weight.detach().t().float()
        return (self._eps @ m).neg_().to(weight.dtype)


@contextmanager
def perturbed(targets: list[FactorTarget], sigma_h: dict[str, Tensor], sigma_o: float, seed: int, pair: int,
              sign: float) -> Iterator[None]:
    """While active, every target's bottleneck current gets ``sign · σ_h ξ`` (``sigma_h`` per layer, ``[r]``) and,
    if ``sigma_o > 0``, its layer output ``sign · σ_o ζ``; the same ``(seed, pair)`` gives the same draws."""
    projections = noise_projections({t.layer: t.lora_A for t in targets})
    noisy, handles = [], []
    try:
        for t in targets:
            if t.layer in sigma_h:
                t.module.set_input_perturbation(
                    t.adapter, _BottleneckNoise(t, projections[t.layer], sigma_h[t.layer], seed, pair, sign))
                noisy.append(t)
            if sigma_o > 0:
                def add_output_noise(module, args, out, layer=t.layer):
                    zeta = node_noise(tuple(out.shape), seed, layer, "o", pair, out.device)
                    return out + (sign * sigma_o * zeta).to(out.dtype)
                handles.append(t.module.register_forward_hook(add_output_noise))
        yield
    finally:
        for t in noisy:
            t.module.set_input_perturbation(t.adapter, None)
        for h in handles:
            h.remove()
