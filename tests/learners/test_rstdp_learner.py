"""The ``rstdp`` learner against the pure three-factor and policy-gradient functions on its recorded spikes."""

from __future__ import annotations

import re

import pytest
import torch

from hybridtune.adapters import get_spiking_peft_model, reset_mask, spiking_lora_config
from hybridtune.learners import Observation, SetupContext
from hybridtune.learners.plasticity import (
    dense_reward_weights,
    policy_gradient_update,
    rstdp_update,
    sequence_reward_weights,
    stdp_update,
)
from hybridtune.learners.plasticity import rstdp_learner as rstdp_module
from hybridtune.learners.plasticity.rstdp_learner import RSTDPLearner
from hybridtune.learners.rewards import token_nll
from hybridtune.testing import tiny_batch, tiny_model

KEYS = ("input_ids", "attention_mask", "doc_start")


def spiking(neuron="lif", targets=("q_proj", "v_proj"), seed=0, **kw):
    torch.manual_seed(seed)
    cfg = spiking_lora_config(r=4, neuron=neuron, threshold=kw.pop("threshold", 0.02), init_b_std=0.05,
                              target_modules=list(targets), **kw)
    return get_spiking_peft_model(tiny_model("llama"), cfg)


def masked_batch(batch=4, seq=12, seed=1):
    b = tiny_batch(batch=batch, seq=seq, seed=seed)
    b["attention_mask"][0, :3] = 0
    b["doc_start"] = torch.zeros_like(b["input_ids"], dtype=torch.bool)
    b["doc_start"][:, 0] = True
    b["doc_start"][0, 3] = True
    b["doc_start"][1, 6] = True
    b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    b["labels"][2, :5] = -100  # a "prompt" without rewards: its positions still get credit from later rewards
    return b


def setup(learner, model, pattern):
    owned = {n: p for n, p in model.named_parameters() if p.requires_grad and re.search(pattern, n)}
    learner.setup(SetupContext(model=model, accelerator=None, params=owned, total_steps=10))
    return owned


def observe(learner, model, batch):
    with torch.no_grad(), learner.recording(model) as rec:
        logits = model(**{k: batch[k] for k in KEYS if k in batch}).logits
        records = list(rec.recorder.records)
        currents = {k: list(v) for k, v in rec.noise.currents.items()} if rec.noise is not None else {}
        nll = token_nll(logits, batch["labels"])
        learner.observe(Observation(batch=batch, token_nll=nll, recording=rec))
    return records, nll, currents


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


def param(model, rec, name):
    mod = model.get_submodule(rec.layer)
    if name == "threshold":
        return mod.lora_neuron[rec.adapter].log_threshold
    return getattr(mod, f"lora_{name}")[rec.adapter].weight


def norm(rec):
    return float(rec.valid.sum()) / rec.valid.shape[0]


def dense_advantage(batch, nll, baseline):
    rmask = torch.nn.functional.pad(batch["labels"][:, 1:] != -100, (0, 1), value=False)
    reward = torch.nn.functional.pad(-nll, (0, 1))
    return (reward - baseline) * rmask, rmask


