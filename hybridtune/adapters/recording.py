"""Opt-in spike recording for local learners: per adapter layer and forward, what a local rule needs, compactly.

While a :class:`SpikeRecorder` is attached, every ``SpikingLoraLinear`` forward appends one :class:`AdapterRecord`
per active adapter:

* **input spikes** -- on a spiking base the integer spike counts ``q = round(x_spk / theta)`` (int8, or int16 /
  int32 when a count needs it) plus ``theta`` (float32; ``[B, T, 1]`` per token or ``[in]`` per channel, whatever
  the threshold strategy returns). ``theta`` is known when the base ``SpikingLinear`` has its own encoder, or when
  its input is the very tensor a graded encoder elsewhere produced in this forward (a site shared by q/k/v; the
  recorder hooks every ``GradedNeuron`` while attached and matches outputs by identity). Otherwise (a plain base,
  or spikes from an encoder without a threshold strategy, e.g. a threshold norm) the float input itself (float16)
  is kept in ``input_values``. ``record.inputs()`` gives float32 either way. This is the input *before* spike
  dropout.
* **bottleneck spikes** ``s`` (int8; int16 / int32 if an uncapped mt count needs it),
* **membrane** (float16): the LIF membrane before thresholding, or ``h = x A^T`` for the memoryless neurons,
* **output** (float16): the adapter's contribution ``scaling * y B^T`` to the layer output,
* the sequence masks ``valid`` (non-padding) and ``reset`` (doc starts / padding) as bool ``[B, T]``.

Everything is detached (computed under ``no_grad``) and lives only in the recorder: leaving the ``with`` block, or
:meth:`SpikeRecorder.clear`, frees it (:meth:`SpikeRecorder.pop` hands the records over and forgets them). Forwards
re-run by gradient checkpointing inside backward are not recorded (``hybridtune.neurons.recomputing``), so nothing
is counted twice.

Example:
    >>> import torch
    >>> from hybridtune.testing import tiny_model, tiny_batch
    >>> from hybridtune.adapters import SpikingLoraConfig, get_spiking_peft_model
    >>> pm = get_spiking_peft_model(tiny_model("llama"), SpikingLoraConfig(r=4, target_modules=["q_proj"]))
    >>> with SpikeRecorder(pm) as rec:
    ...     _ = pm(**tiny_batch())
    ...     rec.records[0].bottleneck_spikes.dtype, len(rec.records)
    (torch.int8, 2)
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from hybridtune.ops.scan import lif_membrane

from .layer import SpikingLoraLinear


@dataclass
class AdapterRecord:
    """One adapter's activity in one forward of one layer (shapes ``[B, T, ...]``; see the module docstring)."""

    layer: str
    adapter: str
    neuron: str
    bottleneck_spikes: Tensor
    threshold: Tensor
    input_counts: Tensor | None = None
    input_theta: Tensor | None = None
    input_values: Tensor | None = None
    membrane: Tensor | None = None
    output: Tensor | None = None
    valid: Tensor | None = None
    reset: Tensor | None = None

    def inputs(self) -> Tensor:
        """The input spikes the adapter consumed, as float32 (``counts * theta`` or the float input)."""
        if self.input_counts is not None:
            return self.input_counts.float() * self.input_theta.float()
        if self.input_values is None:
            raise ValueError("inputs were not recorded (SpikeRecorder(inputs=False))")
        return self.input_values.float()

    @property
    def nbytes(self) -> int:
        total = 0
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                total += value.numel() * value.element_size()
        return total


def _compact_int(t: Tensor) -> Tensor:
    """Integer-valued float tensor -> the smallest of int8 / int16 / int32 that holds it."""
    peak = float(t.abs().max()) if t.numel() else 0.0
    for dtype in (torch.int8, torch.int16):
        if peak <= torch.iinfo(dtype).max:
            return t.to(dtype)
    return t.to(torch.int32)


