"""Hadamard matrices and orthogonal rotations (pure functions): Sylvester and Paley constructions, Kronecker products.

A rotation ``R`` (``R @ R.T == I``) applied to an activation and folded into the weights that read it leaves a linear
layer's output unchanged in float, ``x W^T = (x R)(W R)^T``, while spreading a few outlier channels over all
channels (QuaRot, Ashkboos et al. 2024; SpinQuant, Liu et al. 2024). A Hadamard matrix (entries +-1) makes the
online version cheap: ``x H`` needs only additions, ``n log2 n`` for a power of two (fast Walsh-Hadamard transform)
plus ``n (m - 1)`` for a dense order-m factor.

Example:
    >>> h = hadamard(12)
    >>> bool(torch.equal(h @ h.T, 12 * torch.eye(12)))
    True
    >>> hadamard_factors(576), hadamard_adds(576)
    ([12, 12, 4], 13824)
"""

from __future__ import annotations

import math
from functools import cache, lru_cache

import torch
from torch import Tensor


def _is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % p for p in range(2, int(math.isqrt(q)) + 1))


def _paley_order(n: int) -> bool:
    """Orders the Paley I construction gives: ``q + 1`` for a prime ``q = 3 (mod 4)`` (4, 8, 12, 20, 24, ...)."""
    return _is_prime(n - 1) and (n - 1) % 4 == 3


def _adds_per_element(m: int) -> int:
    return int(math.log2(m)) if _is_pow2(m) else m - 1


@cache
def _cheapest(n: int) -> tuple[int, tuple[int, ...]] | None:
    """(adds per element, factor orders) of the cheapest Sylvester / Paley Kronecker factorisation of order n."""
    best = (_adds_per_element(n), (n,)) if _is_pow2(n) or _paley_order(n) else None
    for a in range(2, int(math.isqrt(n)) + 1):
        if n % a == 0:
            left, right = _cheapest(a), _cheapest(n // a)
            if left is not None and right is not None and (best is None or left[0] + right[0] < best[0]):
                best = (left[0] + right[0], left[1] + right[1])
    return best


def hadamard_factors(n: int) -> list[int] | None:
    """Orders of the Sylvester / Paley factors whose Kronecker product is a Hadamard matrix of order ``n``, or None.

    The factorisation with the fewest additions per transform (see :func:`hadamard_adds`) is chosen.

    Example:
        >>> hadamard_factors(64), hadamard_factors(1536), hadamard_factors(10)
        ([64], [12, 128], None)
    """
    best = _cheapest(n)
    if best is None:
        return None
    paley = sorted(m for m in best[1] if not _is_pow2(m))
    pow2 = math.prod(m for m in best[1] if _is_pow2(m))
    return paley + ([pow2] if pow2 > 1 or not paley else [])


def _sylvester(n: int) -> Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _paley(n: int) -> Tensor:
    q = n - 1
    squares = {(i * i) % q for i in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if i in squares else -1.0 for i in range(1, q)], dtype=torch.float64)
    idx = torch.arange(q)
    jacobsthal = chi[(idx[None, :] - idx[:, None]) % q]
    s = torch.zeros(n, n, dtype=torch.float64)
    s[0, 1:] = 1.0
    s[1:, 0] = -1.0
    s[1:, 1:] = jacobsthal
    return s + torch.eye(n, dtype=torch.float64)


def _factor(n: int) -> Tensor:
    return _sylvester(n) if _is_pow2(n) else _paley(n)


def hadamard(n: int) -> Tensor:
    """A Hadamard matrix of order ``n`` (float64, entries +-1, ``H H^T = n I``); ValueError if none is known here.

    Example:
        >>> hadamard(4).tolist()[1]
        [1.0, -1.0, 1.0, -1.0]
    """
    factors = hadamard_factors(n)
    if factors is None:
        raise ValueError(f"no Hadamard matrix of order {n} from Sylvester / Paley factors; use a random orthogonal "
                         "rotation for this width")
    h = torch.ones(1, 1, dtype=torch.float64)
    for m in factors:
        h = torch.kron(h, _factor(m))
    return h


def hadamard_adds(n: int) -> int:
    """Additions of one online transform ``x H`` of a length-``n`` vector: ``n log2 m`` per Sylvester factor of
    order ``m`` (fast Walsh-Hadamard butterflies), ``n (m - 1)`` per dense Paley factor.

    Example:
        >>> hadamard_adds(128), hadamard_adds(1536)
        (896, 27648)
    """
    factors = hadamard_factors(n)
    if factors is None:
        raise ValueError(f"no Hadamard matrix of order {n}")
    return n * sum(_adds_per_element(m) for m in factors)


def apply_hadamard(x: Tensor, n: int) -> Tensor:
    """``x @ hadamard(n)`` over the last dim, computed factor by factor (the structure an online transform uses).

    Example:
        >>> x = torch.randn(3, 24, dtype=torch.float64)
        >>> torch.allclose(apply_hadamard(x, 24), x @ hadamard(24))
        True
    """
    factors = hadamard_factors(n)
    if factors is None or x.shape[-1] != n:
        raise ValueError(f"apply_hadamard: last dim {x.shape[-1]} must be {n}, an order with a Hadamard matrix")
    lead = x.shape[:-1]
    y = x.reshape(-1, *factors)
    for axis, m in enumerate(factors, start=1):
        h = _cached_factor(m, y.dtype, y.device)
        y = torch.movedim(torch.movedim(y, axis, -1) @ h, -1, axis)
    return y.reshape(*lead, n)


@lru_cache(maxsize=32)
def _cached_factor(m: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return _factor(m).to(device=device, dtype=dtype)


def random_orthogonal(n: int, seed: int = 0) -> Tensor:
    """A random orthogonal ``n x n`` matrix (float64): QR of a seeded Gaussian, signs fixed (Haar distributed).

    Example:
        >>> q = random_orthogonal(5, seed=1)
        >>> torch.allclose(q @ q.T, torch.eye(5, dtype=torch.float64))
        True
    """
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


def random_hadamard(n: int, seed: int = 0) -> Tensor:
    """Randomised Hadamard rotation ``diag(signs) H / sqrt(n)`` (float64, orthogonal), seeded random signs.

    Falls back to :func:`random_orthogonal` where no Hadamard matrix of order ``n`` is known here.

    Example:
        >>> r = random_hadamard(12, seed=0)
        >>> torch.allclose(r @ r.T, torch.eye(12, dtype=torch.float64))
        True
    """
    if hadamard_factors(n) is None:
        return random_orthogonal(n, seed)
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (n,), generator=gen).to(torch.float64).mul_(2).sub_(1)
    return signs[:, None] * hadamard(n) / math.sqrt(n)