def test_three_factor_rule_with_dense_loglik_reward_equals_the_pure_row_weighted_gemms():
    model = spiking("lif")
    learner = RSTDPLearner(estimator="stdp",
                           params="lora_", lr=0.01, gamma=0.8, tau_pre=3.0, tau_post=5.0, baseline="ema")
    setup(learner, model, "lora_")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    batch = masked_batch()
    records, nll, _ = observe(learner, model, batch)
    reward = torch.nn.functional.pad(-nll, (0, 1))
    rmask = torch.nn.functional.pad(batch["labels"][:, 1:] != -100, (0, 1), value=False)
    b0 = (reward * rmask).sum() / rmask.sum()  # the first batch's baseline is its own mean
    adv, _ = dense_advantage(batch, nll, b0)
    expected = {}
    for rec in records:
        x, s = rec.inputs(), rec.bottleneck_spikes.float()
        kw = dict(gamma=0.8, decay_pre=learner.decay_pre, decay_post=learner.decay_post, reset=rec.reset,
                  mask=rec.valid)
        expected[param(model, rec, "A")] = rstdp_update(x, s, adv, **kw) / norm(rec)
        expected[param(model, rec, "B")] = rstdp_update(s, adapter_output(model, rec), adv, **kw) / norm(rec)
    # reward at t credits the pairs up to t: the row weight is a reverse discounted cumsum of the advantage
    w = dense_reward_weights(adv, 0.8, mask=batch["attention_mask"].bool(),
                             reset=reset_mask(batch["attention_mask"], batch["doc_start"], 12))
    assert float(w[2, :4].abs().sum()) > 0  # prompt positions (no reward) are still credited
    assert learner.step()
    for name, p in model.named_parameters():
        if p in expected.keys():
            close(p.detach() - before[name], 0.01 * expected[p])
    m = learner.metrics()
    assert m["baseline"] == pytest.approx(float(b0), rel=1e-5) and m["reward"] == pytest.approx(float(b0), rel=1e-5)
    assert learner.baseline.mean is not None  # EMA set from the (rank-averaged) statistics at step


def test_sequence_rewards_from_the_batch_with_a_group_baseline():
    model = spiking("heaviside", targets=("q_proj",))
    learner = RSTDPLearner(estimator="stdp",
                           params="lora_A", lr=0.05, reward="batch:score", baseline="group", gamma=0.9)
    setup(learner, model, "lora_A")
    batch = masked_batch()
    batch["score"] = torch.tensor([1.0, 3.0, 2.0, 6.0])
    batch["group"] = torch.tensor([0, 0, 1, 1])
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}
    records, _, _ = observe(learner, model, batch)
    adv = torch.tensor([1.0 - 3.0, 3.0 - 1.0, 2.0 - 6.0, 6.0 - 2.0])  # leave-one-out group means
    learner.step()
    for rec in records:
        x, s = rec.inputs(), rec.bottleneck_spikes.float()
        w = sequence_reward_weights(adv, 12, 0.9, mask=rec.valid,
                                    reset=reset_mask(batch["attention_mask"], batch["doc_start"], 12))
        from hybridtune.learners.plasticity import stdp_delta, trace_scan

        kw = dict(reset=rec.reset, mask=rec.valid)
        pure = stdp_delta(x, trace_scan(x, learner.decay_pre, **kw), s, trace_scan(s, learner.decay_post, **kw),
                          row_weight=w, mask=rec.valid)
        p = param(model, rec, "A")
        name = next(n for n, q in model.named_parameters() if q is p)
        close(p.detach() - before[name], 0.05 * pure / norm(rec))


