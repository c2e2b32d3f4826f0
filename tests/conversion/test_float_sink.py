"""The float_sink outlier strategy: the first token of a fresh sequence stays float, calibration skips it, and the
census charges its consumers' float work."""

import copy

import pytest
import torch

from hybridtune.accounting import count_ops
from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
from hybridtune.conversion import ConversionConfig, conversion_info, convert, load_spiking, save_spiking
from hybridtune.conversion.calibration import calibration_ids, channel_statistics
from hybridtune.conversion.outliers.sink import first_token_switches
from hybridtune.neurons import GradedNeuron, SpikeStats
from hybridtune.testing import tiny_batch, tiny_model

SINK = ConversionConfig(outliers=("float_sink",), compensation=False)
CALIB = torch.randint(3, 256, (128,), generator=torch.Generator().manual_seed(0))


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_the_first_token_runs_like_the_ann_and_the_rest_spikes(family):
    batch = tiny_batch()
    ann = _logits(tiny_model(family), batch)
    snn = convert(tiny_model(family), SINK)
    out = _logits(snn, batch)
    assert torch.allclose(out[:, 0], ann[:, 0], atol=1e-5)  # every site passed token 0 through in float
    assert (out[:, 1:] - ann[:, 1:]).abs().max() > 1e-3  # the other tokens are spikes
    assert not any(s.active for s in first_token_switches(snn))  # switched off after the call


def test_a_cached_generation_step_encodes_every_token_and_a_failed_call_switches_off():
    snn = convert(tiny_model("llama"), SINK)
    neuron = next(m for m in snn.modules() if isinstance(m, GradedNeuron) and m.first_token is not None)
    ids = tiny_batch()["input_ids"][:, :4]
    with torch.no_grad():
        first = snn(input_ids=ids, use_cache=True)
        neuron.stats = SpikeStats()
        snn(input_ids=ids[:, :1], cache=first.past_key_values, use_cache=True)
    assert neuron.stats.neuron_steps == ids.shape[0] * neuron_width(snn, neuron)  # the decode step: all encoded
    with pytest.raises(IndexError):
        snn(input_ids=torch.full((2, 3), 10**6))  # out of the vocabulary: the call raises inside
    assert not any(s.active for s in first_token_switches(snn))


def neuron_width(snn, neuron):
    seen = {}

    def hook(mod, args, out):
        seen["c"] = args[0].shape[-1]

    h = neuron.register_forward_hook(hook)
    with torch.no_grad():
        snn(**tiny_batch(batch=1, seq=2))
    h.remove()
    return seen["c"]


def test_calibration_skips_the_first_position():
    model, cfg = tiny_model("llama"), SINK.with_(threshold="static", threshold_mode="max_abs", divisor=127.0)
    snn = convert(tiny_model("llama"), cfg, calib=CALIB)
    plan = conversion_info(snn).plan
    ids = calibration_ids(CALIB, cfg.calib_tokens, cfg.calib_block)
    with_first = channel_statistics(model, plan, ids, "max_abs")
    without_first = channel_statistics(model, plan, ids, "max_abs", start=1)
    state = conversion_info(snn).state
    for name, stat in without_first.items():
        assert torch.allclose(state[name]["theta"], (stat / 127.0).clamp(min=1e-8))
        assert bool((stat <= with_first[name]).all())
    assert any(bool((without_first[n] < with_first[n]).any()) for n in without_first)  # position 0 mattered


def test_the_census_charges_the_float_token():
    snn = convert(tiny_model("llama"), SINK)
    batch = tiny_batch()
    neurons = [m for m in snn.modules() if isinstance(m, GradedNeuron) and m.first_token is not None]
    widths = {}
    hooks = [m.register_forward_hook(lambda mod, a, o: widths.__setitem__(id(mod), a[0].shape[-1])) for m in neurons]
    with count_ops(snn) as census, torch.no_grad():
        snn(**batch)
    for h in hooks:
        h.remove()
    charged = sum(rec.snn_mac for (_, op), rec in census.ops.items() if op == "float_sink")
    expected = sum(batch["input_ids"].shape[0] * widths[id(m)] * max(1, m.fan_out) for m in neurons)
    assert charged == expected > 0


def test_copies_save_load_and_adapters_keep_the_first_token_float(tmp_path):
    batch = tiny_batch()
    snn = convert(tiny_model("llama"), SINK)
    out = _logits(snn, batch)
    twin = copy.deepcopy(snn)
    assert {id(s) for s in first_token_switches(twin)}.isdisjoint(id(s) for s in first_token_switches(snn))
    assert torch.equal(_logits(twin, batch), out)
    save_spiking(snn, tmp_path / "snn")
    loaded = load_spiking(tiny_model("llama"), tmp_path / "snn")
    assert torch.equal(_logits(loaded, batch), out)
    ann = _logits(tiny_model("llama"), batch)
    peft_model = get_spiking_peft_model(loaded, spiking_lora_config(r=4, target_modules=["q_proj", "v_proj"]))
    assert torch.allclose(_logits(peft_model, batch)[:, 0], ann[:, 0], atol=1e-5)  # lora_B starts at zero


def test_float_sink_needs_graded_neurons():
    with pytest.raises(ValueError, match="float_sink"):
        convert(tiny_model("llama"), ConversionConfig(timesteps=4, outliers=("float_sink",), compensation=False))
