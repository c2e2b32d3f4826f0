"""The ``eprop`` learner on tiny models: where its feedback path is exact, its update is the true gradient."""

from __future__ import annotations

import copy
import importlib.util
import re

import pytest
import torch

from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
from hybridtune.learners import Observation, SetupContext, learner
from hybridtune.learners.eprop import EpropLearner
from hybridtune.testing import tiny_batch, tiny_config, tiny_model

KEYS = ("input_ids", "attention_mask", "doc_start")


def one_block(family="llama", attention=None):
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(family)
    cfg.num_hidden_layers = 1
    if hasattr(cfg, "layer_types"):
        cfg.layer_types = cfg.layer_types[:1]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    if attention is not None:
        model.set_attn_implementation(attention)
    return model


def adapted(base, targets, neuron="lif", learn=False):
    torch.manual_seed(1)
    return get_spiking_peft_model(base, spiking_lora_config(
        r=4, neuron=neuron, threshold=0.02, init_b_std=0.05, target_modules=list(targets),
        learn_threshold=learn, learn_decay=learn))


def batch(seq=12):
    b = tiny_batch(batch=3, seq=seq, seed=1)
    b["attention_mask"][0, :3] = 0
    b["doc_start"] = torch.zeros_like(b["input_ids"], dtype=torch.bool)
    b["doc_start"][:, 0] = True
    b["doc_start"][1, min(6, seq - 1)] = True
    b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    return b


def assert_matches(got, want, name):
    """Relative error under 2e-3: the recorder keeps a plain base's float inputs as float16."""
    err = float((got - want).norm() / want.norm().clamp_min(1e-12))
    assert err < 2e-3, f"{name}: relative error {err:.2e}"


def true_grads(model, b, pattern):
    from hybridtune.perplexity import model_nll

    model = copy.deepcopy(model)
    owned = {n: p for n, p in model.named_parameters() if re.search(pattern, n)}
    for p in owned.values():
        p.requires_grad_(True)
    nll, n = model_nll(model, b, KEYS)
    (nll.sum() / n).backward()
    return {k: p.grad.clone() for k, p in owned.items()}


def eprop_grads(model, b, pattern, **options):
    """The estimate eprop applies: one SGD step at lr 1 without clipping moves each parameter by −estimate."""
    owned = {n: p for n, p in model.named_parameters() if re.search(pattern, n)}
    ep = EpropLearner(params=pattern, lr=1.0, optimizer="SGD", scheduler="constant", max_grad_norm=None, **options)
    ep.setup(SetupContext(model=model, accelerator=None, params=owned, total_steps=1))
    before = {k: p.detach().clone() for k, p in owned.items()}
    with torch.no_grad(), ep.recording(model) as rec:
        model(**{k: b[k] for k in KEYS})
        ep.observe(Observation(batch=b, token_nll=torch.zeros(1), recording=rec))
    assert ep.step()
    return {k: before[k] - p.detach() for k, p in owned.items()}


@pytest.mark.parametrize("neuron", ["lif", "heaviside", "mt"])
def test_residual_path_gives_the_true_gradient_of_the_last_residual_writer(neuron):
    """One block, only down_proj adapted: it writes straight into the residual stream before the final norm, so the
    identity path is exact and so is the whole estimate (B, and through the bottleneck, A, θ and the LIF decay)."""
    model = adapted(one_block(), ["down_proj"], neuron, learn=True)
    b = batch()
    pattern = r"down_proj\.(lora_|.*neuron)"
    want = true_grads(model, b, pattern)
    got = eprop_grads(model, b, pattern, feedback="residual")
    assert set(got) == set(want) and any("lora_B" in k for k in got)
    for name in want:
        assert_matches(got[name], want[name], name)
        if "lora_B" in name:
            assert want[name].abs().sum() > 0


@pytest.mark.parametrize("leaf", ["up_proj", "gate_proj"])
def test_one_hop_through_down_proj_is_exact_for_the_mlp_inputs(leaf):
    model = adapted(one_block(), [leaf], "lif")
    b = batch()
    pattern = leaf + r"\.lora_B"
    want = true_grads(model, b, pattern)
    got = eprop_grads(model, b, pattern, feedback="one_hop")
    for name in want:
        assert_matches(got[name], want[name], name)


