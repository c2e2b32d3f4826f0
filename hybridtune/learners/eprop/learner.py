"""The ``eprop`` learner: a three-factor rule with a broadcast learning signal, no backward through the frozen base.

Per micro-batch (see :mod:`hybridtune.learners.protocol` for the call order):

1. ``recording(model)`` records, for the owned layers only, the input spikes and bottleneck spikes (the
   :class:`~hybridtune.adapters.SpikeRecorder`), the residual stream entering the final norm
   (:class:`~.top.TopCapture`), and whatever the feedback path reads (``one_hop``: the gate / up activations);
2. ``observe`` computes the top error ``g = ∂loss/∂h_top`` by one backward through the final norm and ``lm_head``
   (:func:`~.top.top_error`), hands it to each layer through the feedback path (:mod:`.feedback`) and turns it into
   gradient estimates of ``lora_A``, ``lora_B`` and, when owned, the neuron's threshold and LIF decay
   (:func:`~.rule.eprop_factor_grads`: bottleneck pseudo-derivative × presynaptic trace × learning signal);
3. ``step`` divides the summed estimates by the number of predicted tokens, averages them across ranks (so every
   replica applies the same update), clips their global norm and hands them to a torch optimizer (AdamW by
   default) as ``.grad`` — ``ΔW = −lr Σ_t L[t] e[t]`` for SGD, the same direction rescaled per coordinate for Adam.
   Each block's parameters get ``lr · block_decay ** k`` (``k`` blocks below the top) and the blocks below
   ``top_blocks`` none (:mod:`hybridtune.learners.depth`): the top error is a good signal only near the top, and Adam moves every
   coordinate by about ``lr`` whatever the quality of its estimate.

Memory: the records (int8 spike counts, r-wide bottleneck spikes), one ``[B, L, D]`` hidden state and a chunk of
logits; no activation graph of the base. Owned parameters get ``requires_grad=False``.

Example:
    >>> import torch
    >>> from hybridtune.testing import tiny_model, tiny_batch
    >>> from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
    >>> from hybridtune.learners import SetupContext, Observation
    >>> pm = get_spiking_peft_model(tiny_model("llama"), spiking_lora_config(r=4, neuron="lif", threshold=0.02,
    ...                                                                    target_modules=["down_proj"]))
    >>> owned = {n: p for n, p in pm.named_parameters() if "lora_" in n}
    >>> ep = EpropLearner(params="lora_", lr=1e-3)
    >>> ep.setup(SetupContext(model=pm, accelerator=None, params=owned, total_steps=1))
    >>> batch = {**tiny_batch(), "labels": tiny_batch()["input_ids"]}
    >>> with torch.no_grad(), ep.recording(pm) as rec:
    ...     out = pm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    ...     ep.observe(Observation(batch=batch, token_nll=torch.zeros(2, 15), recording=rec))
    >>> ep.step(), ep.metrics()["grad_norm"] > 0
    (True, True)
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hybridtune.learners.depth import count_blocks, depth_weights
from hybridtune.learners.eprop.feedback import FeedbackPath, feedback_path
from hybridtune.learners.eprop.rule import eprop_factor_grads
from hybridtune.learners.eprop.top import ERROR_DTYPES, TopCapture, final_norm, linear_head_weight, top_error
from hybridtune.learners.plasticity.targets import FactorTarget, find_targets
from hybridtune.learners.protocol import Observation, OwnsParameters, ParamSpec, SetupContext, mean_across_ranks
from hybridtune.learners.surrogate import build_scheduler, resolve_optimizer

__all__ = ["EpropLearner", "EpropRecording", "TOP_BLOCKS", "BLOCK_DECAY"]

# the depth profile's defaults (see hybridtune.learners.depth). Measured on the default model (30 blocks; one_hop on v/o/up/down_proj,
# r = 8, lr 1e-3, seed 0, 28 steps x 4 x 128 python-docs tokens, held-out perplexity from 26.20 without adapters):
# every block learning diverged (2110.97); the top 10 reached 23.84, the top 6 23.32 (23.36 at lr 2e-3), the top 4
# 23.51. One seed each, so 4 and 6 are within noise of each other; 6 is the best measured.
TOP_BLOCKS: int | None = 6
BLOCK_DECAY = 1.0


class EpropRecording(ExitStack):
    """What ``EpropLearner.recording`` yields: the spike recorder, the top capture and the feedback path's capture."""

    def __init__(self, recorder: Any, top: TopCapture, extra: Any):
        super().__init__()
        self.recorder, self.top, self.extra = recorder, top, extra

    def __enter__(self) -> EpropRecording:
        super().__enter__()
        try:
            for part in (self.recorder, self.top, self.extra):
                if part is not None:
                    self.enter_context(part)
        except Exception:
            self.close()  # a failed entry detaches what was attached
            raise
        return self


