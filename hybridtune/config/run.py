"""``RunConfig``, the whole run in one typed tree, and the YAML files it is read from and saved to.

Every section, ``conversion`` and ``continual`` included, is a dataclass; :func:`load_config` reads a YAML file,
applies ``key.sub=value`` overrides (:mod:`.overrides`) and builds the tree with the schema machinery
(:mod:`hybridtune.config_schema`), so every error names the file, the dotted key and what is allowed. Saved configs
carry the hybridtune version.

Example:
    >>> cfg = load_config(None, ["trainer.steps=5", "--adapter.r=4", "continual.replay.share=0.25"])
    >>> (cfg.trainer.steps, cfg.adapter.r, cfg.continual.replay.share)
    (5, 4, 0.25)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from hybridtune._version import __version__
from hybridtune.config.continual import ContinualSection
from hybridtune.config.conversion import RECOVERABLE_SOFTMAX, ConversionConfig
from hybridtune.config.overrides import apply_overrides, key_type
from hybridtune.config.sections import (
    AdapterSection,
    DataSection,
    LearnerSpec,
    ModelSection,
    OpsSection,
    RecoverySection,
    TrackingSection,
    TrainerSection,
)
from hybridtune.config_schema import ConfigError, build, to_dict
from hybridtune.files import atomic_write_text

QUICKSTART_FILE = "quickstart.yaml"  # shipped inside this package (package data)


@dataclass
class RunConfig:
    """A whole run. ``continual`` is read by ``hybridtune continual`` (``train`` ignores it); ``hybridtune_version``
    records which version wrote a saved config."""

    model: ModelSection = field(default_factory=ModelSection)
    conversion: ConversionConfig = field(default_factory=ConversionConfig)
    adapter: AdapterSection = field(default_factory=AdapterSection)
    learners: list[LearnerSpec] = field(default_factory=lambda: [LearnerSpec()])
    data: DataSection = field(default_factory=DataSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    ops: OpsSection = field(default_factory=OpsSection)
    continual: ContinualSection = field(default_factory=ContinualSection)
    recovery: RecoverySection = field(default_factory=RecoverySection)
    hybridtune_version: str = __version__

    def validate(self) -> None:
        if not self.learners:
            raise ConfigError("empty; give at least one learner (e.g. - name: surrogate)", "learners")
        if self.recovery.stage1_steps > 0 and self.conversion.softmax not in RECOVERABLE_SOFTMAX:
            raise ConfigError(f"attention transfer trains a recoverable softmax replacement, but conversion.softmax is "
                              f"{self.conversion.softmax!r}; set conversion.softmax to one of "
                              f"{', '.join(RECOVERABLE_SOFTMAX)} (with 'attention' in conversion.coverage) or "
                              "recovery.stage1_steps: 0", "recovery.stage1_steps")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# The trainer section of the TrainConfig name in the Python API (``ht.TrainConfig``) is the whole run config.
TrainConfig = RunConfig


def config_type(dotted: str) -> Any:
    """The declared type of run-config key ``dotted`` (``learners.N.x`` addresses item N of the learners list);
    ConfigError naming the nearest valid key."""
    return key_type(RunConfig, dotted)


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}", source=str(p))
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", source=str(p)) from None
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of sections", source=str(p))
    return data


def build_config(data: dict, overrides: list[str] | tuple[str, ...] = (), source: str | None = None) -> RunConfig:
    """:class:`RunConfig` from a mapping (as read from YAML) plus overrides; errors name ``source``."""
    data = dict(data)
    data.setdefault("learners", [to_dict(LearnerSpec())])
    try:
        return build(RunConfig, apply_overrides(data, overrides, RunConfig))
    except ConfigError as exc:
        raise exc.with_source(exc.source or source) from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read ``path`` (YAML, optional), apply overrides in order, validate everything, return a :class:`RunConfig`."""
    source = str(path) if path else None
    return build_config(read_yaml(path) if path else {}, overrides, source)


def quickstart_text() -> str:
    """The quick start's YAML, shipped inside the package (``configs/quickstart.yaml`` is the same file)."""
    return resources.files("hybridtune.config").joinpath(QUICKSTART_FILE).read_text()


def load_quickstart(overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The quick start's run config (package data) with ``overrides`` applied."""
    return build_config(yaml.safe_load(quickstart_text()), overrides, f"hybridtune/config/{QUICKSTART_FILE}")


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML (with the current hybridtune version) atomically, fsynced like every run file."""
    p = Path(path)
    data = to_dict(cfg)
    data["hybridtune_version"] = __version__
    atomic_write_text(p, yaml.safe_dump(data, sort_keys=False), "check the output directory")


__all__ = ["RunConfig", "TrainConfig", "config_type", "read_yaml", "build_config", "load_config", "load_quickstart",
           "quickstart_text", "save_config"]
