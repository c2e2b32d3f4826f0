"""Continual learning from a run config: load -> convert (cached) -> attach spiking LoRA -> pack every domain ->
:class:`~.trainer.ContinualTrainer`. ``hybridtune continual`` is a thin layer over :func:`run_continual`.

The pieces are the domain-adaptation pipeline's (:func:`hybridtune.trainers.domain.attach_adapter`,
:func:`hybridtune.trainers.cache.cached_conversion`, :func:`hybridtune.trainers.data.build_data` through
:func:`.data.build_domains`, :func:`hybridtune.trainers.domain.spike_probe`), so a stage
trains the same model on the same blocks as ``hybridtune train`` would.

Example:
    >>> from hybridtune.config import load_config
    >>> cfg = load_config("configs/continual/shared.yaml", ["trainer.steps=2"])  # doctest: +SKIP
    >>> report = run_continual(cfg)                                                           # doctest: +SKIP
    >>> sorted(report["metrics"])[:3]                                                          # doctest: +SKIP
    ['avg_final_nll', 'avg_final_ppl', 'avg_final_ppl_all_domains']
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hybridtune.config import RunConfig
from hybridtune.config_schema import ConfigError
from hybridtune.continual.config import ContinualSection
from hybridtune.continual.data import build_domains, open_domain_corpora
from hybridtune.continual.report import HEATMAP_FILE
from hybridtune.continual.strategies import build_strategies
from hybridtune.continual.trainer import ContinualTrainer, check_strategies


def run_continual(cfg: RunConfig, section: ContinualSection | None = None, *,
                  echo: Callable[[str], None] | None = None, use_cache: bool = True) -> dict[str, Any]:
    """The whole job (see the module docstring); returns the report also written to ``report.json``.
    ``section``: the ``continual`` settings (default: ``cfg.continual``)."""
    section = cfg.continual if section is None else section
    from accelerate.utils import set_seed

    from hybridtune.models import ModelLoadError, load_base, load_tokenizer, resolve_source
    from hybridtune.trainers.cache import cached_conversion
    from hybridtune.trainers.domain import attach_adapter, spike_probe
    from hybridtune.trainers.loop import build_learners, make_accelerator
    from hybridtune.trainers.rundir import open_run_dir

    # everything that can be checked cheaply fails before the output directory is touched
    build_learners(cfg)
    try:
        resolve_source(cfg.model.name)
    except ModelLoadError as exc:
        raise ConfigError(str(exc), "model.name") from None
    corpora = open_domain_corpora(section.domains, cfg.data)
    strategies = build_strategies(section, cfg.trainer.seed)
    check_strategies(strategies, cfg.trainer.batch_size)
    acc = make_accelerator(cfg)
    say = echo if echo is not None and acc.is_main_process else (lambda _msg: None)
    run = open_run_dir(cfg, acc)
    set_seed(cfg.trainer.seed)
    tokenizer = load_tokenizer(cfg.model.name)
    with acc.main_process_first():
        domains = build_domains(section.domains, cfg.data, tokenizer, corpora)
    for d in domains:
        say(f"domain {d.name}: {d.info.get('train_tokens')} training tokens, {d.info.get('eval_tokens')} held out")
    base = load_base(cfg.model).to(acc.device)
    snn, cache = cached_conversion(base, cfg.conversion, tokenizer, acc, use_cache=use_cache)
    say(f"conversion: {'loaded from cache' if cache['hit'] else 'converted'}")
    set_seed(cfg.trainer.seed)  # the adapter's initialisation does not depend on what ran before
    model = attach_adapter(snn, cfg.adapter)
    trainer = ContinualTrainer(model, cfg, domains, section=section, strategies=strategies, accelerator=acc,
                               run_dir=run, extra_metrics=lambda m: spike_probe(m, acc))
    report = trainer.fit()
    report["conversion_cache"] = cache
    report["model"] = cfg.model.name
    return report


def format_matrix(report: dict[str, Any]) -> str:
    """The matrix and metrics as aligned text for the terminal."""
    domains = report["domains"]
    width = max(12, *(len(d) + 2 for d in domains))
    label_w = max(len(r) for r in report["row_labels"]) + 2
    lines = ["held-out perplexity (rows: when measured, columns: domain; lower is better)",
             " " * label_w + "".join(d.rjust(width) for d in domains)]
    rows = ([report["baseline"]] if report.get("baseline") else []) + report["matrix"]
    labels = report["row_labels"] if report.get("baseline") else report["row_labels"][1:]
    for label, row in zip(labels, rows):
        lines.append(label.ljust(label_w) + "".join(
            (f"{v:.3f}" if isinstance(v, (int, float)) else "n/a").rjust(width) for v in row))
    m = report.get("metrics", {})

    def fmt(key: str) -> str:
        v = m.get(key)
        return f"{v:+.3f}" if isinstance(v, (int, float)) else "n/a"

    lines.append(f"average final perplexity {m.get('avg_final_ppl', float('nan')):.3f}; backward transfer "
                 f"{fmt('bwt')} (positive = forgetting); forgetting {fmt('forgetting')}; forward transfer "
                 f"{fmt('fwt')} (negative = helpful)")
    beside = "matrix.json" + (", heatmap.png" if (Path(report["output_dir"]) / HEATMAP_FILE).is_file() else "")
    lines.append(f"report: {report['output_dir']}/report.json ({beside} beside it)")
    if report.get("tracking"):
        lines.append(f"tracking files: {report['tracking']}")
    return "\n".join(lines)


__all__ = ["run_continual", "format_matrix"]
