"""The ``rstdp`` learner: reward-modulated STDP (three-factor) on spiking LoRA factors, no backward pass.

Two estimators (``estimator``):

* ``antithetic`` (default) — node perturbation (:mod:`.perturbation`): per micro-batch, ``pairs`` pairs of extra
  forwards with ``± σ`` Gaussian noise on every owned adapter's bottleneck current (``sigma_bottleneck``, in units of
  the threshold) and output (``sigma_output``); the third factor is the per-token loss difference of the pair, the
  eligibility the local chain rule (``x`` for ``lora_A``, ``y`` for ``lora_B``), so both factors get a
  policy-gradient estimate. Costs ``2 · pairs`` forwards per micro-batch (``forwards_per_update`` in the metrics);
  its variance grows with the number of perturbed units, so two options cut that number: ``top_blocks`` perturbs
  and trains only the adapters of the top blocks (:mod:`hybridtune.learners.depth`), and ``perturb: separately``
  gives the bottleneck and the output their own pairs (``4 · pairs`` forwards) -- perturbed together, the output's
  thousands of units swamp the loss difference that the bottleneck's few should explain. The perturbed forwards
  re-run only the blocks from the lowest perturbed one upward (``tail_forwards``, :mod:`hybridtune.learners.tail`):
  the blocks below compute what the clean forward computed, so with ``top_blocks: 2`` of 30 a perturbed forward
  costs two blocks, the final norm and ``lm_head``.
* ``stdp`` — the reward-gated STDP rule below (with ``escape: true`` a REINFORCE estimate for ``lora_A``).

Eligibility ``e[t] = γ e[t-1] + z[t]`` (``z`` = the pair-STDP term of :mod:`.stdp`) gated by reward minus baseline.
No ``[batch, out, in]`` eligibility is ever formed: the gated update is the same two GEMMs as STDP with row weights
(:mod:`hybridtune.learners.plasticity.rstdp`)

* per-token (dense) rewards ``r[b, t]``: ``w[b, k] = Σ_{t>=k} γ^(t-k) (r[b, t] − b̄)`` (reverse discounted cumsum;
  stops at document starts when ``reset_eligibility``);
* per-sequence rewards ``R_b``: ``w[b, t] = (R_b − b̄) γ^(L-1-t)``;

``ΔW = A+ (w ⊙ S_post)ᵀ X̄_pre − A− (w ⊙ X̄_post)ᵀ S_pre`` for ``lora_A`` (input -> bottleneck) and ``lora_B``
(bottleneck -> post activity), or projected onto both factors (``rule: projected``).

``escape: true`` makes the owned adapters' bottleneck neurons stochastic while recording (logistic escape noise of
scale ``temperature · θ``, :mod:`.escape`); ``lora_A`` and the thresholds then follow the policy-gradient estimator
``ΔA = Σ_t w[t] · ∂ log π(s_t)/∂h_t ⊗ x̄_t`` (``x̄`` = the input, or its leaky trace for LIF), ``Δθ`` likewise —
REINFORCE for the bottleneck spikes, unbiased for ``γ = 1`` and any baseline that ignores the sample's own spikes.
``lora_B`` has no such estimator (it is not a parameter of the spike policy) and keeps the reward-gated STDP rule.

Rewards (:mod:`.rewards`): ``loglik`` (default: per-token log-likelihood from the forward the trainer ran),
``sequence_loglik``, ``batch:<key>``, ``text:<module:fn>`` (with ``tokenizer``), ``<module:fn>`` or a callable.
Baselines (:mod:`.baselines`): ``ema`` (default), ``token_ema``, ``group`` (samples of one prompt), ``none``.

Example:
    >>> import torch
    >>> from hybridtune.testing import tiny_model, tiny_batch
    >>> from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
    >>> from hybridtune.learners import SetupContext, Observation
    >>> from hybridtune.learners.rewards import token_nll
    >>> pm = get_spiking_peft_model(tiny_model("llama"), spiking_lora_config(
    ...     r=4, neuron="heaviside", threshold=0.02, init_b_std=0.02, target_modules=["q_proj"]))
    >>> owned = {n: p for n, p in pm.named_parameters() if "lora_" in n and "neuron" not in n}
    >>> rl = RSTDPLearner(params="lora_", lr=1e-2, pairs=2)   # estimator: antithetic
    >>> rl.setup(SetupContext(model=pm, accelerator=None, params=owned, total_steps=1))
    >>> batch = tiny_batch(); batch["labels"] = batch["input_ids"]
    >>> with torch.no_grad(), rl.recording(pm) as rec:
    ...     nll = token_nll(pm(**batch).logits, batch["labels"])
    ...     rl.observe(Observation(batch=batch, token_nll=nll, recording=rec))
    >>> rl.step(), rl.metrics()["forwards_per_update"]   # the trainer's forward + 2 pairs x 2
    (True, 5.0)
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hybridtune.learners.baselines import BASELINES, make_baseline
from hybridtune.learners.depth import block_index, count_blocks, depth_weights
from hybridtune.learners.escape import escape_scores
from hybridtune.learners.narrow import reverse_trace
from hybridtune.learners.plasticity import dense_reward_weights, sequence_reward_weights, trace_scan
from hybridtune.learners.plasticity.learner import Activity, PairJob, PlasticLearner, target_key
from hybridtune.learners.plasticity.perturbation import antithetic_credit, node_noise, perturbed
from hybridtune.learners.plasticity.targets import FactorTarget
from hybridtune.learners.protocol import Observation, ParamSpec, SetupContext
from hybridtune.learners.rewards import RewardSignal, make_reward
from hybridtune.learners.tail import TailCapture, decoder_blocks

__all__ = ["RSTDPLearner", "reward_row_weights", "leaky_scan", "ESTIMATORS"]

ESTIMATORS = ("antithetic", "stdp")
PERTURB = ("together", "separately")


def leaky_scan(u: Tensor, decay: Tensor, reset: Tensor | None, reverse: bool = False) -> Tensor:
    """The LIF membrane's linear recursion ``v[t] = d (1 − reset[t]) v[t-1] + u[t]`` per channel (``decay [C]``), or
    its adjoint ``g[t] = u[t] + d (1 − reset[t+1]) g[t+1]`` (``reverse``), for ``u [B, L, C]``.

    Channels sharing a decay value (all of them, unless a surrogate learner trains the decays) go through one
    chunked scan; padding is not skipped (the LIF integrates it, and resets after it).

    Example:
        >>> leaky_scan(torch.ones(1, 3, 1), torch.tensor([0.5]), None).flatten().tolist()
        [1.0, 1.5, 1.75]
        >>> leaky_scan(torch.ones(1, 3, 1), torch.tensor([0.5]), None, reverse=True).flatten().tolist()
        [1.75, 1.5, 1.0]
    """
    out = torch.empty_like(u)
    for value in torch.unique(decay):
        cols = (decay == value).nonzero().flatten()
        part = u[..., cols]
        scanned = (reverse_trace(part, float(value), reset=reset) if reverse
                   else trace_scan(part, float(value), reset=reset))
        out[..., cols] = scanned
    return out


def reward_row_weights(signal: RewardSignal, baseline: Tensor, gamma: float, valid: Tensor | None,
                       reset: Tensor | None, normalize_advantage: bool = False) -> tuple[Tensor, Tensor]:
    """Row weights ``w [B, L]`` for the gated GEMMs, and the advantage, from rewards, a baseline and masks.

    Dense: ``adv = (r − b) · reward_mask`` and ``w`` its reverse discounted cumsum (padding skipped, stopping at
    ``reset``); per sequence: ``adv = R − b`` and ``w[b, t] = adv_b γ^(#real tokens after t)``.

    Example:
        >>> sig = RewardSignal(torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[True, True, False]]))
        >>> w, adv = reward_row_weights(sig, torch.tensor(0.5), 0.5, None, None)
        >>> w.tolist(), adv.tolist()   # adv = [0.5, -0.5, 0]: the last position has no reward
        ([[0.25, -0.5, 0.0]], [[0.5, -0.5, 0.0]])
    """
    values = signal.values.float()
    b = baseline.to(values.device).float()
    if signal.dense:
        rmask = signal.mask.to(values.device).float() if signal.mask is not None else torch.ones_like(values)
        adv = (values - b) * rmask
        if normalize_advantage:
            n = rmask.sum().clamp_min(1.0)
            std = ((adv - adv.sum() / n).pow(2) * rmask).sum().div(n).sqrt()
            adv = adv / (std + 1e-8)
        return dense_reward_weights(adv, gamma, mask=valid, reset=reset), adv
    adv = values - b
    if normalize_advantage and adv.numel() > 1:
        adv = adv / (adv.std() + 1e-8)
    length = valid.shape[-1] if valid is not None else (reset.shape[-1] if reset is not None else None)
    if length is None:
        raise ValueError("per-sequence rewards need the sequence length (pass valid or reset masks)")
    return sequence_reward_weights(adv, length, gamma, mask=valid, reset=reset), adv


def _antithetic_roles(sigma_bottleneck: float, sigma_output: float, homeostasis: bool) -> set[str]:
    """The roles the antithetic estimator moves: ``A`` and ``threshold`` with bottleneck noise, ``B`` with output
    noise, ``threshold`` also under homeostasis; LIF decays never (it has no estimate for them)."""
    roles = {"A", "threshold"} if sigma_bottleneck > 0 else set()
    if sigma_output > 0:
        roles.add("B")
    if homeostasis:
        roles.add("threshold")
    return roles


@dataclass
class _Batch:
    weights: Tensor  # [B, L] row weights
    advantage: Tensor
    signal: RewardSignal
    baseline: Tensor


class RSTDPLearner(PlasticLearner):
    """Three-factor learner (see the module docstring). Takes every :class:`~.stdp.STDPLearner` option, plus:

    Args:
        reward: reward spec (``loglik`` default; see :func:`~.rewards.make_reward`); tokenizer: for ``text:`` rewards.
        baseline: ``ema`` | ``token_ema`` | ``group`` | ``none``; baseline_momentum; leave_one_out (group).
        gamma: eligibility decay per token (``1`` = no decay; the policy-gradient estimator is unbiased at 1).
        reset_eligibility: eligibility (credit) stops at document starts.
        normalize_advantage: divide the advantage by its standard deviation over the micro-batch.
        escape: stochastic (escape-noise) bottleneck neurons while recording -> policy-gradient updates for
            ``lora_A`` and thresholds; temperature: noise scale in units of the initial threshold.
        top_blocks: only the adapters of the top ``top_blocks`` decoder blocks are perturbed and learn (None: all).
        perturb: ``together`` (one pair of forwards perturbs bottleneck and output) or ``separately`` (a pair each).
        tail_forwards: the perturbed forwards re-run only the blocks from the lowest perturbed one upward, on the
            arguments the clean forward gave them (the same logits; ``false``: whole-model forwards).
    """

    def __init__(self, params: ParamSpec = "all", lr: float = 1e-3, *, estimator: str = "antithetic", pairs: int = 1,
                 sigma_bottleneck: float = 1.0, sigma_output: float = 0.01, reward: Any = None, tokenizer: Any = None,
                 baseline: str = "ema", baseline_momentum: float = 0.9, leave_one_out: bool = True,
                 gamma: float = 0.9, reset_eligibility: bool = True, normalize_advantage: bool = False,
                 escape: bool = False, temperature: float = 0.5, top_blocks: int | None = None,
                 perturb: str = "together", tail_forwards: bool = True, name: str = "rstdp", **options: Any):
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma: must be in [0, 1] (got {gamma})")
        if not temperature > 0:
            raise ValueError(f"temperature: must be > 0 (got {temperature})")
        if baseline not in BASELINES:
            raise ValueError(f"baseline: {baseline!r} is not one of {', '.join(BASELINES)}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator: {estimator!r} is not one of {', '.join(ESTIMATORS)}")
        if estimator == "antithetic" and escape:
            raise ValueError("escape: true belongs to estimator: stdp (the antithetic estimator perturbs the nodes "
                             "itself); drop escape or set estimator: stdp")
        if top_blocks is not None and top_blocks < 1:
            raise ValueError(f"top_blocks: must be >= 1 block, or None for all (got {top_blocks})")
        if perturb not in PERTURB:
            raise ValueError(f"perturb: {perturb!r} is not one of {', '.join(PERTURB)}")
        if pairs < 1 or sigma_bottleneck < 0 or sigma_output < 0 or sigma_bottleneck + sigma_output == 0:
            raise ValueError(f"pairs must be >= 1 and sigma_bottleneck / sigma_output >= 0, not both 0 (got {pairs}, "
                             f"{sigma_bottleneck}, {sigma_output})")
        super().__init__(params, lr, name=name, **options)
        self.estimator, self.pairs = estimator, int(pairs)
        self.top_blocks, self.perturb, self.tail_forwards = top_blocks, perturb, bool(tail_forwards)
        self._tail: tuple | None = None  # (first block, blocks, final norm, lm_head) when tail_forwards applies
        self.sigma_bottleneck, self.sigma_output = float(sigma_bottleneck), float(sigma_output)
        self.model = None
        self.reward = make_reward(reward, tokenizer)
        self.baseline = make_baseline(baseline, baseline_momentum, leave_one_out)
        self.baseline_kind = baseline
        self.gamma, self.reset_eligibility = float(gamma), bool(reset_eligibility)
        self.normalize_advantage, self.escape, self.temperature = bool(normalize_advantage), bool(escape), temperature

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        self.model = ctx.model
        weights = depth_weights(self._params, count_blocks(ctx.model), self.top_blocks)
        self._learning = {n for n, w in weights.items() if w > 0}
        if not self._learning:
            raise ValueError(f"learner {self.name!r}: top_blocks={self.top_blocks} leaves none of its parameters "
                             f"to learn; raise top_blocks or set it to None")
        # the adapters below the top blocks are neither perturbed, recorded nor updated
        self.targets = [t for t in self.targets if any(n in self._learning for n in t.roles.values())]
        if self.estimator == "antithetic":  # a role whose nodes carry no noise gets no estimate: owned, never moved
            moved = _antithetic_roles(self.sigma_bottleneck, self.sigma_output, self.target_rate is not None)
            self._learning -= {n for t in self.targets for role, n in t.roles.items() if role not in moved}
            if not self._learning:
                raise ValueError(f"learner {self.name!r}: with sigma_bottleneck={self.sigma_bottleneck} and "
                                 f"sigma_output={self.sigma_output} none of its parameters gets an estimate; "
                                 "give the noise to a factor it owns (bottleneck: lora_A / thresholds, output: lora_B)")
        self._by_key = {t.key: t for t in self.targets}
        if self.estimator == "antithetic" and self.tail_forwards:
            self._tail = self._tail_of(ctx.model)
        self.baseline.setup(ctx.model)
        if self.escape:
            for t in self.targets:
                if self._noisy(t):  # noise scale fixed from the initial threshold (the policy's β stays put)
                    self.beta[target_key(t)] = (1.0 / (self.temperature * t.threshold().float())).cpu()

    def _tail_of(self, model: torch.nn.Module) -> tuple:
        """The lowest block holding a perturbed adapter, and the modules a tail replay runs (resolved once)."""
        from hybridtune.learners.eprop.top import final_norm, output_head

        indices = [block_index(t.layer) for t in self.targets]
        if any(i is None for i in indices):
            outside = sorted(t.layer for t, i in zip(self.targets, indices) if i is None)
            raise ValueError(f"learner {self.name!r}: tail_forwards needs every perturbed adapter inside a numbered "
                             f"decoder block, and {', '.join(outside)} is not; set tail_forwards: false")
        return min(indices), decoder_blocks(model), final_norm(model), output_head(model)

    def recording(self, model: torch.nn.Module):
        rec = super().recording(model)
        if self._tail is not None:
            rec.tail = TailCapture(model, *self._tail)
        return rec

    def learning_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The owned parameters within ``top_blocks`` (all of them when it is None) that the estimator moves (the
        antithetic one: not a factor whose nodes carry no noise, nor LIF decays)."""
        return {n: p for n, p in self._params.items() if n in self._learning}

    def _check_target(self, target: FactorTarget) -> None:
        if self.escape and "A" in target.roles and self.rule == "projected":
            raise ValueError("rule: projected does not combine with escape: true (the policy gradient of lora_A is "
                             "a local rule); use rule: local")

    def _noisy(self, target: FactorTarget) -> bool:
        return self.escape and ("A" in target.roles or "threshold" in target.roles)

    # -- per micro-batch ------------------------------------------------------------------------------------------
    def observe(self, obs: Observation) -> None:
        if self.estimator == "stdp":
            return super().observe(obs)
        start = time.perf_counter()
        records = {(r.layer, r.adapter): r for r in obs.recording.pop()}
        tail = obs.recording.tail
        self._antithetic(obs.batch, records, tail, tail.pop() if tail is not None else None)
        obs.recording.recorder.clear()  # the perturbed forwards were recorded too; their records are not needed
        self._micro += 1
        self._observe_s += time.perf_counter() - start

    def _antithetic(self, batch: Mapping[str, Tensor], records: dict, tail: TailCapture | None = None,
                    call: Any = None) -> None:
        """Node perturbation with antithetic pairs (see :mod:`.perturbation`); accumulates ascent updates. With a
        tail capture and its call, each perturbed forward re-runs only the tail blocks."""
        from hybridtune.adapters import reset_mask
        from hybridtune.neurons import reset_state
        from hybridtune.perplexity import causal_lm_nll

        ids, attn = batch["input_ids"], batch.get("attention_mask")
        valid = attn.bool() if attn is not None else torch.ones_like(ids, dtype=torch.bool)
        reset = reset_mask(attn, batch.get("doc_start"), ids.shape[1])
        n_valid = max(float(valid.sum()), 1.0)
        kwargs = {k: batch[k] for k in ("input_ids", "attention_mask", "doc_start") if k in batch}
        sigma_h = ({t.layer: self.sigma_bottleneck * t.threshold().float().cpu() for t in self.targets
                    if "A" in t.roles or "threshold" in t.roles} if self.sigma_bottleneck > 0 else {})
        rank = getattr(self.accelerator, "process_index", 0) if self.accelerator is not None else 0
        seed = int.from_bytes(hashlib.sha256(f"{self.seed}:{rank}:{self.steps}:{self._micro}".encode()).digest()[:8],
                              "little") & ((1 << 62) - 1)
        # which nodes each pair of forwards perturbs: both at once, or the bottleneck and the output in turn
        rounds = ([(sigma_h, self.sigma_output)] if self.perturb == "together"
                  else [(sigma_h, 0.0), ({}, self.sigma_output)])
        rounds = [(h, o) for h, o in rounds if h or o > 0]
        for pair, (sig_h, sig_o) in ((p * len(rounds) + i, r) for p in range(self.pairs)
                                     for i, r in enumerate(rounds)):
            losses = []
            for sign in (1.0, -1.0):
                with torch.no_grad(), perturbed(self.targets, sig_h, sig_o, seed, pair, sign):
                    reset_state(self.model)
                    logits = (tail.replay(call, attn, batch.get("doc_start")) if call is not None
                              else self.model(**kwargs).logits)
                    nll, _ = causal_lm_nll(logits, batch["labels"])
                    del logits  # [B, L, vocab]: not alive during the next forward
                losses.append(F.pad(nll.float(), (0, 1)))
            half = antithetic_credit(losses[0], losses[1], 1.0, self.gamma, reset=reset.to(nll.device),
                                     mask=valid.to(nll.device))  # Σ γ (ℓ⁺ − ℓ⁻) / 2; divided by σ per node below
            half = half * valid.to(half.device)
            self._mstats["n"] = self._mstats.get("n", 0.0) + float(valid.sum())
            self._mstats["reward"] = self._mstats.get("reward", 0.0) + float((losses[1] - losses[0]).sum())
            self._mstats["adv_sq"] = self._mstats.get("adv_sq", 0.0) + float((losses[1] - losses[0]).pow(2).sum())
            for t in self.targets:
                rec = records.get(t.key)
                if rec is None:
                    continue
                s = rec.bottleneck_spikes.float()
                if t.layer in sig_h:
                    xi = node_noise(tuple(s.shape), seed, t.layer, "h", pair, s.device)
                    g_h = half[..., None].to(s.device) * xi / sigma_h[t.layer].to(s.device)
                    if "A" in t.roles:
                        x = rec.inputs()
                        self._add(t, "A", -(g_h.reshape(-1, g_h.shape[-1]).T @ x.reshape(-1, x.shape[-1]))
                                  / (n_valid * self.pairs))
                    if "threshold" in t.roles:  # θ enters as −θ next to h (LIF: also through the soft reset)
                        theta = rec.threshold.float().to(s.device)
                        self._add(t, "threshold", (g_h.sum((0, 1)) * theta) / (n_valid * self.pairs))
                if "B" in t.roles and sig_o > 0:
                    y = s * rec.threshold.float().to(s.device) if t.kind == "mt" else s
                    out = t.lora_B.shape[0]
                    zeta = node_noise((*s.shape[:2], out), seed, t.layer, "o", pair, s.device)
                    g_o = half[..., None].to(s.device) * zeta / self.sigma_output
                    grad_b = t.scaling * g_o.reshape(-1, out).T @ y.reshape(-1, y.shape[-1])
                    self._add(t, "B", -grad_b / (n_valid * self.pairs))
        self._mstats["forwards"] = self._mstats.get("forwards", 0.0) + 1.0 + 2.0 * self.pairs * len(rounds)

    def _begin_batch(self, obs: Observation) -> _Batch:
        from hybridtune.adapters import reset_mask

        batch = obs.batch
        signal = self.reward(obs)
        ids = batch["input_ids"]
        attn = batch.get("attention_mask")
        valid = attn.bool() if attn is not None else torch.ones_like(ids, dtype=torch.bool)
        reset = reset_mask(attn, batch.get("doc_start"), ids.shape[1]) if self.reset_eligibility else None
        base = self.baseline.value(signal, batch)
        weights, adv = reward_row_weights(signal, base, self.gamma, valid.to(signal.values.device),
                                          None if reset is None else reset.to(signal.values.device),
                                          self.normalize_advantage)
        for k, v in self.baseline.stats(signal, batch).items():
            self._bstats[k] = self._bstats.get(k, 0.0) + v
        values, rmask = signal.values.float(), (signal.mask.float() if signal.mask is not None
                                                else torch.ones_like(signal.values.float()))
        n = rmask.sum()
        bvals = torch.broadcast_to(base.float(), values.shape)
        adv_mean = (adv * rmask).sum() / n.clamp_min(1.0)
        self._mstats["n"] = self._mstats.get("n", 0.0) + n.double()
        for key, v in (("reward", values), ("baseline", bvals), ("adv", adv)):
            self._mstats[key] = self._mstats.get(key, 0.0) + (v * rmask).sum().double()
        self._mstats["adv_sq"] = self._mstats.get("adv_sq", 0.0) + ((adv - adv_mean).pow(2) * rmask).sum().double()
        return _Batch(weights, adv, signal, base)

    def _row_weight(self, context: _Batch) -> Tensor:
        return context.weights

    def _target_jobs(self, act: Activity, context: _Batch) -> tuple[list[PairJob], dict[str, Tensor]]:
        roles = act.target.roles
        if self._noisy(act.target):  # lora_A / θ: policy gradient (computed for all layers in _observe_group)
            jobs, direct = self._stdp_jobs(act, ("B",) if "B" in roles else ())
            direct.update(act.pg)
            return jobs, direct
        return self._stdp_jobs(act, tuple(r for r in ("A", "B") if r in roles))

    def _observe_group(self, acts: list[Activity], context: _Batch) -> None:
        noisy = [a for a in acts if self._noisy(a.target)]
        for a in acts:
            a.pg = {}
        kinds: dict[tuple[str, int], list[Activity]] = {}
        for a in noisy:
            kinds.setdefault((a.target.kind, a.target.max_spikes), []).append(a)
        for (kind, cap), group in kinds.items():
            self._policy_gradient(group, kind, cap, context)
        super()._observe_group(acts, context)

    def _policy_gradient(self, acts: list[Activity], kind: str, cap: int, context: _Batch) -> None:
        """REINFORCE for escape-noise bottlenecks, all layers of one neuron kind at once:
        ``ΔA = Σ_t w[t] ∂log π(s_t)/∂h_t ⊗ x̄_t`` and ``Δθ = Σ_t w[t] ∂log π(s_t)/∂θ`` (sums over tokens)."""
        for a in acts:
            if a.current is None:
                raise RuntimeError(f"{a.target.layer}: no noise-free bottleneck current was kept for this record; run "
                                   "the forward inside this learner's recording(model)")
        rec = acts[0].rec
        device = acts[0].s.device
        reset = rec.reset.to(device) if rec.reset is not None else None
        weight = context.weights.to(device)
        if rec.valid is not None:
            weight = weight * rec.valid.to(device).float()
        sizes = [a.s.shape[-1] for a in acts]
        s = torch.cat([a.s for a in acts], -1)
        h = torch.cat([a.current.to(device).float() for a in acts], -1)
        theta = torch.cat([a.rec.threshold.to(device).float() for a in acts])
        beta = torch.cat([self.beta[target_key(a.target)].to(device) for a in acts])
        if kind == "lif":  # the membrane before the spike, noise excluded (it holds exactly ε[t]: plasticity.recording)
            decay = torch.cat([a.target.decay().float().to(device) for a in acts])
            v = leaky_scan(h - s * theta, decay, reset) + s * theta
        else:
            v = h
        score_v, score_theta = escape_scores(v, s, theta, beta, kind=kind, max_spikes=cap)
        gated = score_v * weight[..., None]
        if kind == "lif":  # ∂v/∂A is the input's leaky trace: put it on the narrow side as a reverse (adjoint) scan
            gated = leaky_scan(gated, decay, reset, reverse=True)
            score_theta = score_theta * (1.0 + leaky_scan(s, decay, reset) - s)  # soft reset: θ in past spikes
        d_theta = (score_theta * weight[..., None]).sum((0, 1))
        for a, g, dt, th in zip(acts, gated.split(sizes, -1), d_theta.split(sizes), theta.split(sizes)):
            if "A" in a.target.roles:
                a.pg["A"] = g.reshape(-1, g.shape[-1]).T @ a.x.reshape(-1, a.x.shape[-1])
            if "threshold" in a.target.roles:
                a.pg["threshold"] = dt * th  # in log-threshold coordinates: d log θ = θ dθ

    # -- per step -------------------------------------------------------------------------------------------------
    def _threshold_delta(self, target: FactorTarget, payload: dict[str, Tensor]) -> Tensor | None:
        key = f"d:{target.roles['threshold']}"
        if (self._noisy(target) or self.estimator == "antithetic") and key in payload:
            return self.threshold_lr * payload[key]
        return super()._threshold_delta(target, payload)

    def _extra_stats(self) -> dict[str, Tensor]:
        out = {f"b:{k}": v for k, v in self._bstats.items()}
        out.update({f"m:{k}": torch.as_tensor(v, dtype=torch.float64) for k, v in self._mstats.items()})
        return out

    def _after_step(self, stats: dict[str, Tensor], metrics: dict[str, float], applied: bool) -> None:
        self.baseline.update({k[2:]: v for k, v in stats.items() if k.startswith("b:")})
        m = {k[2:]: float(v) for k, v in stats.items() if k.startswith("m:")}
        n = max(m.get("n", 0.0), 1.0)
        if m and self.estimator == "antithetic":  # reward: the loss drop of the − draw against the + draw
            metrics.update({"reward_diff/mean": m["reward"] / n, "reward_diff/rms": (m["adv_sq"] / n) ** 0.5,
                            "forwards_per_update": m.get("forwards", 0.0),
                            "blocks_per_perturbed_forward": float(len(self._tail[1]) - self._tail[0] if self._tail
                                                                  else count_blocks(self.model))})
        elif m:
            metrics.update({"reward": m["reward"] / n, "baseline": m["baseline"] / n, "advantage/mean": m["adv"] / n,
                            "advantage/std": (m["adv_sq"] / n) ** 0.5})

    def _reset_batch_stats(self) -> None:
        self._bstats: dict[str, Tensor] = {}
        self._mstats: dict[str, Tensor] = {}

    def _extra_state(self) -> dict[str, Any]:
        return {"baseline": self.baseline.state_dict()}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.baseline.load_state_dict(state.get("baseline", {}))

    def __repr__(self) -> str:
        return (f"RSTDPLearner(params={self.params!r}, lr={self.lr}, reward={self.reward.name!r}, "
                f"baseline={self.baseline_kind!r}, gamma={self.gamma}, escape={self.escape})")
