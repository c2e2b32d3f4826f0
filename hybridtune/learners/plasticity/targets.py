"""Which spiking-LoRA factors a plastic learner owns: its parameter group, resolved to (layer, adapter, role).

A plastic learner (``stdp``, ``rstdp``) receives its parameters by name from the library's group split
(:func:`hybridtune.learners.assign_parameters`). Rules work per adapter of a ``SpikingLoraLinear``, so the names
are resolved, by parameter identity, to :class:`FactorTarget` s: one per (layer, adapter) with the roles owned —
``A`` (``lora_A``), ``B`` (``lora_B``), ``threshold`` (the neuron's ``log_threshold``) and ``decay`` (the LIF
``decay_logit``). Anything else in the group (a plain-LoRA parameter, ``lora_B`` bias, a non-adapter weight) is an
error naming it, so a mistyped ``params`` regex fails at setup rather than training nothing.

Example:
    >>> from hybridtune.testing import tiny_model
    >>> from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
    >>> pm = get_spiking_peft_model(tiny_model("llama"), spiking_lora_config(r=4, target_modules=["q_proj"]))
    >>> owned = {n: p for n, p in pm.named_parameters() if "lora_A" in n}
    >>> targets = find_targets(pm, owned)
    >>> len(targets), sorted(targets[0].roles), targets[0].kind
    (2, ['A'], 'mt')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hybridtune.module_kinds import is_conv1d

__all__ = ["FactorTarget", "find_targets", "ROLES"]

ROLES = ("A", "B", "threshold", "decay")


@dataclass
class FactorTarget:
    """One adapter of one spiking LoRA layer and the parameters of it that a learner owns (``roles``)."""

    layer: str
    adapter: str
    module: nn.Module
    roles: dict[str, str]  # role -> owned parameter name

    @property
    def key(self) -> tuple[str, str]:
        return (self.layer, self.adapter)

    @property
    def neuron(self) -> nn.Module:
        return self.module.lora_neuron[self.adapter]

    @property
    def kind(self) -> str:
        return self.neuron.kind

    @property
    def max_spikes(self) -> int:
        return int(self.neuron.strategy.op_max_spikes)

    @property
    def scaling(self) -> float:
        return float(self.module.scaling[self.adapter])

    @property
    def lora_A(self) -> Tensor:
        return self.module.lora_A[self.adapter].weight

    @property
    def lora_B(self) -> Tensor:
        return self.module.lora_B[self.adapter].weight

    def threshold(self) -> Tensor:
        return self.neuron.threshold().detach()

    def decay(self) -> Tensor:
        return self.neuron.decay().detach()

    def base_linear(self) -> tuple[Tensor, Tensor | None]:
        """The frozen base weight ``[out, in]`` and bias (``SpikingLinear``'s total bias, GPT-2 ``Conv1D`` transposed)."""
        base = self.module.get_base_layer()
        weight, bias = base.weight, (base.bias_total() if hasattr(base, "bias_total") else base.bias)
        # an FSDP2-sharded base (trainer.sharding: fsdp) holds 1 / N of the weight: gather it (every rank observes
        # the same targets in the same order, so the gathers pair up)
        weight, bias = (t.full_tensor() if hasattr(t, "full_tensor") else t for t in (weight, bias))
        weight = weight.t() if is_conv1d(base) else weight
        return weight.detach(), (bias.detach() if bias is not None else None)


def _candidates(module: nn.Module, adapter: str) -> dict[str, nn.Parameter]:
    found = {"A": module.lora_A[adapter].weight, "B": module.lora_B[adapter].weight}
    neurons = getattr(module, "lora_neuron", {})
    if adapter in neurons:
        neuron = neurons[adapter]
        if isinstance(getattr(neuron, "log_threshold", None), nn.Parameter):
            found["threshold"] = neuron.log_threshold
        if isinstance(getattr(neuron, "decay_logit", None), nn.Parameter):
            found["decay"] = neuron.decay_logit
    return found


def find_targets(model: nn.Module, params: Mapping[str, torch.nn.Parameter], learner: str = "plastic learner"
                 ) -> list[FactorTarget]:
    """Resolve ``params`` (name -> parameter) to the spiking-LoRA adapters they belong to, in module order.

    Raises ``ValueError`` naming any parameter that is not a spiking adapter's ``lora_A`` / ``lora_B`` / threshold /
    decay, and when ``params`` is empty.
    """
    from hybridtune.adapters import SpikingLoraLinear

    if not params:
        raise ValueError(f"{learner}: owns no parameters; check its params spec")
    by_id = {id(p): name for name, p in params.items()}
    targets: list[FactorTarget] = []
    claimed: set[str] = set()
    for layer_name, module in model.named_modules():
        if not isinstance(module, SpikingLoraLinear):
            continue
        for adapter in module.lora_A:
            roles = {role: by_id[id(p)] for role, p in _candidates(module, adapter).items() if id(p) in by_id}
            if roles:
                targets.append(FactorTarget(layer_name, adapter, module, roles))
                claimed.update(roles.values())
    leftover = sorted(set(params) - claimed)
    if leftover:
        shown = ", ".join(leftover[:4]) + (f", ... ({len(leftover)} in all)" if len(leftover) > 4 else "")
        raise ValueError(
            f"{learner}: learns only spiking LoRA factors (lora_A / lora_B) and their neurons' threshold / decay, "
            f"but was given {shown}; narrow its params (e.g. 'lora_A') and give the rest to another learner "
            f"(e.g. surrogate with params: rest), or attach spiking adapters (hybridtune.adapters)")
    return targets
