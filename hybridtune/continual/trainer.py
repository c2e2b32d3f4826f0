"""Continual learning: train through an ordered sequence of domains and measure what each stage did to every domain.

:class:`ContinualTrainer` runs one :class:`~.stage.StageTrainer` -- the domain trainer's loop -- per domain,
with fresh learners (and so fresh optimizers) each stage. Before each stage the strategies act
(:mod:`.strategies`: shared / per-task adapters, replay, EWC); the stage trainer then ``prepare``s the
model again, so parameters added since the last stage (a new task adapter) are seen by DDP. Held-out perplexity on
every domain is measured before the first stage (the baseline row ``b``) and after each stage (row ``i`` of ``P``),
per-task adapters routed by task id. At the end: ``matrix.json``, ``heatmap.png``, ``report.json``, the matrix as a
W&B table, and the adapters (``adapter/``). Metric definitions: :mod:`.metrics`; files and resume:
:mod:`.state`.

Example (``model`` and ``cfg`` built as in :class:`hybridtune.trainers.Trainer`'s example):
    >>> from hybridtune.testing import tiny_batch
    >>> a = Domain.from_blocks("a", tiny_batch(batch=8, seed=0), tiny_batch(batch=2, seed=1))
    >>> b = Domain.from_blocks("b", tiny_batch(batch=8, seed=2), tiny_batch(batch=2, seed=3))
    >>> report = ContinualTrainer(model, cfg, [a, b]).fit()   # doctest: +SKIP
    >>> len(report["matrix"]), report["metrics"]["bwt"] is not None   # doctest: +SKIP
    (2, True)
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml

from hybridtune.adapters import model_call_keys
from hybridtune.config import RunConfig
from hybridtune.config_schema import ConfigError
from hybridtune.continual.config import ContinualSection, check_resumable_section
from hybridtune.continual.data import Domain, domain_labels
from hybridtune.continual.metrics import seen_average
from hybridtune.continual.report import (
    HEATMAP_FILE,
    MATRIX_FILE,
    matrix_record,
    plot_heatmap,
    table_columns,
    table_rows,
    write_matrix,
)
from hybridtune.continual.stage import StageTrainer
from hybridtune.continual.state import (
    SECTION_FILE,
    ContinualState,
    load_json_state,
    load_snapshot,
    load_strategy_states,
    save_json_state,
    save_snapshot,
    save_strategy_states,
    stage_dir,
)
from hybridtune.continual.strategies import (
    EWC,
    AdapterStrategy,
    ContinualStrategy,
    PerTaskAdapters,
    Replay,
    SharedAdapter,
    StageContext,
    build_strategies,
    replay_count,
)
from hybridtune.files import atomic_write
from hybridtune.learners import Learner
from hybridtune.learners.protocol import save_beside_adapter
from hybridtune.tracking import NullTracker, make_tracker
from hybridtune.trainers.checkpoint import newest_verified_checkpoint
from hybridtune.trainers.loop import build_learners, make_accelerator
from hybridtune.trainers.rundir import RunDir, open_run_dir

REPORT_FILE = "report.json"


@contextmanager
def routed(model: torch.nn.Module, adapter: str | None) -> Iterator[None]:
    """Activate ``adapter`` for the duration (None: leave the model alone), then restore the active adapter and
    every parameter's ``requires_grad`` (peft's ``set_adapter`` changes them)."""
    current = getattr(model, "active_adapter", None)
    if adapter is None or adapter == current:
        yield
        return
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.set_adapter(adapter)
    try:
        yield
    finally:
        model.set_adapter(current)
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])


def check_strategies(strategies: Sequence[ContinualStrategy], batch_size: int) -> None:
    """ConfigError for combinations that cannot work: replay or EWC beside per-task adapters, a replay share that
    gives no replayed (or no current) block at ``batch_size``, several adapter or replay strategies."""
    adapters = [s for s in strategies if isinstance(s, AdapterStrategy)]
    if len(adapters) != 1:
        raise ValueError(f"give exactly one adapter strategy, got {[s.name for s in adapters]}")
    if sum(isinstance(s, Replay) for s in strategies) > 1:
        raise ValueError("give at most one Replay strategy")
    for s in strategies:
        if isinstance(adapters[0], PerTaskAdapters) and isinstance(s, (Replay, EWC)):
            raise ConfigError(f"{s.name} with per_task adapters changes nothing useful: each task's adapter is "
                              f"trained and evaluated on its own domain only; use a shared adapter with {s.name}",
                              "continual.adapter")
        if isinstance(s, Replay):
            try:
                replay_count(s.share, batch_size)
            except ValueError as exc:
                raise ConfigError(str(exc), "continual.replay.share") from None


class ContinualTrainer:
    """Train ``model``'s adapters through ``domains`` in order (see the module docstring).

    Args:
        model: a peft model (spiking or plain LoRA), not wrapped by an Accelerator.
        config: the run config: ``trainer`` (``steps`` per stage, batch size, checkpoints, ``resume``), ``learners``,
            ``tracking``.
        domains: :class:`~.data.Domain` objects in training order (``build_domains`` packs them).
        section: the ``continual`` settings (default: ``ContinualSection`` for these domains); used to build the
            strategies when ``strategies`` is None, and recorded in ``continual.yaml``.
        strategies: strategy objects (exactly one adapter strategy; a :class:`SharedAdapter` is added if none).
        learners: ``() -> learners`` called once per stage (default: ``build_learners(config)``).
        callbacks: :class:`~.loop.TrainerCallback` objects given to every stage trainer (``trainer.stage`` says which).
        baseline: the baseline row when it is already known (e.g. measured once for many runs whose adapters all
            start at ``B = 0``, where it is the base model's perplexity); default: measured before the first stage.
        accelerator, run_dir, batch_context, extra_metrics, model_keys: as for :class:`~.loop.Trainer`.
    """

    def __init__(self, model: torch.nn.Module, config: RunConfig | None = None, domains: Sequence[Domain] = (), *,
                 section: ContinualSection | None = None, strategies: Sequence[ContinualStrategy] | None = None,
                 learners: Callable[[], Sequence[Learner]] | None = None, accelerator: Any = None,
                 run_dir: RunDir | None = None, callbacks: Sequence[Any] = (), batch_context: Any = None,
                 extra_metrics: Any = None, model_keys: Sequence[str] | None = None,
                 baseline: Sequence[float] | None = None):
        if not domains:
            raise ValueError("ContinualTrainer needs at least one Domain (hybridtune.continual.data)")
        self.cfg = config if config is not None else RunConfig()
        self.domains = list(domains)
        self.labels = domain_labels([d.name for d in self.domains])
        self.section = section if section is not None else ContinualSection(domains=[d.name for d in self.domains])
        self.strategies = list(strategies) if strategies is not None else build_strategies(self.section,
                                                                                           self.cfg.trainer.seed)
        if not any(isinstance(s, AdapterStrategy) for s in self.strategies):
            self.strategies.insert(0, SharedAdapter())
        self.adapter_strategy = next(s for s in self.strategies if isinstance(s, AdapterStrategy))
        check_strategies(self.strategies, self.cfg.trainer.batch_size)
        self.model = model
        self.accelerator = accelerator if accelerator is not None else make_accelerator(self.cfg)
        self.learner_factory = learners if learners is not None else (lambda: build_learners(self.cfg))
        self.learner_factory()  # unknown learners / bad options fail before any work
        self.callbacks = list(callbacks)
        self.batch_context, self.extra_metrics = batch_context, extra_metrics
        self.model_keys = tuple(model_keys) if model_keys is not None else model_call_keys(model)
        self.run_dir = run_dir
        self.state = ContinualState(domains=self.labels)
        if baseline is not None:
            if len(baseline) != len(self.domains):
                raise ValueError(f"baseline has {len(baseline)} entries for {len(self.domains)} domains")
            self.state.baseline = [float(v) for v in baseline]
        self.tracker: Any = NullTracker()
        self.trainer: StageTrainer | None = None  # the current stage's trainer

    # -- pieces -----------------------------------------------------------------------------------------------------
    def context(self, stage: int, trainer: Any = None) -> StageContext:
        return StageContext(stage=stage, domains=self.domains, model=self.model, accelerator=self.accelerator,
                            seed=self.cfg.trainer.seed, trainer=trainer, model_keys=self.model_keys,
                            batch_context=self.batch_context, batch_size=self.cfg.trainer.batch_size)

    def evaluate_row(self, trainer: StageTrainer, after: int) -> list[float]:
        """Held-out perplexity on every domain, each routed to the adapter the strategy picks (``after=-1``: before
        training)."""
        row = []
        for j, domain in enumerate(self.domains):
            with routed(self.model, self.adapter_strategy.adapter_for(j, after)):
                row.append(float(trainer.evaluate(domain.held)["eval/ppl"]))
        return row

    def record(self) -> dict[str, Any]:
        """The matrix so far (``matrix.json`` content)."""
        return matrix_record(self.labels, self.state.baseline, self.state.rows)

    def _barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def _main(self) -> bool:
        return self.accelerator.is_main_process

    def _save_section(self) -> None:
        path = self.run_dir.path / SECTION_FILE
        if self.cfg.trainer.resume and path.is_file():
            check_resumable_section(yaml.safe_load(path.read_text()) or {}, self.section, str(path))
        elif self._main():
            path.write_text(yaml.safe_dump(self.section.to_dict(), sort_keys=False))
        self._barrier()

    def _restore(self) -> int:
        """Re-build the structure of the completed stages and load their adapters and strategy states."""
        saved = load_json_state(self.run_dir.path)
        if saved is None:
            return 0
        if saved.domains != self.labels:
            raise ConfigError(f"cannot resume: the saved run trained on {saved.domains}, this one on {self.labels}",
                              "continual.domains")
        self.state = saved
        done = saved.completed
        for k in range(done):
            ctx = self.context(k)
            for s in self.strategies:
                s.begin_stage(ctx)
        if done:
            load_snapshot(self.run_dir.path, done - 1, self.model)
            for s, st in zip(self.strategies, load_strategy_states(self.run_dir.path, done - 1)):
                s.load_state_dict(st)
            self.accelerator.print(f"resuming the sequence after stage {done - 1} ({self.labels[done - 1]})")
        return done

    def _open_tracking(self, resumed: bool) -> None:
        if not self._main():
            return
        tr = self.cfg.tracking
        self.tracker = make_tracker(self.run_dir.path, backend=tr.backend, mode=tr.mode, project=tr.project,
                                    run_name=tr.run_name, tags=tr.tags,
                                    config={**self.cfg.to_dict(), "continual": self.section.to_dict()},
                                    resume_step=self.state.global_step if resumed else None,
                                    run_id=self.state.wandb_id)
        wandb = self.tracker.backend("wandb")
        if wandb is not None:
            self.state.wandb_id = getattr(wandb, "run_id", None)
            if getattr(wandb, "mode", "disabled") != "disabled" and hasattr(wandb, "run"):
                wandb.run.define_metric("cl/task")
                wandb.run.define_metric("cl/*", step_metric="cl/task")

    def _log_row(self, row: list[float], stage: int) -> None:
        metrics: dict[str, Any] = {"cl/task": stage, **{f"cl/ppl/{d}": v for d, v in zip(self.labels, row)}}
        if stage >= 0:
            metrics["cl/avg_ppl_seen"] = seen_average(row, stage)
            metrics["cl/avg_ppl"] = sum(row) / len(row)
            for key in ("bwt", "forgetting", "fwt"):
                value = self.record()["metrics"].get(key)
                if value is not None:
                    metrics[f"cl/{key}"] = value
        self.tracker.log(metrics, self.state.global_step)

    # -- one stage ----------------------------------------------------------------------------------------------------
    def _stage_trainer(self, stage: int, ctx: StageContext) -> StageTrainer:
        t = self.cfg.trainer
        learners = list(self.learner_factory())
        for s in self.strategies:
            learners = s.wrap_learners(ctx, learners)
        plans = [p for p in (s.replay_plan(ctx) for s in self.strategies) if p is not None]
        path = stage_dir(self.run_dir.path, stage, self.labels[stage])
        checkpoint = newest_verified_checkpoint(path) if t.resume else None  # a damaged newest one is skipped
        if self._main():
            path.mkdir(parents=True, exist_ok=True)
        self._barrier()
        domain = self.domains[stage]
        trainer = StageTrainer(self.model, self.cfg, learners=learners, train_data=domain.train,
                               eval_data=domain.held if self.section.stage_eval else None,
                               accelerator=self.accelerator, callbacks=self.callbacks,
                               batch_context=self.batch_context, run_dir=RunDir(path=path, checkpoint=checkpoint),
                               extra_metrics=self.extra_metrics, model_keys=self.model_keys, stage=stage,
                               replay=plans[0] if plans else None, parent_tracker=self.tracker,
                               step_offset=self.state.global_step)
        trainer.report_title = f"stage {stage}: {self.labels[stage]}"
        return trainer

    def run_stage(self, stage: int) -> list[float]:
        """Set up, train and evaluate stage ``stage``; record it at the boundary. Returns its matrix row."""
        from accelerate.utils import set_seed

        set_seed(self.cfg.trainer.seed + stage)  # each stage starts from a known RNG state, resumed or not
        ctx = self.context(stage)
        for s in self.strategies:
            s.begin_stage(ctx)
        trainer = self.trainer = self._stage_trainer(stage, ctx)
        ctx.trainer = trainer
        if self.state.baseline is None:
            self.state.baseline = self.evaluate_row(trainer, -1)
            self._log_row(self.state.baseline, -1)
            if self._main():
                save_json_state(self.run_dir.path, self.state)
        result = trainer.fit()
        row = self.evaluate_row(trainer, stage)
        for s in self.strategies:
            s.end_stage(ctx)
        self.state.rows.append(row)
        self.state.stage_steps.append(trainer.state.step)
        self.state.stage_reports.append({k: result.get(k) for k in (
            "steps", "tokens_trained", "train_seconds", "train_loss", "skipped_steps", "stopped_early",
            "eval_ppl_before", "eval_ppl_after", "output_dir")})
        self.state.completed = stage + 1
        if self._main():
            save_snapshot(self.run_dir.path, stage, self.model)
            # what the learners keep with an adapter (eprop's random feedback), in the stage's directory; the final
            # adapter gets the last stage's copy (_finish), also when the run is resumed after its last stage
            beside = save_beside_adapter(trainer.learners, trainer.run_dir.path)
            self.state.stage_reports[-1]["beside_adapter"] = [str(f) for f in beside]
            save_strategy_states(self.run_dir.path, stage, [s.state_dict() for s in self.strategies])
            save_json_state(self.run_dir.path, self.state)  # last: marks the boundary complete
        self._barrier()
        self._log_row(row, stage)
        self.accelerator.print(f"stage {stage} ({self.labels[stage]}): " +
                               ", ".join(f"{d} {v:.3f}" for d, v in zip(self.labels, row)))
        self.trainer = ctx.trainer = None
        del trainer
        self.accelerator.free_memory()  # the next stage prepares the model (and new optimizers) afresh
        return row

    # -- the whole sequence ---------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Run the remaining stages; returns the report also written to ``report.json``."""
        if self.run_dir is None:
            self.run_dir = open_run_dir(self.cfg, self.accelerator)
        self._save_section()
        resumed = self.cfg.trainer.resume and load_json_state(self.run_dir.path) is not None
        start = self._restore() if resumed else 0
        self._open_tracking(resumed=resumed)
        if not resumed and self.state.baseline is not None:  # given, not measured: record it the same way
            self._log_row(self.state.baseline, -1)
            if self._main():
                save_json_state(self.run_dir.path, self.state)
        for stage in range(start, len(self.domains)):
            self.run_stage(stage)
        return self._finish()

    def _finish(self) -> dict[str, Any]:
        record = self.record()
        report = {**record, "strategies": [s.describe() for s in self.strategies],
                  "routing": self._routing(), "stages": self.state.stage_reports,
                  "steps_per_stage": self.state.stage_steps, "output_dir": str(self.run_dir.path),
                  "domain_info": [d.info for d in self.domains], "tracking": getattr(self.tracker, "location", None)}
        if self._main():
            path = self.run_dir.path
            write_matrix(path / MATRIX_FILE, record)
            write_matrix(path / REPORT_FILE, report)
            step = self.state.global_step
            self.tracker.log_table("cl/ppl_matrix", table_columns(record), table_rows(record), step)
            if self.section.heatmap:
                plot_heatmap(record, path / HEATMAP_FILE)
                self.tracker.log_image("cl/heatmap", path / HEATMAP_FILE, step)
            self.tracker.summary({f"cl/{k}": v for k, v in record["metrics"].items()
                                  if isinstance(v, (int, float)) and math.isfinite(v)})
            if hasattr(self.model, "save_pretrained"):
                self.model.save_pretrained(str(path / "adapter"))
                last = self.state.stage_reports[-1] if self.state.stage_reports else {}
                for kept in last.get("beside_adapter", []):
                    atomic_write(path / "adapter" / Path(kept).name, lambda tmp, src=kept: shutil.copyfile(src, tmp))
        self.tracker.finish()
        self._barrier()
        return json.loads(json.dumps(report, default=str))

    def _routing(self) -> dict[str, str | None]:
        last = len(self.state.rows) - 1
        return {d: self.adapter_strategy.adapter_for(j, last) for j, d in enumerate(self.labels)}


__all__ = ["ContinualTrainer", "Domain", "routed", "check_strategies", "REPORT_FILE"]
