"""``torch.library.opcheck`` and ``torch.compile(fullgraph=True)`` on the reference op."""

from __future__ import annotations

import pytest
import torch

from hybridtune.ops import spike_lora


def sample(neuron: str, grad: bool, reset: bool = True, state: bool = True, bias: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    bsz, steps, d_in, d_out, rank = 2, 6, 5, 4, 3

    def rand(*shape, shift=0.0):
        return (torch.randn(*shape, generator=g) + shift).requires_grad_(grad)

    return (rand(bsz, steps, d_in), torch.randn(d_out, d_in, generator=g), rand(d_out) if bias else None,
            rand(rank, d_in), rand(d_out, rank), 1.5, neuron,
            (torch.rand(rank, generator=g) + 0.3).requires_grad_(grad),
            torch.rand(rank, generator=g).requires_grad_(grad),
            (torch.rand(bsz, steps, generator=g) < 0.3) if reset else None, rand(bsz, rank) if state else None,
            3, "atan", 2.0)


@pytest.mark.parametrize("neuron", ["heaviside", "mt", "lif"])
@pytest.mark.parametrize("grad,full", [(False, True), (True, True), (True, False)])
def test_opcheck(neuron, grad, full):
    args = sample(neuron, grad) if full else sample(neuron, grad, reset=False, state=False, bias=False)
    torch.library.opcheck(spike_lora, args)


def _loss(*args):
    out, spikes, state = spike_lora(*args)
    return out.square().sum() + spikes.sum() + state.sum()


@pytest.mark.parametrize("neuron", ["heaviside", "mt", "lif"])
def test_compile_fullgraph_matches_eager(neuron):
    # aot_eager traces forward and backward through AOTAutograd with fake tensors (what inductor consumes too)
    # without paying for a C++ compile in the test suite
    torch._dynamo.reset()
    args = sample(neuron, True)
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    compiled = torch.compile(_loss, fullgraph=True, backend="aot_eager")
    got = compiled(*args)
    g_got = torch.autograd.grad(got, leaves)
    want = _loss(*args)
    g_want = torch.autograd.grad(want, leaves)
    torch.testing.assert_close(got, want)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b)
