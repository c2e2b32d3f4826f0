"""Spiking LoRA adapters on peft: config, layer, build / save / load, sequence masks, spike recording.

Example:
    >>> from hybridtune.testing import tiny_model, tiny_batch
    >>> from hybridtune.adapters import spiking_lora_config, get_spiking_peft_model
    >>> cfg = spiking_lora_config(r=4, neuron="lif", target_modules=["q_proj"])
    >>> pm = get_spiking_peft_model(tiny_model("qwen3"), cfg)
    >>> pm(**tiny_batch()).logits.shape
    torch.Size([2, 16, 256])
"""

from __future__ import annotations

from .config import (
    PEFT_TYPE_MARKER,
    SPIKING_LORA,
    STRATEGIES,
    HeavisideStrategy,
    LIFStrategy,
    MultiThresholdStrategy,
    NeuronStrategy,
    SpikingLoraConfig,
    lora_config,
    neuron_strategy,
    spiking_lora_config,
)
from .evaluate import load_for_eval
from .layer import MERGE_ERROR, InputPerturbation, SpikingLoraLinear, register_custom_modules
from .model import (
    MARKER_FILE,
    SpikingAdapterLoadError,
    SpikingLoraModel,
    get_spiking_peft_model,
    is_spiking_peft_model,
    load,
    model_call_keys,
    read_marker,
)
from .neuron import BottleneckNeuron
from .recording import AdapterRecord, SpikeRecorder, recording
from .sequence import SequenceInfo, install_sequence_hook, reset_mask, sequence_context

__all__ = [
    "MARKER_FILE",
    "MERGE_ERROR",
    "PEFT_TYPE_MARKER",
    "SPIKING_LORA",
    "STRATEGIES",
    "AdapterRecord",
    "BottleneckNeuron",
    "HeavisideStrategy",
    "InputPerturbation",
    "LIFStrategy",
    "MultiThresholdStrategy",
    "NeuronStrategy",
    "SequenceInfo",
    "SpikeRecorder",
    "SpikingAdapterLoadError",
    "SpikingLoraConfig",
    "SpikingLoraLinear",
    "SpikingLoraModel",
    "get_spiking_peft_model",
    "install_sequence_hook",
    "is_spiking_peft_model",
    "model_call_keys",
    "load",
    "load_for_eval",
    "neuron_strategy",
    "read_marker",
    "recording",
    "register_custom_modules",
    "reset_mask",
    "sequence_context",
    "spiking_lora_config",
    "lora_config",
]
