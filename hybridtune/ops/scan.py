"""Scans over the token axis: the nonlinear LIF recurrence (forward) and the linear recurrence of its backward.

The LIF forward has a threshold inside the recurrence, so it must step token by token; it is kept lean: the input
current ``h`` for every token comes from one GEMM beforehand and the loop only does three elementwise ops on a
``[B, r]`` slice. Everything the backward needs is a *linear* recurrence (the soft reset is detached, as in
snnTorch), ``v[t] = a[t] * v[t-1] + u[t]`` with ``a[t] = decay * (1 - cut[t])``.

Two implementations each, same arithmetic: torch (any device, traceable: the linear scan is chunked with a small
lower-triangular decay matrix per chunk instead of a loop over tokens) and NumPy for plain CPU float tensors -- a
NumPy ufunc on a tiny array costs about a third of a torch op's dispatch, and these loops are nothing but tiny ops
(``lif_scan`` / ``linear_scan`` pick NumPy on CPU outside autograd and tracing).

Example:
    >>> import torch
    >>> from hybridtune.ops.scan import linear_scan
    >>> u = torch.ones(1, 3, 1)
    >>> linear_scan(u, torch.tensor([0.5]), None, None).flatten().tolist()
    [1.0, 1.5, 1.75]
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# chunk length of the vectorised linear scan: the per-chunk decay matrix is [B, C, C, r], work O(T C r). Measured on
# CPU (B = 1, r = 8, T = 128..512) 32 was fastest; it halves for large B * r to bound the temporary.
SCAN_MAX_CHUNK, SCAN_MIN_CHUNK, SCAN_BUDGET = 32, 8, 1 << 21


def scan_chunk(bsz: int, rank: int) -> int:
    chunk = SCAN_MAX_CHUNK
    while chunk > SCAN_MIN_CHUNK and bsz * chunk * chunk * rank > SCAN_BUDGET:
        chunk //= 2
    return chunk


def lif_scan(h: Tensor, threshold: Tensor, decay: Tensor, reset: Tensor | None,
             state: Tensor | None) -> tuple[Tensor, Tensor]:
    """Leaky integrate-and-fire over the token axis with soft reset.

    ``v[t] = decay * v[t-1] * (1 - reset[t]) + h[t]``; ``s[t] = H(v[t] - threshold)`` (H(z) = 1 iff z > 0, as in
    snnTorch); ``v[t] -= s[t] * threshold``. ``h``: [B, T, r]; ``threshold``/``decay``: [r]; ``reset``: [B, T]
    bool or None; ``state``: [B, r] (membrane before the first token) or None (zeros).
    Returns ``(spikes [B, T, r] in h's dtype, final membrane [B, r])``.

    Example:
        >>> import torch
        >>> s, v = lif_scan(torch.tensor([[[0.6], [0.6], [0.6]]]), torch.tensor([1.0]), torch.tensor([1.0]),
        ...                 None, None)
        >>> s.flatten().tolist(), round(v.item(), 4)
        ([0.0, 1.0, 0.0], 0.8)
    """
    if _numpy_ok(h):
        return lif_scan_numpy(h, threshold, decay, reset, state)
    return lif_scan_torch(h, threshold, decay, reset, state)


def lif_scan_torch(h: Tensor, threshold: Tensor, decay: Tensor, reset: Tensor | None,
                   state: Tensor | None) -> tuple[Tensor, Tensor]:
    """:func:`lif_scan` with torch ops (any device)."""
    bsz, steps, rank = h.shape
    h_t = h.transpose(0, 1).contiguous()  # [T, B, r]: each step reads one contiguous slice
    if reset is None:
        gain = decay.expand(steps, bsz, rank)
    else:
        gain = (~reset).t().unsqueeze(-1).to(h.dtype) * decay  # [T, B, r]
    v = h.new_zeros(bsz, rank) if state is None else state.to(h.dtype)
    fired = torch.empty(steps, bsz, rank, dtype=torch.bool, device=h.device)
    neg_theta = (-threshold).expand(bsz, rank)
    for t in range(steps):
        v = torch.addcmul(h_t[t], gain[t], v)
        torch.gt(v, threshold, out=fired[t])
        v = torch.where(fired[t], v + neg_theta, v)
    return fired.transpose(0, 1).to(h.dtype, memory_format=torch.contiguous_format), v


def _numpy_ok(t: Tensor) -> bool:
    """Plain CPU float tensor outside autograd and tracing (fake / functional tensors are subclasses)."""
    return (type(t) is Tensor and t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
            and not t.requires_grad)


def lif_scan_numpy(h: Tensor, threshold: Tensor, decay: Tensor, reset: Tensor | None,
                    state: Tensor | None) -> tuple[Tensor, Tensor]:
    """:func:`lif_scan` for CPU float tensors, stepping with NumPy ufuncs (same arithmetic, same spikes)."""
    bsz, steps, rank = h.shape
    decay, threshold = decay.detach().to(h.dtype), threshold.detach().to(h.dtype)  # inputs may require grad
    h_t = h.transpose(0, 1).contiguous().numpy()
    if reset is None:
        gain = np.broadcast_to(decay.numpy(), (steps, bsz, rank))
    else:
        gain = ((~reset).t().unsqueeze(-1).to(h.dtype) * decay).numpy()
    v = np.zeros((bsz, rank), dtype=h_t.dtype) if state is None else state.detach().to(h.dtype).numpy().copy()
    theta = threshold.numpy()
    fired = np.empty((steps, bsz, rank), dtype=bool)
    for t in range(steps):
        v *= gain[t]
        v += h_t[t]
        np.greater(v, theta, out=fired[t])
        np.subtract(v, theta, out=v, where=fired[t])
    spikes = torch.from_numpy(fired).transpose(0, 1).to(h.dtype, memory_format=torch.contiguous_format)
    return spikes, torch.from_numpy(v)


def linear_scan(u: Tensor, decay: Tensor, cut: Tensor | None, v0: Tensor | None) -> Tensor:
    """Solve ``v[t] = decay * (1 - cut[t]) * v[t-1] + u[t]`` for all t, with ``v[-1] = v0`` (zeros if None).

    ``u``: [B, T, r]; ``decay``: [r] (meant to lie in [0, 1]); ``cut``: [B, T] bool or None. The torch version is
    chunked: inside a chunk ``v = L @ u`` with ``L[t, k] = decay^(t-k)`` while no cut lies in ``(k, t]``; the chunk's
    last value carries into the next one (summation order differs from a loop only by float rounding).
    """
    if _numpy_ok(u):
        return linear_scan_numpy(u, decay, cut, v0)
    return linear_scan_chunked(u, decay, cut, v0)


def linear_scan_chunked(u: Tensor, decay: Tensor, cut: Tensor | None, v0: Tensor | None) -> Tensor:
    """:func:`linear_scan` with torch ops, no loop over tokens (any device, traceable)."""
    bsz, steps, rank = u.shape
    out = torch.empty_like(u)
    carry = v0.to(u.dtype) if v0 is not None else None
    step = scan_chunk(bsz, rank)
    for start in range(0, steps, step):
        stop = min(start + step, steps)
        chunk = stop - start
        idx = torch.arange(chunk, device=u.device)
        lag = (idx[:, None] - idx[None, :]).to(u.dtype)  # t - k
        lower = idx[:, None] >= idx[None, :]
        # decay^(t-k) per channel, zero above the diagonal; pow keeps 0^0 = 1 for decay = 0
        powers = torch.pow(decay.to(u.dtype)[None, None, :], lag.clamp_min(0)[:, :, None]) * lower[:, :, None]
        if cut is None:
            mat = powers.unsqueeze(0)  # [1, C, C, r]
            # decay^(t+1) applied to the carry
            carry_gain = torch.pow(decay.to(u.dtype)[None, :], (idx + 1).to(u.dtype)[:, None]).unsqueeze(0)
        else:
            seg = torch.cumsum(cut[:, start:stop].to(torch.int32), dim=1)  # [B, C]: cuts seen up to t
            same = seg[:, :, None] == seg[:, None, :]  # no cut in (k, t]
            mat = powers.unsqueeze(0) * same.unsqueeze(-1).to(u.dtype)
            carry_gain = torch.pow(decay.to(u.dtype)[None, :], (idx + 1).to(u.dtype)[:, None]).unsqueeze(0)
            carry_gain = carry_gain * (seg == 0).unsqueeze(-1).to(u.dtype)  # a cut at or before t blocks the carry
        block = torch.einsum("btkr,bkr->btr", mat.expand(bsz, -1, -1, -1), u[:, start:stop])
        if carry is not None:
            block = block + carry_gain * carry.unsqueeze(1)
        out[:, start:stop] = block
        carry = block[:, -1]
    return out


def linear_scan_numpy(u: Tensor, decay: Tensor, cut: Tensor | None, v0: Tensor | None) -> Tensor:
    """:func:`linear_scan` for CPU float tensors: two NumPy ufuncs per token, written in place."""
    bsz, steps, rank = u.shape
    decay = decay.detach().to(u.dtype)
    u_t = u.transpose(0, 1).contiguous().numpy()
    gain = (np.broadcast_to(decay.numpy(), (steps, bsz, rank)) if cut is None
            else ((~cut).t().unsqueeze(-1).to(u.dtype) * decay).numpy())
    out = np.empty_like(u_t)
    prev = np.zeros((bsz, rank), dtype=u_t.dtype) if v0 is None else v0.detach().to(u.dtype).numpy()
    for t in range(steps):
        np.multiply(prev, gain[t], out=out[t])
        out[t] += u_t[t]
        prev = out[t]
    return torch.from_numpy(out).transpose(0, 1).contiguous()


def reverse_linear_scan(c: Tensor, decay: Tensor, cut: Tensor | None) -> Tensor:
    """Solve the adjoint ``g[t] = c[t] + decay * (1 - cut[t+1]) * g[t+1]`` backwards from ``g[T-1] = c[T-1]``.

    This is the BPTT recurrence of :func:`linear_scan` (a cut at t+1 severs the link from t+1 back to t).
    """
    flipped = c.flip(1)
    if cut is None:
        rev_cut = None
    else:
        # in flipped time s = T-1-t the link s-1 -> s corresponds to t+1 -> t, severed by cut[t+1] = cut[T-s]
        rev_cut = torch.cat([torch.zeros_like(cut[:, :1]), cut[:, 1:].flip(1)], dim=1)
    return linear_scan(flipped, decay, rev_cut, None).flip(1)
