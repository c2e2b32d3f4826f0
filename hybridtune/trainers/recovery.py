"""Recovery in a run: stage 1 (attention transfer) with checkpoints and resume, and the recovery curve.

With ``recovery.stage1_steps > 0`` (and a recoverable ``conversion.softmax``), :func:`run_domain_adaptation
<hybridtune.trainers.domain.run_domain_adaptation>` runs :func:`attention_transfer_stage` on the spiking model with
its (frozen) adapters attached, before the trainer: only the replacement's per-head parameters train (Adam at
``recovery.stage1_lr``), on blocks drawn by the same seeded sampler as the trainer's, after a closed-form start on
the first block (:func:`~hybridtune.recovery.fit_replacements`). Its checkpoints live in
``<run>/recovery/checkpoints/step-N`` (the parameters, the optimizer, RNG, the position and the curve so far), so a
run interrupted in stage 1 resumes there and gives the same curve; a finished stage 1 is restored from its last
checkpoint. The trained values are then recorded in the conversion state and the recovered conversion is saved to
``<run>/spiking`` (what ``hybridtune eval --spiking RUN/spiking --adapter RUN/adapter`` loads, with its fingerprint
check). Stage 2 is the trainer itself. :class:`RecoveryCurve` adds the stage-2 evaluations to the curve and writes
``<run>/recovery_curve.json`` and ``.png`` (perplexity ratio to the ANN against tokens seen in both stages).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..adapters import model_call_keys
from ..config import RunConfig
from ..neurons import reset_state
from ..recovery import (
    attention_mse,
    curve_point,
    fit_replacements,
    record_replacements,
    train_only_replacements,
    transfer_step,
    write_curve,
)
from ..sharding import average_gradients
from ..tracking import read_metrics
from . import interrupt
from .checkpoint import load_checkpoint, newest_verified_checkpoint, save_checkpoint, set_rng_state
from .evaluation import evaluate_perplexity
from .loop import Trainer, TrainerCallback
from .sampler import BlockSampler, as_tensors, select

RECOVERY_DIR = "recovery"
SPIKING_DIR = "spiking"  # the recovered conversion (calibration state + the replacements' parameters)
CURVE_FILE = "recovery_curve.json"


@dataclass
class TransferState:
    """Where stage 1 stands (what its checkpoint restores)."""

    step: int = 0
    cursor: int = 0
    tokens: int = 0
    seconds: float = 0.0
    loss: float | None = None
    points: list[dict[str, Any]] = field(default_factory=list)


def _measure(model: torch.nn.Module, eval_tensors: dict[str, torch.Tensor], batch_size: int, accelerator: Any,
             ppl_ann: float, stage: int, state: TransferState) -> dict[str, Any]:
    keys = model_call_keys(model)

    def reset_then(batch):
        reset_state(model)
        return nullcontext()

    ppl = evaluate_perplexity(model, eval_tensors, batch_size, accelerator, reset_then, keys)["ppl"]
    first = {k: v[:batch_size] for k, v in eval_tensors.items()}
    mse = attention_mse(model, first, keys)
    return curve_point(stage, state.step, state.tokens, ppl, ppl_ann, attention_mse=mse)


def attention_transfer_stage(model: torch.nn.Module, cfg: RunConfig, train: Any, held: Any, ppl_ann: float,
                             run_path: Path, accelerator: Any, say: Callable[[str], None] = print) -> TransferState:
    """Stage 1 on ``model`` (see the module docstring); returns its final state (curve points included)."""
    acc, r = accelerator, cfg.recovery
    root = Path(run_path) / RECOVERY_DIR
    train_t = as_tensors(train)
    eval_t = {k: v.to(acc.device) for k, v in as_tensors(held).items()}
    batch_size = r.stage1_batch_size or cfg.trainer.batch_size
    sampler = BlockSampler(train_t["input_ids"].shape[0], batch_size, acc.num_processes, acc.process_index,
                           cfg.trainer.seed)
    keys = model_call_keys(model)
    state = TransferState()
    was_training = model.training
    with train_only_replacements(model) as params:
        optimizer = torch.optim.Adam(params.values(), lr=r.stage1_lr)
        found = newest_verified_checkpoint(root) if root.is_dir() else None
        if found is not None:
            ck = load_checkpoint(found, acc.process_index)
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(ck.adapter[name].to(p.device, p.dtype))
            optimizer.load_state_dict(ck.learners[0])
            state = TransferState(**{k: v for k, v in ck.state.items() if k in TransferState.__dataclass_fields__})
            if ck.rng is not None:
                set_rng_state(ck.rng)
            say(f"recovery stage 1: resumed from {found} (step {state.step})")
        if not state.points:  # before any recovery: the converted model with the replacement at its initial values
            state.points.append(_measure(model, eval_t, cfg.trainer.batch_size, acc, ppl_ann, 0, state))
            say(f"recovery: before, perplexity ratio to the ANN {state.points[-1]['ratio']:.4f}")
            # the closed-form start on the first training batch (read again by step 1), then its point
            batch = {k: v.to(acc.device) for k, v in select(train_t, sampler.indices(0)).items()}
            tokens = torch.tensor(fit_replacements(model, [batch], keys), device=acc.device)
            state.tokens += int(acc.reduce(tokens, reduction="sum")) if acc.num_processes > 1 else int(tokens)
            state.points.append(_measure(model, eval_t, cfg.trainer.batch_size, acc, ppl_ann, 1, state))
            say(f"recovery stage 1: closed-form start, ratio {state.points[-1]['ratio']:.4f}")
        model.train()
        average = average_gradients if acc.num_processes > 1 else None
        try:
            with interrupt.deferred():
                while state.step < r.stage1_steps:
                    start = time.perf_counter()
                    batch = {k: v.to(acc.device) for k, v in select(train_t, sampler.indices(state.cursor)).items()}
                    state.cursor += 1
                    state.loss = transfer_step(model, batch, optimizer, keys, average)
                    tokens = torch.tensor(int(batch["attention_mask"].sum()), device=acc.device)
                    if acc.num_processes > 1:
                        tokens = acc.reduce(tokens, reduction="sum")
                    state.tokens += int(tokens)
                    state.step += 1
                    state.seconds += time.perf_counter() - start
                    done = state.step >= r.stage1_steps
                    if state.step % r.eval_every == 0 or done:
                        model.eval()
                        state.points.append(_measure(model, eval_t, cfg.trainer.batch_size, acc, ppl_ann, 1, state))
                        model.train()
                        say(f"recovery stage 1: step {state.step}/{r.stage1_steps}, {state.tokens} tokens, attention "
                            f"MSE {state.points[-1]['attention_mse']:.4g}, ratio {state.points[-1]['ratio']:.4f}")
                    signum = interrupt.agreed_signal(acc)
                    if state.step % r.save_every == 0 or done or signum:
                        path = save_checkpoint(root, state.step, adapter=params, learners=[optimizer.state_dict()],
                                               state=asdict(state), keep_last=cfg.trainer.keep_last, accelerator=acc)
                    if signum:
                        raise interrupt.TrainingInterrupted(signum, str(path))
        finally:
            model.train(was_training)
    record_replacements(model)  # the trained values become part of the conversion (saved, fingerprinted)
    return state


def save_recovered_conversion(model: torch.nn.Module, run_path: Path, accelerator: Any) -> Path:
    """Write the recovered conversion to ``<run>/spiking`` (main process) and return the path."""
    from ..conversion import save_spiking

    target = Path(run_path) / SPIKING_DIR
    if accelerator.is_main_process:
        save_spiking(model, target)
    accelerator.wait_for_everyone()
    return target


class RecoveryCurve(TrainerCallback):
    """Stage 2's evaluations appended to stage 1's curve; writes ``recovery_curve.json`` / ``.png`` and adds a
    ``recovery`` entry (ratios before, after stage 1 and after stage 2, tokens, seconds) to the report."""

    def __init__(self, stage1: TransferState, ppl_ann: float, meta: dict[str, Any]):
        self.stage1, self.ppl_ann, self.meta = stage1, ppl_ann, meta

    def on_train_begin(self, trainer: Trainer) -> None:
        if trainer.state.step == 0 and self.stage1.points:
            last = self.stage1.points[-1]
            trainer.tracker.log({"recovery/stage1_ratio": last["ratio"], "recovery/stage1_tokens": self.stage1.tokens,
                                 "recovery/before_ratio": self.stage1.points[0]["ratio"]}, 0)

    def points(self, run_path: Path) -> list[dict[str, Any]]:
        rows = read_metrics(Path(run_path) / "metrics.jsonl")
        tokens = {r["step"]: r["train/tokens"] for r in rows if "train/tokens" in r}
        stage2 = [curve_point(2, r["step"], self.stage1.tokens + tokens.get(r["step"], 0), r["eval/ppl"],
                              self.ppl_ann) for r in rows if "eval/ppl" in r]
        return list(self.stage1.points) + stage2

    def on_train_end(self, trainer: Trainer, result: dict[str, Any]) -> None:
        if not trainer.accelerator.is_main_process:
            return
        points = self.points(trainer.run_dir.path)
        stage1 = [p for p in points if p["stage"] <= 1]
        stage2 = [p for p in points if p["stage"] == 2]
        summary = {
            "ppl_ann": self.ppl_ann,
            "ratio_before": points[0]["ratio"], "ratio_after_stage1": stage1[-1]["ratio"],
            "ratio_after_stage2": stage2[-1]["ratio"] if stage2 else None,
            "tokens_stage1": self.stage1.tokens, "tokens_stage2": result.get("tokens_trained"),
            "seconds_stage1": round(self.stage1.seconds, 3), "seconds_stage2": result.get("train_seconds"),
            "curve": str(trainer.run_dir.path / CURVE_FILE), **self.meta,
        }
        written = write_curve(trainer.run_dir.path / CURVE_FILE, points, summary)
        summary["png"] = written["png"]
        result["recovery"] = summary
        if str(written["png"]).endswith(".png"):
            trainer.tracker.log_image("recovery_curve", written["png"], trainer.state.step)


__all__ = ["attention_transfer_stage", "save_recovered_conversion", "RecoveryCurve", "TransferState", "RECOVERY_DIR",
           "SPIKING_DIR", "CURVE_FILE"]