class EpropLearner(OwnsParameters):
    """e-prop on spiking LoRA factors (see the module docstring).

    Args:
        params: which adapter parameters it owns (``lora_A``, ``lora_B``, neuron thresholds / LIF decays).
        lr: learning rate of the optimizer.
        feedback: the feedback path, ``one_hop`` (default, the best measured) | ``residual`` | ``random`` (or a name registered with
            :func:`~hybridtune.learners.eprop.feedback.register_feedback_path`).
        optimizer, optimizer_kwargs, weight_decay: the torch optimizer that applies the estimates (default AdamW).
        scheduler, warmup_steps: the LR schedule (``None``: the trainer's defaults).
        max_grad_norm: clip the global norm of the estimate (``"default"``: the trainer's value; None: off).
        top_blocks: only the adapters of the top ``top_blocks`` decoder blocks learn (None: all); the blocks below
            keep their initial values and their estimates are never computed (see :mod:`hybridtune.learners.depth`: the top error says
            little about the gradient far below the top).
        block_decay: the learning rate of a block ``k`` blocks below the top is ``lr · block_decay ** k``.
        seed: seeds the ``random`` feedback matrices.
        feedback_from: a saved adapter directory whose ``random`` feedback matrices to reuse instead of drawing new
            ones (:meth:`save_pretrained` writes them beside the adapter).
        top_chunk: tokens per chunk of the norm + ``lm_head`` backward (bounds the logits' memory).
        error_dtype: ``float32`` (default) or ``bfloat16``: the precision of the one GEMM that takes the error back
            through ``lm_head`` (``[tokens, vocab] @ [vocab, hidden]``, most of the learner's own time on a small
            model; bfloat16 halves it on CPUs with bf16 units; on the default model the estimate's cosine with the
            true gradient did not change in the third decimal).
    """

    uses_backward = False

    def __init__(self, params: ParamSpec = "all", lr: float = 1e-3, *, feedback: str = "one_hop",
                 optimizer: str = "AdamW", optimizer_kwargs: Mapping[str, Any] | None = None,
                 weight_decay: float | None = None, scheduler: str | None = None, warmup_steps: int | None = None,
                 max_grad_norm: float | None | str = "default", top_blocks: int | None = TOP_BLOCKS,
                 block_decay: float = BLOCK_DECAY, seed: int = 0, top_chunk: int = 256,
                 error_dtype: str = "float32", feedback_from: str | os.PathLike | None = None, name: str = "eprop"):
        if lr <= 0:
            raise ValueError(f"lr: must be > 0 (got {lr})")
        if top_blocks is not None and top_blocks < 1:
            raise ValueError(f"top_blocks: must be >= 1 block, or None for all (got {top_blocks})")
        if not 0 < block_decay <= 1:
            raise ValueError(f"block_decay: must be in (0, 1] (got {block_decay})")
        if top_chunk < 1:
            raise ValueError(f"top_chunk: must be >= 1 token (got {top_chunk})")
        if error_dtype not in ERROR_DTYPES:
            raise ValueError(f"error_dtype: {error_dtype!r} is not one of {', '.join(ERROR_DTYPES)}")
        resolve_optimizer(optimizer)
        self.feedback: FeedbackPath = feedback_path(feedback)
        if feedback_from is not None and not hasattr(self.feedback, "load_pretrained"):
            raise ValueError(f"feedback_from: the {feedback!r} feedback path has nothing to load (it is fixed by the "
                             f"model); only feedback: random saves matrices with the adapter")
        self.feedback_from = feedback_from
        self.name, self.params, self.lr = name, params, float(lr)
        self.optimizer_name, self.optimizer_kwargs = optimizer, dict(optimizer_kwargs or {})
        self.weight_decay, self.scheduler_name, self.warmup_steps = weight_decay, scheduler, warmup_steps
        self.max_grad_norm, self.seed, self.top_chunk = max_grad_norm, int(seed), int(top_chunk)
        self.error_dtype = error_dtype
        self.top_blocks, self.block_decay = top_blocks, float(block_decay)
        self.weights: dict[str, float] = {}
        self.model: nn.Module | None = None
        self.accelerator = self.optimizer = self.scheduler = None
        self._norm = self._head = None  # set by setup
        self._keep_logits = False
        self.targets: list[FactorTarget] = []
        self._params: dict[str, nn.Parameter] = {}
        self._by_key: dict[tuple[str, str], FactorTarget] = {}
        self.steps = 0
        self._last: dict[str, float] = {}
        self.reset()

    # -- protocol -------------------------------------------------------------------------------------------------
    def setup(self, ctx: SetupContext) -> None:
        self.model, self.accelerator, self._params = ctx.model, ctx.accelerator, dict(ctx.params)
        self.targets = find_targets(ctx.model, self._params, f"learner {self.name!r}")
        self.weights = depth_weights(self._params, count_blocks(ctx.model), self.top_blocks, self.block_decay)
        if not any(self.weights.values()):
            raise ValueError(f"learner {self.name!r}: top_blocks={self.top_blocks} leaves none of its "
                             f"{len(self._params)} parameters a learning rate; raise top_blocks or set it to None")
        # only layers with a parameter that learns are recorded and get estimates
        self._by_key = {t.key: t for t in self.targets if any(self.weights[n] > 0 for n in t.roles.values())}
        for p in self._params.values():
            p.requires_grad_(False)  # a local rule: DDP must not wait for gradients; .grad is set by hand
        head = ctx.model.get_output_embeddings()
        hidden = int(head.weight.shape[1])
        # the top of the model, found once (a module walk per step costs tens of milliseconds on 30 blocks)
        self._norm, self._head = final_norm(ctx.model), head
        self._keep_logits = linear_head_weight(ctx.model) is not None
        learning = list(self._by_key.values())
        if self.feedback_from is not None:
            self.feedback.load_pretrained(self.feedback_from, learning, hidden)
        self.feedback.prepare(ctx.model, learning, hidden, self.seed)
        d = ctx.defaults
        wd = d.weight_decay if self.weight_decay is None else self.weight_decay
        if self.max_grad_norm == "default":
            self.max_grad_norm = d.max_grad_norm
        groups: dict[float, list[nn.Parameter]] = {}
        for name, p in self._params.items():
            if self.weights[name] > 0:
                groups.setdefault(self.weights[name], []).append(p)
        self.optimizer = resolve_optimizer(self.optimizer_name)(
            [{"params": ps, "lr": self.lr * w} for w, ps in sorted(groups.items(), reverse=True)], lr=self.lr,
            weight_decay=wd, **self.optimizer_kwargs)
        warmup = d.warmup_steps if self.warmup_steps is None else self.warmup_steps
        self.scheduler = build_scheduler(self.scheduler_name or d.scheduler, self.optimizer, warmup, ctx.total_steps)

    def learning_parameters(self) -> dict[str, nn.Parameter]:
        """The owned parameters with a learning rate (the blocks below ``top_blocks`` keep their initial values)."""
        return {n: p for n, p in self._params.items() if self.weights.get(n, 0.0) > 0}

    def recording(self, model: nn.Module) -> EpropRecording:
        from hybridtune.adapters import SpikeRecorder

        learning = list(self._by_key.values())
        pattern = "^(" + "|".join(re.escape(layer) for layer in sorted({t.layer for t in learning})) + ")$"
        needs_inputs = any(r in t.roles for t in learning for r in ("A", "threshold", "decay"))
        recorder = SpikeRecorder(model, layers=pattern, inputs=needs_inputs, membrane=False, outputs=False)
        # the forward's logits are kept only where the error can be taken from them (a plain linear head)
        keep = self._keep_logits if self._head is not None else linear_head_weight(model) is not None
        top = TopCapture(model, keep_logits=keep, norm=self._norm, head=self._head)
        return EpropRecording(recorder, top, self.feedback.capture(model))

    def observe(self, obs: Observation) -> None:
        if not isinstance(obs.recording, EpropRecording):
            raise ValueError(f"learner {self.name!r}: observe needs the recording this learner's recording(model) "
                             f"yielded (got {type(obs.recording).__name__}); run the forward inside it")
        start = time.perf_counter()
        rec = obs.recording
        records = rec.recorder.pop()
        hidden, logits = rec.top.pop()
        g, n_targets = top_error(self.model, hidden, obs.batch["labels"], self.top_chunk, logits, self._norm, self._head,
                                 ERROR_DTYPES[self.error_dtype])
        begin = getattr(self.feedback, "begin_batch", None)
        if begin is not None:
            begin()
        for record in records:
            target = self._by_key.get((record.layer, record.adapter))
            if target is not None:
                self._accumulate(target, record, g)
        self._targets += float(n_targets)
        self._micro += 1
        self._observe_s += time.perf_counter() - start

    def _accumulate(self, t: FactorTarget, record: Any, g: Tensor) -> None:
        neuron = t.neuron
        strategy = neuron.strategy
        x = record.inputs() if (record.input_counts is not None or record.input_values is not None) else None
        # no padding mask on the signal: the top error is already zero where a token predicts nothing, and a padded
        # position that does predict a real token (left padding) is in the loss, so its error counts
        signal = self.feedback.signal(t, g.to(record.bottleneck_spikes.device))
        theta, decay = t.threshold().float(), t.decay().float()
        if x is None:  # only lora_B owned: the input is not needed, a zero stand-in keeps one code path
            x = torch.zeros(*signal.shape[:-1], t.lora_A.shape[1], device=signal.device)
        grads = eprop_factor_grads(x, record.bottleneck_spikes, t.lora_A.detach(), t.lora_B.detach(), t.scaling,
                                   signal, t.kind, theta, decay, record.reset, None, t.max_spikes,
                                   strategy.surrogate, float(strategy.slope))
        chain = {"A": grads["A"], "B": grads["B"],
                 "threshold": grads["threshold"] * theta,  # the parameter is log θ
                 "decay": grads["decay"] * decay * (1 - decay)}  # the parameter is logit d
        for role, name in t.roles.items():
            if self.weights[name] == 0:
                continue
            self._sums[name] = self._sums.get(name, 0.0) + chain[role].detach()

    def step(self) -> bool:
        if self._micro == 0:
            self._last = {"steps": float(self.steps)}
            return True
        payload = {f"g:{k}": v for k, v in self._sums.items()}
        payload["n"] = torch.tensor(self._targets, device=next(iter(self._sums.values())).device)
        payload = mean_across_ranks(self.accelerator, payload)  # mean of sums / mean of counts = global mean
        count = max(float(payload.pop("n")), 1.0)
        grads = {k[2:]: v / count for k, v in payload.items()}
        norm = float(torch.stack([v.float().pow(2).sum() for v in grads.values()]).sum().sqrt())
        finite = bool(torch.isfinite(torch.tensor(norm)))
        lr = self.optimizer.param_groups[0]["lr"]  # the top block's (groups are sorted by weight)
        if finite:
            scale = 1.0
            if self.max_grad_norm is not None and norm > self.max_grad_norm:
                scale = self.max_grad_norm / (norm + 1e-6)
            before = {n: p.detach().clone() for n, p in self._params.items()}
            for name, p in self._params.items():
                p.grad = (grads[name] * scale).to(dtype=p.dtype) if name in grads else None
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            update = sum(float((p.detach() - before[n]).float().pow(2).sum()) for n, p in self._params.items())
            self.steps += 1
        else:
            update = 0.0
        self._last = {"lr": lr, "grad_norm": norm, "update_norm": update ** 0.5, "applied": float(finite),
                      "steps": float(self.steps), "observe_s": self._observe_s, "tokens": count}
        self.reset()
        return finite


    def reset(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._targets = 0.0
        self._micro = 0
        self._observe_s = 0.0

    def save_pretrained(self, directory: str | os.PathLike) -> Path | None:
        """Write what the adapter was trained with beside it (``random``: the feedback matrices); None if nothing."""
        save = getattr(self.feedback, "save_pretrained", None)
        return save(directory) if save is not None else None

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "feedback": self.feedback.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.feedback.load_state_dict(state.get("feedback", {}))

    def metrics(self) -> dict[str, float]:
        return dict(self._last)

    def __repr__(self) -> str:
        return (f"EpropLearner(params={self.params!r}, lr={self.lr}, feedback={self.feedback.name!r}, "
                f"top_blocks={self.top_blocks}, block_decay={self.block_decay}, optimizer={self.optimizer_name!r})")