@pytest.mark.parametrize("neuron", ["heaviside", "mt"])
def test_escape_mode_is_the_policy_gradient_of_the_recorded_spikes(neuron):
    model = spiking(neuron, targets=("q_proj",))
    learner = RSTDPLearner(estimator="stdp",
                           params="lora_A|log_threshold", lr=0.01, escape=True, gamma=1.0, baseline="none",
                           temperature=0.5, threshold_lr=0.1)
    owned = setup(learner, model, "lora_A|log_threshold")
    before = {n: p.detach().clone() for n, p in owned.items()}
    batch = masked_batch()
    records, nll, currents = observe(learner, model, batch)
    adv, _ = dense_advantage(batch, nll, 0.0)
    for rec in records:
        key = f"{rec.layer}::{rec.adapter}"
        h, s, x = currents[key][0], rec.bottleneck_spikes.float(), rec.inputs()
        theta = rec.threshold
        beta = 1.0 / (0.5 * theta)
        w = dense_reward_weights(adv, 1.0, mask=rec.valid, reset=reset_mask(batch["attention_mask"],
                                                                             batch["doc_start"], 12))
        if neuron == "heaviside":  # the textbook form: β (s − p) ⊗ x
            p = torch.sigmoid(beta * (h - theta))
            expected_a = policy_gradient_update(x, s, p, w, beta=float(beta[0]), mask=rec.valid)
            score_theta = -beta * (s - p)
        else:  # graded neuron: the score of log P(s | h) by autograd
            hv = h.clone().requires_grad_(True)
            th = theta.clone().requires_grad_(True)
            from hybridtune.learners.escape import graded_escape_log_prob

            logp = graded_escape_log_prob(hv, s, th, beta, max_spikes=8)
            score_v, score_theta = torch.autograd.grad(logp.sum(), (hv, th), is_grads_batched=False)[0], None
            expected_a = policy_gradient_update(x, score_v.float(), torch.zeros_like(s), w, beta=1.0, mask=rec.valid)
        names = {role: next(n for n, q in owned.items() if q is param(model, rec, role)) for role in ("A",
                                                                                                       "threshold")}
        learner_step_pending = (names, expected_a / norm(rec), w, score_theta, theta)
    learner.step()
    names, exp_a, w, score_theta, theta = learner_step_pending
    close(owned[names["A"]] - before[names["A"]], 0.01 * exp_a)
    if score_theta is not None:
        d_theta = (score_theta * (w * rec.valid)[..., None]).sum((0, 1)) / w.shape[0] * theta / norm(rec)
        torch.testing.assert_close(owned[names["threshold"]] - before[names["threshold"]], 0.1 * d_theta,
                                   rtol=1e-3, atol=1e-8)


