"""``SpikingLinear``: THE spiking base linear (input encoder + frozen weight), built by convert, wrapped by adapters.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from hybridtune.neurons import GradedNeuron, StaticThreshold, SpikingLinear
    >>> lin = nn.Linear(4, 2)
    >>> spk = SpikingLinear.from_linear(lin, encoder=GradedNeuron(StaticThreshold(torch.tensor(0.5))))
    >>> x = torch.randn(3, 4)
    >>> torch.allclose(spk(x), lin(torch.round(x / 0.5) * 0.5))
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybridtune.module_kinds import is_conv1d

from .functional import fold_compensation


class SpikingLinear(nn.Linear):
    """``forward(x) = F.linear(encode(x), weight, bias + compensation_bias)`` with frozen ``weight`` / ``bias``.

    ``encoder`` (a ``GradedNeuron`` or any spiking module, or None for identity) turns the analog input into the
    spikes the weight consumes; its ``fan_out`` is set to ``out_features`` so SOPs count correctly.
    ``compensation_bias [out]`` is a persistent buffer (zeros unless set) holding ``W @ E[v - q theta]``, the
    expectation compensation folded into the bias; it saves with the calibration state.

    Example:
        >>> layer = SpikingLinear(3, 2)
        >>> layer.weight.requires_grad, tuple(layer.compensation_bias.shape)
        (False, (2,))
    """

    compensation_bias: Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        encoder: nn.Module | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.requires_grad_(False)
        self.register_buffer(
            "compensation_bias", torch.zeros(out_features, device=device, dtype=dtype), persistent=True
        )
        self.encoder = encoder
        if encoder is not None and hasattr(encoder, "fan_out"):
            encoder.fan_out = out_features

    @classmethod
    def from_linear(
        cls, linear: nn.Module, encoder: nn.Module | None = None, compensation: Tensor | None = None
    ) -> SpikingLinear:
        """Build from an ``nn.Linear`` (sharing its parameters, now frozen) or a transformers ``Conv1D``.

        ``Conv1D`` stores ``weight [in, out]``; it is converted to the ``nn.Linear`` form (a transposed,
        contiguous copy). ``compensation`` is the input residual ``E[v - q theta]`` of shape ``[in_features]``;
        it is folded as ``weight @ compensation`` into ``compensation_bias``.

        Example:
            >>> from transformers.pytorch_utils import Conv1D
            >>> conv = Conv1D(nf=3, nx=2)
            >>> x = torch.randn(4, 2)
            >>> torch.allclose(SpikingLinear.from_linear(conv)(x), conv(x), atol=1e-6)
            True
        """
        if is_conv1d(linear):
            weight = nn.Parameter(linear.weight.detach().t().contiguous(), requires_grad=False)
            bias = linear.bias
            bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        elif isinstance(linear, nn.Linear):
            weight, bias = linear.weight, linear.bias
        else:
            raise TypeError(
                f"SpikingLinear.from_linear expects nn.Linear or transformers Conv1D; got {type(linear).__name__}"
            )
        out_features, in_features = weight.shape
        # Build on the meta device (no init cost), then install the real tensors.
        layer = cls(in_features, out_features, bias=bias is not None, encoder=encoder, device="meta",
                    dtype=weight.dtype)
        layer.weight = weight
        layer.bias = bias
        layer.compensation_bias = torch.zeros(out_features, device=weight.device, dtype=weight.dtype)
        layer.requires_grad_(False)
        if compensation is not None:
            layer.set_compensation(compensation)
        return layer

    def set_compensation(self, residual: Tensor | None) -> None:
        """Fold an input residual ``[in_features]`` into ``compensation_bias`` (None clears it)."""
        if residual is None:
            self.compensation_bias.zero_()
            return
        if residual.shape != (self.in_features,):
            raise ValueError(
                f"compensation must be the input residual of shape [in_features]=[{self.in_features}]; "
                f"got {list(residual.shape)}"
            )
        with torch.no_grad():
            delta = fold_compensation(self.weight, residual.to(self.weight.device, self.weight.dtype))
            self.compensation_bias.copy_(delta)

    def encode(self, x: Tensor) -> Tensor:
        """The spikes (dequantised) the frozen weight consumes; identity without an encoder."""
        return x if self.encoder is None else self.encoder(x)

    def bias_total(self) -> Tensor:
        """``bias + compensation_bias`` (the effective bias of the base path)."""
        return self.compensation_bias if self.bias is None else self.bias + self.compensation_bias

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.encode(x), self.weight, self.bias_total())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
