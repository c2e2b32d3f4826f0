"""Exponential traces over the token axis, computed by the exact chunked parallel scan of ``hybridtune.ops.scan``.

The recursion every plastic rule here builds on is, per channel and per sequence,

    x[t] = a[t] * x[t-1] + u[t],   a[t] = 0 if reset[t]  else (1 if masked[t] else λ),   u[t] = s[t] * valid[t]

* ``reset[t]`` True: a new document starts at t; the trace restarts there (``x[t] = s[t]``).
* ``mask[t]`` False (padding): the position is not a time step; the trace passes through unchanged and the padded
  spike is ignored. Left/right padding therefore never changes the trace at real tokens.
* ``inclusive=True`` returns ``x[t]`` (the trace already holds ``s[t]``: traces updated *before* use, as in
  SpikingJelly / Norse / BindsNET). ``inclusive=False`` returns ``x[t] - u[t] = a[t] x[t-1]``, the trace just
  *before* the spike at t (strictly-earlier spikes only).

Layout: spikes ``[..., L, C]`` (time is dim -2), ``reset`` / ``mask`` ``[..., L]``. ``λ`` is one scalar in [0, 1].

Why chunked: the textbook prefix form ``x[t] = λ^t Σ_k λ^-k s[k]`` overflows (``λ^-4096 = inf`` in float32 at
τ = 4); :func:`hybridtune.ops.scan.decay_scan` never forms a negative power (see there).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hybridtune.ops.scan import auto_chunk, decay_scan

__all__ = [
    "decay_from_tau",
    "discounted_reverse_cumsum",
    "reverse_trace_scan",
    "trace_scan",
    "trace_sequential",
    "trace_step",
]


def decay_from_tau(tau: float, dt: float = 1.0, kind: str = "exp") -> float:
    """Per-step decay factor λ of a trace with time constant ``tau`` (in tokens).

    ``kind="exp"``: ``λ = exp(-dt/τ)`` (exact exponential decay); ``kind="euler"``: ``λ = 1 - dt/τ`` (SpikingJelly's
    ``stdp_linear_step`` form, needs ``τ >= dt``).

    Example:
        >>> round(decay_from_tau(4.0), 4), decay_from_tau(4.0, kind="euler")
        (0.7788, 0.75)
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0 (got {tau!r})")
    if kind == "exp":
        return math.exp(-dt / tau)
    if kind == "euler":
        if tau < dt:
            raise ValueError(f"tau must be >= dt for kind='euler' (got tau={tau!r}, dt={dt!r})")
        return 1.0 - dt / tau
    raise ValueError(f"kind must be 'exp' or 'euler' (got {kind!r})")


def _decay_tensor(decay: float | Tensor, dtype: torch.dtype, device: torch.device, name: str = "decay") -> Tensor:
    lam = torch.as_tensor(decay, dtype=dtype, device=device)
    if lam.dim() != 0:
        raise ValueError(f"{name} must be a scalar (one λ per trace), got shape {tuple(lam.shape)}")
    lam_value = float(lam)
    if not 0.0 <= lam_value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1] (got {lam_value!r}); use decay_from_tau(tau) for a time constant")
    return lam


