"""Escape-noise (stochastic) bottleneck neurons: logistic membrane noise and the score functions of its spikes.

A deterministic neuron fires on ``H(v - θ)``. Adding logistic noise ``ε`` with scale ``1/β`` to its membrane makes
it an *escape-noise* neuron: ``P(s = 1 | v) = P(v + ε > θ) = σ(β (v − θ))``. Spikes are then samples of a policy
whose log-likelihood is differentiable in the adapter's parameters, and the three-factor rule
``ΔA = Σ_t (R − b) · ∂ log π(s_t) / ∂A`` is a REINFORCE (policy-gradient) estimate of ``∇_A E[R]``.

Score functions (``∂ log P(s | v) / ∂v`` and ``∂ log P(s | v) / ∂θ``) for the three bottleneck kinds:

* ``heaviside`` (and ``lif``, with ``v`` the membrane before the spike): ``β (s − p)`` and ``−β (s − p)``,
  ``p = σ(β (v − θ))``.
* ``mt`` (graded, ``s = clamp(round((v + ε) / θ), −n, n)``): with ``F(z) = σ(β z)``, ``a = θ (s + ½) − v`` and
  ``b = θ (s − ½) − v``, ``P = F(a) − F(b)`` (``F(a) = 1`` at the top cap ``s = n``, ``F(b) = 0`` at ``s = −n``),
  ``∂P/∂v = F'(b) − F'(a)``, ``∂P/∂θ = (s + ½) F'(a) − (s − ½) F'(b)``; scores are these divided by ``P``.

:func:`membrane_noise_input` turns a membrane noise ``ε [B, T, r]`` into an input perturbation ``δ = ε (A Aᵀ)⁻¹ A``
with ``δ Aᵀ = ε`` exactly (for ``A`` of full row rank), which is how the learners inject noise through the adapter's
input path without touching the frozen base output (see :mod:`hybridtune.learners.plasticity.learner`).

Example:
    >>> import torch
    >>> v, s = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])
    >>> sv, st = escape_scores(v, s, torch.tensor(0.5), torch.tensor(2.0), kind="heaviside")
    >>> [round(x, 4) for x in sv.tolist()]   # β (s − p), p = σ(2 (v − 0.5))
    [1.4621, -1.4621]
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["escape_scores", "graded_escape_log_prob", "logistic_noise", "membrane_noise_input", "noise_projections"]

_KINDS = ("heaviside", "lif", "mt")


def logistic_noise(shape: tuple[int, ...], beta: Tensor, *, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Logistic noise with scale ``1 / β`` (``β`` broadcast over the last dim): ``P(ε <= z) = σ(β z)``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> e = logistic_noise((20000, 1), torch.tensor([4.0]), generator=g)
        >>> round(float((e <= 0.25).float().mean()), 2)   # σ(4 · 0.25) ≈ 0.73
        0.73
    """
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    u = u.clamp(1e-12, 1.0 - 1e-12)
    return ((torch.log(u) - torch.log1p(-u)) / beta.to(device=u.device, dtype=torch.float64)).to(dtype)


