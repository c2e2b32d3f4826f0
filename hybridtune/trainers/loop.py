"""The training loop: one explicit Accelerate loop that drives any set of learners over packed token blocks.

Per optimizer step the trainer takes ``grad_accum`` micro-batches (positions from :mod:`.sampler`), counts the
predicted tokens of all of them on all ranks first, and scales each micro-batch's *summed* token loss by that global
count, so k micro-batches give exactly the gradient of one k-times-larger batch (not a mean of means). Non-final
micro-batches run under ``accelerator.no_sync``. Learners that asked for spike recording get it around the forward;
every learner observes every micro-batch; at the boundary a non-finite loss skips the step for all learners
(``reset``), otherwise each learner's ``step`` applies its update and may itself refuse a non-finite gradient.
Skipped steps are counted and logged (``train/skipped_steps``).

When no parameter needs a gradient (purely local learners such as STDP), the model is not wrapped in DDP (which
refuses such a module); the learners average their updates across ranks themselves, so replicas stay identical.

``trainer.sharding: fsdp`` (several processes) shards the frozen base with torch's FSDP2 (:mod:`.memory`) instead of
wrapping the model in DDP: each rank stores 1 / N of the base, learner-owned parameters stay whole on every rank, and
the loop averages their gradients after the last micro-batch (what DDP would have done). Every rank then runs the
same number of forwards (FSDP gathers each block's weights from all ranks), in training and in evaluation.
``trainer.gradient_checkpointing`` holds during :meth:`Trainer.fit` only; the model's own setting is restored after.

Reliability: ``fit`` on a run that already finished (resumed after its last step) changes nothing and returns the
report on disk, or completes a report that a kill prevented; under :func:`.interrupt.checkpoint_on_signals`
(the CLI) SIGINT / SIGTERM end the loop at the next step boundary with a checkpoint.

The class is meant to be reused (the continual trainer builds on it): override ``micro_batch``, ``forward`` or
``evaluate``, or pass :class:`TrainerCallback` objects; ``should_stop`` ends ``fit`` after the current step.

Example:
    >>> import tempfile
    >>> from peft import LoraConfig, get_peft_model
    >>> from hybridtune.config import RunConfig
    >>> from hybridtune.testing import tiny_model, tiny_batch
    >>> model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    >>> cfg = RunConfig(); cfg.trainer.output_dir = tempfile.mkdtemp() + "/run"
    >>> cfg.trainer.steps, cfg.trainer.batch_size, cfg.tracking.backend = 3, 2, "none"
    >>> cfg.trainer.eval_every = cfg.trainer.save_every = 3
    >>> data = tiny_batch(batch=8, seq=16)
    >>> result = Trainer(model, cfg, train_data=data, eval_data=data).fit()
    >>> result["steps"], result["tokens_trained"]
    (3, 96)
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..adapters import model_call_keys
from ..config import RunConfig
from ..config_schema import ConfigError
from ..learners import (
    Learner,
    Observation,
    OptimDefaults,
    ParameterGroupError,
    SetupContext,
    UnknownLearnerError,
    assign_parameters,
    learner,
)
from ..neurons import reset_state
from ..perplexity import model_nll
from ..sharding import average_gradients
from ..tracking import NullTracker, flatten, make_tracker, read_metrics
from ..tracking.base import keep_rows
from . import interrupt
from .checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from .evaluation import BatchContext, combine_contexts, count_targets, evaluate_perplexity
from .memory import gradient_checkpointing, shard_for_training
from .report import read_report, write_report
from .rundir import RunDir, open_run_dir
from .sampler import BlockSampler, DataTooSmallError, as_tensors, select


class TrainerCallback:
    """Hooks around the loop; override what you need. Set ``trainer.should_stop = True`` to end early."""

    def on_train_begin(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None: ...

    def on_evaluate(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None: ...

    def on_save(self, trainer: Trainer, step: int, path: Path) -> None: ...

    def on_train_end(self, trainer: Trainer, result: dict[str, Any]) -> None:
        """Called on every rank before ``report.json`` is written; entries added to ``result`` are reported."""


@dataclass
class TrainState:
    """Everything about the loop's position that a checkpoint must restore."""

    step: int = 0
    cursor: int = 0  # global micro-batches consumed (the data position)
    tokens: int = 0  # real input tokens seen, all ranks
    skipped: int = 0
    best_eval: float | None = None
    evals_since_best: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    world_size: int = 1
    wandb_id: str | None = None
    metrics_rows: int | None = None  # lines of metrics.jsonl when saved: resume drops any logged after the save


