"""The ``continual:`` section of a run YAML and the loader that reads it beside the ordinary run config.

Until the section moves into :class:`hybridtune.config.RunConfig`, :func:`load_continual_config` takes the
``continual`` mapping (and every ``continual.x=y`` / ``--continual.x=y`` override) out of the file, builds
:class:`ContinualSection` with the same schema machinery (``hybridtune.config_schema.build``), and hands the rest to
:func:`hybridtune.config.load_config` unchanged. Errors are :class:`ConfigError` naming the file and
``continual.<key>`` (exit code 2 in the CLI). Once ``RunConfig`` has a ``continual`` field, the loader just
returns ``cfg.continual``.

Example:
    >>> cfg, cont = load_continual_config(None, ["continual.adapter=per_task", "trainer.steps=3",
    ...                                          "continual.domains=[python-docs, python-code]"])
    >>> cont.adapter, cont.domains, cfg.trainer.steps
    ('per_task', ['python-docs', 'python-code'], 3)
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_type_hints

import yaml

from hybridtune.config import RunConfig, load_config, parse_override, read_yaml
from hybridtune.config_schema import ConfigError, build, field_type, to_dict

SECTION = "continual"
DEFAULT_DOMAINS = ("python-docs", "python-code", "unicode-names")


@dataclass
class ReplaySection:
    """Replay: ``share`` of every micro-batch (``round(share * trainer.batch_size)`` blocks per process) comes from a
    bounded buffer of earlier domains' training blocks (``buffer_blocks`` in all, split evenly among the domains
    seen so far). ``share: 0`` switches replay off."""

    share: float = 0.0
    buffer_blocks: int = 64

    def validate(self) -> None:
        if not 0.0 <= self.share < 1.0:
            raise ConfigError(f"got {self.share}; must be in [0, 1) (0 = no replay)", "share")
        if self.buffer_blocks < 1:
            raise ConfigError(f"got {self.buffer_blocks}; must be >= 1", "buffer_blocks")


@dataclass
class RegularizerSection:
    """A penalty that keeps the shared adapter near what earlier domains needed.

    ``ewc``: elastic weight consolidation on the adapter parameters, ``(strength/2) * sum_k sum_i F_k,i (theta_i -
    theta*_k,i)^2`` with the diagonal empirical Fisher ``F_k`` of domain ``k`` (``fisher_blocks`` training blocks,
    normalised to mean 1) and ``theta*_k`` the adapter after stage ``k``. Its gradient joins the backprop learners'
    gradients; parameters of local (no-backward) learners are pulled toward ``theta*`` by ``local_rate`` per step
    (0: the penalty leaves them alone).
    """

    name: Literal["none", "ewc"] = "none"
    strength: float = 1.0
    fisher_blocks: int = 16
    local_rate: float = 0.0

    def validate(self) -> None:
        if self.strength < 0:
            raise ConfigError(f"got {self.strength}; must be >= 0", "strength")
        if self.fisher_blocks < 1:
            raise ConfigError(f"got {self.fisher_blocks}; must be >= 1", "fisher_blocks")
        if self.local_rate < 0:
            raise ConfigError(f"got {self.local_rate}; must be >= 0", "local_rate")


@dataclass
class ContinualSection:
    """Continual learning through ``domains`` in order (built-in names or user paths; ``data.*`` settings apply to
    each). ``trainer.steps`` is the number of optimizer steps *per domain*.

    ``adapter``: ``shared`` (one adapter trained through the whole sequence) or ``per_task`` (a fresh named adapter
    ``task<k>`` per domain; evaluation on domain ``j`` after stage ``i`` routes to ``task<min(j, i)>``).
    ``stage_eval``: also evaluate the current domain during its stage (every ``trainer.eval_every`` steps, early
    stopping); the matrix is measured either way. ``heatmap``: write ``heatmap.png``.
    """

    domains: list[str] = field(default_factory=lambda: list(DEFAULT_DOMAINS))
    adapter: Literal["shared", "per_task"] = "shared"
    replay: ReplaySection = field(default_factory=ReplaySection)
    regularizer: RegularizerSection = field(default_factory=RegularizerSection)
    stage_eval: bool = True
    heatmap: bool = True

    def validate(self) -> None:
        if not self.domains:
            raise ConfigError("empty; list the domains in training order (e.g. [python-docs, python-code])",
                              "domains")
        for i, name in enumerate(self.domains):
            if not name:
                raise ConfigError("empty domain name", f"domains[{i}]")
        if self.adapter == "per_task" and self.replay.share > 0:
            raise ConfigError("replay with per_task adapters would train each task's adapter on earlier domains it "
                              "is never evaluated on; use adapter: shared with replay, or replay.share: 0",
                              "replay.share")
        if self.adapter == "per_task" and self.regularizer.name != "none":
            raise ConfigError(f"{self.regularizer.name} protects parameters shared between domains; per_task "
                              f"adapters share none. Use adapter: shared, or regularizer.name: none",
                              "regularizer.name")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    node: Any = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        if isinstance(node, list) and part.isdigit():
            node = node[int(part)]
            continue
        node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"cannot set a sub-key of a value ({node!r})", f"{SECTION}.{dotted}")
    last = parts[-1]
    if isinstance(node, list) and last.isdigit():
        if int(last) >= len(node):
            raise ConfigError(f"index {last} is past the end of the list ({len(node)} items)", f"{SECTION}.{dotted}")
        node[int(last)] = value
    else:
        node[last] = value


def split_overrides(overrides: list[str] | tuple[str, ...]) -> tuple[list[tuple[str, Any]], list[str]]:
    """(``continual`` overrides as (sub-key, value), every other override unchanged), in their order."""
    mine, rest = [], []
    for item in overrides:
        key, value = parse_override(item)
        if key == SECTION or key.startswith(SECTION + "."):
            mine.append((key[len(SECTION) + 1:], value))
        else:
            rest.append(item)
    return mine, rest


def build_section(data: Any, overrides: list[tuple[str, Any]] = (), source: str | None = None) -> ContinualSection:
    """:class:`ContinualSection` from the YAML mapping plus parsed overrides (errors name ``continual.<key>``)."""
    tree = copy.deepcopy(data) if data is not None else {}
    try:
        if not isinstance(tree, dict):
            raise ConfigError(f"expected a mapping, got {tree!r}", SECTION)
        for sub, value in overrides:
            if not sub:
                if not isinstance(value, dict):
                    raise ConfigError(f"got {value!r}; expected a mapping", SECTION)
                tree = copy.deepcopy(value)
                continue
            field_type(ContinualSection, ".".join(p for p in sub.split(".") if not p.isdigit()))
            _set_dotted(tree, sub, value)
        return build(ContinualSection, tree, SECTION)
    except ConfigError as exc:
        key = exc.key if exc.key.startswith(SECTION) else f"{SECTION}.{exc.key}" if exc.key else SECTION
        raise ConfigError(exc.detail, key, source) from None


def load_continual_config(path: str | Path | None = None,
                          overrides: list[str] | tuple[str, ...] = ()) -> tuple[RunConfig, ContinualSection]:
    """The run config and its ``continual`` section from one YAML file plus overrides (see the module docstring)."""
    if SECTION in get_type_hints(RunConfig):  # the section has moved into RunConfig: nothing to split
        cfg = load_config(path, overrides)
        return cfg, getattr(cfg, SECTION)
    source = str(path) if path else None
    try:
        data = read_yaml(path) if path else {}
        mine, rest = split_overrides(overrides)
    except ConfigError as exc:
        raise exc.with_source(exc.source or source) from None
    section = build_section(data.pop(SECTION, None), mine, source)
    with tempfile.TemporaryDirectory(prefix="hybridtune-continual-") as tmp:
        stripped = Path(tmp) / "run.yaml"
        stripped.write_text(yaml.safe_dump(data, sort_keys=False))
        try:
            cfg = load_config(stripped, rest)
        except ConfigError as exc:  # name the user's file, not the temporary copy
            raise exc.with_source(source) from None
    return cfg, section


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
           "build_section", "split_overrides", "check_resumable_section"]
