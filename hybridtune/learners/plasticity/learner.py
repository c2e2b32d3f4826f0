"""The thin stateful layer shared by the plastic learners (``stdp``, ``rstdp``): recording, accumulation, sync, apply.

Per optimizer step the trainer calls ``recording(model)`` around each micro-batch forward, ``observe`` after it and
``step`` at the boundary (see :mod:`hybridtune.learners.protocol`). A plastic learner

1. records, through the adapters' :class:`~hybridtune.adapters.SpikeRecorder`, only the layers it owns and only what
   its rule reads (input spikes, bottleneck spikes, padding / reset masks); no backward pass. The adapter's output
   ``s · y Bᵀ`` is recomputed from the bottleneck spikes when a rule needs it (r-wide spikes instead of a layer-wide
   record);
2. in ``observe`` turns the records into factor updates. Each rule is a set of *pair jobs* — pair STDP between a
   wide activity (a layer's input or output) and a narrow one (bottleneck spikes, or an activity projected through a
   LoRA factor) — whose traces are all taken on the narrow side (:mod:`.narrow`, exact) and computed by a few scans
   over every layer at once; the wide side enters only GEMMs. Updates are summed over micro-batches;
3. in ``step`` averages the micro-batches, **averages across ranks** (``accelerator.reduce(..., "mean")`` through
   :func:`~hybridtune.learners.protocol.mean_across_ranks`), scales by ``lr``, clips each layer's update norm,
   applies it in place, and projects onto the weight bounds. A non-finite update skips the step on every rank.

Parameters it owns get ``requires_grad=False`` (DDP then never expects gradients for them). Its state — the step
counter (which also seeds the escape noise), weight bounds, noise scales and the subclass's baselines — lives in
:meth:`state_dict`, never in module buffers that DDP would broadcast.

Example:
    >>> from hybridtune.learners.plasticity.stdp_learner import STDPLearner
    >>> STDPLearner(params="lora_A", lr=1e-3, tau_pre=8, tau_post=4).decay_pre > 0.88
    True
"""

from __future__ import annotations

import abc
import hashlib
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybridtune.learners.narrow import narrow_post_terms, narrow_pre_terms, trace_pairs
from hybridtune.learners.plasticity import decay_from_tau, hard_bound, oja_delta, soft_bound_delta
from hybridtune.learners.plasticity.recording import EscapeNoise, PlasticRecording, target_key
from hybridtune.learners.plasticity.targets import FactorTarget, find_targets
from hybridtune.learners.protocol import Observation, OwnsParameters, ParamSpec, SetupContext, mean_across_ranks

__all__ = ["PlasticLearner", "PairJob", "Activity", "target_key"]

_RULES = ("local", "projected")
_POSTS = ("adapter", "layer")
_DEPENDENCE = ("additive", "soft")
_NORMALIZE = ("tokens", "sequences")


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{key}: {msg}")


@dataclass
class Activity:
    """What one record of one target gives a rule: input ``x``, bottleneck spikes ``s``, what ``lora_B`` consumes
    ``y``, and (lazily, ``post: layer``) the layer output ``o`` — shapes ``[B, L, ·]``; padding is masked later."""

    target: FactorTarget
    rec: Any
    x: Tensor | None
    s: Tensor
    y: Tensor
    o: Tensor | None
    current: Tensor | None = None
    pg: dict[str, Tensor] = field(default_factory=dict)  # updates a subclass computed for all layers at once


@dataclass
class PairJob:
    """Pair STDP between a wide and a narrow activity for one factor ``role``; ``combine(ltp, ltd)`` -> ascent ΔW."""

    target: FactorTarget
    role: str
    narrow_side: str  # "post" (narrow post, wide pre) or "pre" (narrow pre, wide post)
    wide: Tensor
    narrow: Tensor
    combine: Callable[[Tensor, Tensor], Tensor]
    wide_factor: Tensor | None = None  # set: the wide activity is ``wide @ wide_factorᵀ`` (never formed)


