"""Thin modules conversion installs around a model's own modules: encoded outputs, norms as threshold adaptation.

The neuron math lives in ``hybridtune.neurons``; these modules only decide *where* an encoder sits.

Example:
    >>> import torch
    >>> from hybridtune.neurons import GradedNeuron, DynamicThreshold
    >>> act = attach_output_encoder(torch.nn.SiLU(), GradedNeuron(DynamicThreshold("mean_abs", 1e6)))
    >>> x = torch.randn(2, 8)
    >>> torch.allclose(act(x), torch.nn.functional.silu(x), atol=1e-5)
    True
"""

from __future__ import annotations

from torch import Tensor, nn

from hybridtune.accounting import norm_cost
from hybridtune.conversion.config import ConversionConfig
from hybridtune.module_kinds import norm_gain_offset, norm_kind
from hybridtune.neurons import (
    ChannelScaledThreshold,
    ClipFreeThreshold,
    DynamicThreshold,
    FirstTokenSwitch,
    GradedNeuron,
    GroupedThreshold,
    RateCodedIF,
    StaticThreshold,
)

# markers the accounting census reads (duck typing: accounting sits below convert and cannot import it)
SPIKE_INPUT = "hybridtune_spike_input"  # attribute set on a module whose input is spikes (its ops are SOPs)
ELEMENTWISE_PRODUCT = "hybridtune_glu_spiking"  # set on an FFN whose gate product consumes spikes


def make_encoder(config: ConversionConfig, theta: Tensor | None = None, *, mode: str | None = None,
                 divisor: float | None = None, scale: Tensor | None = None, clip_free: bool = False,
                 first_token: bool = False, group: int | None = None) -> nn.Module:
    """The encoder a site gets: a graded neuron (T = 1, K phases when ``config.phases``) or a rate-coded IF neuron.

    ``theta`` (``[C]`` or a scalar) gives a static threshold; None gives a dynamic per-token one with ``mode`` /
    ``divisor`` (defaults from the config), never saturating the bounded count when ``clip_free`` (the
    ``clip_free`` outlier strategy), one per ``group`` adjacent channels when given (``conversion.threshold_group``;
    the caller decides where channels are grouped), scaled per channel by ``scale`` (``[C]``) when given.
    ``first_token``: the first token of a fresh sequence passes through in float (the ``float_sink`` strategy
    switches it per call).

    Example:
        >>> make_encoder(ConversionConfig(counting="base2")).counting
        'base2'
    """
    if theta is not None:
        strategy: nn.Module = StaticThreshold(theta)
    else:
        mode = mode or (config.threshold_mode if config.threshold == "dynamic" else "mean_abs")
        strategy = DynamicThreshold(mode, divisor if divisor is not None else config.divisor)
        if clip_free and config.cap is not None:
            strategy = ClipFreeThreshold(strategy, config.cap)  # inside the channel scale: it sees v / s
        if group is not None:
            strategy = GroupedThreshold(strategy, group)  # per group: the mean and the clip-free floor
        if scale is not None:
            strategy = ChannelScaledThreshold(strategy, scale)
    if config.neuron == "if":
        return RateCodedIF(strategy, config.timesteps)
    return GradedNeuron(strategy, max_spikes=config.cap, counting=config.counting, phases=config.phases,
                        first_token=FirstTokenSwitch() if first_token else None)


OUTPUT_ENCODER = "hybridtune_encoder"  # child name of an encoder attached to a module's output


def _encode_output(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
    # a module-level function (not a closure), so deep copies of the model keep a working hook
    return getattr(module, OUTPUT_ENCODER)(output)


def attach_output_encoder(module: nn.Module, encoder: nn.Module) -> nn.Module:
    """Encode ``module``'s output as spikes: the encoder becomes its child ``hybridtune_encoder`` plus a forward hook.

    The module keeps its class, name and parameters (so parameter names and the base-weight fingerprint do not
    change); ``print(model)`` shows the encoder under it.

    Example:
        >>> import torch
        >>> from hybridtune.neurons import StaticThreshold
        >>> act = attach_output_encoder(nn.Identity(), GradedNeuron(StaticThreshold(torch.tensor(0.5))))
        >>> act(torch.tensor([0.7])).tolist(), type(act).__name__
        ([0.5], 'Identity')
    """
    if output_encoder(module) is not None:
        raise ValueError(f"{type(module).__name__} already has an output encoder")
    module.add_module(OUTPUT_ENCODER, encoder)
    module.register_forward_hook(_encode_output)
    return module


def output_encoder(module: nn.Module) -> nn.Module | None:
    """The encoder attached to ``module``'s output, or None."""
    return module._modules.get(OUTPUT_ENCODER)


INPUT_TRANSFORM = "hybridtune_input_transform"  # child name of an online transform on a linear's input


def _transform_input(module: nn.Module, args: tuple) -> tuple:
    # module-level (not a closure) so deep copies of the model keep a working hook
    return (getattr(module, INPUT_TRANSFORM)(args[0]), *args[1:])


def attach_input_transform(linear: nn.Module, transform: nn.Module) -> None:
    """Run ``transform`` on ``linear``'s input first (a child ``hybridtune_input_transform`` plus a pre-hook).

    Example:
        >>> lin = nn.Linear(2, 1, bias=False)
        >>> attach_input_transform(lin, nn.Identity())
        >>> type(input_transform(lin)).__name__
        'Identity'
    """
    if input_transform(linear) is not None:
        raise ValueError(f"{type(linear).__name__} already has an input transform")
    linear.add_module(INPUT_TRANSFORM, transform)
    linear.register_forward_pre_hook(_transform_input)


def input_transform(linear: nn.Module) -> nn.Module | None:
    """The online transform on ``linear``'s input, or None."""
    return linear._modules.get(INPUT_TRANSFORM)


def norm_affine(norm: nn.Module) -> tuple[Tensor | None, Tensor | None, bool, float]:
    """``(gain, bias, centred, eps)`` of a norm module: LayerNorm, Gemma's ``(1 + w)`` RMSNorm, or plain RMSNorm.

    Example:
        >>> g, b, centred, eps = norm_affine(nn.LayerNorm(4))
        >>> g.tolist(), b.tolist(), centred
        ([1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], True)
    """
    eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6)))
    if isinstance(norm, nn.LayerNorm):
        return norm.weight, norm.bias, True, eps
    weight = getattr(norm, "weight", None)
    if weight is None:
        return None, None, False, eps
    offset = norm_gain_offset(norm)  # Gemma RMSNorms scale by (1 + weight)
    if offset:
        return offset + weight.detach(), None, False, eps
    return weight, None, False, eps


