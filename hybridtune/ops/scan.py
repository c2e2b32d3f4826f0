"""Scans over the token axis: the nonlinear LIF recurrence (forward) and the linear recurrence of its backward.

The LIF forward has a threshold inside the recurrence, so it must step token by token; it is kept lean: the input
current ``h`` for every token comes from one GEMM beforehand and the loop only does three elementwise ops on a
``[B, r]`` slice. Everything the backward needs is a *linear* recurrence (the soft reset is detached, as in
snnTorch), ``v[t] = a[t] * v[t-1] + u[t]`` with ``a[t] = decay * (1 - cut[t])``.

Two implementations each, same arithmetic: torch (any device, traceable) and NumPy for plain CPU float tensors -- a
NumPy ufunc on a tiny array costs about a third of a torch op's dispatch, and these loops are nothing but tiny ops
(``lif_scan`` / ``linear_scan`` pick NumPy on CPU outside autograd and tracing).

:func:`decay_scan` is the package's one exact parallel scan of a decaying recurrence (the torch linear scan here and
the plastic learners' traces both use it): ``x[t] = a[t] x[t-1] + u[t]`` with ``a[t] = 0`` at a reset, ``1`` at a
masked (padding) position and ``λ`` otherwise. The textbook prefix form ``λ^t Σ_k λ^-k u[k]`` overflows
(``λ^-4096 = inf`` in float32 at λ = exp(-1/4)); here no negative power is ever formed: inside a chunk of c tokens
the scan is a GEMM with ``M[t,k] = λ^(n(t)-n(k)) [k <= t][no reset in (k, t]]`` (n = running count of real tokens,
so every entry is in [0, 1]); the chunk-final states are combined by the same construction one level up. Cost
``O(B L c C + B nC² C)``; with ``c ≈ sqrt(L)`` both levels are small GEMMs.

Example:
    >>> import torch
    >>> from hybridtune.ops.scan import linear_scan
    >>> u = torch.ones(1, 3, 1)
    >>> linear_scan(u, torch.tensor([0.5]), None, None).flatten().tolist()
    [1.0, 1.5, 1.75]
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from hybridtune.neurons.functional import lif_step

# chunk length of the vectorised linear scan: the per-chunk decay matrix is [B, C, C, r], work O(T C r). Measured on
# CPU (B = 1, r = 8, T = 128..512) 32 was fastest; it halves for large B * r to bound the temporary.
SCAN_MAX_CHUNK, SCAN_MIN_CHUNK, SCAN_BUDGET = 32, 8, 1 << 21


def scan_chunk(bsz: int, rank: int) -> int:
    chunk = SCAN_MAX_CHUNK
    while chunk > SCAN_MIN_CHUNK and bsz * chunk * chunk * rank > SCAN_BUDGET:
        chunk //= 2
    return chunk


def auto_chunk(length: int) -> int:
    """Chunk length of :func:`decay_scan` for one shared decay: c ≈ sqrt(L) balances the c x c in-chunk GEMM
    against the nC x nC chunk-level GEMM."""
    c = 1 << max(0, math.ceil(0.5 * math.log2(max(1, length))))
    return min(256, max(16, c))


def _decay_matrix(lam: Tensor, expo: Tensor, keep: Tensor) -> Tensor:
    """``λ^expo`` where ``keep``, else 0: ``[..., t, k]`` for one λ, ``[..., t, k, C]`` for one per channel."""
    zero = torch.zeros((), dtype=lam.dtype, device=lam.device)
    if lam.dim() == 0:
        return torch.where(keep, torch.pow(lam, expo), zero)
    return torch.where(keep[..., None], torch.pow(lam, expo[..., None]), zero)


def _apply(mat: Tensor, u: Tensor) -> Tensor:
    """``mat [..., t, k]`` (or ``[..., t, k, C]``) applied to ``u [..., k, C]``."""
    return mat @ u if mat.dim() == u.dim() else torch.einsum("...tkc,...kc->...tc", mat, u)


def _gain(lam: Tensor, expo: Tensor, keep: Tensor) -> Tensor:
    """``λ^expo`` where ``keep``, else 0, shaped to scale ``[..., C]`` rows."""
    gain = _decay_matrix(lam, expo, keep)
    return gain if lam.dim() else gain[..., None]


def decay_scan(u: Tensor, decay: Tensor, *, reset: Tensor | None = None, valid: Tensor | None = None,
               initial: Tensor | None = None, inclusive: bool = True, chunk: int | None = None) -> Tensor:
    """Exact chunked parallel scan of ``x[t] = a[t] x[t-1] + u[t]`` (see the module docstring), ``x[-1] = initial``.

    ``u``: ``[B, L, C]`` (already zero where ``valid`` is False); ``decay``: a 0-d λ or one per channel ``[C]``, in
    [0, 1]; ``reset`` / ``valid``: ``[B, L]`` bool or None (no resets / all valid); ``initial``: ``[B, C]`` or None
    (zeros). ``inclusive=False`` returns ``x[t] - u[t]``. ``chunk`` defaults to ≈ sqrt(L) for one λ, to a
    memory-bounded length for per-channel decays.

    Example:
        >>> decay_scan(torch.ones(1, 3, 1), torch.tensor(0.5)).flatten().tolist()
        [1.0, 1.5, 1.75]
    """
    bsz, length, ch = u.shape
    dtype, dev = u.dtype, u.device
    lam = decay.to(dtype)
    valid = torch.ones(bsz, length, dtype=torch.bool, device=dev) if valid is None else valid
    reset = torch.zeros(bsz, length, dtype=torch.bool, device=dev) if reset is None else reset
    if chunk is None:
        chunk = auto_chunk(length) if lam.dim() == 0 else scan_chunk(bsz, ch)
    pad = (-length) % chunk
    if pad:
        # Padded tail = masked positions: no input, no decay, so it cannot change any real value.
        u = torch.nn.functional.pad(u, (0, 0, 0, pad))
        valid = torch.nn.functional.pad(valid, (0, pad), value=False)
        reset = torch.nn.functional.pad(reset, (0, pad), value=False)
    n_chunks = (length + pad) // chunk
    u = u.reshape(bsz, n_chunks, chunk, ch)
    valid = valid.reshape(bsz, n_chunks, chunk)
    reset = reset.reshape(bsz, n_chunks, chunk)

    # Level 1: inside each chunk. n(t) = real tokens in [chunk start, t]; seg(t) = resets in [chunk start, t].
    n = valid.cumsum(-1).to(dtype)
    seg = reset.cumsum(-1)
    keep = torch.ones(chunk, chunk, dtype=torch.bool, device=dev).tril(0 if inclusive else -1)
    keep = keep & (seg[..., :, None] == seg[..., None, :])
    x = _apply(_decay_matrix(lam, (n[..., :, None] - n[..., None, :]).clamp_min(0), keep), u)  # [B, nC, c, C]
    # Gain from the state entering the chunk to position t: λ^n(t) if no reset in [chunk start, t], else 0.
    gain = _gain(lam, n, seg == 0)

    # Level 2: carry between chunks, h_j = G_j h_{j-1} + E_j, solved by the same decay-matrix construction.
    end = x[:, :, -1, :] if inclusive else x[:, :, -1, :] + u[:, :, -1, :]  # E_j: inclusive end state, zero init
    count = n[:, :, -1]
    has_reset = (seg[:, :, -1] > 0).long()
    c_incl, r_incl = count.cumsum(-1), has_reset.cumsum(-1)
    c_prev, r_prev = c_incl - count, r_incl - has_reset  # C(j-1), R(j-1)
    strict = torch.ones(n_chunks, n_chunks, dtype=torch.bool, device=dev).tril(-1)
    keep2 = strict & (r_prev[:, :, None] == r_incl[:, None, :])
    carry = _apply(_decay_matrix(lam, (c_prev[:, :, None] - c_incl[:, None, :]).clamp_min(0), keep2), end)
    if initial is not None:
        carry = carry + _gain(lam, c_prev, r_prev == 0) * initial.to(dtype)[:, None, :]
    x = x + gain * carry[:, :, None, :]
    return x.reshape(bsz, n_chunks * chunk, ch)[:, :length]


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
    """:func:`lif_scan` with torch ops (any device): the package's one LIF step
    (:func:`hybridtune.neurons.functional.lif_step`) applied token by token."""
    bsz, steps, rank = h.shape
    h_t = h.transpose(0, 1)  # [T, B, r]
    cut = None if reset is None else reset.t().unsqueeze(-1)  # [T, B, 1]
    v = h.new_zeros(bsz, rank) if state is None else state.to(h.dtype)
    spikes = []
    for t in range(steps):
        s, v = lif_step(v, h_t[t], threshold, decay, None if cut is None else cut[t])
        spikes.append(s)
    return torch.stack(spikes, 1), v


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
        np.greater(v, theta, out=fired[t])  # functional.fires: v > theta
        np.subtract(v, theta, out=v, where=fired[t])
    spikes = torch.from_numpy(fired).transpose(0, 1).to(h.dtype, memory_format=torch.contiguous_format)
    return spikes, torch.from_numpy(v)


def lif_membrane(h: Tensor, spikes: Tensor, threshold: Tensor, decay: Tensor, reset: Tensor | None,
                 state: Tensor | None) -> tuple[Tensor, Tensor]:
    """The LIF membrane of :func:`lif_scan` rebuilt from its spikes with one linear scan (the soft reset is linear
    once the spikes are known): ``(v_pre, v_post)``, before and after each step's reset, ``[B, T, r]``.

    Example:
        >>> h, theta, decay = torch.tensor([[[0.6], [0.6], [0.6]]]), torch.tensor([1.0]), torch.tensor([1.0])
        >>> s, _ = lif_scan(h, theta, decay, None, None)
        >>> [round(v, 4) for v in lif_membrane(h, s, theta, decay, None, None)[0].flatten().tolist()]
        [0.6, 1.2, 0.8]
    """
    v_post = linear_scan(h - spikes * threshold, decay, reset, state)
    return v_post + spikes * threshold, v_post


def linear_scan(u: Tensor, decay: Tensor, cut: Tensor | None, v0: Tensor | None) -> Tensor:
    """Solve ``v[t] = decay * (1 - cut[t]) * v[t-1] + u[t]`` for all t, with ``v[-1] = v0`` (zeros if None).

    ``u``: [B, T, r]; ``decay``: [r] (meant to lie in [0, 1]); ``cut``: [B, T] bool or None. The torch version is
    :func:`decay_scan` (summation order differs from a loop only by float rounding).
    """
    if _numpy_ok(u):
        return linear_scan_numpy(u, decay, cut, v0)
    return linear_scan_chunked(u, decay, cut, v0)


def linear_scan_chunked(u: Tensor, decay: Tensor, cut: Tensor | None, v0: Tensor | None) -> Tensor:
    """:func:`linear_scan` with torch ops, no loop over tokens (any device, traceable): :func:`decay_scan`."""
    return decay_scan(u, decay, reset=cut, initial=v0)


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