def test_one_hop_through_o_proj_is_exact_where_attention_is_the_identity():
    """Two tokens: only position 0 has a target, and it attends to itself alone, so v_proj's error is g W_oᵀ summed
    over the query heads of each KV head (the tiny model has 4 heads sharing 2 KV heads). The MLP after the attention
    is silenced (down_proj = 0), otherwise its path to the loss adds to the residual error the attention sees."""
    base = one_block()
    with torch.no_grad():
        base.model.layers[0].mlp.down_proj.weight.zero_()
    model = adapted(base, ["v_proj"], "heaviside")
    b = tiny_batch(batch=2, seq=2, seed=2)
    b["doc_start"] = torch.zeros_like(b["input_ids"], dtype=torch.bool)
    b["labels"] = b["input_ids"].clone()
    pattern = r"v_proj\.lora_B"
    want = true_grads(model, b, pattern)
    got = eprop_grads(model, b, pattern, feedback="one_hop")
    for name in want:
        assert want[name].abs().sum() > 0
        assert_matches(got[name], want[name], name)


def mlp_silenced(attention):
    base = one_block(attention=None if attention == "spiking" else attention)
    with torch.no_grad():
        base.model.layers[0].mlp.down_proj.weight.zero_()
    if attention == "spiking":
        from hybridtune.conversion import ConversionConfig, convert

        base = convert(base, ConversionConfig(coverage=("ffn_act", "linear_inputs", "attention"), compensation=False))
    return adapted(base, ["v_proj"], "heaviside")


def test_one_hop_takes_v_proj_through_the_attention_probabilities_where_the_attention_returns_them():
    """Eager attention returns its probabilities P, and so does spiking attention (its spike-coded P), so v_proj's
    error is Pᵀ (g W_oᵀ) (the value at key s reaches every query t by P[t, s]): exact over whole sequences with
    padding and document starts, MLP silenced as above. SDPA returns none: the mixing is then taken as the identity, and the
    estimate is off."""
    b = batch()
    pattern = r"v_proj\.lora_B"
    for attention, exact in (("eager", True), ("spiking", True), ("sdpa", False)):
        model = mlp_silenced(attention)
        want = true_grads(model, b, pattern)
        got = eprop_grads(model, b, pattern, feedback="one_hop")
        for name in want:
            err = float((got[name] - want[name]).norm() / want[name].norm())
            assert (err < 2e-3) == exact, f"{attention}: relative error {err:.2e}"


def test_residual_path_refuses_layers_of_another_width_and_one_hop_refuses_q_proj():
    model = adapted(tiny_model("llama"), ["up_proj", "q_proj"])
    for feedback, match in (("residual", "up_proj"), ("one_hop", "q_proj")):
        owned = {n: p for n, p in model.named_parameters() if "lora_" in n}
        with pytest.raises(ValueError, match=match):
            EpropLearner(params="lora_", feedback=feedback).setup(
                SetupContext(model=model, accelerator=None, params=owned, total_steps=1))
    with pytest.raises(ValueError, match="one_hop, random, residual"):
        EpropLearner(feedback="backprop")


def test_random_feedback_is_seeded_and_resumes_from_the_learner_state():
    def build(seed):
        model = adapted(tiny_model("llama"), ["q_proj", "up_proj"])
        owned = {n: p for n, p in model.named_parameters() if "lora_" in n}
        ep = EpropLearner(params="lora_", feedback="random", seed=seed)
        ep.setup(SetupContext(model=model, accelerator=None, params=owned, total_steps=1))
        return ep

    first, again, other = build(0), build(0), build(1)
    mats = first.state_dict()["feedback"]["matrices"]
    assert len(mats) == 4 and all(torch.equal(mats[k], again.feedback.matrices[k]) for k in mats)
    assert not any(torch.equal(mats[k], other.feedback.matrices[k]) for k in mats)
    other.load_state_dict(first.state_dict())
    assert all(torch.equal(mats[k], other.feedback.matrices[k]) for k in mats)


