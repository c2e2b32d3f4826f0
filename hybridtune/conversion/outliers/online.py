"""Online input transforms: a Hadamard transform applied to a linear's input at run time (charged as float adds).

Where a rotation cannot be folded on both sides (the FFN down projection reads ``act(gate) * up``, an elementwise
product), the transform runs online: the linear's input becomes ``x H`` (additions only) and its weight ``W H / n``
(folded once), so ``(x H)(W H / n)^T = x W^T`` exactly in float.

Example:
    >>> import torch
    >>> lin = torch.nn.Linear(12, 3)
    >>> x = torch.randn(2, 12)
    >>> y = lin(x)
    >>> attach_hadamard_input(lin)
    >>> torch.allclose(lin(x), y, atol=1e-5), input_transform(lin).adds_per_vector
    (True, 132)
"""

from __future__ import annotations

from torch import Tensor, nn

from hybridtune.conversion.modules import attach_input_transform, input_transform
from hybridtune.conversion.outliers.folding import rotate_reader
from hybridtune.conversion.outliers.hadamard import apply_hadamard, hadamard, hadamard_adds
from hybridtune.module_kinds import is_conv1d


class OnlineHadamard(nn.Module):
    """``x -> x H`` over the last dim (entries +-1: additions only). ``adds_per_vector`` is what the census charges."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n
        self.adds_per_vector = hadamard_adds(n)

    def forward(self, x: Tensor) -> Tensor:
        return apply_hadamard(x, self.n)

    def extra_repr(self) -> str:
        return f"n={self.n}, adds_per_vector={self.adds_per_vector}"


__all__ = ["OnlineHadamard", "attach_hadamard_input", "attach_input_transform", "input_transform"]


def attach_hadamard_input(linear: nn.Module) -> None:
    """Fold ``H / n`` into ``linear``'s weight and transform its input by ``H`` online (exact in float)."""
    n = linear.weight.shape[0 if is_conv1d(linear) else 1]
    rotate_reader(linear, hadamard(n) / n)
    attach_input_transform(linear, OnlineHadamard(n))