def make_accelerator(cfg: RunConfig):
    """An ``Accelerator`` for the run (mixed precision from ``trainer.mixed_precision``).

    DDP's per-forward buffer broadcast is switched off: the base model is frozen and identical on every rank, and
    learner state lives in the learners, not in module buffers (docs/architecture.md, learner state).
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs

    return Accelerator(mixed_precision=cfg.trainer.mixed_precision,
                       kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])


def process_state():
    """Accelerate's process state as :func:`make_accelerator` creates it (``ACCELERATE_USE_CPU`` honoured), for code
    that asks "which rank am I" before the trainer starts: a bare ``PartialState()`` under ``ACCELERATE_USE_CPU=1
    torchrun`` would pin a single-process state and every rank would train alone."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def apply_op_backend(cfg: RunConfig) -> None:
    """Select the ``spike_lora`` backend the config asks for (``ops.backend``; None: the environment's, else auto)
    and resolve it now, at trainer start."""
    from .. import ops

    try:
        if cfg.ops.backend is None:
            ops.activate()
            return
        ops.set_backend(cfg.ops.backend)
    except Exception as exc:  # cuda asked for where it cannot load: a config problem, never a silent fallback
        raise ConfigError(f"got {cfg.ops.backend!r}, which cannot be used here: {exc}", "ops.backend") from None


def build_learners(cfg: RunConfig) -> list[Learner]:
    """The learners of ``cfg.learners`` (each spec's ``options`` become factory keyword arguments)."""
    out = []
    for i, spec in enumerate(cfg.learners):
        try:
            out.append(learner(spec.name, params=spec.params, lr=spec.lr, **spec.options))
        except UnknownLearnerError as exc:
            raise ConfigError(str(exc), f"learners[{i}].name") from None
        except ConfigError as exc:  # a typed option (learners.options_type): the key is options.<name>
            raise ConfigError(exc.detail, f"learners[{i}].{exc.key}" if exc.key else f"learners[{i}]") from None
        except TypeError as exc:  # an option the factory does not take
            raise ConfigError(f"{exc}; check the learner's documented arguments", f"learners[{i}].options") from None
        except ValueError as exc:
            raise ConfigError(str(exc), f"learners[{i}]") from None
    return out


def _labels(learners: Sequence[Learner]) -> list[str]:
    names = [getattr(lr, "name", type(lr).__name__) for lr in learners]
    return [n if names.count(n) == 1 else f"{n}{i}" for i, n in enumerate(names)]


