"""Every stateful neuron shares one base: registered state, never saved, cleared by one reset."""

from __future__ import annotations

import torch

from hybridtune.adapters import BottleneckNeuron, LIFStrategy, get_spiking_peft_model, spiking_lora_config
from hybridtune.neurons import IFNeuron, LIFNeuron, StatefulNeuron, reset_state
from hybridtune.testing import tiny_batch, tiny_model


def test_lif_neurons_register_their_membrane():
    n = LIFNeuron(threshold=1.0, decay=0.5)
    assert isinstance(n, StatefulNeuron) and isinstance(IFNeuron(), StatefulNeuron) and n.state_names == ("v",)
    n(torch.tensor([0.8]))
    assert n.v is not None and "v" not in n.state_dict()
    n.reset_state()
    assert n.v is None


def test_reset_state_clears_every_adapter_membrane():
    bottleneck = BottleneckNeuron(2, LIFStrategy())
    assert isinstance(bottleneck, StatefulNeuron) and set(bottleneck.state_names) == {"state", "_call_state_in"}
    pm = get_spiking_peft_model(tiny_model("llama"), spiking_lora_config(r=2, neuron="lif", target_modules=["q_proj"]))
    batch = tiny_batch(seq=6)
    with torch.no_grad():
        out = pm(**batch, use_cache=True)
        pm(input_ids=batch["input_ids"][:, :1], past_key_values=out.past_key_values, use_cache=True)
    neurons = [m for m in pm.modules() if isinstance(m, BottleneckNeuron)]
    assert neurons and all(n.state is not None for n in neurons)
    assert reset_state(pm) == len(neurons)
    assert all(n.state is None and n._call_state_in is None for n in neurons)
    assert not any("state" in k.rsplit(".", 1)[-1] for k in pm.state_dict())  # never saved
