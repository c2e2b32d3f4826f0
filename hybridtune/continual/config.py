"""The ``continual`` settings of a run: the section itself is part of :class:`hybridtune.config.RunConfig`
(:mod:`hybridtune.config.continual`), read, overridden (``continual.replay.share=0.25``), validated and swept like
every other section. This module adds what only the continual pipeline needs: the resume check.

Example:
    >>> cfg, cont = load_continual_config(None, ["continual.adapter=per_task", "trainer.steps=3",
    ...                                          "continual.domains=[python-docs, python-code]"])
    >>> cont.adapter, cont.domains, cfg.trainer.steps
    ('per_task', ['python-docs', 'python-code'], 3)
"""

from __future__ import annotations

from pathlib import Path

from hybridtune.config import (
    DEFAULT_DOMAINS,
    ConfigError,
    ContinualSection,
    RegularizerSection,
    ReplaySection,
    RunConfig,
    load_config,
    to_dict,
)

SECTION = "continual"


def load_continual_config(path: str | Path | None = None,
                          overrides: list[str] | tuple[str, ...] = ()) -> tuple[RunConfig, ContinualSection]:
    """The run config and its ``continual`` section (``cfg.continual``) from one YAML file plus overrides."""
    cfg = load_config(path, overrides)
    return cfg, cfg.continual


def check_resumable_section(saved: dict, section: ContinualSection, source: str) -> None:
    """ConfigError naming every ``continual`` key whose value differs from the saved run's (all of them define the
    trajectory)."""
    now = to_dict(section)
    differ = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if differ:
        shown = ", ".join(f"{SECTION}.{k} (saved {saved.get(k)!r}, now {now.get(k)!r})" for k in differ[:3])
        raise ConfigError(f"cannot resume: {shown} differ from the run being resumed; resume with the same "
                          f"settings, or start a new run (another trainer.output_dir)", f"{SECTION}.{differ[0]}",
                          source)


__all__ = ["ContinualSection", "ReplaySection", "RegularizerSection", "DEFAULT_DOMAINS", "load_continual_config",
           "check_resumable_section"]