class SpikeRecorder:
    """Attach to every ``SpikingLoraLinear`` of ``model`` (or those whose name matches ``layers``, a regex) and
    collect :class:`AdapterRecord` s. ``inputs`` / ``membrane`` / ``outputs`` switch the optional parts off."""

    def __init__(self, model: nn.Module, layers: str | None = None, inputs: bool = True, membrane: bool = True,
                 outputs: bool = True):
        self.model = model
        self.pattern = re.compile(layers) if layers else None
        self.want_inputs, self.want_membrane, self.want_outputs = inputs, membrane, outputs
        self.records: list[AdapterRecord] = []
        self._attached: list[SpikingLoraLinear] = []
        self._hooks: list = []
        # id(encoder output) -> (weak ref to that output, its theta): thresholds of shared encoder sites
        self._thetas: dict[int, tuple[weakref.ref, Tensor]] = {}

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def attach(self) -> SpikeRecorder:
        for name, module in self.model.named_modules():
            if isinstance(module, SpikingLoraLinear) and (self.pattern is None or self.pattern.search(name)):
                if module.recorder is not None and module.recorder is not self:
                    raise RuntimeError(f"{name} is already being recorded by another SpikeRecorder")
                module.recorder, module.record_name = self, name
                self._attached.append(module)
        if not self._attached:
            raise ValueError("SpikeRecorder: no spiking LoRA layer matched" + (
                f" layers={self.pattern.pattern!r}" if self.pattern else ""))
        if self.want_inputs:
            from hybridtune.neurons import GradedNeuron

            for module in self.model.modules():
                if isinstance(module, GradedNeuron):
                    self._hooks.append(module.register_forward_hook(self._encoder_hook))
        return self

    def detach(self) -> None:
        for module in self._attached:
            module.recorder = None
        for handle in self._hooks:
            handle.remove()
        self._attached, self._hooks = [], []
        self._thetas.clear()

    def clear(self) -> None:
        """Free every record."""
        self.records = []
        self._thetas.clear()

    @torch.no_grad()
    def _encoder_hook(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        if not isinstance(output, Tensor) or not args or not callable(getattr(module, "threshold", None)):
            return
        self._thetas = {k: v for k, v in self._thetas.items() if v[0]() is not None}  # drop freed outputs
        self._thetas[id(output)] = (weakref.ref(output), module.threshold(args[0].detach()))

    def _shared_theta(self, x: Tensor) -> Tensor | None:
        entry = self._thetas.get(id(x))
        return entry[1] if entry is not None and entry[0]() is x else None

    def pop(self) -> list[AdapterRecord]:
        """Take the records (the recorder forgets them)."""
        out, self.records = self.records, []
        return out

    def by_layer(self) -> dict[tuple[str, str], list[AdapterRecord]]:
        """Records grouped by ``(layer name, adapter)``, in forward order."""
        grouped: dict[tuple[str, str], list[AdapterRecord]] = {}
        for rec in self.records:
            grouped.setdefault((rec.layer, rec.adapter), []).append(rec)
        return grouped

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.records)

    def __enter__(self) -> SpikeRecorder:
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.detach()
        self.clear()

    # -- called by SpikingLoraLinear.forward (never during checkpoint recomputation) ---------------------------
    @torch.no_grad()
    def capture(self, layer: SpikingLoraLinear, names: list[str], neurons: list, x: Tensor, x_spk: Tensor,
                spikes: Tensor, state_in: Tensor | None, info) -> None:
        bsz, steps, _ = x_spk.shape
        ranks = [n.rank for n in neurons]
        spikes_parts = spikes.detach().split(ranks, dim=-1)
        states = state_in.split(ranks, dim=-1) if state_in is not None else [None] * len(names)
        shared = self._inputs(layer, x, x_spk, self._shared_theta(x)) if self.want_inputs else {}
        reset = info.reset if info is not None else None
        valid = info.valid if info is not None else None
        for name, neuron, s, state in zip(names, neurons, spikes_parts, states):
            theta = neuron.threshold().detach().to(x_spk.dtype)
            record = AdapterRecord(layer=layer.record_name, adapter=name, neuron=neuron.kind,
                                   bottleneck_spikes=_compact_int(s), threshold=theta.float().clone(),
                                   valid=valid, reset=reset, **shared)
            if self.want_membrane or self.want_outputs:
                lora_a = layer.lora_A[name].weight.detach().to(x_spk.dtype)
                if self.want_membrane:
                    h = x_spk.detach() @ lora_a.t()
                    if neuron.kind == "lif":
                        decay = neuron.decay().detach().to(h.dtype)
                        h = lif_membrane(h, s, theta, decay, reset, state)[0]  # membrane before the reset
                    record.membrane = h.to(torch.float16)
                if self.want_outputs:
                    y = s * theta if neuron.kind == "mt" else s
                    lora_b = layer.lora_B[name].weight.detach().to(y.dtype)
                    record.output = ((y @ lora_b.t()) * layer.scaling[name]).to(torch.float16)
            self.records.append(record)

    @staticmethod
    def _inputs(layer: SpikingLoraLinear, x: Tensor, x_spk: Tensor, shared_theta: Tensor | None) -> dict[str, Tensor]:
        base = layer.get_base_layer()
        encoder = getattr(base, "encoder", None)
        strategy = getattr(encoder, "threshold", None) if encoder is not None else None
        theta = None
        if callable(strategy):
            theta = strategy(x.detach().reshape(x_spk.shape))
        elif encoder is None and shared_theta is not None:
            theta = shared_theta.reshape(*x_spk.shape[:-1], -1) if shared_theta.dim() > 1 else shared_theta
        if theta is not None:
            theta = theta.to(x_spk.dtype)
            theta = theta.expand(x_spk.shape[-1]) if theta.dim() == 0 else theta
            counts = torch.round(x_spk.detach() / theta)
            return {"input_counts": _compact_int(counts), "input_theta": theta.float().clone()}
        return {"input_values": x_spk.detach().to(torch.float16)}


def recording(model: nn.Module, **kwargs: Any) -> SpikeRecorder:
    """``with recording(model) as rec: ...`` -- shorthand for :class:`SpikeRecorder`."""
    return SpikeRecorder(model, **kwargs)
