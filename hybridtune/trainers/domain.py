"""Domain adaptation from a run config: load -> measure the ANN -> convert (cached) -> attach spiking LoRA -> train
-> report. ``hybridtune train`` and ``hybridtune quickstart`` are thin layers over :func:`run_domain_adaptation`.

``report.json`` in the output directory holds the trainer's summary plus ``ppl_ann`` (the unconverted model),
``ppl_spiking_before`` / ``ppl_spiking_after`` (spiking model + adapters before and after training, same held-out
blocks), ``spikes_per_neuron``, the energy estimate, ``tokens_trained``, the data's content hashes, the base
model's fingerprint and where the conversion cache and the tracker files are.

Resuming a run that already finished is a no-op that says so and returns the report on disk (nothing is loaded);
``pipeline.json`` that is damaged (empty, torn) is measured again rather than trusted.

Example:
    >>> from hybridtune.config import load_config
    >>> cfg = load_config("configs/quickstart.yaml", ["trainer.steps=2"])   # doctest: +SKIP
    >>> report = run_domain_adaptation(cfg)                                  # doctest: +SKIP
    >>> report["ppl_spiking_after"] < report["ppl_spiking_before"]           # doctest: +SKIP
    True
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..config import AdapterSection, RunConfig
from ..config_schema import ConfigError
from ..files import FileError, atomic_write_json, fsync_tree, read_json, writing
from ..learners.protocol import save_beside_adapter
from .cache import cached_conversion
from .checkpoint import STATE_FILE
from .data import build_data, open_corpora
from .evaluation import evaluate_perplexity
from .loop import Trainer, TrainerCallback, apply_op_backend, build_learners, make_accelerator
from .recovery import RecoveryCurve, attention_transfer_stage, save_recovered_conversion
from .report import read_report
from .rundir import RunDir, open_run_dir, write_base_record

PIPELINE_FILE = "pipeline.json"  # what was measured before training (reused on resume)


def attach_adapter(model: torch.nn.Module, section: AdapterSection) -> torch.nn.Module:
    """Spiking LoRA from the ``adapter`` section (every field reaches the peft config: ``adapters.lora_config``)."""
    from ..adapters import get_spiking_peft_model, lora_config

    try:
        config = lora_config(section)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc), "adapter") from None
    try:
        return get_spiking_peft_model(model, config)
    except ValueError as exc:  # peft: target modules not found in the model
        raise ConfigError(str(exc), "adapter.target_modules") from None


@contextmanager
def spike_probe(model: torch.nn.Module, accelerator: Any = None) -> Iterator[dict[str, float]]:
    """Count the spikes of every spiking module inside the block; on exit the yielded dict holds the totals over all
    ranks: ``spikes_per_neuron``, ``silent_share``, ``sops``."""
    from ..accounting import count_spikes, total_stats

    out: dict[str, float] = {}
    with count_spikes(model) as stats:
        yield out
    t = total_stats(stats)
    sums = torch.tensor([t.spikes, t.neuron_steps, t.silent, t.sops], dtype=torch.float64)
    if accelerator is not None and accelerator.num_processes > 1:
        sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
    spikes, steps, silent, sops = sums.tolist()
    if steps:
        out.update(spikes_per_neuron=spikes / steps, silent_share=silent / steps, sops=sops)


def energy_summary(model: torch.nn.Module, tensors: dict[str, torch.Tensor], batch_size: int,
                   directory: Path | None = None) -> dict[str, Any]:
    """The accounting report's totals on one batch of held-out blocks (the full report, with per-layer firing rates
    and plots, is written to ``directory`` when given)."""
    from ..accounting import energy_report, write_report

    report = energy_report(model, tensors["input_ids"][:batch_size], tensors["attention_mask"][:batch_size],
                           batch_size=batch_size)
    if directory is not None:
        write_report(report, directory)
    return {"tokens": report["tokens"], **report["total"], "not_modelled": report["not_modelled"]}


def run_domain_adaptation(cfg: RunConfig, *, echo: Callable[[str], None] | None = None,
                          use_cache: bool = True, callbacks: tuple[TrainerCallback, ...] | list = ()
                          ) -> dict[str, Any]:
    """The whole job (see the module docstring); returns the report also written to ``report.json``.
    ``callbacks`` are added to the trainer's (e.g. the CLI's time estimate)."""
    from accelerate.utils import set_seed

    from ..models import ModelLoadError, load_base, load_tokenizer, model_fingerprint, resolve_source

    started = time.perf_counter()
    # Everything that can be checked cheaply fails before the output directory is touched.
    learners = build_learners(cfg)
    apply_op_backend(cfg)
    try:
        resolve_source(cfg.model.name)
    except ModelLoadError as exc:
        raise ConfigError(str(exc), "model.name") from None
    corpora = open_corpora(cfg.data)
    acc = make_accelerator(cfg)
    say = echo if echo is not None and acc.is_main_process else (lambda _msg: None)
    run = open_run_dir(cfg, acc, say=say)
    done = finished_report(run, cfg)
    if done is not None:
        say(f"the run in {run.path} already finished at step {done['steps']}: nothing to do, report.json kept")
        return done
    set_seed(cfg.trainer.seed)
    tokenizer = load_tokenizer(cfg.model.name)
    with acc.main_process_first():
        train, held, data_info = build_data(cfg.data, tokenizer, corpora)
    say(f"data: {data_info['train']} ({data_info['train_tokens']} training tokens), held out: "
        f"{data_info['eval']} ({data_info['eval_tokens']} tokens)")
    base = load_base(cfg.model).to(acc.device)
    fingerprint = model_fingerprint(base)
    eval_tensors = held.as_dict()
    pipeline_path = run.path / PIPELINE_FILE
    saved = _read_pipeline(pipeline_path, say) if run.checkpoint is not None else {}
    if "ppl_ann" in saved:
        ppl_ann = saved["ppl_ann"]
    else:
        ppl_ann = evaluate_perplexity(base, eval_tensors, cfg.trainer.batch_size, acc)["ppl"]
    say(f"ANN perplexity: {ppl_ann:.3f}")
    snn, cache = cached_conversion(base, cfg.conversion, tokenizer, acc, use_cache=use_cache)
    say(f"conversion: {'loaded from cache' if cache['hit'] else 'converted'}"
        f"{' (' + cache['cache_dir'] + ')' if cache['cache_dir'] else ''}")
    if acc.is_main_process:
        write_base_record(run.path, cfg, cache, fingerprint)  # what `eval --run` / load_run rebuild the base from
        atomic_write_json(pipeline_path, {"ppl_ann": ppl_ann, "fingerprint": fingerprint, "data": data_info,
                                          "conversion_cache": cache})
    set_seed(cfg.trainer.seed)  # the adapter's initialisation does not depend on what ran before
    model = attach_adapter(snn, cfg.adapter)
    facts = {"ppl_ann": ppl_ann, "model": cfg.model.name, "base_fingerprint": fingerprint, "data": data_info,
             "conversion_cache": cache, "adapter_dir": str(run.path / "adapter")}
    stages: list[TrainerCallback] = []
    if cfg.recovery.stage1_steps > 0:  # recovery stage 1 (attention transfer); stage 2 is the trainer below
        stage1 = attention_transfer_stage(model, cfg, train, held, ppl_ann, run.path, acc, say)
        facts["spiking_dir"] = str(save_recovered_conversion(model, run.path, acc))
        stages.append(RecoveryCurve(stage1, ppl_ann, {"softmax": cfg.conversion.softmax}))
    trainer = Trainer(model, cfg, learners=learners, train_data=train, eval_data=held, accelerator=acc, run_dir=run,
                      extra_metrics=lambda m: spike_probe(m, acc),
                      callbacks=[_Pipeline(facts, eval_tensors, started), *stages, *callbacks])
    trainer.report_title = f"{cfg.model.name} on {data_info['train']}"
    return trainer.fit()


def finished_report(run: RunDir, cfg: RunConfig) -> dict[str, Any] | None:
    """The report of a resumed run whose newest checkpoint is its last step (or an early stop), if that report is
    intact and covers that step; None when there is training (or a report) left to do."""
    if run.checkpoint is None:
        return None
    try:
        state = read_json(run.checkpoint / STATE_FILE, "")
    except FileError:
        return None
    step = int(state.get("step", 0))
    if step < cfg.trainer.steps and not state.get("stopped_early"):
        return None
    report = read_report(run.path)
    return report if report is not None and report.get("steps") == step else None


def _read_pipeline(path: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """What was measured before training, or {} (measure again) when the file is missing or damaged."""
    if not path.is_file():
        return {}
    try:
        saved = read_json(path, "")
    except FileError as exc:
        say(f"warning: {exc}; measuring again")
        return {}
    return saved if isinstance(saved, dict) else {}


class _Pipeline(TrainerCallback):
    """Adds what the pipeline knows to the trainer's log and report, and saves the adapter at the end."""

    def __init__(self, facts: dict[str, Any], eval_tensors: dict[str, torch.Tensor], started: float):
        self.facts, self.eval_tensors, self.started = facts, eval_tensors, started

    def on_train_begin(self, trainer: Trainer) -> None:
        if trainer.state.step == 0:
            trainer.tracker.log({"eval/ppl_ann": self.facts["ppl_ann"]}, 0)

    def on_train_end(self, trainer: Trainer, result: dict[str, Any]) -> None:
        acc = trainer.accelerator
        result.update(self.facts)
        result["ppl_spiking_before"] = result["eval_ppl_before"]
        result["ppl_spiking_after"] = result["eval_ppl_after"]
        result["spikes_per_neuron"] = result["eval"].get("spikes_per_neuron")
        for spec, metrics in zip(trainer.cfg.learners, (result.get("learners") or {}).values()):
            if isinstance(metrics, dict) and "lr" in metrics:  # the schedule's last value is not the configured lr
                metrics["lr_last_step"] = metrics.pop("lr")
                metrics["lr"] = spec.lr
        if trainer.sharded:  # every rank joins the forward (each block's weights are gathered from all of them)
            energy = energy_summary(trainer.unwrapped, self.eval_tensors, trainer.cfg.trainer.batch_size,
                                    trainer.run_dir.path / "accounting" if acc.is_main_process else None)
        elif acc.is_main_process:
            energy = energy_summary(trainer.unwrapped, self.eval_tensors, trainer.cfg.trainer.batch_size,
                                    trainer.run_dir.path / "accounting")
        if acc.is_main_process:
            result["energy"] = energy
            per_token = {f"energy/{name}/{k}_per_token": e[k] / max(1, energy["tokens"])
                         for name, e in energy.get("energy", {}).items() for k in ("snn_pj", "ann_pj")}
            ratios = {f"energy/{name}/ann_over_snn": e["ratio"] for name, e in energy.get("energy", {}).items()}
            trainer.tracker.log({**per_token, **ratios, "energy/spikes_per_neuron": energy["spikes_per_neuron"]},
                                trainer.state.step)
            with writing(self.facts["adapter_dir"]):
                trainer.unwrapped.save_pretrained(self.facts["adapter_dir"], save_embedding_layers=False)
                save_beside_adapter(trainer.learners, self.facts["adapter_dir"])  # e.g. eprop's random feedback
                fsync_tree(self.facts["adapter_dir"])
        elif trainer.sharded:  # the adapter's markers fingerprint the base, whose shards every rank holds
            trainer.unwrapped.save_pretrained(self.facts["adapter_dir"], save_embedding_layers=False,
                                              is_main_process=False)
        result["wall_seconds"] = round(time.perf_counter() - self.started, 1)


__all__ = ["run_domain_adaptation", "attach_adapter", "spike_probe", "energy_summary", "finished_report",
           "PIPELINE_FILE"]
