"""Continual-learning metrics on a perplexity matrix: pure functions of plain lists, no torch.

Conventions (perplexity: **lower is better**):

- ``T`` domains trained in order ``0 .. T-1``. ``P[i][j]`` is the held-out perplexity on domain ``j`` measured after
  training stage ``i`` (``0 <= i, j < T``). The measurement before any training is kept as a separate baseline row
  ``b[j]`` (not row 0 of ``P``).
- **average final perplexity** ``A = (1/T) * sum_j P[T-1][j]``.
- **backward transfer** ``BWT = (1/(T-1)) * sum_{j<T-1} (P[T-1][j] - P[j][j])``. The sign is flipped with respect to
  the accuracy-based BWT of GEM: **positive BWT = forgetting** (perplexity on earlier domains went up after later
  training), negative = later stages helped earlier domains.
- **forgetting** ``F = (1/(T-1)) * sum_{j<T-1} (P[T-1][j] - min_{j<=i<=T-2} P[i][j])``: how far each earlier domain
  ended above the best perplexity it had at any point between the end of its own stage and the stage before last
  (Chaudhry et al.'s forgetting with perplexity in place of accuracy, restricted to stages after the domain was
  learned). Not clamped at 0; ``F >= BWT`` always, ``F = BWT`` when no intermediate stage improved a domain further.
- **forward transfer** ``FWT = (1/(T-1)) * sum_{j>=1} (P[j-1][j] - b[j])``: what training on domains ``0..j-1`` did to
  domain ``j`` before it was trained. **Negative FWT = helpful transfer** (lower perplexity than the untrained
  model), positive = earlier stages hurt the unseen domain.

With ``T = 1`` the transfer metrics are undefined and returned as ``None``.

Example:
    >>> P = [[10.0, 30.0], [14.0, 12.0]]
    >>> b = [20.0, 40.0]
    >>> average_final(P), backward_transfer(P), forgetting(P), forward_transfer(P, b)
    (13.0, 4.0, 4.0, -10.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Matrix = Sequence[Sequence[float]]

DEFINITIONS = {
    "P": "P[i][j] = held-out perplexity on domain j after training stage i (0-based); b[j] = before any training",
    "avg_final_ppl": "A = (1/T) sum_j P[T-1][j]",
    "bwt": "BWT = (1/(T-1)) sum_{j<T-1} (P[T-1][j] - P[j][j]); positive = forgetting",
    "forgetting": "F = (1/(T-1)) sum_{j<T-1} (P[T-1][j] - min_{j<=i<=T-2} P[i][j]); positive = forgetting",
    "fwt": "FWT = (1/(T-1)) sum_{j>=1} (P[j-1][j] - b[j]); negative = helpful forward transfer",
    "avg_final_nll": "(1/T) sum_j log P[T-1][j] (mean final loss in nats/token)",
}


def check_matrix(P: Matrix, baseline: Sequence[float] | None = None) -> int:
    """``T`` for a square ``T x T`` matrix (and a length-``T`` baseline); ValueError naming the bad shape."""
    T = len(P)
    if T == 0:
        raise ValueError("empty perplexity matrix: train at least one stage")
    for i, row in enumerate(P):
        if len(row) != T:
            raise ValueError(f"perplexity matrix row {i} has {len(row)} entries; expected {T} (one per domain)")
    if baseline is not None and len(baseline) != T:
        raise ValueError(f"baseline has {len(baseline)} entries; expected {T} (one per domain)")
    return T


def average_final(P: Matrix) -> float:
    """``(1/T) * sum_j P[T-1][j]``: mean perplexity over all domains after the last stage."""
    T = check_matrix(P)
    return sum(P[T - 1]) / T


def average_final_nll(P: Matrix) -> float:
    """``(1/T) * sum_j log P[T-1][j]``: the mean final loss (averages better than perplexity across domains)."""
    T = check_matrix(P)
    return sum(math.log(p) for p in P[T - 1]) / T


def backward_transfer(P: Matrix) -> float | None:
    """``(1/(T-1)) * sum_{j<T-1} (P[T-1][j] - P[j][j])``; positive = forgetting. None when ``T == 1``."""
    T = check_matrix(P)
    if T < 2:
        return None
    return sum(P[T - 1][j] - P[j][j] for j in range(T - 1)) / (T - 1)


def forgetting_per_domain(P: Matrix) -> list[float]:
    """``P[T-1][j] - min_{j<=i<=T-2} P[i][j]`` for every ``j < T-1`` (empty when ``T == 1``)."""
    T = check_matrix(P)
    return [P[T - 1][j] - min(P[i][j] for i in range(j, T - 1)) for j in range(T - 1)]


def forgetting(P: Matrix) -> float | None:
    """Mean of :func:`forgetting_per_domain`; positive = forgetting. None when ``T == 1``."""
    per = forgetting_per_domain(P)
    return sum(per) / len(per) if per else None


def forward_transfer(P: Matrix, baseline: Sequence[float]) -> float | None:
    """``(1/(T-1)) * sum_{j>=1} (P[j-1][j] - b[j])``; negative = helpful transfer. None when ``T == 1``."""
    T = check_matrix(P, baseline)
    if T < 2:
        return None
    return sum(P[j - 1][j] - baseline[j] for j in range(1, T)) / (T - 1)


def summarize(P: Matrix, baseline: Sequence[float] | None = None) -> dict[str, Any]:
    """All metrics of a finished sequence (``fwt`` only with a baseline), keyed as in :data:`DEFINITIONS`."""
    T = check_matrix(P, baseline)
    return {
        "domains": T,
        "avg_final_ppl": average_final(P),
        "avg_final_nll": average_final_nll(P),
        "bwt": backward_transfer(P),
        "forgetting": forgetting(P),
        "fwt": forward_transfer(P, baseline) if baseline is not None else None,
        "final_ppl": list(P[T - 1]),
        "diagonal_ppl": [P[j][j] for j in range(T)],
    }


def seen_average(row: Sequence[float], stage: int) -> float:
    """Mean perplexity over the domains trained so far (``0..stage``) in one row of ``P``."""
    return sum(row[: stage + 1]) / (stage + 1)


__all__ = ["DEFINITIONS", "Matrix", "check_matrix", "average_final", "average_final_nll", "backward_transfer",
           "forgetting_per_domain", "forgetting", "forward_transfer", "summarize", "seen_average"]
