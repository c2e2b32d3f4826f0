"""The ``stdp`` learner against the pure plasticity functions applied to the very spikes it recorded."""

from __future__ import annotations

import pytest
import torch

from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
from hybridtune.learners import Observation, SetupContext
from hybridtune.learners.plasticity import (
    local_factor_updates,
    oja_delta,
    projected_factor_grads,
    soft_bound_delta,
    stdp_terms,
    stdp_update,
    trace_scan,
)
from hybridtune.learners.plasticity.stdp_learner import STDPLearner
from hybridtune.learners.rewards import token_nll
from hybridtune.testing import tiny_batch, tiny_model

KEYS = ("input_ids", "attention_mask", "doc_start")


def spiking(neuron="lif", targets=("q_proj", "v_proj"), seed=0, family="llama", base=None, **kw):
    torch.manual_seed(seed)
    model = base if base is not None else tiny_model(family)
    cfg = spiking_lora_config(r=4, neuron=neuron, threshold=kw.pop("threshold", 0.02),
                              init_b_std=kw.pop("init_b_std", 0.05), target_modules=list(targets), **kw)
    return get_spiking_peft_model(model, cfg)


def masked_batch(batch=3, seq=12):
    """Left padding on row 0, a document boundary inside row 1: masks and resets are exercised."""
    b = tiny_batch(batch=batch, seq=seq, seed=1)
    b["attention_mask"][0, :3] = 0
    b["doc_start"] = torch.zeros_like(b["input_ids"], dtype=torch.bool)
    b["doc_start"][:, 0] = True
    b["doc_start"][0, 3] = True
    b["doc_start"][1, 6] = True
    b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    return b


def setup(learner, model):
    owned = {n: p for n, p in model.named_parameters() if p.requires_grad and __import__("re").search(
        learner.params, n)}
    learner.setup(SetupContext(model=model, accelerator=None, params=owned, total_steps=10))
    return owned


def observe(learner, model, batch):
    """One micro-batch through the learner; returns a copy of the records it consumed."""
    with torch.no_grad(), learner.recording(model) as rec:
        logits = model(**{k: batch[k] for k in KEYS if k in batch}).logits
        records = list(rec.recorder.records)
        learner.observe(Observation(batch=batch, token_nll=token_nll(logits, batch["labels"]), recording=rec))
    return records


def tokens_per_sequence(rec):
    return float(rec.valid.sum()) / rec.valid.shape[0]


def close(actual, expected, **kw):
    """Equal up to float32 rounding: another summation order, and a parameter difference (|p| <= ~1) at the end."""
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-5 * scale + 5e-8, **kw)


def adapter_output(model, rec):
    """What the layer's adapter added to its output: scaling * y B^T (y = s * theta for mt)."""
    mod = model.get_submodule(rec.layer)
    s = rec.bottleneck_spikes.float()
    y = s * rec.threshold if rec.neuron == "mt" else s
    return float(mod.scaling[rec.adapter]) * y @ mod.lora_B[rec.adapter].weight.detach().T


def param(model, rec, factor):
    mod = model.get_submodule(rec.layer)
    return getattr(mod, f"lora_{factor}")[rec.adapter].weight