def _binary_scores(v: Tensor, s: Tensor, theta: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    p = torch.sigmoid(beta * (v - theta))
    score = beta * (s - p)
    return score, -score


def _dlogistic(z: Tensor, beta: Tensor) -> Tensor:
    sig = torch.sigmoid(beta * z)
    return beta * sig * (1.0 - sig)


def graded_escape_log_prob(v: Tensor, s: Tensor, theta: Tensor, beta: Tensor, max_spikes: int = 0) -> Tensor:
    """``log P(s | v)`` of the graded (``mt``) escape-noise neuron (see the module docstring); float64.

    Example:
        >>> lp = graded_escape_log_prob(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor(1.0), torch.tensor(8.0))
        >>> round(float(lp.exp()), 4)   # σ(4) − σ(−4)
        0.964
    """
    v, s, theta, beta = (t.double() for t in (v, s, theta, beta))
    upper = torch.sigmoid(beta * (theta * (s + 0.5) - v))
    lower = torch.sigmoid(beta * (theta * (s - 0.5) - v))
    if max_spikes > 0:
        upper = torch.where(s >= max_spikes, torch.ones_like(upper), upper)
        lower = torch.where(s <= -max_spikes, torch.zeros_like(lower), lower)
    return torch.log((upper - lower).clamp_min(1e-300))


def _graded_scores(v: Tensor, s: Tensor, theta: Tensor, beta: Tensor, max_spikes: int) -> tuple[Tensor, Tensor]:
    # float64: P is a difference of two sigmoids and loses precision in float32 far from the bin
    dtype = v.dtype
    v, s, theta, beta = (t.double() for t in (v, s, theta, beta))
    a, b = theta * (s + 0.5) - v, theta * (s - 0.5) - v
    f_a, f_b = torch.sigmoid(beta * a), torch.sigmoid(beta * b)
    d_a, d_b = _dlogistic(a, beta), _dlogistic(b, beta)
    if max_spikes > 0:
        top, bottom = s >= max_spikes, s <= -max_spikes
        f_a, d_a = torch.where(top, torch.ones_like(f_a), f_a), torch.where(top, torch.zeros_like(d_a), d_a)
        f_b, d_b = torch.where(bottom, torch.zeros_like(f_b), f_b), torch.where(bottom, torch.zeros_like(d_b), d_b)
    prob = (f_a - f_b).clamp_min(1e-300)
    score_v = (d_b - d_a) / prob
    score_theta = ((s + 0.5) * d_a - (s - 0.5) * d_b) / prob
    return score_v.to(dtype), score_theta.to(dtype)


def escape_scores(v: Tensor, s: Tensor, theta: Tensor, beta: Tensor, *, kind: str,
                  max_spikes: int = 0) -> tuple[Tensor, Tensor]:
    """``(∂ log P(s|v)/∂v, ∂ log P(s|v)/∂θ)`` of escape-noise spikes ``s`` given the noise-free membrane ``v``.

    ``v``, ``s``: ``[..., r]``; ``theta``, ``beta``: broadcastable (per channel ``[r]``). ``kind``: ``heaviside`` /
    ``lif`` (binary; for ``lif`` pass the membrane before the spike with the past noise included, and multiply the
    θ score by ``1 +`` the exclusive trace of past spikes to account for the soft reset) or ``mt`` (graded, with
    ``max_spikes`` the cap, 0 = none).

    Example:
        >>> sv, st = escape_scores(torch.tensor([0.2]), torch.tensor([0.0]), torch.tensor(0.1), torch.tensor(10.0),
        ...                        kind="mt")
        >>> round(float(sv), 3), round(float(st), 3)
        (-7.417, 10.287)
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {', '.join(_KINDS)} (got {kind!r})")
    theta = torch.as_tensor(theta, dtype=v.dtype, device=v.device)
    beta = torch.as_tensor(beta, dtype=v.dtype, device=v.device)
    if kind == "mt":
        return _graded_scores(v, s.to(v.dtype), theta, beta, max_spikes)
    return _binary_scores(v, s.to(v.dtype), theta, beta)


def membrane_noise_input(eps: Tensor, lora_a: Tensor) -> Tensor:
    """The input perturbation ``δ = ε (A Aᵀ)⁻¹ A`` whose bottleneck image is ``δ Aᵀ = ε`` (``A [r, in]`` full row rank).

    ``eps``: ``[..., r]`` → ``[..., in]`` in ``eps``'s dtype. The ``r x r`` solve runs in float64, the GEMM with ``ε``
    in ``ε``'s dtype, so ``δ Aᵀ`` reproduces ``ε`` to that dtype's rounding.

    Example:
        >>> a = torch.tensor([[1.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
        >>> d = membrane_noise_input(torch.tensor([[0.5, -1.0]]), a)
        >>> (d @ a.T).tolist()
        [[0.5, -1.0]]
    """
    a64 = lora_a.detach().double()
    gram = a64 @ a64.T
    try:
        proj = torch.linalg.solve(gram, a64)  # (A Aᵀ)⁻¹ A
    except RuntimeError:
        raise ValueError(
            "escape noise needs lora_A of full row rank (A Aᵀ is singular); initialise lora_A randomly "
            "(peft's default) rather than with zeros") from None
    return eps @ proj.to(eps.dtype)


def noise_projections(factors: dict[str, Tensor]) -> dict[str, Tensor]:
    """``(A Aᵀ)⁻¹ A`` (float64) for many ``lora_A`` factors, with one batched solve per distinct shape.

    Example:
        >>> p = noise_projections({"a": torch.tensor([[2.0, 0.0]]), "b": torch.tensor([[0.0, 4.0]])})
        >>> p["a"].tolist(), p["b"].tolist()
        ([[0.5, 0.0]], [[0.0, 0.25]])
    """
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for name, a in factors.items():
        by_shape.setdefault((*a.shape, str(a.device)), []).append(name)
    out: dict[str, Tensor] = {}
    for names in by_shape.values():
        a64 = torch.stack([factors[n].detach().double() for n in names])
        try:
            proj = torch.linalg.solve(a64 @ a64.transpose(1, 2), a64)
        except RuntimeError:
            raise ValueError("escape noise needs lora_A of full row rank (A Aᵀ is singular); initialise lora_A "
                             "randomly (peft's default) rather than with zeros") from None
        out.update(zip(names, proj.unbind(0)))
    return out