class Trainer:
    """Train ``model``'s adapter parameters with ``learners`` on ``train_data`` (see the module docstring).

    Args:
        model: a peft model (spiking LoRA or plain LoRA); its trainable parameters are split among the learners.
        config: the run config (``trainer``, ``tracking`` and, when ``learners`` is None, ``learners`` are used).
        learners: learner objects (default: built from ``config.learners``).
        train_data / eval_data: ``PackedBlocks`` or a mapping of [N, L] tensors (``input_ids``, optional
            ``attention_mask``, ``labels``, ``doc_start``). Without ``train_data`` both are built from
            ``config.data`` with ``tokenizer`` (default: ``load_tokenizer(config.model.name)``).
        accelerator: reuse an ``Accelerator`` (default: :func:`make_accelerator`).
        batch_context: ``batch -> context manager`` entered around every forward (training and evaluation).
        run_dir: an already opened output directory (:func:`open_run_dir`); default: opened by :meth:`fit`.
        extra_metrics: ``model -> context manager`` entered around each evaluation whose value, read after the
            evaluation through ``dict(value)`` or its ``as_dict()``, is logged under ``eval/`` (spike counts).
        model_keys: batch entries passed to the model (default: ``input_ids``, ``attention_mask``, plus
            ``doc_start`` for a spiking peft model, whose stateful neurons reset at document starts).
    """

    def __init__(self, model: torch.nn.Module, config: RunConfig | None = None, *,
                 learners: Sequence[Learner] | None = None, train_data: Any = None, eval_data: Any = None,
                 accelerator: Any = None, callbacks: Sequence[TrainerCallback] = (),
                 batch_context: BatchContext | None = None, run_dir: RunDir | None = None,
                 extra_metrics: Any = None, model_keys: Sequence[str] | None = None, tokenizer: Any = None):
        self.cfg = config if config is not None else RunConfig()
        apply_op_backend(self.cfg)
        if train_data is None:
            from ..models import load_tokenizer
            from .data import build_data

            train_data, held, _ = build_data(self.cfg.data, tokenizer or load_tokenizer(self.cfg.model.name))
            eval_data = held if eval_data is None else eval_data
        t = self.cfg.trainer
        self.accelerator = accelerator if accelerator is not None else make_accelerator(self.cfg)
        acc = self.accelerator
        self.learners = list(learners) if learners is not None else build_learners(self.cfg)
        self.labels = _labels(self.learners)
        self.callbacks = list(callbacks)
        self.batch_context = batch_context
        self.extra_metrics = extra_metrics
        self.run_dir = run_dir
        self.state = TrainState(world_size=acc.num_processes)
        self.should_stop = False
        self.report_title = ""
        self.tracker: Any = NullTracker()

        model.to(acc.device)
        try:
            groups = assign_parameters(model, self.learners)
        except ParameterGroupError as exc:
            raise ConfigError(str(exc), "learners") from None
        self.owned = {name: p for g in groups for name, p in g.items()}
        if acc.num_processes > 1:  # every replica starts from rank 0's values (DDP only covers what requires grad)
            for p in self.owned.values():
                torch.distributed.broadcast(p.data, src=0)
        defaults = OptimDefaults(t.scheduler, t.warmup_steps, t.weight_decay, t.max_grad_norm)
        for lr, group in zip(self.learners, groups):  # before DDP wraps: learners set requires_grad here
            lr.setup(SetupContext(model=model, accelerator=acc, params=group, total_steps=t.steps,
                                  defaults=defaults))
        self.backprop = any(lr.uses_backward for lr in self.learners)
        # after setup (learners may swap parameters) and before any wrapper: the owned parameters stay whole
        self.sharded = t.sharding == "fsdp" and shard_for_training(model, self.owned.values(), acc.num_processes)
        if t.sharding == "fsdp" and not self.sharded:
            acc.print("trainer.sharding: fsdp on one process: nothing to shard over, the model stays whole")
        if self.sharded or (acc.num_processes > 1 and not any(p.requires_grad for p in model.parameters())):
            # sharded: the loop averages the owned gradients itself; purely local learners: nothing for DDP to
            # all-reduce (it refuses such a module), the learners average their updates across ranks themselves
            self.model = acc.prepare_model(model, evaluation_mode=True)
        else:
            self.model = acc.prepare(model)
        self.train_tensors = as_tensors(train_data)
        self.eval_tensors = as_tensors(eval_data) if eval_data is not None else None
        self.model_keys = tuple(model_keys) if model_keys is not None else model_call_keys(model)
        try:
            self.sampler = BlockSampler(self.train_tensors["input_ids"].shape[0], t.batch_size, acc.num_processes,
                                        acc.process_index, t.seed)
        except DataTooSmallError as exc:
            raise ConfigError(str(exc), "trainer.batch_size") from None

    # -- pieces a subclass may override -------------------------------------------------------------------------
    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def micro_batch(self, cursor: int) -> dict[str, torch.Tensor]:
        """This rank's blocks of global micro-batch ``cursor``, on the device."""
        batch = select(self.train_tensors, self.sampler.indices(cursor))
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    def _reset_then(self, batch: Mapping[str, torch.Tensor]):
        reset_state(self.unwrapped)  # blocks are independent sequences: stateful neurons start from rest
        return nullcontext()

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per-token NLL ``[B, L-1]`` of one micro-batch (with autograd when some learner backpropagates)."""
        context = combine_contexts(self._reset_then, self.batch_context)
        with torch.set_grad_enabled(self.backprop), context(batch):
            nll, _ = model_nll(self.model, batch, self.model_keys)
        return nll

    def evaluate(self, data: Any = None) -> dict[str, float]:
        """Held-out perplexity (plus ``extra_metrics``) of the current adapters; identical on every rank."""
        tensors = as_tensors(data) if data is not None else self.eval_tensors
        if tensors is None:
            raise ValueError("no evaluation data: pass eval_data to the Trainer or data to evaluate()")
        tensors = {k: v.to(self.accelerator.device) for k, v in tensors.items()}
        context = combine_contexts(self._reset_then, self.batch_context)
        probe = self.extra_metrics(self.unwrapped) if self.extra_metrics is not None else nullcontext()
        with probe as measured:
            result = evaluate_perplexity(self.unwrapped, tensors, self.cfg.trainer.batch_size, self.accelerator,
                                         context, self.model_keys, lockstep=self.sharded)
        metrics = {"eval/ppl": result["ppl"], "eval/loss": result["nll"], "eval/tokens": result["tokens"]}
        if measured is not None:
            values = measured.as_dict() if hasattr(measured, "as_dict") else dict(measured)
            metrics.update({f"eval/{k}": v for k, v in values.items() if isinstance(v, (int, float))})
        return metrics

    # -- one optimizer step ---------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        acc, t = self.accelerator, self.cfg.trainer
        world = acc.num_processes
        batches = [self.micro_batch(self.state.cursor + i) for i in range(t.grad_accum)]
        self.state.cursor += t.grad_accum
        counts = torch.tensor([sum(count_targets(b["labels"]) for b in batches),
                               sum(int(b["attention_mask"].sum()) for b in batches)], device=acc.device)
        if world > 1:
            counts = acc.reduce(counts, reduction="sum")
        n_targets, n_tokens = int(counts[0]), int(counts[1])
        loss_sum = torch.zeros((), device=acc.device, dtype=torch.float64)
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            # recordings stay open through backward (recomputed forwards are not recorded) and observe
            with nullcontext() if last or world == 1 else acc.no_sync(self.model), ExitStack() as stack:
                recordings = []
                for lr in self.learners:
                    cm = lr.recording(self.unwrapped)
                    recordings.append(stack.enter_context(cm) if cm is not None else None)
                nll = self.forward(batch)
                batch_sum = nll.sum()
                if self.backprop and n_targets > 0:
                    # summed token loss / global token count (x world: DDP averages the ranks' gradients)
                    acc.backward(batch_sum * (world / n_targets))
                detached = nll.detach()
                for lr, rec in zip(self.learners, recordings):
                    lr.observe(Observation(batch=batch, token_nll=detached, recording=rec))
            loss_sum += batch_sum.detach().double()
        if self.sharded and self.backprop:  # no DDP wrapper: average the whole (replicated) gradients here
            average_gradients([p for p in self.owned.values() if p.requires_grad])
        if world > 1:
            loss_sum = acc.reduce(loss_sum, reduction="sum")
        loss = float(loss_sum) / max(n_targets, 1)
        logs: dict[str, float] = {"train/loss": loss}
        if not math.isfinite(loss) or n_targets == 0:
            for lr in self.learners:
                lr.reset()
            applied = False
        else:
            applied = True
            for lr, label in zip(self.learners, self.labels):
                start = time.perf_counter()
                ok = lr.step()  # every learner steps, even after another refused
                applied = applied and bool(ok)
                logs[f"learner/{label}/step_s"] = time.perf_counter() - start
        if not applied:
            self.state.skipped += 1
        for lr, label in zip(self.learners, self.labels):
            logs.update({f"learner/{label}/{k}": v for k, v in lr.metrics().items()})
        self.state.tokens += n_tokens
        logs.update({"train/ppl": math.exp(loss) if loss < 50 else float("inf"), "train/tokens": self.state.tokens,
                     "train/skipped_steps": self.state.skipped, "train/step_applied": float(applied)})
        return logs

    # -- checkpoints --------------------------------------------------------------------------------------------
    def save(self) -> Path:
        t = self.cfg.trainer
        jsonl = self._jsonl()
        if jsonl is not None:
            self.state.metrics_rows = jsonl.rows
        path = save_checkpoint(self.run_dir.path, self.state.step, adapter=self.owned,
                               learners=[lr.state_dict() for lr in self.learners], state=asdict(self.state),
                               keep_last=t.keep_last, accelerator=self.accelerator)
        for cb in self.callbacks:
            cb.on_save(self, self.state.step, path)
        return path

    def load(self, path: str | Path) -> None:
        """Restore adapters, learner states, loop position and this rank's RNG from checkpoint ``path``."""
        ck = load_checkpoint(path, self.accelerator.process_index)
        missing = sorted(set(self.owned) - set(ck.adapter))
        if missing:
            raise ValueError(f"checkpoint {path} lacks parameters this model trains: {missing[:3]}")
        with torch.no_grad():
            for name, p in self.owned.items():
                p.copy_(ck.adapter[name].to(p.device, p.dtype))
        if len(ck.learners) != len(self.learners):
            raise ValueError(f"checkpoint {path} has {len(ck.learners)} learner states, the run has "
                             f"{len(self.learners)} learners")
        for lr, st in zip(self.learners, ck.learners):
            lr.load_state_dict(st)
        fields = TrainState.__dataclass_fields__
        self.state = TrainState(**{k: v for k, v in ck.state.items() if k in fields})
        if self.state.world_size != self.accelerator.num_processes:
            self.accelerator.print(f"warning: resuming a {self.state.world_size}-process run on "
                                   f"{self.accelerator.num_processes} processes: the data order changes")
            self.state.world_size = self.accelerator.num_processes
        if ck.rng is not None:
            set_rng_state(ck.rng)
        self.should_stop = self.state.stopped_early  # an early-stopped run stays stopped

    # -- the whole run --------------------------------------------------------------------------------------------
    def _log(self, metrics: Mapping[str, Any], step: int) -> None:
        self.tracker.log(metrics, step)

    def _jsonl(self) -> Any:
        backend = getattr(self.tracker, "backend", None)
        found = backend("jsonl") if backend is not None else None
        return found if found is not None else (self.tracker if hasattr(self.tracker, "rows") else None)

    @property
    def finished(self) -> bool:
        """The loop has nothing left to do: the last step is done, or early stopping ended the run."""
        return self.state.step >= self.cfg.trainer.steps or self.state.stopped_early

    def _interrupt_signal(self) -> int | None:
        """The signal every rank agrees to stop on (the largest any rank received), or None."""
        return interrupt.agreed_signal(self.accelerator)

    def _evaluate_and_track(self) -> dict[str, float]:
        metrics = self.evaluate()
        self._log(metrics, self.state.step)
        ppl, best = metrics["eval/ppl"], self.state.best_eval
        if best is None or ppl < best:
            self.state.best_eval, self.state.evals_since_best = ppl, 0
        elif self.state.step > 0:
            self.state.evals_since_best += 1
        patience = self.cfg.trainer.early_stopping_patience
        if patience is not None and self.state.evals_since_best >= patience:
            self.state.stopped_early = self.should_stop = True
        for cb in self.callbacks:
            cb.on_evaluate(self, self.state.step, metrics)
        return metrics

    def _open_tracking(self) -> None:
        acc, tr = self.accelerator, self.cfg.tracking
        if not acc.is_main_process:
            return
        resume_step = self.state.step if self.run_dir.checkpoint is not None else None
        if resume_step is not None and self.state.metrics_rows is not None:
            keep_rows(self.run_dir.path / "metrics.jsonl", self.state.metrics_rows)
        self.tracker = make_tracker(self.run_dir.path, backend=tr.backend, mode=tr.mode, project=tr.project,
                                    run_name=tr.run_name, tags=tr.tags, config=self.cfg.to_dict(),
                                    resume_step=resume_step, run_id=self.state.wandb_id)
        wandb = self.tracker.backend("wandb")
        if wandb is not None:
            self.state.wandb_id = wandb.run_id

    def fit(self) -> dict[str, Any]:
        """Run to ``trainer.steps`` (or early stop); returns the summary also written to ``report.json``."""
        acc = self.accelerator
        if self.run_dir is None:
            self.run_dir = open_run_dir(self.cfg, acc)
        if self.run_dir.checkpoint is not None:
            self.load(self.run_dir.checkpoint)
            acc.print(f"resumed from {self.run_dir.checkpoint} (step {self.state.step})")
            if self.finished:
                done = read_report(self.run_dir.path)
                if done is not None and done.get("steps") == self.state.step:
                    acc.print(f"the run in {self.run_dir.path} already finished at step {self.state.step}: nothing to "
                              f"do, {self.run_dir.path / 'report.json'} kept")
                    return done
                acc.print("the run finished but its report is missing: writing it")
        self._open_tracking()
        for cb in self.callbacks:
            cb.on_train_begin(self)
        first_eval = None
        if self.eval_tensors is not None and self.state.step == 0:
            first_eval = self._evaluate_and_track()
        was_training = self.unwrapped.training
        try:
            with interrupt.deferred(), gradient_checkpointing(self.unwrapped, self.cfg.trainer.gradient_checkpointing):
                last_eval, logs = self._train_loop(first_eval)
        finally:
            self.unwrapped.train(was_training)  # the model's mode as it was handed over
        result = self._summary(first_eval, last_eval, logs)
        for cb in self.callbacks:  # may add entries to the summary before it is written
            cb.on_train_end(self, result)
        if acc.is_main_process:
            write_report(self.run_dir.path, result, read_metrics(self.run_dir.path / "metrics.jsonl"),
                         title=self.report_title)
            flat = flatten({k: v for k, v in result.items() if k != "learners"})
            self.tracker.summary({k: v for k, v in flat.items() if isinstance(v, (int, float))})
            self.tracker.log_image("curves", self.run_dir.path / "curves.png", self.state.step)
        self.tracker.finish()
        acc.wait_for_everyone()
        return result

    def _train_loop(self, last_eval: dict | None) -> tuple[dict | None, dict]:
        from tqdm.auto import tqdm

        acc, t = self.accelerator, self.cfg.trainer
        logs: dict[str, float] = {}
        quiet = os.environ.get("TQDM_DISABLE", "0").lower() not in ("", "0", "false")
        bar = tqdm(total=t.steps, initial=self.state.step, desc="train", dynamic_ncols=True,
                   disable=not acc.is_main_process or quiet)
        self.model.train()
        while self.state.step < t.steps and not self.should_stop:
            start, cpu = time.perf_counter(), time.process_time()
            logs = self.train_step()
            elapsed = time.perf_counter() - start
            self.state.step += 1
            self.state.train_seconds += elapsed
            # wall time, and this process's CPU time (robust to other load on a shared machine)
            logs["train/step_s"], logs["train/step_cpu_s"] = elapsed, time.process_time() - cpu
            self._log(logs, self.state.step)
            bar.set_postfix(loss=f"{logs['train/loss']:.3f}", refresh=False)
            if self.state.step >= t.steps:  # the last step: close() draws the final line, once
                bar.n = self.state.step
                bar.close()
            else:
                bar.update(1)
            for cb in self.callbacks:
                cb.on_step_end(self, self.state.step, logs)
            done = self.state.step >= t.steps or self.should_stop
            if self.eval_tensors is not None and (self.state.step % t.eval_every == 0 or done):
                last_eval = self._evaluate_and_track()
                self.model.train()
                done = done or self.should_stop
            signum = self._interrupt_signal()
            if self.state.step % t.save_every == 0 or done or signum:
                path = self.save()
            if signum:
                bar.close()
                self.tracker.finish()
                acc.print(f"interrupted at step {self.state.step}: checkpoint {path} written; continue with --resume")
                raise interrupt.TrainingInterrupted(signum, str(path))
        bar.close()
        return last_eval, logs

    def _summary(self, first_eval: dict | None, last_eval: dict | None, logs: dict) -> dict[str, Any]:
        rows = read_metrics(self.run_dir.path / "metrics.jsonl") if self.accelerator.is_main_process else []
        evals = [r["eval/ppl"] for r in rows if "eval/ppl" in r]
        s = self.state
        if last_eval is None:  # a finished run whose report a kill prevented: the log has the last values
            last_eval = next(({k: v for k, v in r.items() if k.startswith("eval/")} for r in reversed(rows)
                              if r.get("step") == s.step and "eval/ppl" in r), None)
        if "train/loss" not in logs:
            logs = next((r for r in reversed(rows) if r.get("step") == s.step and "train/loss" in r), logs)
        return {
            "steps": s.step, "tokens_trained": s.tokens, "skipped_steps": s.skipped, "stopped_early": s.stopped_early,
            "train_loss": logs.get("train/loss"), "train_seconds": round(s.train_seconds, 3),
            "tokens_per_second": s.tokens / s.train_seconds if s.train_seconds > 0 else None,
            "eval_ppl_before": first_eval["eval/ppl"] if first_eval else (evals[0] if evals else None),
            "eval_ppl_after": last_eval["eval/ppl"] if last_eval else None, "best_eval_ppl": s.best_eval,
            "world_size": self.accelerator.num_processes, "output_dir": str(self.run_dir.path),
            "tracking": getattr(self.tracker, "location", None),
            "learners": {label: lr.metrics() for label, lr in zip(self.labels, self.learners)},
            # the final evaluation, nested so that "eval/ppl" names it (as in metrics.jsonl and W&B)
            "eval": {k.split("/", 1)[1]: v for k, v in last_eval.items()} if last_eval else {},
        }


__all__ = ["Trainer", "TrainerCallback", "TrainState", "make_accelerator", "build_learners"]
