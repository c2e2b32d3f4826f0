"""The typed run configuration: one tree of dataclass sections, YAML files, ``key.sub=value`` overrides.

- :mod:`.run`: :class:`RunConfig` (every section), :func:`load_config`, :func:`save_config`, the quick start;
- :mod:`.sections`: model, adapter, learners, data, trainer, ops, tracking;
- :mod:`.conversion`: :class:`ConversionConfig`, the one conversion config (``ht.convert`` uses it too);
- :mod:`.continual`: the ``continual:`` section;
- :mod:`.overrides`: the one override parser.

Every error is a :class:`ConfigError` naming the file, the dotted key and what is allowed; the CLI turns it into
exit code 2 before any work starts.

Example:
    >>> cfg = load_config(None, ["trainer.steps=5", "--adapter.r=4"])
    >>> (cfg.trainer.steps, cfg.adapter.r)
    (5, 4)
"""

from __future__ import annotations

from hybridtune.config.continual import DEFAULT_DOMAINS, ContinualSection, RegularizerSection, ReplaySection
from hybridtune.config.conversion import COVERAGE_LEVELS, ConversionConfig
from hybridtune.config.overrides import apply_overrides, is_override, parse_override, set_dotted
from hybridtune.config.run import (
    RunConfig,
    TrainConfig,
    build_config,
    config_type,
    load_config,
    load_quickstart,
    quickstart_text,
    read_yaml,
    save_config,
)
from hybridtune.config.sections import *  # noqa: F403 -- every section class (sections.__all__)
from hybridtune.config.sections import __all__ as _SECTIONS
from hybridtune.config_schema import ConfigError, to_dict

# The run config's ``conversion`` section is the conversion config itself (the name of earlier versions).
ConversionSection = ConversionConfig

__all__ = [
    *_SECTIONS, "ConfigError", "RunConfig", "TrainConfig", "ConversionConfig", "ConversionSection",
    "ContinualSection", "ReplaySection", "RegularizerSection", "DEFAULT_DOMAINS", "load_config", "build_config",
    "load_quickstart", "quickstart_text", "save_config", "parse_override", "apply_overrides", "set_dotted",
    "is_override", "config_type", "read_yaml", "COVERAGE_LEVELS", "to_dict",
]
