"""Surrogate gradients: snnTorch's autograd functions, plus each one's derivative and smooth primitive.

``Surrogate.spike`` is snnTorch's function (forward ``H(x) = (x > 0)``, surrogate backward). ``Surrogate.grad`` is
that backward as a pure torch function, for custom-op backwards; ``Surrogate.smooth`` is the smooth function whose
derivative ``grad`` is (tests check ``grad`` against finite differences of ``smooth`` and against snnTorch).

snnTorch 1.0 parameterisation (``slope`` below is its first argument):
    atan(alpha=2):          grad = alpha/2 / (1 + (pi/2 alpha x)^2)     smooth = atan(pi/2 alpha x)/pi + 1/2
    fast_sigmoid(slope=25): grad = 1 / (1 + k|x|)^2                    smooth = x / (1 + k|x|)
    sigmoid(slope=25):      grad = k sig(kx) (1 - sig(kx))             smooth = sig(kx)
    straight_through:       grad = 1                                   smooth = x

Example:
    >>> import torch
    >>> sg = get_surrogate("atan")
    >>> sg.spike(torch.tensor([-0.5, 0.0, 0.5])).tolist(), sg.grad(torch.tensor([0.0])).tolist()
    ([0.0, 0.0, 1.0], [1.0])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import snntorch.surrogate as snn_surrogate
import torch
from torch import Tensor


@dataclass(frozen=True)
class Surrogate:
    """A named surrogate: ``spike`` (Heaviside forward, surrogate backward), ``grad``, ``smooth``, ``slope``."""

    name: str
    slope: float
    fn: Callable[[Tensor], Tensor]
    grad: Callable[[Tensor], Tensor]
    smooth: Callable[[Tensor], Tensor]

    def spike(self, x: Tensor) -> Tensor:
        """``H(x)`` through snnTorch's autograd function, returned in ``x``'s dtype."""
        s = self.fn(x)
        return s if s.dtype == x.dtype else s.to(x.dtype)


SurrogateFactory = Callable[[float | None], Surrogate]
_REGISTRY: dict[str, SurrogateFactory] = {}


def register_surrogate(name: str, factory: SurrogateFactory, overwrite: bool = False) -> None:
    """Register ``factory(slope: float | None) -> Surrogate`` under ``name`` (None slope = its default).

    Example:
        >>> register_surrogate("atan_wide", lambda slope: get_surrogate("atan", 0.5 if slope is None else slope))
        >>> get_surrogate("atan_wide").slope
        0.5
    """
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"surrogate {name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[name] = factory


def available_surrogates() -> list[str]:
    return sorted(_REGISTRY)


def get_surrogate(name: str, slope: float | None = None) -> Surrogate:
    """The surrogate ``name`` with the given slope (snnTorch's default when None).

    Example:
        >>> get_surrogate("fast_sigmoid").slope
        25.0
    """
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ValueError(f"unknown surrogate {name!r}; available: {', '.join(available_surrogates())}")
    if slope is not None and not slope > 0:
        raise ValueError(f"surrogate slope={slope} must be > 0")
    return factory(slope)


def _atan(slope: float | None) -> Surrogate:
    a = 2.0 if slope is None else float(slope)
    c = math.pi / 2 * a
    return Surrogate(
        "atan", a, snn_surrogate.atan(alpha=a),
        grad=lambda x: (a / 2) / (1 + (c * x) ** 2),
        smooth=lambda x: torch.atan(c * x) / math.pi + 0.5,
    )


def _fast_sigmoid(slope: float | None) -> Surrogate:
    k = 25.0 if slope is None else float(slope)
    return Surrogate(
        "fast_sigmoid", k, snn_surrogate.fast_sigmoid(slope=k),
        grad=lambda x: 1 / (1 + k * x.abs()) ** 2,
        smooth=lambda x: x / (1 + k * x.abs()),
    )


def _sigmoid(slope: float | None) -> Surrogate:
    k = 25.0 if slope is None else float(slope)

    def grad(x: Tensor) -> Tensor:
        # Equal to snnTorch's k e^{-kx} / (e^{-kx} + 1)^2, without its overflow (inf / inf) for very negative kx.
        sg = torch.sigmoid(k * x)
        return k * sg * (1 - sg)

    return Surrogate("sigmoid", k, snn_surrogate.sigmoid(slope=k), grad=grad, smooth=lambda x: torch.sigmoid(k * x))


def _straight_through(slope: float | None) -> Surrogate:
    # snnTorch's estimator has no slope: the backward is the identity; recorded as 1.0.
    return Surrogate(
        "straight_through", 1.0, snn_surrogate.straight_through_estimator(),
        grad=torch.ones_like,
        smooth=lambda x: x.clone(),
    )


for _name, _factory in (("atan", _atan), ("fast_sigmoid", _fast_sigmoid), ("sigmoid", _sigmoid),
                        ("straight_through", _straight_through)):
    register_surrogate(_name, _factory)