@pytest.mark.parametrize("neuron", ["lif", "mt", "heaviside"])
def test_local_rule_equals_the_pure_functions_on_recorded_spikes(neuron):
    model = spiking(neuron)
    learner = STDPLearner(params="lora_", lr=0.01, tau_pre=3.0, tau_post=5.0, a_minus=0.7, post="adapter")
    setup(learner, model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    records = observe(learner, model, masked_batch())
    assert len(records) == 4 and any(float(r.bottleneck_spikes.abs().sum()) > 0 for r in records)
    expected = {}
    for rec in records:
        x, s = rec.inputs(), rec.bottleneck_spikes.float()
        kw = dict(decay_pre=learner.decay_pre, decay_post=learner.decay_post, a_minus=0.7, reset=rec.reset,
                  mask=rec.valid)
        d_a, _ = local_factor_updates(x, s, **kw)
        y = s * rec.threshold if neuron == "mt" else s
        d_b = stdp_update(y, adapter_output(model, rec), **kw)
        norm = tokens_per_sequence(rec)
        expected[param(model, rec, "A")] = d_a / norm
        expected[param(model, rec, "B")] = d_b / norm
    assert learner.step()
    for name, p in model.named_parameters():
        if p in expected.keys():
            close(p.detach() - before[name], 0.01 * expected[p])


def test_projected_rule_equals_the_factor_projection_of_the_full_rank_update():
    model = spiking("lif", targets=("q_proj",))
    learner = STDPLearner(params="lora_", lr=0.02, rule="projected", tau_pre=4.0, tau_post=2.0, oja=0.1, post="adapter")
    setup(learner, model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    records = observe(learner, model, masked_batch())
    expected = {}
    for rec in records:
        a, b = param(model, rec, "A").detach(), param(model, rec, "B").detach()
        x, o, s = rec.inputs(), adapter_output(model, rec), rec.bottleneck_spikes.float()
        kw = dict(reset=rec.reset, mask=rec.valid)
        x_pre, x_post = trace_scan(x, learner.decay_pre, **kw), trace_scan(o, learner.decay_post, **kw)
        scaling = float(model.get_submodule(rec.layer).scaling[rec.adapter])
        g_a, g_b = projected_factor_grads(x, x_pre, o, x_post, a, b, scaling=scaling, mask=rec.valid)
        # the projection is s·Bᵀ G / s·G Aᵀ of the explicit full-rank update
        full = stdp_update(x, o, decay_pre=learner.decay_pre, decay_post=learner.decay_post, **kw)
        close(g_a, -scaling * b.T @ full)
        norm = tokens_per_sequence(rec)
        expected[param(model, rec, "A")] = (-g_a + 0.1 * oja_delta(a, s, mask=rec.valid)) / norm
        expected[param(model, rec, "B")] = (-g_b + 0.1 * oja_delta(b, o, mask=rec.valid)) / norm
    learner.step()
    for name, p in model.named_parameters():
        if p in expected.keys():
            close(p.detach() - before[name], 0.02 * expected[p])


def test_soft_bounds_follow_the_pure_rule_and_keep_weights_in_range():
    model = spiking("lif", targets=("q_proj",))
    learner = STDPLearner(params="lora_A", lr=50.0, weight_dependence="soft", bound_scale=1.5, a_minus=0.5)
    setup(learner, model)
    a0 = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}
    records = observe(learner, model, masked_batch())
    rec = records[0]
    a = param(model, rec, "A").detach().clone()
    lo, hi = -1.5 * float(a.abs().max()), 1.5 * float(a.abs().max())
    x, s = rec.inputs(), rec.bottleneck_spikes.float()
    ltp, ltd = stdp_terms(x, trace_scan(x, learner.decay_pre, reset=rec.reset, mask=rec.valid), s,
                          trace_scan(s, learner.decay_post, reset=rec.reset, mask=rec.valid), mask=rec.valid)
    pure = soft_bound_delta(a, ltp, ltd, a_plus=1.0, a_minus=0.5, w_min=lo, w_max=hi) / tokens_per_sequence(rec)
    learner.step()
    new = param(model, rec, "A").detach()
    close(new, (a + 50.0 * pure).clamp(lo, hi))
    for _ in range(3):  # a large rate: the bounds hold step after step
        observe(learner, model, masked_batch())
        learner.step()
    for name, start in a0.items():
        p = dict(model.named_parameters())[name]
        peak = 1.5 * float(start.abs().max())
        assert float(p.abs().max()) <= peak + 1e-6


def test_per_layer_clipping_hard_bounds_and_metrics():
    model = spiking("mt")
    learner = STDPLearner(params="lora_", lr=10.0, max_update_norm=1e-3, w_min=-0.3, w_max=0.3)
    owned = setup(learner, model)
    assert all(not p.requires_grad for p in owned.values())
    before = {n: p.detach().clone() for n, p in owned.items()}
    observe(learner, model, masked_batch())
    assert learner.step()
    m = learner.metrics()
    assert m["clipped_share"] == 1.0 and m["update_norm/max"] > 1e-3 and 0 <= m["rate/mean"]
    assert {"observe_s", "record_mb", "silent_share", "update_norm/total", "steps"} <= set(m)
    for t in learner.targets:  # the applied step of each layer (A and B together) is clipped to 1e-3
        names = [t.roles["A"], t.roles["B"]]
        step = torch.cat([(owned[n] - before[n]).flatten() for n in names])
        clamped = torch.cat([(before[n] + 0).flatten() for n in names]).abs().max() > 0.3
        assert float(step.norm()) <= 1e-3 + 1e-7 or bool(clamped)
        assert all(float(owned[n].abs().max()) <= 0.3 + 1e-7 for n in names)


def test_homeostasis_moves_thresholds_towards_the_target_rate():
    model = spiking("heaviside", threshold=0.005)
    learner = STDPLearner(params="lora_A|lora_neuron", lr=1e-6, target_rate=0.01, threshold_lr=0.5)
    owned = setup(learner, model)
    thresholds = {n: p.detach().clone() for n, p in owned.items() if "log_threshold" in n}
    assert thresholds
    observe(learner, model, masked_batch())
    rate = learner.steps, learner.step(), learner.metrics()["rate/mean"]
    assert rate[2] > 0.01  # a low threshold fires a lot: homeostasis raises it
    for n, start in thresholds.items():
        assert bool((owned[n] >= start).all()) and bool((owned[n] > start).any())


def test_counts_path_on_a_converted_base():
    import hybridtune.conversion as hc

    model = spiking("mt", targets=("down_proj",), base=hc.convert(tiny_model("llama"), hc.ConversionConfig(compensation=False)))
    learner = STDPLearner(params="lora_A", lr=0.01)
    setup(learner, model)
    records = observe(learner, model, masked_batch())
    assert records[0].input_counts is not None  # integer spike counts, not floats
    before = param(model, records[0], "A").detach().clone()
    d_a, _ = local_factor_updates(records[0].inputs(), records[0].bottleneck_spikes.float(),
                                  decay_pre=learner.decay_pre, decay_post=learner.decay_post,
                                  reset=records[0].reset, mask=records[0].valid)
    learner.step()
    close(param(model, records[0], "A").detach() - before,
                               0.01 * d_a / tokens_per_sequence(records[0]))


def test_setup_refuses_parameters_it_cannot_learn():
    from peft import LoraConfig, get_peft_model

    plain = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj"]))
    learner = STDPLearner(params="lora_A")
    with pytest.raises(ValueError, match="learns only spiking LoRA factors"):
        setup(learner, plain)
    for bad in (dict(rule="bogus"), dict(weight_dependence="soft", rule="projected"), dict(w_min=1.0),
                dict(tau_pre=0), dict(lr=-1)):
        with pytest.raises(ValueError):
            STDPLearner(**bad)


def test_no_observation_means_no_update_and_reset_discards():
    model = spiking("lif")
    learner = STDPLearner(params="lora_A", lr=1.0)
    owned = setup(learner, model)
    before = {n: p.detach().clone() for n, p in owned.items()}
    observe(learner, model, masked_batch())
    learner.reset()  # e.g. the trainer's inf/NaN guard
    assert learner.step()
    assert all(torch.equal(owned[n], before[n]) for n in owned)
    with pytest.raises(ValueError, match="recording"):
        learner.observe(Observation(batch=masked_batch(), token_nll=torch.zeros(3, 11), recording=None))


def _outside_column_space(b: torch.Tensor, b0: torch.Tensor) -> float:
    """Norm of the part of ``b`` outside the column space of ``b0``, relative to the change ``b - b0``."""
    q, _ = torch.linalg.qr(b0.double())
    change = (b - b0).double()
    return float((change - q @ (q.T @ change)).norm() / change.norm().clamp_min(1e-30))


@pytest.mark.parametrize("post, leaves", [("layer", True), ("adapter", False)])
def test_lora_b_leaves_its_initial_column_space_only_with_the_layer_output_as_post(post, leaves):
    """With the default ``post: layer`` the B update correlates the bottleneck with the whole layer output, so B
    gains new output directions; with ``post: adapter`` the update is B·M and stays in span(B0) (the trap)."""
    model = spiking("lif", targets=("v_proj",))
    kw = {} if post == "layer" else {"post": post}
    learner = STDPLearner(params=r"lora_B", lr=0.05, tau_pre=4.0, tau_post=4.0, **kw)
    assert learner.post == "layer" or not leaves  # the default is the layer output
    owned = setup(learner, model)
    b0 = {n: p.detach().clone() for n, p in owned.items()}
    for _ in range(2):
        observe(learner, model, masked_batch())
        assert learner.step()
    for name, p in owned.items():
        outside = _outside_column_space(p.detach(), b0[name])
        assert (outside > 0.1) if leaves else (outside < 1e-4), (name, outside)
