"""The conversion plan: the *sites* where an encoder sits, and the model surgery helpers that install them.

A site encodes one activation tensor once and feeds it to one or more consumers:

- ``"output"``: the output of ``module`` (a norm kept in float feeding q/k/v, or an FFN activation) is encoded;
- ``"input"``: the input of a linear ``module`` is encoded by the linear's own encoder (``SpikingLinear``);
- ``"threshold_norm"``: the norm ``module`` itself becomes the encoder (per-token threshold ``rms(x_t) / d``).

``consumers`` are linears that receive the spikes (they become ``SpikingLinear``; the calibrated residual folds
into their bias); ``extra_consumers`` are other modules that receive them (a MoE router, fused experts) and are
only marked. ``fan_out`` is the number of synapses one spike drives (SOP = spikes x fan_out).

Example:
    >>> s = Site("model.layers.0.mlp.act_fn", "output", "model.layers.0.mlp.act_fn", channels=128, fan_out=1)
    >>> s.compensable
    False
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from hybridtune.conversion.modules import attach_input_transform, input_transform, mark_spike_input
from hybridtune.module_kinds import linear_dims
from hybridtune.neurons import SpikingLinear

SITE_KINDS = ("output", "input", "threshold_norm")


@dataclass
class Site:
    """One encoder position (see the module docstring)."""

    name: str
    kind: str
    module: str
    consumers: tuple[str, ...] = ()
    extra_consumers: tuple[str, ...] = ()
    channels: int = 0
    fan_out: int = 0
    foldable: bool = True  # False where a residual cannot be folded into a consumer bias (router, fused experts)

    def __post_init__(self) -> None:
        if self.kind not in SITE_KINDS:
            raise ValueError(f"site {self.name}: kind={self.kind!r} is not one of {SITE_KINDS}")

    @property
    def compensable(self) -> bool:
        """Whether expectation compensation can fold into a bias: a linear consumer and nothing unfoldable."""
        return self.foldable and (self.kind == "input" or bool(self.consumers))


@dataclass
class Plan:
    """Everything ``replace`` will do, computed by ``validate`` without touching the model."""

    family: str
    sites: list[Site] = field(default_factory=list)
    attention: list[str] = field(default_factory=list)  # attention module paths that get a SpikingAttention
    moe: list[str] = field(default_factory=list)  # Llama 4 MoE module paths replaced by SpikingMoE
    float_notes: list[str] = field(default_factory=list)  # what stays float, in words, for the report
    skipped: list[str] = field(default_factory=list)  # sites dropped by ``config.skip``

    def site(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(f"no site named {name!r} in the plan")

    def summary(self) -> dict:
        return {
            "family": self.family,
            "sites": len(self.sites),
            "site_kinds": {k: sum(s.kind == k for s in self.sites) for k in SITE_KINDS},
            "spiking_attention_modules": len(self.attention),
            "moe_modules": len(self.moe),
            "stays_float": list(self.float_notes),
            "skipped": list(self.skipped),
        }


def get_module(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        raise ValueError(f"the model has no module {path!r} ({type(model).__name__}): {exc}") from None


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


def out_features(module: nn.Module) -> int:
    """Outputs of a linear-like module (``nn.Linear`` or transformers' ``Conv1D``)."""
    dims = linear_dims(module)
    if dims is not None:
        return dims[1]
    raise TypeError(f"{type(module).__name__} is not a linear layer (nn.Linear or Conv1D)")


def in_features(module: nn.Module) -> int:
    dims = linear_dims(module)
    if dims is not None:
        return dims[0]
    raise TypeError(f"{type(module).__name__} is not a linear layer (nn.Linear or Conv1D)")


def to_spiking_linear(model: nn.Module, path: str, encoder: nn.Module | None, residual: Tensor | None) -> None:
    """Replace the linear at ``path`` by a ``SpikingLinear`` (own encoder, or None when fed by a shared site)."""
    linear = get_module(model, path)
    if isinstance(linear, SpikingLinear):
        raise ValueError(f"{path} is already a SpikingLinear: two sites feed it (a recipe bug)")
    layer = SpikingLinear.from_linear(linear, encoder, compensation=residual)
    transform = input_transform(linear)
    if transform is not None:  # an online transform (outlier handling) stays in front of the encoder
        attach_input_transform(layer, transform)
    if encoder is None:
        mark_spike_input(layer)
    set_module(model, path, layer)