class ThresholdNorm(nn.Module):
    """A norm realised as per-token threshold adaptation: ``theta_t = rms(x_t) / divisor``.

    The encoder sees the (centred, for LayerNorm) residual stream ``x`` itself; its count ``q`` stands for
    ``x / rms(x)`` at resolution ``1 / divisor``, so the value the next layer consumes is ``g * q / divisor + b``.
    In hardware the gain ``g`` and bias ``b`` fold into the next weights and bias (no ops); this simulation applies
    them elementwise instead, so tied or shared weights are never modified. The norm's own parameters are kept under
    their names (``weight``, ``bias``), so parameter names and the base-weight fingerprint do not change. The
    per-token ``rms`` (the threshold's adaptation signal) and, for LayerNorm, the mean are still computed in float:
    the census counts them.

    Example:
        >>> import torch
        >>> from hybridtune.neurons import DynamicThreshold
        >>> norm = nn.LayerNorm(8)
        >>> tn = ThresholdNorm(norm, GradedNeuron(DynamicThreshold("rms", 1e6)))
        >>> x = torch.randn(3, 8)
        >>> torch.allclose(tn(x), norm(x), atol=1e-4), tn.weight is norm.weight
        (True, True)
    """

    def __init__(self, norm: nn.Module, encoder: nn.Module):
        super().__init__()
        strategy = getattr(encoder, "threshold", None)
        if not (isinstance(strategy, DynamicThreshold) and strategy.mode == "rms"):
            raise ValueError("ThresholdNorm needs an encoder with DynamicThreshold('rms', divisor)")
        _, _, centred, eps = norm_affine(norm)
        self.encoder = encoder
        self.centred = centred
        self.eps = eps
        self.norm_type = type(norm).__name__
        self.norm_kind = norm_kind(norm)
        if self.norm_kind is None:
            raise ValueError(f"ThresholdNorm: {self.norm_type} is not a norm this package recognises (a leaf with an "
                             f"eps and only 1-D weight / bias; see hybridtune.module_kinds.norm_kind)")
        self.gain_offset = norm_gain_offset(norm)  # Gemma scales by (1 + weight)
        self.weight = getattr(norm, "weight", None)
        self.bias = getattr(norm, "bias", None)

    def forward(self, x: Tensor) -> Tensor:
        if self.centred:
            x = x - x.mean(-1, keepdim=True)
        # y = q * theta / rms = q / divisor; the norm's eps enters here as in the original norm
        rms = x.square().mean(-1, keepdim=True).add_(self.eps).sqrt_()
        y = self.encoder(x) / rms
        if self.weight is not None:
            y = y * (self.weight.to(y.dtype) + self.gain_offset)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

    census_counted = ("encoder",)  # the per-token threshold is the norm's own rms, counted below

    def census_ops(self, args: tuple, output: Tensor, add) -> None:
        """What the accounting census counts (``hybridtune.accounting.CountsOwnOps``): the norm the ANN computes;
        the spiking side still computes the per-token rms (and mean) that adapts the threshold."""
        e = args[0].numel()
        ann_mac, ann_ac = norm_cost(self.norm_kind, e)
        add("norm", ann_mac=ann_mac, ann_ac=ann_ac, snn_mac=e, snn_ac=e if self.centred else 0.0)

    def extra_repr(self) -> str:
        return f"norm={self.norm_type}, centred={self.centred}"


def mark_spike_input(module: nn.Module) -> None:
    """Mark ``module`` as consuming spikes (the accounting census counts its work as SOPs, not MACs)."""
    setattr(module, SPIKE_INPUT, True)
