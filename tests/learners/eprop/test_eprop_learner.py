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


def one_block(family="llama"):
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(family)
    cfg.num_hidden_layers = 1
    if hasattr(cfg, "layer_types"):
        cfg.layer_types = cfg.layer_types[:1]
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


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
