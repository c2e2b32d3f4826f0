"""Pure numerics of the e-prop rule on one spiking LoRA layer: factor gradients from a broadcast learning signal.

The layer is ``out = W0 x + s · B y``, ``y = spike(h)`` (``s · θ``-scaled counts for ``mt``), ``h = A x``, tokens as
time. Given a learning signal ``L[t] = ∂loss/∂out[t]`` (the error a feedback path delivers, see :mod:`.feedback`),
e-prop (Bellec et al. 2020, "A solution to the learning dilemma for recurrent networks of spiking neurons") forms

    ΔB = −lr · s Σ_t L[t] y[t]ᵀ                               (bottleneck output × error)
    ΔA_ji = −lr Σ_t L_j^A[t] e_ji[t],   L^A = s Bᵀ L,   e_ji[t] = ψ_j[t] x̄_ji[t]

with ψ the neuron's pseudo-derivative (the surrogate the layer's backward uses, at the membrane minus threshold) and
``x̄`` the presynaptic trace with the neuron's own leak (``x̄[t] = d x̄[t−1] + x[t]``, restarted at document starts
and after padding; ``d = 0`` for the memoryless neurons, so ``x̄ = x``). The forward sum over eligibilities is
computed in its reverse (adjoint) form, which is the same sum reordered:
``Σ_t L^A[t] ψ[t] x̄[t] = Σ_k (Σ_{t≥k} d^{t−k} L^A[t] ψ[t]) x[k]`` — an r-wide reverse scan and one GEMM, never an
``[r, in]`` eligibility per token. The surrogate backward of the neuron (:func:`hybridtune.ops.reference.
bottleneck_backward`, whose soft reset is detached like e-prop's) is exactly that scan, so it is reused here; the
learning signal and not a backward through the frozen base is what makes the rule local.

Everything returned is a *gradient estimate* (descent is ``p -= lr · grad``), summed over tokens; padded tokens
contribute nothing when ``valid`` is given.

Example:
    >>> import torch
    >>> g = eprop_factor_grads(torch.ones(1, 3, 2), torch.tensor([[[1.0], [0.0], [1.0]]]), torch.ones(1, 2),
    ...                        torch.ones(2, 1), 1.0, torch.ones(1, 3, 2), "heaviside", torch.tensor([0.5]),
    ...                        torch.zeros(1), None, None, 0, "atan", 2.0)
    >>> g["B"].tolist()
    [[2.0], [2.0]]
"""

from __future__ import annotations

import torch
from torch import Tensor

from hybridtune.ops.reference import bottleneck_backward

__all__ = ["eprop_factor_grads"]


def eprop_factor_grads(x: Tensor, spikes: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float,
                       signal: Tensor, neuron: str, threshold: Tensor, decay: Tensor, reset: Tensor | None,
                       valid: Tensor | None, max_spikes: int, surrogate: str, slope: float) -> dict[str, Tensor]:
    """e-prop gradient estimates of one adapter: ``{"A": [r, in], "B": [out, r], "threshold": [r], "decay": [r]}``.

    ``x [B, L, in]`` the input spikes the adapter consumed, ``spikes [B, L, r]`` its bottleneck spikes, ``signal
    [B, L, out]`` the learning signal ``∂loss/∂out``; ``reset [B, L]`` (None: no restarts); ``valid [B, L]`` the
    tokens whose signal counts (None: all -- the learner passes None, its top error being zero wherever a token
    predicts nothing). ``threshold`` / ``decay`` are the gradients w.r.t. the neuron's threshold θ and LIF decay ``d``
    (not their log / logit parameters); ``decay`` is zero for the memoryless neurons.
    """
    x, s = x.float(), spikes.float()
    theta, dec = threshold.float(), decay.float()
    signal = signal.float()
    if valid is not None:  # padded tokens carry no error and feed no trace
        signal = signal * valid[..., None].to(signal.dtype)
    y = s * theta if neuron == "mt" else s
    b = lora_B.float()
    grad_b = scaling * signal.reshape(-1, signal.shape[-1]).T @ y.reshape(-1, y.shape[-1])
    grad_y = scaling * (signal @ b)  # L^A before the neuron: s Bᵀ L
    h = x @ lora_A.float().T
    grad_h, grad_theta, grad_decay, _ = bottleneck_backward(h, s, grad_y, None, None, neuron, theta, dec, reset, None,
                                                            max_spikes, surrogate, slope)
    if valid is not None:
        grad_h = grad_h * valid[..., None].to(grad_h.dtype)
    grad_a = grad_h.reshape(-1, grad_h.shape[-1]).T @ x.reshape(-1, x.shape[-1])
    return {"A": grad_a, "B": grad_b, "threshold": grad_theta,
            "decay": grad_decay if grad_decay is not None else torch.zeros_like(theta)}
