"""The ``hybridtune::spike_lora`` custom op: base spiking linear + shrink + neuron + expand + add, in one call.

The pure-PyTorch reference (:mod:`hybridtune.ops.reference`) is the default implementation for every device; the
CUDA kernel (``hybridtune.ops.cuda_ext``) registers for ``"cuda"`` when the backend selection asks for it. The
surrogate backward is registered once: the reference backward (plain torch ops, any device), or the fused CUDA
backward for CUDA tensors while the ``cuda`` backend is active. ``register_fake`` makes the op
traceable, so ``torch.compile(fullgraph=True)`` and ``torch.library.opcheck`` work on it.

Example:
    >>> import torch
    >>> from hybridtune.ops import spike_lora
    >>> x = torch.randn(2, 5, 8)
    >>> out, spikes, state = spike_lora(x, torch.randn(4, 8), None, torch.randn(3, 8), torch.randn(4, 3), 2.0,
    ...                                 "lif", torch.ones(3), torch.full((3,), 0.9), None, None, 0, "atan", 2.0)
    >>> out.shape, spikes.shape, state.shape
    (torch.Size([2, 5, 4]), torch.Size([2, 5, 3]), torch.Size([2, 3]))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from .reference import check_neuron, spike_lora_backward, spike_lora_forward


@torch.library.custom_op("hybridtune::spike_lora", mutates_args=())
def spike_lora(x: Tensor, weight: Tensor, bias: Tensor | None, lora_A: Tensor, lora_B: Tensor, scaling: float,
               neuron: str, threshold: Tensor, decay: Tensor, reset: Tensor | None, state: Tensor | None,
               max_spikes: int, surrogate: str, slope: float) -> tuple[Tensor, Tensor, Tensor]:
    """``out = x W^T + b + scaling * (neuron(x A^T) B^T)``; returns ``(out [B,T,out], spikes [B,T,r],
    state_out [B,r])``. ``x`` is the spike-encoded input the base weight consumes; see
    :mod:`hybridtune.ops.reference` for the neurons and their surrogate gradients."""
    return spike_lora_forward(x, weight, bias, lora_A, lora_B, scaling, neuron, threshold, decay, reset, state,
                              max_spikes)


@spike_lora.register_fake
def _spike_lora_fake(x, weight, bias, lora_A, lora_B, scaling, neuron, threshold, decay, reset, state, max_spikes,
                     surrogate, slope):
    check_neuron(neuron)
    torch._check(x.dim() == 3, lambda: f"spike_lora: x must be [B, T, in], got {x.dim()} dims")
    torch._check(weight.shape[1] == x.shape[2], lambda: "spike_lora: weight must be [out, in] matching x")
    torch._check(lora_A.shape[1] == x.shape[2], lambda: "spike_lora: lora_A must be [r, in] matching x")
    torch._check(lora_B.shape[1] == lora_A.shape[0], lambda: "spike_lora: lora_B must be [out, r]")
    bsz, steps, _ = x.shape
    return (x.new_empty(bsz, steps, weight.shape[0]), x.new_empty(bsz, steps, lora_A.shape[0]),
            x.new_empty(bsz, lora_A.shape[0]))


# The CUDA backward and the surrogates it knows, set by the backend selection (:mod:`.backend`) while the ``cuda``
# backend is active; None: the reference backward everywhere. Set from outside so the op never asks which backend
# is active in the middle of a backward.
_CUDA_BACKWARD: tuple[Callable, frozenset[str]] | None = None


def use_cuda_backward(backward: Callable | None, surrogates: Iterable[str] = ()) -> None:
    """Route the backward of CUDA tensors through ``backward`` for ``surrogates`` (a surrogate registered at runtime
    has no CUDA code: its gradients come from the reference); ``None`` switches back to the reference."""
    global _CUDA_BACKWARD
    _CUDA_BACKWARD = None if backward is None else (backward, frozenset(surrogates))


def _setup_context(ctx, inputs, output):
    (x, weight, bias, lora_A, lora_B, scaling, neuron, threshold, decay, reset, state, max_spikes, surrogate,
     slope) = inputs
    ctx.save_for_backward(x, weight, lora_A, lora_B, threshold, decay, reset, state, output[1])
    ctx.meta = (scaling, neuron, max_spikes, surrogate, slope, bias is not None)


def _backward(ctx, grad_out, grad_spikes, grad_state):
    x, weight, lora_A, lora_B, threshold, decay, reset, state, spikes = ctx.saved_tensors
    scaling, neuron, max_spikes, surrogate, slope, has_bias = ctx.meta
    nig = ctx.needs_input_grad
    needs = (nig[0], nig[1], has_bias and nig[2], nig[3], nig[4], nig[7], nig[8], state is not None and nig[10])
    backward = spike_lora_backward
    if x.is_cuda and _CUDA_BACKWARD is not None and surrogate in _CUDA_BACKWARD[1]:
        backward = _CUDA_BACKWARD[0]
    gx, gw, gb, ga, gbb, gth, gdec, gstate = backward(
        grad_out, grad_spikes, grad_state, x, weight, lora_A, lora_B, spikes, scaling, neuron, threshold, decay,
        reset, state, max_spikes, surrogate, slope, needs)
    # one gradient per op input, in signature order (None for non-tensors and the bool reset mask)
    return gx, gw, gb, ga, gbb, None, None, gth, gdec, None, gstate, None, None, None


spike_lora.register_autograd(_backward, setup_context=_setup_context)
