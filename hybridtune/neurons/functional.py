"""Pure neuron numerics: graded T = 1 quantisation, spike counting, thresholds, compensation, IF / LIF dynamics.

Everything here is a function of tensors in, tensors out; the modules in this package are thin stateful shells
around these, and the tests hold the two against each other.

Example:
    >>> import torch
    >>> from hybridtune.neurons.functional import graded_quantize, spike_count
    >>> q = graded_quantize(torch.tensor([0.4, 1.6, -2.6, 7.0]), torch.tensor(1.0), None)
    >>> q.tolist(), spike_count(q, "base2").tolist()
    ([0.0, 2.0, -3.0, 7.0], [0, 1, 2, 3])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .surrogates import Surrogate

COUNTINGS = ("unary", "base2")
THRESHOLD_MODES = ("mean_abs", "rms", "max_abs")

# int32 popcount: |q| is clamped here before the cast (counts reach ~2e4 in outlier channels; far below this).
_INT32_MAX = 2**31 - 1


def _check_choice(value: str, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not valid; choose one of {', '.join(map(repr, allowed))}")


def graded_quantize(v: Tensor, theta: Tensor | float, max_spikes: int | None = None) -> Tensor:
    """Signed integer spike count of a graded multi-threshold neuron: ``clamp(round(v / theta), -n, n)``.

    ``theta`` broadcasts against ``v`` (per channel ``[C]``, per token ``[..., 1]`` or a scalar) and must be
    positive. Rounding is half-to-even (``torch.round``). The result is a float tensor holding integers, in the
    promoted dtype of ``v`` and ``theta``. ``max_spikes=None`` means no cap.

    Example:
        >>> graded_quantize(torch.tensor([0.4, 1.6, -2.6, 7.0]), 1.0, max_spikes=5).tolist()
        [0.0, 2.0, -3.0, 5.0]
    """
    q = torch.div(v, theta)
    q.round_()
    if max_spikes is not None:
        if max_spikes < 0:
            raise ValueError(f"max_spikes={max_spikes} must be >= 0 or None (no cap)")
        q.clamp_(-max_spikes, max_spikes)
    return q


def phase_bound(phases: int) -> int:
    """Largest ``|count|`` a K-phase neuron can emit: ``2**K - 1`` (K weighted spikes theta, 2 theta, ... 2^(K-1) theta).

    Example:
        >>> phase_bound(4), phase_bound(8)
        (15, 255)
    """
    if not isinstance(phases, int) or isinstance(phases, bool) or not 1 <= phases <= 30:
        raise ValueError(f"phases={phases!r} must be an integer in [1, 30]")
    return (1 << phases) - 1


def phase_quantize(v: Tensor, theta: Tensor | float, phases: int) -> Tensor:
    """Signed count of a K-phase (bit-serial) neuron: ``round(v / theta)`` saturated at ``+-(2**K - 1)``.

    Phase ``k`` (k = 0 .. K-1) carries weight ``2**k``; the neuron fires in phase ``k`` when bit ``k`` of ``|count|``
    is set, with the count's sign as polarity. So a count needs at most K spikes (``spike_count(q, "base2")``) and
    ``|count|`` spikes under unary counting. Values beyond the bound saturate (clip), they do not wrap.

    Example:
        >>> phase_quantize(torch.tensor([0.4, 6.6, -40.0, 15.4]), 1.0, phases=4).tolist()
        [0.0, 7.0, -15.0, 15.0]
    """
    return graded_quantize(v, theta, phase_bound(phases))


def phase_spikes(q: Tensor, phases: int) -> Tensor:
    """Per-phase spikes of counts ``q`` (``|q| <= 2**K - 1``): ``[K, *q.shape]`` in {-1, 0, 1}; phase k weighs 2^k.

    ``(phase_spikes(q, K) * 2**k).sum(0) == q``: the bit-serial code is exact. Used by tests and for inspection;
    the model itself consumes ``q * theta`` (what the K weighted spikes add up to at the synapse).

    Example:
        >>> s = phase_spikes(torch.tensor([5.0, -2.0]), 3)
        >>> s[:, 0].tolist(), s[:, 1].tolist()
        ([1.0, 0.0, 1.0], [0.0, -1.0, 0.0])
    """
    bound = phase_bound(phases)
    if bool((q.abs() > bound).any()):
        raise ValueError(f"phase_spikes: |count| exceeds 2**{phases} - 1 = {bound}")
    mag = q.abs().to(torch.int64)
    bits = torch.stack([torch.bitwise_right_shift(mag, k).bitwise_and_(1) for k in range(phases)])
    return (bits.to(q.dtype) * torch.sign(q)).add_(0.0)  # + 0.0 turns the -0.0 of negative counts into 0.0


def popcount(n: Tensor) -> Tensor:
    """Number of set bits of each element of a non-negative integer tensor (int32 SWAR bit trick, no loops).

    Example:
        >>> popcount(torch.tensor([0, 1, 3, 7, 8, 255, 2**31 - 1])).tolist()
        [0, 1, 2, 3, 1, 8, 31]
    """
    x = n.to(torch.int32, copy=True)  # own buffer: the steps below work in place (no temporaries per step)
    t = torch.bitwise_right_shift(x, 1).bitwise_and_(0x55555555)
    x.sub_(t)
    torch.bitwise_right_shift(x, 2, out=t).bitwise_and_(0x33333333)
    x.bitwise_and_(0x33333333).add_(t)
    x.add_(torch.bitwise_right_shift(x, 4, out=t)).bitwise_and_(0x0F0F0F0F)
    x.add_(torch.bitwise_right_shift(x, 8, out=t))
    x.add_(torch.bitwise_right_shift(x, 16, out=t))
    return x.bitwise_and_(0x3F)


def spike_count(q: Tensor, counting: str = "unary") -> Tensor:
    """Spikes emitted per neuron for graded counts ``q``.

    ``"unary"``: one spike per threshold unit, ``|q|`` (float, like ``q``). ``"base2"``: thresholds
    theta, 2 theta, 4 theta, ...; one spike per power of two in ``|q|``, i.e. ``popcount(|q|)`` (int32).

    Example:
        >>> spike_count(torch.tensor([0.0, -2.0, 3.0, 7.0]), "unary").tolist()
        [0.0, 2.0, 3.0, 7.0]
        >>> spike_count(torch.tensor([0.0, -2.0, 3.0, 7.0]), "base2").tolist()
        [0, 1, 2, 3]
    """
    if counting == "unary":
        return q.abs()
    if counting == "base2":
        return popcount(q.abs().clamp_(max=_INT32_MAX))
    _check_choice(counting, COUNTINGS, "counting")
    raise AssertionError("unreachable")


def dynamic_threshold(v: Tensor, mode: str = "mean_abs", divisor: float = 8.0, eps: float = 1e-12) -> Tensor:
    """Per-token threshold over the last dim, shape ``[..., 1]``: ``mean|v|``, ``rms(v)`` or ``max|v|`` / divisor.

    ``max_abs`` with ``divisor = 2**K - 1`` never saturates a K-phase count (per-token absmax scaling).

    The result is floored at ``max(eps, finfo(dtype).tiny)`` so an all-zero token quantises to zeros, not NaN.
    With ``mode="rms"`` this is RMSNorm realised as threshold adaptation.

    Example:
        >>> dynamic_threshold(torch.tensor([[1.0, -3.0], [3.0, 4.0]]), "rms", divisor=1.0).squeeze(-1).tolist()
        [2.2360680103302, 3.535533905029297]
    """
    _check_choice(mode, THRESHOLD_MODES, "mode")
    if divisor <= 0:
        raise ValueError(f"divisor={divisor} must be > 0")
    c = v.shape[-1]
    if mode == "mean_abs":
        # abs().sum() is ~10x faster on CPU than vector_norm(ord=1), despite the temporary.
        theta = v.abs().sum(-1, keepdim=True).div_(c * divisor)
    elif mode == "rms":  # vector_norm(ord=2) is fast and needs no v**2 temporary
        theta = torch.linalg.vector_norm(v, ord=2, dim=-1, keepdim=True).div_(c**0.5 * divisor)
    else:
        theta = v.abs().amax(-1, keepdim=True).div_(divisor)
    floor = max(eps, torch.finfo(theta.dtype).tiny) if theta.is_floating_point() else eps
    return theta.clamp_(min=floor)


def expected_residual(v: Tensor, q: Tensor, theta: Tensor | float, mask: Tensor | None = None) -> Tensor:
    """Per-channel mean of the quantisation residual ``v - q * theta`` over all leading dims -> ``[C]``.

    ``mask`` (broadcastable to ``v.shape[:-1]``, True = keep) excludes padding tokens.

    Example:
        >>> v = torch.tensor([[0.5, 1.75], [1.25, -0.25]])
        >>> expected_residual(v, graded_quantize(v, 1.0), 1.0).tolist()
        [0.375, -0.25]
    """
    r = (v - q * theta).reshape(-1, v.shape[-1])
    if mask is None:
        return r.mean(0)
    m = mask.expand(v.shape[:-1]).reshape(-1).to(r.dtype)
    return (r * m[:, None]).sum(0) / m.sum().clamp(min=1)


def fold_compensation(weight: Tensor, residual: Tensor) -> Tensor:
    """Bias delta that folds an input residual into the next linear: ``weight @ residual`` (``[out]``).

    ``F.linear(q * theta, W, b + W @ r) == F.linear(q * theta + r, W, b)``: the expected residual is restored.

    Example:
        >>> fold_compensation(torch.tensor([[1.0, 2.0], [0.0, -1.0]]), torch.tensor([0.5, 0.25])).tolist()
        [1.0, -0.25]
    """
    if weight.ndim != 2 or residual.shape != (weight.shape[1],):
        raise ValueError(
            f"fold_compensation: residual must have shape [in_features]={[weight.shape[-1]]} for weight "
            f"{list(weight.shape)}; got {list(residual.shape)}"
        )
    return weight @ residual.to(weight.dtype)


# --------------------------------------------------------------------------------------------- IF / LIF (T > 1)


def fires(v: Tensor, theta: Tensor | float) -> Tensor:
    """The one firing rule of every LIF / IF neuron in the package: ``v > theta`` (boolean).

    Strict, as in snnTorch's ``H(v - theta)``, the surrogate spike functions, the adapters' bottleneck scan and the
    CUDA kernel: a membrane exactly at threshold does not fire.

    Example:
        >>> fires(torch.tensor([0.5, 1.0, 1.5]), 1.0).tolist()
        [False, False, True]
    """
    return v > theta


def _fire(v: Tensor, theta: Tensor | float, surrogate: Surrogate | None) -> Tensor:
    # A surrogate fires by the same rule in its forward and brings its own backward.
    if surrogate is None:
        return fires(v, theta).to(v.dtype)
    return surrogate.spike(v - theta)


def lif_step(
    v: Tensor,
    x: Tensor,
    theta: Tensor | float = 1.0,
    decay: Tensor | float = 1.0,
    reset: Tensor | None = None,
    surrogate: Surrogate | None = None,
    detach_reset: bool = False,
) -> tuple[Tensor, Tensor]:
    """One LIF step with soft reset -> ``(spike, v_new)``.

    ``v = decay * v * (1 - reset) + x``; ``s = H(v - theta)`` (:func:`fires`: ``v > theta``); ``v = v - s * theta``.
    ``reset`` (0/1 or bool, broadcastable) zeroes the carried membrane first, e.g. at document boundaries. ``decay=1`` is IF.

    Example:
        >>> s, v = lif_step(torch.tensor([0.5]), torch.tensor([0.7]), theta=1.0, decay=0.5)
        >>> s.tolist(), v.tolist()
        ([0.0], [0.949999988079071])
    """
    carried = v * decay
    if reset is not None:
        carried = carried * (1 - reset.to(v.dtype))
    v = carried + x
    s = _fire(v, theta, surrogate)
    v = v - (s.detach() if detach_reset else s) * theta
    return s, v


def if_step(v: Tensor, x: Tensor, theta: Tensor | float = 1.0, surrogate: Surrogate | None = None) -> tuple[
    Tensor, Tensor
]:
    """One integrate-and-fire step with soft reset (``lif_step`` with ``decay=1``).

    Example:
        >>> s, v = if_step(torch.tensor([0.6]), torch.tensor([0.6]))
        >>> s.tolist(), [round(x, 6) for x in v.tolist()]
        ([1.0], [0.2])
    """
    return lif_step(v, x, theta, 1.0, None, surrogate)


def lif_sequence(
    x: Tensor,
    theta: Tensor | float = 1.0,
    decay: Tensor | float = 1.0,
    v0: Tensor | None = None,
    reset: Tensor | None = None,
    surrogate: Surrogate | None = None,
    detach_reset: bool = False,
    time_dim: int = 0,
) -> tuple[Tensor, Tensor]:
    """Run LIF over a whole sequence along ``time_dim`` -> ``(spikes like x, final membrane)``.

    ``reset`` has the shape of ``x`` minus the feature dims that broadcast (e.g. ``[T, B, 1]``) and is applied
    per step. The loop is over time only (the soft reset makes the recurrence nonlinear).

    Example:
        >>> s, v = lif_sequence(torch.full((4, 1), 0.625), theta=1.0, decay=1.0)
        >>> s.squeeze(-1).tolist(), v.tolist()
        ([0.0, 1.0, 0.0, 1.0], [0.5])
    """
    xs = x.movedim(time_dim, 0)
    rs = reset.movedim(time_dim, 0) if reset is not None else None
    v = torch.zeros_like(xs[0]) if v0 is None else v0
    out = []
    for t in range(xs.shape[0]):
        s, v = lif_step(v, xs[t], theta, decay, None if rs is None else rs[t], surrogate, detach_reset)
        out.append(s)
    return torch.stack(out, 0).movedim(0, time_dim), v


def if_sequence(
    x: Tensor, theta: Tensor | float = 1.0, v0: Tensor | None = None, surrogate: Surrogate | None = None,
    time_dim: int = 0,
) -> tuple[Tensor, Tensor]:
    """Integrate-and-fire over a sequence (``lif_sequence`` with ``decay=1``).

    Example:
        >>> s, v = if_sequence(torch.full((3, 1), 0.4))
        >>> s.squeeze(-1).tolist()
        [0.0, 0.0, 1.0]
    """
    return lif_sequence(x, theta, 1.0, v0, None, surrogate, False, time_dim)


def if_rate_count(x: Tensor, theta: Tensor | float, num_steps: int) -> Tensor:
    """Closed-form signed spike count of a rate-coded IF neuron driven by a constant current over ``num_steps``.

    A positive and a negative population each integrate ``|x|`` from rest with soft reset and fire at
    ``v > theta`` (:func:`fires`) at most once per step, so the count is
    ``sign(x) * clamp(ceil(T * |x| / theta) - 1, 0, T)`` -- exactly what ``if_sequence`` produces, without the loop
    over T. The decoded value is ``count * theta / T``.

    Example:
        >>> if_rate_count(torch.tensor([0.26, -0.5, 2.0]), 1.0, 4).tolist()
        [1.0, -1.0, 4.0]
    """
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps} must be >= 1")
    n = torch.div(x.abs() * num_steps, theta).ceil_().sub_(1).clamp_(min=0, max=num_steps)
    return n.mul_(torch.sign(x))