def test_escape_noise_leaves_the_frozen_base_path_unchanged():
    model = spiking("lif", targets=("q_proj", "v_proj"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.zero_()  # no adapter output: the noisy forward must equal the deterministic one
    learner = RSTDPLearner(estimator="stdp", params="lora_A", escape=True)
    setup(learner, model, "lora_A")
    batch = masked_batch()
    with torch.no_grad():
        clean = model(**{k: batch[k] for k in KEYS}).logits
        with learner.recording(model) as rec:
            noisy = model(**{k: batch[k] for k in KEYS}).logits
            spikes_noisy = [r.bottleneck_spikes.clone() for r in rec.recorder.records]
            learner.observe(Observation(batch=batch, token_nll=token_nll(noisy, batch["labels"]), recording=rec))
    spikes_again = [r.bottleneck_spikes for r in observe(learner, model, batch)[0]]  # the next micro-batch's noise
    close(noisy, clean)
    assert any(not torch.equal(a, b) for a, b in zip(spikes_noisy, spikes_again))  # the spikes are stochastic
    for layer in (m for m in model.modules() if hasattr(m, "lora_dropout")):
        assert not layer.input_perturbation  # the escape noise is switched off again


@pytest.mark.parametrize("neuron", ["heaviside", "lif"])
def test_escape_spikes_have_the_firing_probability_the_estimator_assumes(neuron, monkeypatch):
    """Σ (s − p) over many spikes is within noise of 0 only if P(s = 1) really is σ(β (v − θ)) (for LIF: the
    membrane holds exactly the current noise sample, nothing accumulated); a membrane off by one noise scale is
    detected."""
    model = spiking(neuron, targets=("q_proj", "v_proj"), threshold=0.05)
    learner = RSTDPLearner(estimator="stdp", params="lora_A", escape=True, temperature=0.5)
    setup(learner, model, "lora_A")
    seen = []
    real = rstdp_module.escape_scores

    def spy(v, s, theta, beta, **kw):
        seen.append((v.detach().clone(), s.detach().clone(), theta.clone(), beta.clone()))
        return real(v, s, theta, beta, **kw)

    monkeypatch.setattr(rstdp_module, "escape_scores", spy)
    for i in range(6):
        observe(learner, model, masked_batch(batch=4, seq=16, seed=i))
        learner.reset()

    def z_scores(shift=0.0, scale=1.0):
        """Standardised Σ (s − p) and Σ (s − p) sign(v − θ): both ~ N(0, 1) when p is the true probability; the
        second turns strongly negative when the real noise is wider than assumed (e.g. noise piling up in a LIF)."""
        num = num_sign = den = 0.0
        for v, s, theta, beta in seen:
            p = torch.sigmoid(scale * beta * (v - theta) + shift)
            num += float((s - p).sum())
            num_sign += float(((s - p) * torch.sign(v - theta)).sum())
            den += float((p * (1 - p)).sum())
        return num / den ** 0.5, num_sign / den ** 0.5

    assert max(abs(z) for z in z_scores()) < 4.0
    assert abs(z_scores(shift=1.0)[0]) > 5.0  # a membrane off by one noise scale is detected
    assert z_scores(scale=2.0)[1] < -5.0  # so is noise twice as narrow as the real one


def test_rollouts_with_a_text_reward_and_group_baseline(tmp_path, monkeypatch):
    from hybridtune.learners.rollout import observe_batch, rollout_batch
    from hybridtune.testing import tiny_tokenizer

    module = tmp_path / "my_text_reward.py"
    module.write_text("def score(texts):\n    return [float(t.count('a')) for t in texts]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = spiking("heaviside", targets=("q_proj",))
    tok = tiny_tokenizer()
    learner = RSTDPLearner(estimator="stdp",
                           params="lora_A", lr=0.05, reward="text:my_text_reward:score", tokenizer=tok,
                           baseline="group", escape=True, gamma=1.0)
    owned = setup(learner, model, "lora_A")
    before = {n: p.detach().clone() for n, p in owned.items()}
    torch.manual_seed(0)
    batch = rollout_batch(model, tok, ["ab", "banana"], num_samples=3, max_new_tokens=6)
    assert batch["group"].tolist() == [0, 0, 0, 1, 1, 1]
    assert bool((batch["labels"][:, :6] == -100).all())  # prompts carry no labels
    texts = learner.reward.texts(batch)
    assert all(isinstance(t, str) for t in texts) and len(texts) == 6
    observe_batch(model, learner, batch)
    assert learner.step()
    m = learner.metrics()
    assert m["reward"] == pytest.approx(sum(t.count("a") for t in texts) / 6)
    assert abs(m["advantage/mean"]) < 1e3 and any(not torch.equal(owned[n], before[n]) for n in owned)


def test_rstdp_state_round_trips_and_options_are_checked():
    model = spiking("lif", targets=("q_proj",))
    learner = RSTDPLearner(estimator="stdp", params="lora_", baseline="token_ema", escape=True)
    setup(learner, model, "lora_")
    for seed in range(2):
        observe(learner, model, masked_batch(seed=seed))
        learner.step()
    state = learner.state_dict()
    assert state["steps"] == 2 and state["baseline"]["token_mean"].shape == (256,) and state["beta"]
    other = RSTDPLearner(estimator="stdp", params="lora_", baseline="token_ema", escape=True)
    setup(other, spiking("lif", targets=("q_proj",)), "lora_")
    other.load_state_dict(state)
    again = other.state_dict()
    assert again["steps"] == 2 and torch.equal(again["baseline"]["token_mean"], state["baseline"]["token_mean"])
    assert all(torch.equal(again["beta"][k], v) for k, v in state["beta"].items())
    for bad in (dict(gamma=1.5), dict(baseline="median"), dict(temperature=0), dict(reward="nope"),
                dict(reward="text:os:getcwd")):
        with pytest.raises((ValueError, TypeError)):
            RSTDPLearner(estimator="stdp", **bad)
    with pytest.raises(ValueError, match="projected"):
        setup(RSTDPLearner(estimator="stdp",
                           params="lora_", escape=True, rule="projected"), spiking("lif", targets=("q_proj",)),
              "lora_")


def test_reward_alignment_and_baselines():
    from hybridtune.learners.baselines import group_mean_dense, make_baseline
    from hybridtune.learners.rewards import RewardSignal, make_reward

    batch = {"input_ids": torch.tensor([[3, 4, 5, 6]]), "labels": torch.tensor([[-100, -100, 5, 6]])}
    sig = make_reward("loglik")(Observation(batch=batch, token_nll=torch.tensor([[9.0, 1.0, 2.0]])))
    # position 1 predicts token 5 (the first labelled token); position 0 predicts an unlabelled one
    assert sig.values.tolist() == [[0.0, -1.0, -2.0, 0.0]] and sig.mask.tolist() == [[False, True, True, False]]
    seq = make_reward("sequence_loglik")(Observation(batch=batch, token_nll=torch.tensor([[9.0, 1.0, 2.0]])))
    assert seq.values.tolist() == [-1.5]
    tok = make_baseline("token_ema", momentum=0.5, vocab_size=8)
    tok.update(tok.stats(sig, batch))
    value = tok.value(sig, batch)
    assert value[0, 1].item() == -1.0 and value[0, 2].item() == -2.0  # per target token (5 and 6)
    assert value[0, 0].item() == pytest.approx(-1.5)  # unseen id: the global mean
    dense = group_mean_dense(torch.tensor([[1.0, 0.0], [3.0, 5.0]]), torch.tensor([7, 7]),
                             torch.tensor([[True, False], [True, True]]))
    assert dense.tolist() == [[3.0, 5.0], [1.0, 5.0]]  # position 1: no other sample covers it -> own value
    with pytest.raises(KeyError, match="group"):
        make_baseline("group").value(RewardSignal(torch.ones(2)), {})
    # the reward callable protocol: any callable on the observation
    fn = make_reward(lambda obs: obs.batch["input_ids"].float().sum(-1))
    assert fn(Observation(batch=batch, token_nll=torch.zeros(1, 3))).values.tolist() == [18.0]


def test_plain_stdp_is_the_three_factor_rule_with_unit_reward():
    """Consistency of the two learners: R-STDP with a constant advantage of 1 per sequence and γ = 1 is STDP."""
    model = spiking("lif", targets=("q_proj",))
    batch = masked_batch()
    batch["one"] = torch.ones(4)
    learner = RSTDPLearner(estimator="stdp", params="lora_A", lr=0.01, reward="batch:one", baseline="none", gamma=1.0,
                           reset_eligibility=False)
    owned = setup(learner, model, "lora_A")
    before = {n: p.detach().clone() for n, p in owned.items()}
    records, _, _ = observe(learner, model, batch)
    learner.step()
    rec = records[0]
    pure = stdp_update(rec.inputs(), rec.bottleneck_spikes.float(), decay_pre=learner.decay_pre,
                       decay_post=learner.decay_post, reset=rec.reset, mask=rec.valid)
    name = next(n for n, q in owned.items() if q is param(model, rec, "A"))
    close(owned[name] - before[name], 0.01 * pure / norm(rec))


def test_escape_noise_refuses_adapter_dropout_and_leaves_the_model_intact():
    model = spiking("heaviside", targets=("q_proj",), dropout=0.1)
    learner = RSTDPLearner(estimator="stdp", params="lora_A", escape=True)
    setup(learner, model, "lora_A")
    with pytest.raises(ValueError, match="lora_dropout"):
        with learner.recording(model):
            pass
    for layer in (m for m in model.modules() if hasattr(m, "lora_dropout")):
        assert layer.recorder is None
        assert not layer.input_perturbation  # the escape noise is switched off again


@pytest.mark.parametrize("sigma_bottleneck, sigma_output, group", [(0.0, 1e-3, "lora_B"), (1.0, 0.0, "lora_A")])
def test_antithetic_estimator_points_along_the_true_gradient(sigma_bottleneck, sigma_output, group):
    """Node perturbation on the output (for lora_B) or the bottleneck (for lora_A) of a one-block model's down_proj:
    averaged over 64 antithetic pairs the update aligns with −∇loss (with both noises at once each factor's signal
    drowns in the other's noise: variance grows with the perturbed units). Nothing after the last down_proj mixes
    tokens, so same-token credit (gamma 0) is unbiased here. The forwards are counted."""
    import importlib.util
    from pathlib import Path

    from hybridtune.learners.alignment import gradient_alignment

    spec = importlib.util.spec_from_file_location("eprop_tests", Path(__file__).parent / "eprop" /
                                                  "test_eprop_learner.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    model = helpers.adapted(helpers.one_block(), ["down_proj"], "heaviside")
    learner = RSTDPLearner(params=r"lora_[AB]", lr=1.0, pairs=64, gamma=0.0, sigma_bottleneck=sigma_bottleneck,
                           sigma_output=sigma_output, max_update_norm=None)
    setup(learner, model, r"lora_[AB]")
    b = helpers.batch()
    cos = gradient_alignment(model, [learner], [b])
    assert cos[group] > 0.4, cos
    with torch.no_grad(), learner.recording(model) as rec:
        model(**{k: b[k] for k in KEYS})
        learner.observe(Observation(batch=b, token_nll=torch.zeros(1), recording=rec))
    learner.step()
    assert learner.metrics()["forwards_per_update"] == 1 + 2 * 64


def _one_block_helpers():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("eprop_tests", Path(__file__).parent / "eprop" /
                                                  "test_eprop_learner.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    return helpers


def test_separate_pairs_let_both_factors_follow_the_gradient_at_once():
    """perturb: separately gives the bottleneck and the output a pair each (4 forwards per pair): with both noises
    switched on, each factor's estimate aligns with −∇loss as it does when its noise is the only one; perturbed
    together, one factor's signal drowns in the other's noise."""
    from hybridtune.learners.alignment import gradient_alignment

    helpers = _one_block_helpers()
    options = dict(params=r"lora_[AB]", lr=1.0, pairs=64, gamma=0.0, sigma_bottleneck=1.0, sigma_output=1e-3,
                   max_update_norm=None)
    b = helpers.batch()
    cosines = {}
    for perturb in ("together", "separately"):
        model = helpers.adapted(helpers.one_block(), ["down_proj"], "heaviside")  # the same seeded model each time
        learner = RSTDPLearner(perturb=perturb, **options)
        setup(learner, model, r"lora_[AB]")
        cosines[perturb] = gradient_alignment(model, [learner], [b])
    assert cosines["separately"]["lora_A"] > 0.4 and cosines["separately"]["lora_B"] > 0.4, cosines
    # together, the bottleneck's spike flips move the loss far more than the small output noise: lora_B's estimate
    # drowns (cosine 0.05 here, against 0.72 with its own pairs)
    assert cosines["separately"]["lora_B"] > cosines["together"]["lora_B"] + 0.3, cosines
    with torch.no_grad(), learner.recording(model) as rec:
        model(**{k: b[k] for k in KEYS})
        learner.observe(Observation(batch=b, token_nll=torch.zeros(1), recording=rec))
    learner.step()
    assert learner.metrics()["forwards_per_update"] == 1 + 4 * 64
    with pytest.raises(ValueError, match="perturb"):
        RSTDPLearner(perturb="both")


def test_top_blocks_perturbs_and_trains_only_the_top_blocks():
    model = spiking(targets=("v_proj", "down_proj"))
    learner = RSTDPLearner(params="lora_[AB]", lr=1.0, pairs=2, top_blocks=1, max_update_norm=None)
    owned = setup(learner, model, "lora_[AB]")
    assert set(learner.learning_parameters()) == {n for n in owned if ".layers.1." in n}
    assert {t.layer.split(".layers.")[1][0] for t in learner.targets} == {"1"}
    before = {n: p.detach().clone() for n, p in owned.items()}
    observe(learner, model, masked_batch())
    assert learner.step()
    for n, p in owned.items():
        assert torch.equal(p, before[n]) == (".layers.0." in n), n
    with pytest.raises(ValueError, match="top_blocks"):
        RSTDPLearner(top_blocks=0)


@pytest.mark.parametrize("sigma_bottleneck, sigma_output, moved", [(0.0, 0.2, {"lora_B"}),
                                                                    (1.0, 0.0, {"lora_A", "log_threshold"})])
def test_a_factor_without_noise_is_owned_but_not_learned(sigma_bottleneck, sigma_output, moved):
    """The antithetic estimator has nothing for a factor whose nodes carry no noise (nor ever for LIF decays):
    learning_parameters() leaves it out, so gradient_alignment does not count its zero update against the rule."""
    model = spiking(targets=("v_proj", "down_proj"))
    learner = RSTDPLearner(params="all", lr=1.0, pairs=2, sigma_bottleneck=sigma_bottleneck,
                           sigma_output=sigma_output, max_update_norm=None)
    owned = setup(learner, model, "lora_")
    kind = {n: next(k for k in ("lora_A", "lora_B", "log_threshold", "decay_logit") if k in n) for n in owned}
    assert {kind[n] for n in learner.learning_parameters()} == moved
    before = {n: p.detach().clone() for n, p in owned.items()}
    observe(learner, model, masked_batch())
    assert learner.step()
    for n, p in owned.items():
        assert torch.equal(p, before[n]) == (n not in learner.learning_parameters()), n
    with pytest.raises(ValueError, match="none of its parameters gets an estimate"):
        setup(RSTDPLearner(params="lora_B", sigma_bottleneck=1.0, sigma_output=0.0), spiking(), "lora_B")


@pytest.mark.parametrize("top_blocks", [1, None])
def test_tail_forwards_give_the_update_of_whole_model_forwards(top_blocks):
    """The perturbed forwards re-run only the blocks from the lowest perturbed one (tail_forwards, the default): the
    same losses as whole-model forwards, so the same update, with padding and document starts in the batch."""
    updated = {}
    for tail in (True, False):
        model = spiking(targets=("v_proj", "down_proj"))  # the same seeded model each time
        learner = RSTDPLearner(params="lora_", lr=1.0, pairs=2, sigma_bottleneck=1.0, sigma_output=0.05,
                               top_blocks=top_blocks, tail_forwards=tail, max_update_norm=None)
        owned = setup(learner, model, "lora_")
        before = {n: p.detach().clone() for n, p in owned.items()}
        observe(learner, model, masked_batch())
        assert learner.step()
        updated[tail] = {n: p.detach() - before[n] for n, p in owned.items()}
        blocks = learner.metrics()["blocks_per_perturbed_forward"]
        assert blocks == (1 if tail and top_blocks == 1 else 2)
    assert any(float(d.abs().max()) > 0 for d in updated[True].values())
    for n, d in updated[True].items():
        torch.testing.assert_close(d, updated[False][n], rtol=0, atol=0, msg=n)


def test_tail_forwards_need_every_perturbed_adapter_inside_a_block():
    def model():
        return get_spiking_peft_model(tiny_model("llama"), spiking_lora_config(
            r=4, neuron="lif", threshold=0.02, init_b_std=0.05, target_modules=["v_proj", "lm_head"]))

    with pytest.raises(ValueError, match="lm_head is not; set tail_forwards: false"):
        setup(RSTDPLearner(params="lora_", pairs=1), model(), "lora_")
    setup(RSTDPLearner(params="lora_", pairs=1, tail_forwards=False), model(), "lora_")
