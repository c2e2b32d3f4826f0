"""Surrogates: snnTorch's functions; .grad equals snnTorch's backward and the derivative of .smooth."""

from __future__ import annotations

import pytest
import snntorch.surrogate as snn
import torch

from hybridtune.neurons import surrogates as S

NAMES = ("atan", "fast_sigmoid", "sigmoid", "straight_through")
X = torch.linspace(-1.5, 1.5, 61, dtype=torch.float64) + 0.0123  # avoid the kink of |x| at exactly 0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("slope", [None, 0.7, 5.0])
def test_grad_matches_snntorch_backward(name, slope):
    sg = S.get_surrogate(name, slope)
    x = X.clone().requires_grad_(True)
    s = sg.spike(x)
    assert s.dtype == x.dtype
    assert torch.equal(s.detach(), (X > 0).to(X.dtype))
    s.sum().backward()
    torch.testing.assert_close(x.grad, sg.grad(X), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("slope", [None, 0.7, 5.0])
def test_grad_is_derivative_of_smooth(name, slope):
    sg = S.get_surrogate(name, slope)
    h = 1e-6
    fd = (sg.smooth(X + h) - sg.smooth(X - h)) / (2 * h)
    torch.testing.assert_close(sg.grad(X), fd, rtol=1e-6, atol=1e-7)


def test_snntorch_parameterisation_and_defaults():
    assert S.get_surrogate("atan").slope == 2.0
    assert S.get_surrogate("fast_sigmoid").slope == 25.0
    assert S.get_surrogate("sigmoid").slope == 25.0
    # Peak values at 0, from snnTorch's formulas: atan alpha/2, fast_sigmoid 1, sigmoid k/4.
    zero = torch.zeros(1)
    assert S.get_surrogate("atan", 3.0).grad(zero).item() == pytest.approx(1.5)
    assert S.get_surrogate("fast_sigmoid", 10.0).grad(zero).item() == pytest.approx(1.0)
    assert S.get_surrogate("sigmoid", 8.0).grad(zero).item() == pytest.approx(2.0)
    assert S.get_surrogate("straight_through").grad(torch.tensor([5.0])).item() == 1.0


def test_spike_uses_snntorch_autograd_function():
    x = torch.tensor([0.3], requires_grad=True)
    s = S.get_surrogate("atan").spike(x)
    assert type(s.grad_fn).__name__.startswith("ATan")
    ref = snn.atan(alpha=2.0)(x)
    assert torch.equal(s, ref)


def test_sigmoid_grad_is_finite_where_snntorch_overflows():
    x = torch.tensor([-40.0, 40.0])
    assert torch.isfinite(S.get_surrogate("sigmoid").grad(x)).all()


def test_registry_errors_and_extension():
    with pytest.raises(ValueError, match="unknown surrogate 'nope'; available: atan"):
        S.get_surrogate("nope")
    with pytest.raises(ValueError, match="slope"):
        S.get_surrogate("atan", -1.0)
    with pytest.raises(ValueError, match="already registered"):
        S.register_surrogate("atan", lambda slope: S.get_surrogate("atan", slope))
    S.register_surrogate("test_atan_half", lambda slope: S.get_surrogate("atan", 0.5 if slope is None else slope),
                         overwrite=True)
    assert S.get_surrogate("test_atan_half").slope == 0.5
    assert "test_atan_half" in S.available_surrogates()
