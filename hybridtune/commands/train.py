"""``hybridtune train CONFIG [overrides...]``: domain adaptation of spiking LoRA adapters from a YAML run config.

Overrides are ``key.sub=value`` or ``--key.sub=value`` (the form W&B sweeps pass with ``${args}``), applied in
order after the file. ``--resume`` continues the run in ``trainer.output_dir`` from its newest checkpoint; ``--out``
sets ``trainer.output_dir``. Multi-process runs use the same command under a launcher, e.g.
``ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m hybridtune.cli train CONFIG`` or
``accelerate launch --num_processes 8 -m hybridtune.cli train CONFIG`` on GPUs.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..config.overrides import is_override

EPILOG = """overrides: key.sub=value or --key.sub=value, applied in order on top of the config, e.g.
  trainer.steps=200 learners.0.lr=5e-4 --data.train=./my_notes/ tracking.backend=none"""


def accept_overrides(parser: argparse.ArgumentParser) -> None:
    """Let ``parser`` collect ``key=value`` / ``--key=value`` arguments anywhere on the line into ``overrides``.

    argparse rejects unknown ``--options``; the dotted override keys cannot be declared in advance, so the
    leftovers that look like overrides are gathered (in their order) and anything else is still an error.
    """
    parser.set_defaults(overrides=[])
    original = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        namespace, extras = original(args, namespace)
        overrides = [a for a in extras if is_override(a)]
        namespace.overrides = list(getattr(namespace, "overrides", [])) + overrides
        return namespace, [a for a in extras if not is_override(a)]

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run config YAML (see configs/)")
    parser.add_argument("--resume", action="store_true", help="continue the run in trainer.output_dir")
    parser.add_argument("--out", metavar="DIR", default=None, help="output directory (trainer.output_dir)")
    parser.add_argument("--no-cache", action="store_true", help="convert afresh instead of using the cache")
    accept_overrides(parser)


def cli_overrides(args: argparse.Namespace) -> list[str]:
    """The overrides of the command line, with ``--out`` / ``--resume`` turned into config keys (applied last)."""
    extra = list(args.overrides)
    if getattr(args, "out", None):
        extra.append(f"trainer.output_dir={args.out}")
    if getattr(args, "resume", False):
        extra.append("trainer.resume=true")
    return extra


def _fmt(value: Any, spec: str = ".3f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "n/a"


def format_summary(report: dict[str, Any]) -> str:
    """The human-readable end of a run: perplexities, spikes, energy, and where everything is."""
    lines = [
        f"perplexity on held-out {report.get('data', {}).get('eval', 'data')} (block size "
        f"{report.get('data', {}).get('block_size', '?')}, {report.get('data', {}).get('eval_tokens', '?')} tokens):",
        f"  ANN (not converted)        {_fmt(report.get('ppl_ann'))}",
        f"  spiking, before training   {_fmt(report.get('ppl_spiking_before'))}",
        f"  spiking, after training    {_fmt(report.get('ppl_spiking_after'))}",
        f"trained {report.get('steps')} steps on {report.get('tokens_trained')} tokens in "
        f"{_fmt(report.get('train_seconds'), '.1f')} s ({_fmt(report.get('tokens_per_second'), '.0f')} tokens/s)"
        + (f", {report['skipped_steps']} step(s) skipped (inf/NaN)" if report.get("skipped_steps") else ""),
        f"spikes per neuron (held-out): {_fmt(report.get('spikes_per_neuron'), '.4f')}",
    ]
    energy = report.get("energy") or {}
    for name, e in (energy.get("energy") or {}).items():
        tokens = max(1, energy.get("tokens") or 1)
        lines.append(f"energy estimate ({name}): spiking {_fmt(e.get('snn_pj', 0) / tokens / 1e6, '.3f')} uJ/token "
                     f"vs ANN {_fmt(e.get('ann_pj', 0) / tokens / 1e6, '.3f')} uJ/token "
                     f"(ANN / spiking = {_fmt(e.get('ratio'), '.2f')}; memory traffic not modelled)")
    recovery = report.get("recovery")
    if recovery:  # a replaced softmax recovered in two stages (attention transfer, then the adapters)
        lines.append(f"recovery (perplexity / ANN): before {_fmt(recovery.get('ratio_before'), '.4f')}, after "
                     f"attention transfer {_fmt(recovery.get('ratio_after_stage1'), '.4f')} "
                     f"({recovery.get('tokens_stage1')} tokens), after the adapters "
                     f"{_fmt(recovery.get('ratio_after_stage2'), '.4f')}; curve: {recovery.get('curve')}; recovered "
                     f"conversion: {report.get('spiking_dir')} (eval --spiking DIR --adapter ADAPTER)")
    lines.append(f"report: {report.get('output_dir')}/report.json (curves.png beside it); adapter: "
                 f"{report.get('adapter_dir', 'n/a')}")
    if report.get("tracking"):
        lines.append(f"tracking files: {report['tracking']}"
                     + ("  (upload with: wandb sync " + report["tracking"] + ")" if "wandb" in report["tracking"]
                        else ""))
    return "\n".join(lines)


def run_stamp() -> str:
    """The time stamp that ``{time}`` in ``trainer.output_dir`` becomes: the same on every process of a launch."""
    from accelerate.utils import broadcast_object_list

    from ..trainers.loop import process_state

    stamp = [time.strftime("%Y%m%d-%H%M%S")]
    if process_state().num_processes > 1:
        broadcast_object_list(stamp, from_process=0)
    return stamp[0]


def check_run(cfg, *, source: str | None = None, say=print, command: str = "train"):
    """Every check that needs no model (:func:`hybridtune.preflight.preflight`), ``{time}`` expanded, then the
    exact training-token count once tokenised (still before the model loads), and the plan printed. Returns
    ``cfg``; raises ConfigError naming the key (and ``source``)."""
    from ..config_schema import ConfigError
    from ..models import load_tokenizer
    from ..preflight import check_data_size, preflight
    from ..trainers.data import build_data, open_corpora
    from ..trainers.loop import process_state

    world = process_state().num_processes
    try:
        checked = preflight(cfg, world_size=world)
        if "{time}" in cfg.trainer.output_dir and cfg.trainer.resume:
            raise ConfigError(f"got {cfg.trainer.output_dir!r}: with --resume, name the run to continue with --out "
                              f"RUN_DIR (e.g. hybridtune {command} CONFIG --resume --out runs/own-text-20260101-"
                              "120000)", "trainer.output_dir")
        cfg.trainer.output_dir = cfg.trainer.output_dir.replace("{time}", run_stamp())
        train, _, info = build_data(cfg.data, load_tokenizer(cfg.model.name), open_corpora(cfg.data))
        check_data_size(cfg, train.num_tokens, world)
    except ConfigError as exc:
        raise exc.with_source(exc.source or source) from None
    for note in checked.notes:
        say(note)
    t = cfg.trainer
    per_step = t.batch_size * t.grad_accum * world
    blocks = t.steps * per_step
    say(f"plan: {t.steps} steps x {per_step} blocks of {cfg.data.block_size} tokens = {blocks} blocks, about "
        f"{round(blocks * info['train_tokens'] / max(1, info['train_blocks'])):,} tokens ({blocks / max(1, info['train_blocks']):.1f} "
        f"passes over the {info['train_blocks']} blocks, {info['train_tokens']:,} tokens, of {info['train']}); "
        f"held out: {info['eval_tokens']:,} tokens; writing to {cfg.trainer.output_dir}")
    return cfg


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..trainers.domain import run_domain_adaptation
    from ..trainers.loop import process_state
    from .progress import StepTimeEstimate

    main = process_state().is_main_process
    cfg = check_run(load_config(args.config, cli_overrides(args)), source=args.config,
                    say=print if main else (lambda _m: None))
    report = run_domain_adaptation(cfg, echo=print, use_cache=not args.no_cache, callbacks=[StepTimeEstimate()])
    if main:
        print(format_summary(report))
    return 0