def _float_dtype(t: Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.get_default_dtype()


def _flags(flag: Tensor | None, shape: torch.Size, name: str, default: bool, device: torch.device) -> Tensor:
    """Broadcast a per-token bool flag to ``shape`` (= spikes.shape[:-1]) or fill it with ``default``."""
    if flag is None:
        return torch.full(shape, default, dtype=torch.bool, device=device)
    try:
        return torch.broadcast_to(flag.to(device=device, dtype=torch.bool), shape)
    except RuntimeError:
        raise ValueError(
            f"{name} must have shape {tuple(shape)} (the spikes' shape without the channel dim), "
            f"got {tuple(flag.shape)}"
        ) from None


def _check_spikes(s: Tensor, name: str = "s") -> None:
    if s.dim() < 2:
        raise ValueError(f"{name} must have shape [..., L, C] (time is dim -2), got {tuple(s.shape)}")


def trace_step(
    x: Tensor, s_t: Tensor, decay: float | Tensor, *, reset_t: Tensor | None = None, mask_t: Tensor | None = None
) -> Tensor:
    """One step of the trace recursion, ``x_new = a * x + u`` (see the module docstring for ``a`` and ``u``).

    ``x`` and ``s_t`` are ``[..., C]``; ``reset_t`` / ``mask_t`` are ``[...]`` bools. Returns the inclusive trace.

    Example:
        >>> x = trace_step(torch.zeros(1), torch.ones(1), 0.5)
        >>> trace_step(x, torch.ones(1), 0.5).tolist()
        [1.5]
    """
    dtype = _float_dtype(s_t)
    lam = _decay_tensor(decay, dtype, s_t.device)
    s_t = s_t.to(dtype)
    a = lam.expand(s_t.shape[:-1])
    if mask_t is not None:
        mask_t = mask_t.to(torch.bool)
        a = torch.where(mask_t, a, torch.ones_like(a))
        s_t = s_t * mask_t[..., None]
    if reset_t is not None:
        a = torch.where(reset_t.to(torch.bool), torch.zeros_like(a), a)
    return a[..., None] * x.to(dtype) + s_t


def trace_sequential(s: Tensor, decay: float | Tensor, *, reset: Tensor | None = None, mask: Tensor | None = None,
                     initial: Tensor | None = None, inclusive: bool = True) -> Tensor:
    """Reference: the trace recursion as a Python loop over tokens (slow; for tests and single-step use).

    ``x[t] = a[t] x[t-1] + u[t]`` for t = 0..L-1 with ``x[-1] = initial`` (zeros by default); returns ``x``
    (``inclusive``) or ``x - u`` (exclusive), shape ``[..., L, C]``.

    Example:
        >>> trace_sequential(torch.tensor([[1.0], [0.0], [1.0]]), 0.5).flatten().tolist()
        [1.0, 0.5, 1.25]
    """
    _check_spikes(s)
    dtype = _float_dtype(s)
    shape = s.shape[:-1]
    reset_f = _flags(reset, shape, "reset", False, s.device)
    mask_f = _flags(mask, shape, "mask", True, s.device)
    s = s.to(dtype)
    x = torch.zeros_like(s[..., 0, :]) if initial is None else initial.to(dtype).expand_as(s[..., 0, :])
    out = []
    for t in range(s.shape[-2]):
        x = trace_step(x, s[..., t, :], decay, reset_t=reset_f[..., t], mask_t=mask_f[..., t])
        out.append(x if inclusive else x - s[..., t, :] * mask_f[..., t, None])
    return torch.stack(out, dim=-2)


def trace_scan(s: Tensor, decay: float | Tensor, *, reset: Tensor | None = None, mask: Tensor | None = None,
               initial: Tensor | None = None, inclusive: bool = True, chunk: int | None = None) -> Tensor:
    """Traces ``x[t] = a[t] x[t-1] + u[t]`` over the token axis by an exact chunked parallel scan.

    Same result as :func:`trace_sequential` (to rounding) with no loop over tokens and no ``λ^-t`` term, so it is
    stable at any length in float32. ``s``: spikes ``[..., L, C]`` (bool / int / float; non-float becomes the
    default float dtype); ``reset`` / ``mask``: ``[..., L]``; ``initial``: the state carried in from a previous
    call, ``[..., C]`` (the inclusive trace at the last position of that call). ``chunk`` defaults to ≈ sqrt(L).

    Example:
        >>> s = torch.tensor([[1.0], [0.0], [1.0]])
        >>> trace_scan(s, 0.5).flatten().tolist()
        [1.0, 0.5, 1.25]
        >>> trace_scan(s, 0.5, reset=torch.tensor([False, False, True])).flatten().tolist()
        [1.0, 0.5, 1.0]
        >>> trace_scan(s, 0.5, inclusive=False).flatten().tolist()
        [0.0, 0.5, 0.25]
    """
    _check_spikes(s)
    dtype = _float_dtype(s)
    lam = _decay_tensor(decay, dtype, s.device)
    lead, (length, ch) = s.shape[:-2], s.shape[-2:]
    valid = _flags(mask, s.shape[:-1], "mask", True, s.device)
    rst = _flags(reset, s.shape[:-1], "reset", False, s.device)
    if chunk is None:
        chunk = auto_chunk(length)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 (got {chunk!r})")
    u = (s.to(dtype) * valid[..., None]).reshape(-1, length, ch)
    init = None
    if initial is not None:
        try:
            init = torch.broadcast_to(initial.to(dtype), (*lead, ch)).reshape(-1, ch)
        except RuntimeError:
            raise ValueError(f"initial must have shape {(*lead, ch)}, got {tuple(initial.shape)}") from None
    x = decay_scan(u, lam, reset=rst.reshape(-1, length), valid=valid.reshape(-1, length), initial=init,
                   inclusive=inclusive, chunk=chunk)
    return x.reshape(s.shape)


def reverse_trace_scan(s: Tensor, decay: float | Tensor, *, reset: Tensor | None = None, mask: Tensor | None = None,
                       chunk: int | None = None) -> Tensor:
    """Reverse (anti-causal) traces ``y[k] = Σ_{t>=k} λ^(#real tokens in (k, t]) s[t]`` of ``s [..., L, C]``.

    The adjoint of :func:`trace_scan`: the sum stops at the next document start (``reset [..., L]``) and skips
    padded positions (``mask`` False: no input, no decay step). The flags are shared by all channels, so the decay
    matrices are built once per sequence, not once per channel.

    Example:
        >>> reverse_trace_scan(torch.tensor([[1.0], [0.0], [2.0]]), 0.5).flatten().tolist()
        [1.5, 1.0, 2.0]
    """
    _check_spikes(s)
    return _reverse(s, _decay_tensor(decay, _float_dtype(s), s.device), reset, mask, chunk)


def _reverse(s: Tensor, lam: Tensor, reset: Tensor | None, mask: Tensor | None, chunk: int | None) -> Tensor:
    dtype = lam.dtype
    length, ch = s.shape[-2:]
    valid = _flags(mask, s.shape[:-1], "mask", True, s.device)
    rst = _flags(reset, s.shape[:-1], "reset", False, s.device)
    # Going backwards, the factor between y[k] and y[k+1] is the forward a[k+1]: shift the flags by one.
    valid_next = torch.cat([valid[..., 1:], torch.ones_like(valid[..., :1])], dim=-1)
    reset_next = torch.cat([rst[..., 1:], torch.zeros_like(rst[..., :1])], dim=-1)
    u = (s.to(dtype) * valid[..., None]).flip(-2).reshape(-1, length, ch)
    y = decay_scan(u, lam, reset=reset_next.flip(-1).reshape(-1, length), valid=valid_next.flip(-1).reshape(-1, length),
                   chunk=chunk or auto_chunk(length))
    return y.reshape(s.shape).flip(-2)


def discounted_reverse_cumsum(r: Tensor, gamma: float | Tensor, *, reset: Tensor | None = None,
                              mask: Tensor | None = None, chunk: int | None = None) -> Tensor:
    """Reverse discounted cumsum ``y[k] = Σ_{t>=k} γ^(#real tokens in (k, t]) r[t]`` over the last axis.

    The sum stops at the next document start (``reset[t]`` True for some t in (k, t']) and skips padded positions
    (``mask`` False: no reward, no discount step), matching an eligibility ``e[t] = γ e[t-1] + z[t]`` that resets
    and skips the same way; then ``Σ_t r[t] e[t] = Σ_k y[k] z[k]``. ``r``: ``[..., L]``. Chunked and stable
    (:func:`reverse_trace_scan` with one channel).

    Example:
        >>> discounted_reverse_cumsum(torch.tensor([1.0, 0.0, 2.0]), 0.5).tolist()
        [1.5, 1.0, 2.0]
    """
    if r.dim() < 1:
        raise ValueError(f"r must have shape [..., L], got {tuple(r.shape)}")
    lam = _decay_tensor(gamma, _float_dtype(r), r.device, name="gamma")
    return _reverse(r[..., None], lam, reset, mask, chunk)[..., 0]
