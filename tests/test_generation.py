"""Generation with spiking adapters: greedy decoding equals the argmax of a full forward at every step."""

import pytest
import torch

import hybridtune.conversion as hc
from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
from hybridtune.generation import (
    GenerationError,
    GenerationSettings,
    generate_text,
    prompt_ids,
    stateful_adapters,
    summary_line,
)
from hybridtune.testing import tiny_model, tiny_tokenizer


def _adapted(neuron: str):
    # float64 keeps the incremental (KV cache) and full forwards' logits far from ties
    snn = hc.convert(tiny_model("llama", dtype=torch.float64), hc.ConversionConfig(coverage=("ffn_act", "linear_inputs"), compensation=False))
    cfg = spiking_lora_config(r=4, neuron=neuron, threshold=0.01, init_b_std=0.5,
                              target_modules=["q_proj", "v_proj", "up_proj"])
    return get_spiking_peft_model(snn, cfg).eval()


@pytest.mark.parametrize("neuron", ["lif", "mt"])
def test_greedy_equals_argmax_of_full_forward_at_every_step(neuron):
    model, tok = _adapted(neuron), tiny_tokenizer()
    chunks: list[str] = []
    result = generate_text(model, tok, "def main():", GenerationSettings(max_new_tokens=8), on_text=chunks.append)
    assert len(result.token_ids) == 8
    ids = prompt_ids(tok, "def main():")
    seq = torch.cat([ids, torch.tensor([result.token_ids])], dim=1)
    with torch.no_grad():
        for step in range(8):  # a fresh forward over prompt + tokens so far: no cache, LIF starts from zeros
            logits = model(input_ids=seq[:, : ids.shape[1] + step]).logits[0, -1]
            assert int(logits.argmax()) == result.token_ids[step], f"step {step}"
    assert "".join(chunks) == result.text  # streamed pieces add up to the result
    total = result.accounting["total"]
    assert result.accounting["tokens"] == ids.shape[1] + 7
    assert total["spikes"] > 0 and total["energy"]["fp32_45nm"]["snn_pj"] > 0
    assert "spikes/neuron" in summary_line(result)


def test_adapter_changes_generation_and_state_is_cleared_after():
    model, tok = _adapted("lif"), tiny_tokenizer()
    with_adapter = generate_text(model, tok, "def main():", GenerationSettings(max_new_tokens=8), account=False)
    with model.disable_adapter():
        without = generate_text(model, tok, "def main():", GenerationSettings(max_new_tokens=8), account=False)
    assert with_adapter.token_ids != without.token_ids  # the adapter is really in the decode path
    assert all(n.state is None for n in model.modules() if hasattr(n, "strategy") and hasattr(n, "rank"))


def test_beam_search_refused_for_stateful_adapters_and_works_for_memoryless():
    tok = tiny_tokenizer()
    lif = _adapted("lif")
    assert stateful_adapters(lif)
    with pytest.raises(GenerationError, match="num_beams=2.*LIF"):
        generate_text(lif, tok, "ab", GenerationSettings(num_beams=2, max_new_tokens=3))
    out = generate_text(_adapted("mt"), tok, "ab", GenerationSettings(num_beams=2, max_new_tokens=3))
    assert len(out.token_ids) == 3


def test_sampling_is_reproducible_with_a_seed_and_leaves_the_global_rng_alone():
    model, tok = _adapted("mt"), tiny_tokenizer()
    settings = GenerationSettings(max_new_tokens=6, do_sample=True, temperature=1.5, seed=3)
    before = torch.random.get_rng_state()
    a = generate_text(model, tok, "xy", settings, account=False)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = generate_text(model, tok, "xy", settings, account=False)
    assert a.token_ids == b.token_ids


@pytest.mark.parametrize("settings, culprit", [
    (GenerationSettings(max_new_tokens=0), "max_new_tokens"),
    (GenerationSettings(temperature=0.0), "temperature"),
    (GenerationSettings(top_p=1.5), "top_p"),
])
def test_bad_settings_name_the_culprit(settings, culprit):
    with pytest.raises(GenerationError, match=culprit):
        generate_text(tiny_model("llama"), tiny_tokenizer(), "ab", settings)


def test_chat_without_template_is_refused():
    with pytest.raises(GenerationError, match="chat template"):
        prompt_ids(tiny_tokenizer(), "hi", chat=True)
