"""The ``stdp`` learner: pair-based, trace-based STDP on spiking LoRA factors, tokens as time, no backward pass.

For each owned adapter of a ``SpikingLoraLinear`` (``W_eff = W0 + s · B · spike(A x)``) and each micro-batch, the
recorded spikes give a whole-sequence update by two GEMMs over N = batch x tokens (:mod:`hybridtune.learners.plasticity`):

* ``rule: local`` (default) — the bottleneck is its own population. ``ΔA = A+ S_hᵀ X̄_in − A− H̄ᵀ X_in`` (input
  spikes -> bottleneck spikes); ``ΔB`` likewise from the bottleneck output (``s`` or ``s·θ`` for ``mt``) to the
  post-synaptic activity (``post: layer``, the default: the whole layer's output; ``post: adapter``: the adapter's
  own output, which keeps ``lora_B`` in the column space of its initialisation -- see ``post`` below).
* ``rule: projected`` — the full-rank update ``ΔW = A+ Oᵀ X̄ − A− Ōᵀ X`` (input -> post activity O) projected onto
  the factors without forming ``out x in``: ``ΔA = s Bᵀ ΔW``, ``ΔB = s ΔW Aᵀ`` (needs ``B ≠ 0``:
  ``adapter.init_b_std > 0``).

Traces ``x[t] = λ x[t-1] + s[t]`` (``λ = exp(-1/τ)``) restart at document starts and after padding and skip padded
tokens; updates are a mean over sequences and (``normalize: tokens``) over each sequence's real tokens, averaged over
micro-batches and across ranks, scaled by ``lr``, clipped per layer (``max_update_norm``) and applied in place.
Weight dependence: ``additive`` (hard bounds with ``w_min`` / ``w_max``) or ``soft`` (multiplicative,
``A+ (w_max − w)^μ`` / ``A− (w − w_min)^μ``; bounds default to ± ``bound_scale`` x the factor's initial peak).
``oja > 0`` adds ``−oja · diag(Σ y²) W`` per factor. Owned neuron thresholds follow a homeostatic rule when
``target_rate`` is set (``log θ += threshold_lr (rate − target_rate)``) and stay fixed otherwise; owned LIF decays stay
fixed.

Example:
    >>> import torch
    >>> from hybridtune.testing import tiny_model, tiny_batch
    >>> from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
    >>> from hybridtune.learners import SetupContext, Observation
    >>> pm = get_spiking_peft_model(tiny_model("llama"), spiking_lora_config(r=4, neuron="lif", threshold=0.02,
    ...                                                                    target_modules=["q_proj"]))
    >>> owned = {n: p for n, p in pm.named_parameters() if "lora_A" in n}
    >>> stdp = STDPLearner(params="lora_A", lr=1e-2, tau_pre=4, tau_post=4)
    >>> stdp.setup(SetupContext(model=pm, accelerator=None, params=owned, total_steps=1))
    >>> batch = tiny_batch()
    >>> with torch.no_grad(), stdp.recording(pm) as rec:
    ...     out = pm(**batch)
    ...     stdp.observe(Observation(batch=batch, token_nll=torch.zeros(2, 15), recording=rec))
    >>> stdp.step(), sorted(k for k in stdp.metrics() if k.startswith("update_norm"))
    (True, ['update_norm/max', 'update_norm/mean', 'update_norm/total'])
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from hybridtune.learners.plasticity.learner import Activity, PairJob, PlasticLearner
from hybridtune.learners.protocol import ParamSpec

__all__ = ["STDPLearner"]


class STDPLearner(PlasticLearner):
    """Pair STDP on spiking LoRA factors (see the module docstring).

    Args:
        params: which adapter parameters it owns (``lora_A``, ``lora_B``, neuron thresholds / decays).
        lr: learning rate (the update is ``lr · ΔW``).
        tau_pre, tau_post: trace time constants in tokens (LTP window, LTD window).
        a_plus, a_minus: potentiation / depression amplitudes.
        inclusive: traces include the current token (same-token pairs count in both terms) or not.
        rule: ``local`` or ``projected``.
        post: the post-synaptic activity of ``B`` (and of ``rule: projected``): ``layer`` (default, the whole
            layer's output ``W0 x + s B y``) or ``adapter`` (the adapter's own output ``s B y``). With ``adapter``
            the ``B`` update is ``B M`` for an ``r x r`` matrix ``M``, so ``lora_B`` never leaves the column space of
            its initialisation (with equal time constants and amplitudes ``M`` is a pure rotation): the adapter
            cannot learn new output directions.
        weight_dependence: ``additive`` or ``soft``; w_min, w_max, bound_scale, mu: the bounds and soft exponent.
        oja: rate of the Oja normalisation term (0 = off).
        max_update_norm: per-layer clip of ``‖lr · (ΔA, ΔB)‖`` (null = off).
        normalize: ``tokens`` (per-token mean) or ``sequences`` (sum over tokens, mean over sequences).
        target_rate, threshold_lr: homeostatic thresholds (spikes per neuron per token; null = fixed thresholds).
        chunk: trace-scan chunk length (default ≈ sqrt(L)); log_layers: log every layer's update norm.
    """

    def __init__(self, params: ParamSpec = "all", lr: float = 1e-3, name: str = "stdp", post: str = "layer",
                 **options: Any):
        super().__init__(params, lr, name=name, post=post, **options)

    def _target_jobs(self, act: Activity, context: Any) -> tuple[list[PairJob], dict[str, Tensor]]:
        return self._stdp_jobs(act, tuple(r for r in ("A", "B") if r in act.target.roles))

    def __repr__(self) -> str:
        return (f"STDPLearner(params={self.params!r}, lr={self.lr}, tau_pre={self.tau_pre}, tau_post={self.tau_post}, "
                f"rule={self.rule!r}, weight_dependence={self.weight_dependence!r})")
