"""Weight dependence, normalisation and clipping of plastic updates (pure, elementwise or per layer).

All functions take the correlation terms ``(LTP, LTD)`` of :func:`~.stdp.stdp_terms` and/or a weight ``w`` and
return an *update* ΔW to add (or a projected weight, for :func:`hard_bound`):

* additive + hard bounds: ``ΔW = A+ LTP − A− LTD``, then ``w ← clamp(w + ΔW, w_min, w_max)``;
* multiplicative soft bounds (Gütig / Norse ``multiplicative_pow``):
  ``ΔW = A+ (w_max − w)^μ ⊙ LTP − A− (w − w_min)^μ ⊙ LTD``;
* Oja-style normalisation: ``ΔW_oja = −diag(Σ_t y[t]²) W`` (mean over sequences), added with its own rate;
* per-layer update-norm clipping: ``ΔW ← ΔW · min(1, c / ‖ΔW‖)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .stdp import _batch_count
from .traces import _check_spikes, _flags, _float_dtype

__all__ = ["additive_delta", "clip_update_norm", "hard_bound", "hard_bound_delta", "oja_delta", "soft_bound_delta"]


def _check_range(w_min: float, w_max: float) -> None:
    if not w_min < w_max:
        raise ValueError(f"w_min must be < w_max (got w_min={w_min!r}, w_max={w_max!r})")


def additive_delta(ltp: Tensor, ltd: Tensor, *, a_plus: float, a_minus: float) -> Tensor:
    """Additive (weight-independent) STDP: ``ΔW = A+ LTP − A− LTD``.

    Example:
        >>> additive_delta(torch.tensor(2.0), torch.tensor(1.0), a_plus=1.0, a_minus=0.5).item()
        1.5
    """
    return a_plus * ltp - a_minus * ltd


def hard_bound(w: Tensor, w_min: float, w_max: float) -> Tensor:
    """Hard bounds as a projection applied after a step: ``clamp(w, w_min, w_max)``.

    Example:
        >>> hard_bound(torch.tensor([-2.0, 0.5, 3.0]), -1.0, 1.0).tolist()
        [-1.0, 0.5, 1.0]
    """
    _check_range(w_min, w_max)
    return w.clamp(w_min, w_max)


def hard_bound_delta(w: Tensor, delta: Tensor, w_min: float, w_max: float) -> Tensor:
    """The additive update cut so that the step lands inside the bounds: ``clamp(w + ΔW, w_min, w_max) − w``.

    Exact when the update is applied as ``w += result`` (learning rate folded into ΔW); with an optimizer in between,
    use :func:`hard_bound` after its step instead.

    Example:
        >>> hard_bound_delta(torch.tensor([0.5, 0.5]), torch.tensor([1.0, -0.25]), 0.0, 1.0).tolist()
        [0.5, -0.25]
    """
    _check_range(w_min, w_max)
    return (w + delta).clamp(w_min, w_max) - w


def soft_bound_delta(
    w: Tensor,
    ltp: Tensor,
    ltd: Tensor,
    *,
    a_plus: float,
    a_minus: float,
    w_min: float,
    w_max: float,
    mu: float = 1.0,
) -> Tensor:
    """Multiplicative soft bounds: ``ΔW = A+ (w_max − w)₊^μ ⊙ LTP − A− (w − w_min)₊^μ ⊙ LTD``.

    Potentiation fades as w approaches ``w_max`` and depression as it approaches ``w_min``. With μ = 1,
    non-negative spikes (so LTP, LTD >= 0) and ``A+ LTP <= 1``, ``A− LTD <= 1`` elementwise, every step keeps
    ``w`` in ``[w_min, w_max]``: ``w' − w_min = (w − w_min)(1 − A− LTD) + A+ (w_max − w) LTP >= 0`` and likewise at
    the top. μ = 0 recovers the additive rule inside the bounds (Norse's ``additive_step``).

    Example:
        >>> soft_bound_delta(torch.tensor([0.75]), torch.tensor([1.0]), torch.tensor([1.0]),
        ...                  a_plus=1.0, a_minus=1.0, w_min=0.0, w_max=1.0).tolist()
        [-0.5]
    """
    _check_range(w_min, w_max)
    up = (w_max - w).clamp_min(0)
    down = (w - w_min).clamp_min(0)
    if mu != 1.0:
        up, down = up.pow(mu), down.pow(mu)
    return a_plus * up * ltp - a_minus * down * ltd


def oja_delta(w: Tensor, s_post: Tensor, *, mask: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Oja-style normalisation term ``ΔW = −diag(Σ_t y[t]²) W`` (sum over tokens, mean over sequences).

    Oja's rule ``Δw = η y (x − y w)`` is the Hebbian term plus this decay; added to an STDP update at the same rate
    it keeps each output row's norm bounded. ``w [out, in]``, ``s_post [..., L, out]`` (the post activity y),
    ``mask [..., L]``.

    Example:
        >>> oja_delta(torch.ones(1, 2), torch.tensor([[1.0], [2.0]])).tolist()
        [[-5.0, -5.0]]
    """
    _check_spikes(s_post, "s_post")
    if w.dim() != 2 or w.shape[0] != s_post.shape[-1]:
        raise ValueError(f"w must be [out={s_post.shape[-1]}, in], got {tuple(w.shape)}")
    y = s_post.to(_float_dtype(s_post))
    if mask is not None:
        y = y * _flags(mask, s_post.shape[:-1], "mask", True, s_post.device)[..., None]
    power = y.square().reshape(-1, y.shape[-1]).sum(0) / _batch_count(s_post, reduction)
    return -power[:, None] * w


def clip_update_norm(
    updates: Tensor | Sequence[Tensor], max_norm: float, eps: float = 1e-12
) -> tuple[Tensor | list[Tensor], Tensor]:
    """Per-layer update-norm clipping: scale by ``min(1, max_norm / ‖ΔW‖)``; returns ``(clipped, ‖ΔW‖)``.

    A sequence (e.g. the ΔA and ΔB of one layer) is clipped jointly by its total Frobenius norm, like
    ``torch.nn.utils.clip_grad_norm_``. The returned norm is before clipping (log it per layer).

    Example:
        >>> clipped, norm = clip_update_norm(torch.tensor([3.0, 4.0]), 1.0)
        >>> clipped.tolist(), norm.item()
        ([0.6000000238418579, 0.800000011920929], 5.0)
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0 (got {max_norm!r})")
    single = isinstance(updates, Tensor)
    parts = [updates] if single else list(updates)
    if not parts:
        raise ValueError("updates must be a tensor or a non-empty sequence of tensors")
    # Norms accumulated in float64 so that mixed-precision parts do not lose the total.
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.detach()).double() for p in parts]))
    factor = (max_norm / (norm + eps)).clamp(max=1.0)
    clipped = [p * factor.to(p.dtype) for p in parts]
    return (clipped[0] if single else clipped), norm.to(parts[0].dtype)