@pytest.mark.parametrize("family", ["llama", "gemma3", "qwen3", "gpt2", "llama4"])
def test_eprop_trains_every_family_without_a_backward_through_the_base(family):
    """Through the registry and the Trainer: the held-out loss of a tiny model goes down with the one_hop path, the
    base weights get no gradient, and a resumed learner state round-trips."""
    from hybridtune.config import RunConfig
    from hybridtune.trainers import Trainer

    targets = {"gpt2": ["c_fc", "c_proj"], "llama4": ["o_proj", "down_proj"]}.get(
        family, ["v_proj", "o_proj", "up_proj", "down_proj"])
    model = adapted(tiny_model(family), targets)
    cfg = RunConfig()
    cfg.trainer.steps, cfg.trainer.batch_size, cfg.trainer.scheduler = 8, 4, "constant"
    cfg.trainer.eval_every = cfg.trainer.save_every = 0
    cfg.tracking.backend = "none"
    ids = (torch.arange(24)[None] + torch.arange(16)[:, None] * 5) % 50 + 3
    ep = learner("eprop", params="lora_", lr=1e-2, feedback="one_hop")
    trainer = Trainer(model, cfg, learners=[ep], train_data={"input_ids": ids}, eval_data={"input_ids": ids[:8]})
    start = trainer.evaluate()["eval/loss"]
    for _ in range(cfg.trainer.steps):
        trainer.train_step()
    assert trainer.evaluate()["eval/loss"] < start
    assert all(p.grad is None for p in model.parameters())
    clone = learner("eprop", params="lora_", lr=1e-2, feedback="one_hop")
    clone.setup(SetupContext(model=model, accelerator=None, params=trainer.owned, total_steps=8))
    clone.load_state_dict(ep.state_dict())
    assert clone.steps == ep.steps == 8


def test_resume_continues_the_same_trajectory_with_the_saved_random_feedback(tmp_path):
    """Stop at step 2, resume into a differently initialised model and learner seed: the checkpoint brings back the
    adapters, AdamW's moments and the random feedback matrices, so the result equals the uninterrupted run."""
    from pathlib import Path

    from accelerate.state import AcceleratorState, GradientState, PartialState

    from hybridtune.trainers import Trainer, TrainerCallback
    from hybridtune.trainers.checkpoint import latest_checkpoint

    spec = importlib.util.spec_from_file_location("mix_tests", Path(__file__).parents[1] / "test_mix_learners.py")
    mix = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mix)

    class StopAt(TrainerCallback):
        def on_step_end(self, trainer, step, logs):
            trainer.should_stop = step >= 2

    def eprop(seed=0):
        return [learner("eprop", params="lora_", lr=1e-2, feedback="random", seed=seed)]

    data, held = mix.blocks(), mix.blocks(4, seed=9)
    try:
        full = Trainer(mix.model(), mix.config(tmp_path, "full", steps=4, save_every=10), learners=eprop(),
                       train_data=data, eval_data=held)
        full.fit()
        part = mix.config(tmp_path, "part", steps=4, save_every=2)
        Trainer(mix.model(), part, learners=eprop(), train_data=data, eval_data=held, callbacks=[StopAt()]).fit()
        part.trainer.resume = True
        resumed = Trainer(mix.model(seed=7), part, learners=eprop(seed=5), train_data=data, eval_data=held)
        resumed.load(latest_checkpoint(tmp_path / "part"))
        resumed.fit()
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        PartialState._reset_state()
    for name, p in full.owned.items():
        torch.testing.assert_close(resumed.owned[name], p, rtol=0, atol=0, msg=name)


