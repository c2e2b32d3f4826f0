"""``SpikingLoraLinear``: peft's LoRA ``Linear`` with a spiking bottleneck, computed by one ``spike_lora`` op call.

``out = base(x) + scaling * B(neuron(A(x_spk)))`` where ``x_spk = base.encode(x)`` is the spike-encoded input the
frozen base weight consumes (``SpikingLinear``; identity for a plain ``nn.Linear`` / GPT-2 ``Conv1D``). The base GEMM,
the shrink, the neuron, the expand and the add all happen inside :func:`hybridtune.ops.spike_lora`.

* Per adapter: ``lora_A``, ``lora_B`` (peft's), ``lora_neuron`` (:class:`BottleneckNeuron`; listed in
  ``adapter_layer_names`` so ``set_adapter`` freezes the neurons of inactive adapters and ``delete_adapter`` drops
  them).
* Several active adapters with the same neuron kind / surrogate / cap / dropout run as one op call on the
  concatenated ranks (each adapter's ``scaling`` folded into its ``B``); mixing kinds among simultaneously active
  adapters raises.
* ``lora_dropout`` (spike dropout on ``x_spk``) keeps the single op: the op consumes ``drop(x_spk)`` and one extra
  GEMM adds the base contribution of the dropped part, ``(x_spk - drop(x_spk)) W^T`` -- exact, costs one GEMM.
* An :class:`InputPerturbation` switched on for an adapter (``set_input_perturbation``; e.g. a learner's escape
  noise) takes the dropout's place the same way, with its own base correction.
* Computation runs in the base's dtype (adapter parameters are cast to it inside autograd).
* ``merge`` raises: ``B * spike(A x)`` is not linear in ``x``, so there is no weight delta to fold into ``W``.

Example:
    >>> import torch
    >>> from hybridtune.testing import tiny_model, tiny_batch
    >>> from hybridtune.adapters import SpikingLoraConfig, get_spiking_peft_model
    >>> pm = get_spiking_peft_model(tiny_model("llama"), SpikingLoraConfig(r=4, target_modules=["q_proj"]))
    >>> type(pm.base_model.model.model.layers[0].self_attn.q_proj).__name__
    'SpikingLoraLinear'
"""

from __future__ import annotations

import warnings
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from peft import LoraConfig
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import Tensor, nn

from hybridtune import ops
from hybridtune.conversion.modules import input_transform
from hybridtune.module_kinds import is_conv1d
from hybridtune.neurons.stats import recomputing as _engine_recomputing
from hybridtune.neurons.stats import record_spikes
from hybridtune.ops.reference import as_dtype

from .config import SPIKING_MODULES
from .neuron import BottleneckNeuron
from .sequence import SequenceInfo

MERGE_ERROR = (
    "spiking LoRA adapters cannot be merged into the base weight: the adapter output B * spike(A x) is not linear "
    "in x, so there is no weight delta. Keep the adapter unmerged (PeftModel), or save it with save_pretrained and "
    "load it with hybridtune.adapters.load."
)


def recomputing() -> bool:
    """A forward re-run by gradient checkpointing inside backward (never while Dynamo traces: compiled graphs
    replay the whole forward themselves)."""
    return not torch.compiler.is_compiling() and _engine_recomputing()


@runtime_checkable
class InputPerturbation(Protocol):
    """What perturbs an adapter's input in place of its dropout while switched on (a learner's escape noise).

    ``perturb(x, info)`` returns the adapter's input for ``x [B, T, in]`` (``info``: the call's sequence info or
    None); ``base_correction(weight)`` is what the layer adds so the frozen base still sees the clean ``x``."""

    def perturb(self, x: Tensor, info: SequenceInfo | None) -> Tensor: ...

    def base_correction(self, weight: Tensor) -> Tensor: ...



