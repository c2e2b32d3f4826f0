"""The ``continual:`` section of a run config: the domains in order, the adapter strategy, replay and the
regulariser (``hybridtune continual``; ``hybridtune train`` ignores it). ``continual.*`` keys are overridden and swept
like every other key.

Example:
    >>> ContinualSection(domains=["python-docs", "python-code"], adapter="per_task").replay.share
    0.0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from hybridtune.config_schema import ConfigError, to_dict

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


__all__ = ["ContinualSection", "ReplaySection", "RegularizerSection", "DEFAULT_DOMAINS"]