class PlasticLearner(OwnsParameters, abc.ABC):
    """Shared machinery of ``stdp`` and ``rstdp`` (options documented on :class:`~hybridtune.learners.plasticity.stdp_learner.STDPLearner`)."""

    uses_backward = False
    escape = False

    def __init__(self, params: ParamSpec = "all", lr: float = 1e-3, *, tau_pre: float = 8.0, tau_post: float = 8.0,
                 a_plus: float = 1.0, a_minus: float = 1.0, inclusive: bool = True, rule: str = "local",
                 post: str = "adapter", weight_dependence: str = "additive", w_min: float | None = None,
                 w_max: float | None = None, bound_scale: float = 2.0, mu: float = 1.0, oja: float = 0.0,
                 max_update_norm: float | None = None, normalize: str = "tokens", target_rate: float | None = None,
                 threshold_lr: float = 0.05, chunk: int | None = None, log_layers: bool = False, seed: int = 0,
                 name: str = "plastic"):
        _check(lr > 0, "lr", f"must be > 0 (got {lr})")
        _check(tau_pre > 0 and tau_post > 0, "tau_pre/tau_post", f"must be > 0 tokens (got {tau_pre}, {tau_post})")
        _check(rule in _RULES, "rule", f"{rule!r} is not one of {', '.join(_RULES)}")
        _check(post in _POSTS, "post", f"{post!r} is not one of {', '.join(_POSTS)}")
        _check(weight_dependence in _DEPENDENCE, "weight_dependence",
               f"{weight_dependence!r} is not one of {', '.join(_DEPENDENCE)}")
        _check(normalize in _NORMALIZE, "normalize", f"{normalize!r} is not one of {', '.join(_NORMALIZE)}")
        _check(not (rule == "projected" and weight_dependence == "soft"), "weight_dependence",
               "soft bounds are elementwise on the full-rank weight and do not apply to rule: projected; "
               "use weight_dependence: additive (optionally with w_min / w_max) or rule: local")
        _check((w_min is None) == (w_max is None), "w_min/w_max", "give both bounds or neither")
        _check(w_min is None or w_min < w_max, "w_min/w_max", f"w_min must be < w_max (got {w_min}, {w_max})")
        _check(bound_scale > 0, "bound_scale", f"must be > 0 (got {bound_scale})")
        _check(max_update_norm is None or max_update_norm > 0, "max_update_norm", "must be > 0 or null")
        _check(target_rate is None or target_rate > 0, "target_rate", "must be > 0 or null")
        _check(oja >= 0, "oja", f"must be >= 0 (got {oja})")
        self.name, self.params, self.lr = name, params, float(lr)
        self.tau_pre, self.tau_post = float(tau_pre), float(tau_post)
        self.decay_pre, self.decay_post = decay_from_tau(tau_pre), decay_from_tau(tau_post)
        self.a_plus, self.a_minus, self.inclusive = float(a_plus), float(a_minus), bool(inclusive)
        self.rule, self.post, self.weight_dependence = rule, post, weight_dependence
        self.w_min, self.w_max, self.bound_scale, self.mu = w_min, w_max, float(bound_scale), float(mu)
        self.oja, self.max_update_norm, self.normalize = float(oja), max_update_norm, normalize
        self.target_rate, self.threshold_lr = target_rate, float(threshold_lr)
        self.chunk, self.log_layers, self.seed = chunk, bool(log_layers), int(seed)
        self.accelerator = None
        self.targets: list[FactorTarget] = []
        self._params: dict[str, nn.Parameter] = {}
        self._by_key: dict[tuple[str, str], FactorTarget] = {}
        self.bounds: dict[str, Tensor] = {}
        self.beta: dict[str, Tensor] = {}
        self.steps = 0
        self._last: dict[str, float] = {}
        self.reset()

    # -- protocol -------------------------------------------------------------------------------------------------
    def setup(self, ctx: SetupContext) -> None:
        self.accelerator = ctx.accelerator
        self._params = dict(ctx.params)
        self.targets = find_targets(ctx.model, self._params, f"learner {self.name!r}")
        self._by_key = {t.key: t for t in self.targets}
        for p in self._params.values():
            p.requires_grad_(False)  # a local rule: no gradients, and DDP must not wait for any
        for t in self.targets:
            self._check_target(t)
            for role in ("A", "B"):
                if role in t.roles:
                    bounds = self._initial_bounds(self._params[t.roles[role]])
                    if bounds is not None:
                        self.bounds[t.roles[role]] = bounds

    def recording(self, model: nn.Module) -> PlasticRecording:
        from hybridtune.adapters import SpikeRecorder

        needs_inputs = any("A" in t.roles for t in self.targets) or self.post == "layer" or self.rule == "projected"
        pattern = "^(" + "|".join(re.escape(layer) for layer in sorted({t.layer for t in self.targets})) + ")$"
        recorder = SpikeRecorder(model, layers=pattern, inputs=needs_inputs, membrane=False, outputs=False)
        noise = None
        if self.escape:
            noise = EscapeNoise([t for t in self.targets if self._noisy(t)], self.beta, self._generator())
        return PlasticRecording(recorder, noise)

    def observe(self, obs: Observation) -> None:
        if not isinstance(obs.recording, PlasticRecording):
            raise ValueError(f"learner {self.name!r}: observe needs the recording this learner's recording(model) "
                             f"yielded (got {type(obs.recording).__name__}); run the forward inside it")
        start = time.perf_counter()
        records = obs.recording.pop()
        self._record_bytes = max(self._record_bytes, sum(r.nbytes for r in records))
        context = self._begin_batch(obs)
        groups: dict[tuple[int, int], list[Activity]] = {}
        noise = obs.recording.noise
        for rec in records:
            target = self._by_key.get((rec.layer, rec.adapter))
            if target is None:
                continue
            current = noise.pop_current(target_key(target)) if noise is not None else None
            groups.setdefault((id(rec.valid), id(rec.reset)), []).append(self._activity(target, rec, current))
        for acts in groups.values():  # one group per forward: every layer shares the call's masks
            self._observe_group(acts, context)
        self._micro += 1
        self._observe_s += time.perf_counter() - start

    def step(self) -> bool:
        if self._micro == 0:
            self._last = {"steps": float(self.steps)}
            return True
        payload: dict[str, Tensor] = {f"d:{k}": v / self._micro for k, v in self._sums.items()}
        payload.update({f"r:{k}": v / self._micro for k, v in self._rates.items()})
        payload.update({f"x:{k}": v for k, v in self._extra_stats().items()})
        payload = mean_across_ranks(self.accelerator, payload)  # every rank applies the same update
        finite = all(bool(torch.isfinite(v).all()) for k, v in payload.items() if k.startswith("d:"))
        metrics: dict[str, float] = {}
        norms = self._apply(payload) if finite else {}
        if finite:
            self.steps += 1
        self._after_step({k[2:]: v for k, v in payload.items() if k.startswith("x:")}, metrics, applied=finite)
        self._summarise(payload, norms, metrics, finite)
        self.reset()
        return finite


    def reset(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._rates: dict[str, Tensor] = {}
        self._micro = 0
        self._observe_s = 0.0
        self._record_bytes = 0
        self._reset_batch_stats()

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "bounds": {k: v.clone() for k, v in self.bounds.items()},
                "beta": {k: v.clone() for k, v in self.beta.items()}, **self._extra_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.bounds = {k: v.clone() for k, v in state.get("bounds", {}).items()}
        self.beta = {k: v.clone() for k, v in state.get("beta", {}).items()}
        self._load_extra_state(state)

    def metrics(self) -> dict[str, float]:
        return dict(self._last)

    # -- hooks for subclasses -----------------------------------------------------------------------------------
    def _check_target(self, target: FactorTarget) -> None:
        """Refuse targets the rule cannot learn (called once per target at setup); every target is fine here."""
        return None

    def _noisy(self, target: FactorTarget) -> bool:
        return False

    def _begin_batch(self, obs: Observation) -> Any:
        return None

    def _row_weight(self, context: Any) -> Tensor | None:
        """The per-token gate ``w [B, L]`` of the pair terms (None: plain STDP, every pair counts once)."""
        return None

    @abc.abstractmethod
    def _target_jobs(self, act: Activity, context: Any) -> tuple[list[PairJob], dict[str, Tensor]]:
        """The pair jobs of one target and any updates computed directly (by role, ascent, summed over tokens)."""

    def _extra_stats(self) -> dict[str, Tensor]:
        return {}

    def _after_step(self, stats: dict[str, Tensor], metrics: dict[str, float], applied: bool) -> None:
        return None

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        return None

    def _reset_batch_stats(self) -> None:
        return None

    # -- building blocks of the rules -----------------------------------------------------------------------------
    def _activity(self, target: FactorTarget, rec: Any, current: Tensor | None) -> Activity:
        s = rec.bottleneck_spikes.float()
        y = s * rec.threshold.to(s.device) if rec.neuron == "mt" else s
        x = rec.inputs() if rec.input_counts is not None or rec.input_values is not None else None
        return Activity(target, rec, x, s, y, None, current)

    def post_activity(self, act: Activity) -> tuple[Tensor, Tensor | None]:
        """The post-synaptic activity of the adapted layer as ``(left, right)`` with activity ``left @ rightᵀ``.

        ``post: adapter`` — the adapter's output ``s · y Bᵀ``, kept factored (``y``, ``s · B``): r-wide, never
        formed at layer width; ``post: layer`` — the whole layer's output ``x W0ᵀ + b + s · y Bᵀ`` (``right`` None).
        """
        t = act.target
        right = t.scaling * t.lora_B.detach().float()
        if self.post == "adapter":
            return act.y, right
        if act.o is None:
            weight, bias = t.base_linear()
            act.o = act.y @ right.T + F.linear(act.x.to(weight.dtype), weight, bias).float()
        return act.o, None

    @staticmethod
    def _post_times(left: Tensor, right: Tensor | None, matrix: Tensor) -> Tensor:
        """``(left @ rightᵀ) @ matrix`` without forming the wide product."""
        return left @ (right.T @ matrix) if right is not None else left @ matrix

    def _combine(self, target: FactorTarget, role: str) -> Callable[[Tensor, Tensor], Tensor]:
        """``(LTP, LTD) -> ΔW`` with the learner's weight dependence for one factor."""
        if self.weight_dependence == "soft":
            name = target.roles[role]
            w = (target.lora_A if role == "A" else target.lora_B).detach().float()
            lo, hi = self.bounds[name].tolist()
            return lambda ltp, ltd: soft_bound_delta(w, ltp, ltd, a_plus=self.a_plus, a_minus=self.a_minus,
                                                     w_min=lo, w_max=hi, mu=self.mu)
        return lambda ltp, ltd: self.a_plus * ltp - self.a_minus * ltd

    def _stdp_jobs(self, act: Activity, roles: tuple[str, ...]) -> tuple[list[PairJob], dict[str, Tensor]]:
        """Pair STDP jobs for ``roles`` (A / B) under ``rule``, plus the Oja terms (see :mod:`.stdp`)."""
        t, jobs, direct = act.target, [], {}
        mask = act.rec.valid
        if self.rule == "local":
            if "A" in roles:  # input spikes -> bottleneck spikes
                jobs.append(PairJob(t, "A", "post", act.x, act.s, self._combine(t, "A")))
            if "B" in roles:  # bottleneck output -> post-synaptic activity
                left, right = self.post_activity(act)
                jobs.append(PairJob(t, "B", "pre", left, act.y, self._combine(t, "B"), right))
        else:  # full-rank pair STDP (input -> post activity) projected onto the factors: s Bᵀ ΔW, s ΔW Aᵀ
            left, right = self.post_activity(act)
            scale = t.scaling

            def projected(ltp: Tensor, ltd: Tensor) -> Tensor:
                return scale * (self.a_plus * ltp - self.a_minus * ltd)

            if "A" in roles:
                narrow = self._post_times(left, right, t.lora_B.detach().float())
                jobs.append(PairJob(t, "A", "post", act.x, narrow, projected))
            if "B" in roles:
                jobs.append(PairJob(t, "B", "pre", left, act.x @ t.lora_A.detach().float().T, projected, right))
        if self.oja > 0:
            if "A" in roles:
                direct["A"] = self.oja * oja_delta(t.lora_A.detach().float(), act.s, mask=mask) * act.s.shape[0]
            if "B" in roles:
                left, right = self.post_activity(act)
                m = left if mask is None else left * mask[..., None].to(left.dtype)
                gram = m.reshape(-1, m.shape[-1]).T @ left.reshape(-1, left.shape[-1])
                power = ((right @ gram) * right).sum(1) if right is not None else gram.diagonal()
                direct["B"] = -self.oja * power[:, None] * t.lora_B.detach().float()  # −diag(Σ o²) B
        return jobs, direct

    def _observe_group(self, acts: list[Activity], context: Any) -> None:
        rec = acts[0].rec
        bsz, steps = rec.bottleneck_spikes.shape[:2]
        device = acts[0].s.device
        valid = rec.valid.to(device) if rec.valid is not None else None
        reset = rec.reset.to(device) if rec.reset is not None else None
        weight = torch.ones(bsz, steps, device=device) if valid is None else valid.float()
        w = self._row_weight(context)
        if w is not None:
            if w.shape != (bsz, steps):
                raise ValueError(f"reward weights {tuple(w.shape)} do not match the recorded tokens {(bsz, steps)}")
            weight = weight * w.to(device)
        # sums over tokens -> mean over sequences, and with normalize: tokens also over a sequence's real tokens
        n_valid = float(valid.sum()) if valid is not None else float(bsz * steps)
        scale = bsz * max(n_valid / bsz, 1.0) if self.normalize == "tokens" else float(bsz)
        jobs: list[PairJob] = []
        for act in acts:
            target_jobs, direct = self._target_jobs(act, context)
            jobs.extend(target_jobs)
            for role, delta in direct.items():
                self._add(act.target, role, delta / scale)
            self._add_rate(act, valid)
        kw = dict(reset=reset, mask=valid, inclusive=self.inclusive, chunk=self.chunk)
        for side, fwd_decay, rev_decay in (("post", self.decay_post, self.decay_pre),
                                           ("pre", self.decay_pre, self.decay_post)):
            mine = [j for j in jobs if j.narrow_side == side]
            traces = trace_pairs([j.narrow for j in mine], fwd_decay, rev_decay, weight, **kw)
            for job, (fwd, rev) in zip(mine, traces):
                if side == "post":
                    ltp, ltd = narrow_post_terms(job.wide, fwd, rev, weight, valid)
                else:
                    ltp, ltd = narrow_pre_terms(job.wide, fwd, rev, weight, valid)
                    if job.wide_factor is not None:  # wide = left @ rightᵀ: [D, C] = right @ [r', C]
                        ltp, ltd = job.wide_factor @ ltp, job.wide_factor @ ltd
                self._add(job.target, job.role, job.combine(ltp, ltd) / scale)

    def _add(self, target: FactorTarget, role: str, delta: Tensor) -> None:
        name = target.roles[role]
        self._sums[name] = self._sums.get(name, 0.0) + delta.detach()

    def _add_rate(self, act: Activity, valid: Tensor | None) -> None:
        spikes = act.s.abs()
        if valid is not None:
            spikes = spikes * valid[..., None]
        n_tok = float(valid.sum()) if valid is not None else float(spikes.shape[0] * spikes.shape[1])
        key = target_key(act.target)
        self._rates[key] = self._rates.get(key, 0.0) + spikes.sum((0, 1)) / max(n_tok, 1.0)

    def _initial_bounds(self, p: Tensor) -> Tensor | None:
        if self.w_min is not None:
            return torch.tensor([self.w_min, self.w_max], dtype=torch.float32)
        if self.weight_dependence == "soft":  # symmetric bounds around zero, scaled from the initial factor
            peak = float(p.detach().abs().max()) or 1e-3
            return torch.tensor([-self.bound_scale * peak, self.bound_scale * peak], dtype=torch.float32)
        return None

    def _generator(self) -> torch.Generator:
        """Noise generator seeded by (seed, rank, step, micro-batch): resumable without storing generator state."""
        rank = getattr(self.accelerator, "process_index", 0) if self.accelerator is not None else 0
        digest = hashlib.sha256(f"{self.seed}:{rank}:{self.steps}:{self._micro}".encode()).digest()
        device = next((p.device for p in self._params.values()), torch.device("cpu"))
        gen = torch.Generator(device=device)
        gen.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
        return gen

    # -- step internals -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _apply(self, payload: dict[str, Tensor]) -> dict[str, float]:
        norms: dict[str, float] = {}
        for t in self.targets:
            names = [t.roles[r] for r in ("A", "B") if r in t.roles and f"d:{t.roles[r]}" in payload]
            steps = [payload[f"d:{n}"] * self.lr for n in names]
            if steps:
                norm = math.sqrt(sum(float(s.float().pow(2).sum()) for s in steps))
                norms[target_key(t)] = norm
                if self.max_update_norm is not None and norm > self.max_update_norm:
                    steps = [s * (self.max_update_norm / norm) for s in steps]
                for n, s in zip(names, steps):
                    p = self._params[n]
                    p.add_(s.to(device=p.device, dtype=p.dtype))
                    if n in self.bounds:
                        lo, hi = self.bounds[n].tolist()
                        p.copy_(hard_bound(p, lo, hi))
            if "threshold" in t.roles:
                delta = self._threshold_delta(t, payload)
                if delta is not None:
                    p = self._params[t.roles["threshold"]]
                    p.add_(delta.to(device=p.device, dtype=p.dtype))
        return norms

    def _threshold_delta(self, target: FactorTarget, payload: dict[str, Tensor]) -> Tensor | None:
        """Homeostasis: ``log θ += threshold_lr (rate − target_rate)`` (more spikes than wanted raise θ)."""
        rate = payload.get(f"r:{target_key(target)}")
        if self.target_rate is None or rate is None:
            return None
        return self.threshold_lr * (rate - self.target_rate)

    def _summarise(self, payload: dict[str, Tensor], norms: dict[str, float], metrics: dict[str, float],
                   applied: bool) -> None:
        rates = [payload[f"r:{target_key(t)}"] for t in self.targets if f"r:{target_key(t)}" in payload]
        if rates:
            flat = torch.cat([r.flatten().float().cpu() for r in rates])
            per_layer = torch.stack([r.float().mean().cpu() for r in rates])
            metrics.update({"rate/mean": float(flat.mean()), "rate/min_layer": float(per_layer.min()),
                            "rate/max_layer": float(per_layer.max()), "silent_share": float((flat == 0).float().mean())})
        if norms:
            values = torch.tensor(list(norms.values()), dtype=torch.float64)
            metrics.update({"update_norm/mean": float(values.mean()), "update_norm/max": float(values.max()),
                            "update_norm/total": float(values.pow(2).sum().sqrt())})
            if self.max_update_norm is not None:
                metrics["clipped_share"] = float((values > self.max_update_norm).double().mean())
            if self.log_layers:
                metrics.update({f"update_norm/{k}": v for k, v in norms.items()})
        metrics.update({"steps": float(self.steps), "applied": float(applied), "observe_s": self._observe_s,
                        "record_mb": self._record_bytes / 2**20})
        if torch.cuda.is_available():  # the process's peak since the caller last reset it (a library never resets it)
            metrics["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        self._last = metrics
