"""Pure-PyTorch reference numerics of the spiking LoRA op: forward and surrogate backward.

``out = x W^T + b + scaling * (y B^T)`` with the bottleneck ``h = x A^T`` passed through a neuron:

* ``heaviside``: ``s = H(h - theta)``, ``y = s``.
* ``mt`` (memoryless graded multi-threshold): ``u = h / theta``, ``s = clamp(round(u), -n, n)``, ``y = s * theta``
  (``max_spikes = n <= 0`` means no cap).
* ``lif``: ``v[t] = decay * v[t-1] * (1 - reset[t]) + h[t]``; ``s = H(v - theta)``; ``v -= s * theta``; ``y = s``.

``H(z) = 1`` iff ``z > 0`` (snnTorch's convention). Backward (surrogate gradients, named surrogate ``sg``):

* ``heaviside``: ``ds/dh = sg(h - theta)``, ``ds/dtheta = -sg(h - theta)``.
* ``mt``: the staircase ``round(u)`` is differentiated at its *nearest* step: ``ds/du = sg(u - b(u))`` with
  ``b(u) = floor(u) + 1/2`` the nearest threshold crossing, and 0 where that crossing lies outside the cap
  (``|b| > n - 1/2``, i.e. the count is saturated). Continuous inside the range (both neighbouring steps give
  ``sg(1/2)`` at integer u). With ``surrogate="straight_through"`` (``sg == 1``) this is the straight-through /
  LSQ estimator: ``dy/dh = 1`` within range and ``dy/dtheta = round(u) - u``.
* ``lif``: BPTT through the scan; the soft reset ``v -= s * theta`` is detached from the spike (snnTorch does the
  same) but keeps its direct ``theta`` dependence. Because of that detachment every backward recurrence is linear
  and is solved with :func:`hybridtune.ops.scan.reverse_linear_scan` (no Python loop over tokens).

Example:
    >>> import torch
    >>> from hybridtune.ops.reference import bottleneck_forward
    >>> y, s, v = bottleneck_forward(torch.tensor([[[0.26, -0.74]]]), "mt", torch.tensor([0.1, 0.1]),
    ...                              torch.ones(2), None, None, max_spikes=4)
    >>> s.tolist()
    [[[3.0, -4.0]]]
"""

from __future__ import annotations

import torch
from torch import Tensor

from .scan import lif_membrane, lif_scan, reverse_linear_scan

NEURONS = ("heaviside", "mt", "lif")