def test_random_feedback_is_saved_beside_the_adapter_and_reloaded(tmp_path):
    """The matrices go into the adapter's save_pretrained directory (seeded: the same seed draws the same ones), and
    a learner with another seed reuses them through feedback_from; a directory saved for other layers is refused."""
    from safetensors import safe_open

    from hybridtune.learners.eprop.feedback import FEEDBACK_FILE
    from hybridtune.learners.protocol import save_beside_adapter

    def build(targets=("q_proj", "up_proj"), **options):
        model = adapted(tiny_model("llama"), list(targets))
        owned = {n: p for n, p in model.named_parameters() if "lora_" in n}
        ep = EpropLearner(params="lora_", feedback="random", **options)
        ep.setup(SetupContext(model=model, accelerator=None, params=owned, total_steps=1))
        return model, ep

    model, first = build(seed=3)
    model.save_pretrained(tmp_path / "adapter")
    assert save_beside_adapter([first], tmp_path / "adapter") == [tmp_path / "adapter" / FEEDBACK_FILE]
    with safe_open(str(tmp_path / "adapter" / FEEDBACK_FILE), "pt") as f:
        assert f.metadata()["seed"] == "3" and len(list(f.keys())) == 4
    assert all(torch.equal(first.feedback.matrices[k], build(seed=3)[1].feedback.matrices[k])
               for k in first.feedback.matrices)
    _, reloaded = build(seed=7, feedback_from=tmp_path / "adapter")
    fresh = build(seed=7)[1].feedback.matrices
    for k, m in first.feedback.matrices.items():
        assert torch.equal(reloaded.feedback.matrices[k], m) and not torch.equal(fresh[k], m)
    assert reloaded.feedback.seed == 3
    with pytest.raises(ValueError, match="v_proj"):
        build(targets=("v_proj",), feedback_from=tmp_path / "adapter")
    residual = EpropLearner(params="lora_", feedback="residual")
    assert residual.save_pretrained(tmp_path / "other") is None and not (tmp_path / "other").exists()
    with pytest.raises(ValueError, match="feedback_from"):
        EpropLearner(feedback="one_hop", feedback_from=tmp_path / "adapter")


def eprop_run_config(tmp_path, *extra):
    """configs/learners/eprop.yaml on a tiny model directory and corpus file, 2 steps, plus ``extra`` overrides."""
    from pathlib import Path

    from hybridtune.config import load_config
    from hybridtune.testing import tiny_tokenizer

    model_dir = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"def add{i}(a, b):\n    return a + b + {i}\n" for i in range(80)))
    config = Path(__file__).parents[3] / "configs" / "learners" / "eprop.yaml"
    return load_config(config, [
        f"model.name={model_dir}", "conversion.compensation=false", f"data.train={corpus}", "data.block_size=32",
        "data.eval_tokens=128", "data.max_train_tokens=null", "trainer.steps=2", "trainer.batch_size=2",
        "trainer.eval_every=2", "trainer.save_every=2", f"trainer.output_dir={tmp_path / 'run'}",
        "tracking.backend=none", *extra])


def test_a_train_run_writes_the_random_feedback_beside_its_adapter(tmp_path, monkeypatch):
    """End to end through run_domain_adaptation with configs/learners/eprop.yaml switched to feedback: random: the
    run's adapter directory holds the matrices the learner trained with."""
    from pathlib import Path

    from safetensors.torch import load_file

    from hybridtune.learners.eprop.feedback import FEEDBACK_FILE
    from hybridtune.trainers.domain import run_domain_adaptation

    cfg = eprop_run_config(tmp_path, "adapter.target_modules=[v_proj, down_proj]",
                           "learners.0.options.feedback=random", "learners.0.options.seed=5")
    monkeypatch.setenv("HYBRIDTUNE_CACHE", str(tmp_path / "cache"))
    report = run_domain_adaptation(cfg)
    saved = load_file(str(Path(report["adapter_dir"]) / FEEDBACK_FILE))
    assert len(saved) == 4 and all(v.shape[1] == 64 for v in saved.values())
    assert any("v_proj" in k for k in saved) and any("down_proj" in k for k in saved)


def test_model_attention_reaches_the_run_and_its_reload(tmp_path, monkeypatch):
    """``model.attention: eager`` (what one_hop needs for v_proj's exact mixing; configs/learners/eprop.yaml sets it)
    loads the base with eager attention, is recorded with the run, and load_run rebuilds the model with it; a value
    outside the choices names the key."""
    import json
    from pathlib import Path

    from hybridtune.config import ConfigError
    from hybridtune.runs import load_run
    from hybridtune.trainers.domain import run_domain_adaptation
    from hybridtune.trainers.rundir import BASE_FILE

    with pytest.raises(ConfigError, match=r"model\.attention.*eager"):
        eprop_run_config(tmp_path, "model.attention=flash")
    cfg = eprop_run_config(tmp_path)
    assert cfg.model.attention == "eager"
    monkeypatch.setenv("HYBRIDTUNE_CACHE", str(tmp_path / "cache"))
    report = run_domain_adaptation(cfg)
    run_dir = Path(report["adapter_dir"]).parent
    assert json.loads((run_dir / BASE_FILE).read_text())["attention"] == "eager"
    model, _, _ = load_run(run_dir)
    assert model.config._attn_implementation == "eager"