class SpikingLoraLinear(LoraLinear):
    """peft custom LoRA module for ``nn.Linear`` (incl. ``SpikingLinear``) and transformers ``Conv1D``."""

    adapter_layer_names = LoraLinear.adapter_layer_names + ("lora_neuron",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, **kwargs: Any) -> None:
        super().__init__(base_layer, adapter_name, config=config, **kwargs)
        self.sequence_info: SequenceInfo | None = None  # set for the duration of a model call by the sequence hook
        # the info of the last differentiable call, replayed if gradient checkpointing re-runs the forward
        self._call_info: SequenceInfo | None = None
        self.recorder = None  # set by hybridtune.adapters.recording.SpikeRecorder while recording
        self.record_name = ""
        self.input_perturbation: dict[str, InputPerturbation] = {}  # per adapter, while switched on
        self._warned_no_sequence = False

    # -- adapter lifecycle -------------------------------------------------------------------------------------
    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config: LoraConfig, **kwargs: Any) -> None:
        strategy = getattr(config, "neuron", None)
        if strategy is None:
            raise TypeError(
                f"adapter {adapter_name!r}: a spiking LoRA layer needs a SpikingLoraConfig (got "
                f"{type(config).__name__}); build adapters with hybridtune.adapters.SpikingLoraConfig and load saved "
                "ones with hybridtune.adapters.load(model, path)"
            )
        if "lora_neuron" not in self._modules:
            self.lora_neuron = nn.ModuleDict()
        self.lora_neuron[adapter_name] = BottleneckNeuron(r, strategy)
        super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)
        std = float(getattr(config, "init_b_std", 0.0))
        if std > 0 and adapter_name in self.lora_B:
            with torch.no_grad():
                self.lora_B[adapter_name].weight.normal_(0.0, std)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise ValueError(MERGE_ERROR)

    def get_delta_weight(self, adapter: str) -> Tensor:
        raise ValueError(MERGE_ERROR)

    def set_input_perturbation(self, adapter_name: str, perturbation: InputPerturbation | None) -> None:
        """Switch an input perturbation on for ``adapter_name`` (None switches it off). Refused while the adapter
        uses input dropout: the two would hide each other."""
        if perturbation is None:
            self.input_perturbation.pop(adapter_name, None)
            return
        if adapter_name not in self.lora_A:
            raise KeyError(f"no adapter {adapter_name!r} on this layer (it holds {sorted(self.lora_A)})")
        p = getattr(self.lora_dropout[adapter_name], "p", 0.0)
        if p > 0:
            raise ValueError(f"adapter {adapter_name!r}: an input perturbation (escape noise) needs lora_dropout=0, "
                             f"got {p}")
        if not isinstance(perturbation, InputPerturbation):
            raise TypeError(f"{type(perturbation).__name__} is not an InputPerturbation (perturb, base_correction)")
        self.input_perturbation[adapter_name] = perturbation

    # -- forward -----------------------------------------------------------------------------------------------
    def _base_linear(self) -> tuple[nn.Module, Tensor, Tensor | None]:
        base = self.get_base_layer()
        if is_conv1d(base):
            return base, base.weight.t(), base.bias  # Conv1D keeps weight [in, out]; the view is free
        bias = base.bias_total() if hasattr(base, "bias_total") else base.bias
        return base, base.weight, bias

    def _active_spiking(self) -> list[str]:
        return [name for name in self.active_adapters if name in self.lora_A and name in self.lora_neuron]

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError("spiking LoRA does not support per-sample adapter_names (mixed-adapter batches)")
        names = [] if self.disable_adapters else self._active_spiking()
        if not names or self.merged:
            return self.base_layer(x, *args, **kwargs)
        base, weight, bias = self._base_linear()
        transform = input_transform(base)  # an online transform folded into the weight (e.g. a Hadamard): the op
        x = transform(x) if transform is not None else x  # bypasses the base's forward and its pre-hook
        x_spk = base.encode(x) if hasattr(base, "encode") else x
        lead = x_spk.shape[:-1]
        replay = recomputing()
        x3, info = self._as_sequence(x_spk, self._call_info if replay else self.sequence_info)
        if not replay:
            self._call_info = info if torch.is_grad_enabled() else None
        neurons = [self.lora_neuron[n] for n in names]
        strategy = self._shared_strategy(names, neurons)
        dtype = weight.dtype
        x3 = x3 if x3.dtype == dtype else x3.to(dtype)
        lora_a, lora_b, scaling, theta, decay, bias = self._stack(names, neurons, bias, dtype)
        if strategy.stateful and not replay and self.sequence_info is None and not self._warned_no_sequence:
            self._warned_no_sequence = True
            warnings.warn(
                "stateful (lif) spiking LoRA layer called without sequence info: padding / document resets and the "
                "generation state carry are off. Build models with hybridtune.adapters.get_spiking_peft_model or "
                "load(...) (they install the sequence hook), or wrap direct calls in sequence_context(...)",
                stacklevel=2)
        state_in = self._state_in(neurons, info, x3.shape[0], dtype, replay) if strategy.stateful else None
        perturbation = self.input_perturbation.get(names[0])
        x_in = perturbation.perturb(x3, info) if perturbation is not None else self.lora_dropout[names[0]](x3)
        out, spikes, state_out = ops.spike_lora(
            x_in, weight, bias, lora_a, lora_b, scaling, strategy.kind, theta, decay,
            info.reset if info is not None else None, state_in, strategy.op_max_spikes, strategy.surrogate,
            float(strategy.slope))
        if x_in is not x3:  # the adapter saw another input: give the base back its contribution of the difference
            out = out + (perturbation.base_correction(weight) if perturbation is not None
                         else F.linear(x3 - x_in, weight))
        if strategy.stateful and not replay:
            self._store_state(neurons, state_out)
        if not replay and any(n.stats is not None for n in neurons):
            for neuron, s in zip(neurons, spikes.detach().split([n.rank for n in neurons], dim=-1)):
                neuron.fan_out = weight.shape[0]  # each bottleneck spike drives one column of lora_B
                record_spikes(neuron.stats, s, neuron.fan_out)
        if self.recorder is not None and not replay:
            self.recorder.capture(self, names, neurons, x, x_spk=x3, spikes=spikes, state_in=state_in, info=info)
        if out.shape[:-1] != lead:
            # a reshaped op output would be a view of a multi-output autograd node, which callers may not modify
            # in place (Llama 4's shared expert does out.add_(...)): hand back a fresh tensor instead
            out = out.reshape(*lead, out.shape[-1]).clone()
        return as_dtype(out, x.dtype)

    @staticmethod
    def _as_sequence(x_spk: Tensor, info: SequenceInfo | None) -> tuple[Tensor, SequenceInfo | None]:
        """View the input as ``[B, T, in]``; ``info`` applies only if its shape matches (else None)."""
        if x_spk.dim() == 3:
            x3 = x_spk
        elif x_spk.dim() == 2 and info is not None and info.shape[0] * info.shape[1] == x_spk.shape[0]:
            x3 = x_spk.view(info.shape[0], info.shape[1], -1)  # tokens flattened by the caller
        else:
            x3 = x_spk.reshape(1, -1, x_spk.shape[-1])  # one sequence of all rows
        if info is not None and not info.matches(x3.shape[0], x3.shape[1]):
            info = None
        return x3, info

    @staticmethod
    def _shared_strategy(names: list[str], neurons: list[BottleneckNeuron]):
        first = neurons[0].strategy
        for name, neuron in zip(names[1:], neurons[1:]):
            s = neuron.strategy
            if (s.kind, s.surrogate, s.slope, s.op_max_spikes) != (first.kind, first.surrogate, first.slope,
                                                                    first.op_max_spikes):
                raise ValueError(
                    f"active adapters {names[0]!r} and {name!r} have different neurons ({first.kind}/{first.surrogate}"
                    f" vs {s.kind}/{s.surrogate}); activate adapters with the same neuron strategy together"
                )
        return first

    def _stack(self, names: list[str], neurons: list[BottleneckNeuron], bias: Tensor | None, dtype: torch.dtype):
        if len(names) == 1:  # the common case: scaling goes to the op, no extra tensor ops
            name = names[0]
            lora_b_mod = self.lora_B[name]
            lora_a = as_dtype(self.lora_A[name].weight, dtype)
            lora_b = as_dtype(lora_b_mod.weight, dtype)
            scaling = float(self.scaling[name])
            thetas, decays = neurons[0].threshold(), neurons[0].decay()
            extra = [(lora_b_mod.bias, self.scaling[name])] if lora_b_mod.bias is not None else []
        else:
            drop_p = {getattr(self.lora_dropout[n], "p", 0.0) for n in names}
            if len(drop_p) > 1:
                raise ValueError(f"active adapters {names} use different lora_dropout values {sorted(drop_p)}")
            lora_a = as_dtype(torch.cat([self.lora_A[n].weight for n in names]), dtype)
            # per-adapter scaling folded into B, the op then scales by 1
            lora_b = as_dtype(torch.cat([self.lora_B[n].weight * self.scaling[n] for n in names], dim=1), dtype)
            scaling = 1.0
            thetas = torch.cat([m.threshold() for m in neurons])
            decays = torch.cat([m.decay() for m in neurons])
            extra = [(self.lora_B[n].bias, self.scaling[n]) for n in names if self.lora_B[n].bias is not None]
        for b, scale in extra:  # lora_bias=True: B's bias joins the base bias
            term = as_dtype(b * scale, dtype)
            bias = term if bias is None else as_dtype(bias, dtype) + term
        return lora_a, lora_b, scaling, as_dtype(thetas, dtype), as_dtype(decays, dtype), bias

    @staticmethod
    def _state_in(neurons: list[BottleneckNeuron], info: SequenceInfo | None, bsz: int, dtype: torch.dtype,
                  replay: bool) -> Tensor | None:
        if replay:  # checkpoint recomputation: replay the membrane this call started from
            states = [n._call_state_in for n in neurons]
        elif info is not None and info.carry:
            states = [n.state for n in neurons]
            for s in states:
                if s is not None and s.shape[0] != bsz:
                    raise ValueError(
                        f"carried LIF state has batch {s.shape[0]} but this step has {bsz}: stateful (lif) adapters "
                        "do not follow cache reordering (beam search) or batch changes; call "
                        "hybridtune.neurons.reset_state(model) between sequences"
                    )
        else:
            states = [None for _ in neurons]
        if not replay:
            for n, s in zip(neurons, states):
                n._call_state_in = s
        if all(s is None for s in states):
            return None
        device = neurons[0].threshold().device
        parts = [as_dtype(s, dtype) if s is not None else torch.zeros(bsz, n.rank, device=device, dtype=dtype)
                 for n, s in zip(neurons, states)]
        return torch.cat(parts, dim=1)

    @staticmethod
    def _store_state(neurons: list[BottleneckNeuron], state_out: Tensor) -> None:
        # detached: gradients do not flow across model calls (truncated BPTT at call boundaries, like a KV cache)
        for n, part in zip(neurons, state_out.detach().split([m.rank for m in neurons], dim=1)):
            n.state = part

    def __repr__(self) -> str:
        return "spiking_" + super().__repr__()


def register_custom_modules(config: LoraConfig) -> None:
    """Dispatch ``nn.Linear`` (``SpikingLinear`` included) and transformers ``Conv1D`` to ``SpikingLoraLinear`` (every
    :class:`SpikingLoraConfig` does this itself; this is for a plain ``LoraConfig``)."""
    config._register_custom_module(dict(SPIKING_MODULES))


def _spiking_modules() -> dict[type[nn.Module], type[nn.Module]]:
    mapping: dict[type[nn.Module], type[nn.Module]] = {nn.Linear: SpikingLoraLinear}
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is a dependency; keep the Linear mapping if its layout ever changes
        Conv1D = None
    if Conv1D is not None:
        mapping[Conv1D] = SpikingLoraLinear
    return mapping


SPIKING_MODULES.update(_spiking_modules())