def as_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype`` (itself when it already is)."""
    # .to() on a matching dtype is a no-op that still costs a dispatch; these ops run once per adapter layer
    return t if t.dtype == dtype else t.to(dtype)


def check_neuron(neuron: str) -> None:
    if neuron not in NEURONS:
        raise ValueError(f"spike_lora: neuron={neuron!r} is not one of {', '.join(NEURONS)}")


def surrogate_grad(name: str, slope: float, z: Tensor) -> Tensor:
    """Derivative of the named surrogate at ``z`` (the Heaviside's stand-in), from the neurons registry."""
    from hybridtune.neurons.surrogates import get_surrogate

    return get_surrogate(name, slope).grad(z)


def bottleneck_forward(h: Tensor, neuron: str, threshold: Tensor, decay: Tensor, reset: Tensor | None,
                       state: Tensor | None, max_spikes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Apply the bottleneck neuron to ``h`` [B, T, r]. Returns ``(y, spikes, state_out)``.

    ``y`` is what ``lora_B`` consumes (``s * theta`` for mt, ``s`` otherwise); ``state_out`` is the final LIF
    membrane [B, r] (zeros for the memoryless neurons, which keep no state).
    """
    check_neuron(neuron)
    theta = as_dtype(threshold, h.dtype)
    if neuron == "heaviside":
        spikes = (h > theta).to(h.dtype)
        return spikes, spikes, h.new_zeros(h.shape[0], h.shape[2])
    if neuron == "mt":
        spikes = torch.round(h / theta)
        if max_spikes > 0:
            spikes = spikes.clamp(-max_spikes, max_spikes)
        return spikes * theta, spikes, h.new_zeros(h.shape[0], h.shape[2])
    spikes, v_last = lif_scan(h, theta, as_dtype(decay, h.dtype), reset, state)
    return spikes, spikes, v_last


def mt_surrogate(u: Tensor, max_spikes: int, surrogate: str, slope: float) -> Tensor:
    """``ds/du`` of the multi-threshold staircase: the surrogate at the nearest crossing, 0 when saturated."""
    crossing = torch.floor(u) + 0.5
    d_s = surrogate_grad(surrogate, slope, u - crossing)
    if max_spikes > 0:
        d_s = d_s * (crossing.abs() <= max_spikes - 0.5).to(u.dtype)
    return d_s


def bottleneck_backward(h: Tensor, spikes: Tensor, grad_y: Tensor, grad_spikes: Tensor | None,
                        grad_state: Tensor | None, neuron: str, threshold: Tensor, decay: Tensor,
                        reset: Tensor | None, state: Tensor | None, max_spikes: int, surrogate: str,
                        slope: float) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Surrogate gradients of :func:`bottleneck_forward`.

    Returns ``(grad_h [B, T, r], grad_threshold [r], grad_decay [r] | None, grad_state [B, r] | None)`` given the
    forward's ``h`` and ``spikes`` and the incoming gradients of ``y``, ``spikes`` and ``state_out``.
    """
    theta = as_dtype(threshold, h.dtype)
    reduce_dims = (0, 1)
    if neuron == "heaviside":
        g_s = grad_y if grad_spikes is None else grad_y + grad_spikes
        c = g_s * surrogate_grad(surrogate, slope, h - theta)
        return c, -c.sum(reduce_dims), None, None
    if neuron == "mt":
        u = h / theta
        d_s = mt_surrogate(u, max_spikes, surrogate, slope)
        g_s = grad_y * theta if grad_spikes is None else grad_y * theta + grad_spikes  # dL/ds (y = s * theta)
        grad_h = g_s * d_s / theta
        grad_theta = (grad_y * spikes).sum(reduce_dims) - (grad_h * u).sum(reduce_dims)
        return grad_h, grad_theta, None, None
    # lif: rebuild the membrane from the spikes with one linear scan, then run the adjoint scan backwards
    dec = as_dtype(decay, h.dtype)
    v_pre, v_post = lif_membrane(h, spikes, theta, dec, reset, state)  # before / after the soft reset
    g_s = grad_y if grad_spikes is None else grad_y + grad_spikes
    c = g_s * surrogate_grad(surrogate, slope, v_pre - theta)  # dL/dv_pre through this step's own spike
    c_in = c
    if grad_state is not None:
        c_in = c.clone()
        c_in[:, -1] += grad_state  # the final membrane leaves the op: its gradient enters at the last step
    grad_h = reverse_linear_scan(c_in, dec, reset)  # dL/dv_pre (= dL/dh)
    grad_v_post = grad_h - c  # dL/dv[t] after the reset: what flows back from t+1 (grad_state at the end)
    grad_theta = -(c + grad_v_post * spikes).sum(reduce_dims)
    prev = torch.cat([(as_dtype(state, h.dtype) if state is not None else h.new_zeros(h.shape[0], h.shape[2]))
                      .unsqueeze(1), v_post[:, :-1]], dim=1)  # v[t-1]
    keep = h.new_ones(h.shape[:2]) if reset is None else (~reset).to(h.dtype)
    grad_decay = (grad_h * prev * keep.unsqueeze(-1)).sum(reduce_dims)
    grad_state_in = None
    if state is not None:
        grad_state_in = grad_h[:, 0] * dec * keep[:, :1]
    return grad_h, grad_theta, grad_decay, grad_state_in


def spike_lora_forward(x: Tensor, weight: Tensor, bias: Tensor | None, lora_A: Tensor, lora_B: Tensor,
                       scaling: float, neuron: str, threshold: Tensor, decay: Tensor, reset: Tensor | None,
                       state: Tensor | None, max_spikes: int) -> tuple[Tensor, Tensor, Tensor]:
    """The whole op in plain PyTorch: one GEMM for the base (addmm), one for the shrink, the neuron, one for the
    expand accumulated in place into the base output. Returns ``(out, spikes, state_out)``."""
    check_neuron(neuron)
    bsz, steps, d_in = x.shape
    x2 = x.reshape(bsz * steps, d_in)
    h = (x2 @ lora_A.t()).view(bsz, steps, -1)
    y, spikes, state_out = bottleneck_forward(h, neuron, threshold, decay, reset, state, max_spikes)
    out = torch.addmm(bias, x2, weight.t()) if bias is not None else x2 @ weight.t()
    out.addmm_(y.reshape(bsz * steps, -1), lora_B.t(), alpha=scaling)
    return out.view(bsz, steps, -1), spikes, state_out


def spike_lora_backward(grad_out: Tensor | None, grad_spikes: Tensor | None, grad_state: Tensor | None,
                        x: Tensor, weight: Tensor, lora_A: Tensor, lora_B: Tensor, spikes: Tensor, scaling: float,
                        neuron: str, threshold: Tensor, decay: Tensor, reset: Tensor | None, state: Tensor | None,
                        max_spikes: int, surrogate: str, slope: float, needs: tuple[bool, ...]) -> tuple:
    """Gradients for ``(x, weight, bias, lora_A, lora_B, threshold, decay, state)``; ``needs`` flags which of
    those are wanted (None where not). ``h = x A^T`` is recomputed (one skinny GEMM) rather than saved."""
    bsz, steps, d_in = x.shape
    rank = lora_A.shape[0]
    x2 = x.reshape(bsz * steps, d_in)
    if grad_out is None:
        grad_out = x.new_zeros(bsz, steps, weight.shape[0])
    g2 = grad_out.reshape(bsz * steps, -1)
    h = (x2 @ lora_A.t()).view(bsz, steps, rank)
    theta = as_dtype(threshold, x.dtype)
    y = spikes * theta if neuron == "mt" else spikes
    grad_y = (g2 @ lora_B).mul_(scaling).view(bsz, steps, rank)
    grad_h, grad_theta, grad_decay, grad_state_in = bottleneck_backward(
        h, spikes, grad_y, grad_spikes, grad_state, neuron, threshold, decay, reset, state, max_spikes, surrogate,
        slope)
    gh2 = grad_h.reshape(bsz * steps, rank)
    need_x, need_w, need_b, need_a, need_bb, need_th, need_dec, need_state = needs
    grad_x = torch.addmm(g2 @ weight, gh2, lora_A).view_as(x) if need_x else None
    grad_w = g2.t() @ x2 if need_w else None
    grad_b = g2.sum(0) if need_b else None
    grad_a = gh2.t() @ x2 if need_a else None
    grad_bb = (g2.t() @ y.reshape(bsz * steps, rank)).mul_(scaling) if need_bb else None
    if grad_decay is None and need_dec:
        grad_decay = torch.zeros_like(decay)
    if grad_state_in is None and need_state and state is not None:
        grad_state_in = torch.zeros_like(state)
    return (grad_x, grad_w, grad_b, grad_a, grad_bb, as_dtype(grad_theta, threshold.dtype) if need_th else None,
            as_dtype(grad_decay, decay.dtype) if need_dec else None, grad_state_in if need_state else None)
