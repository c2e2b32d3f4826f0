"""What a continual run records at every stage boundary, so ``--resume`` can continue mid-sequence.

In the run directory:

- ``continual_state.json``: stages completed, the baseline row, the matrix rows so far, steps per stage, the W&B
  run id, per-stage summaries. Written last at a boundary (atomic rename), so it always describes a consistent
  boundary.
- ``continual_state.pt``: every strategy's ``state_dict()`` after stage ``k`` (replay buffer, EWC sums), loaded with
  ``weights_only=True``.
- ``adapters/stage-<k>.safetensors``: every adapter parameter of every named adapter after stage ``k`` (all tasks'
  adapters for ``per_task``), the state a resumed run starts the next stage from.
- ``stages/<k>-<domain>/``: the stage trainer's own run directory (``checkpoints/``, ``metrics.jsonl``,
  ``report.json``, ``curves.png``); a run killed inside stage ``k`` resumes from its newest checkpoint there.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> save_json_state(d, ContinualState(completed=1, baseline=[3.0], rows=[[2.0]]))
    >>> load_json_state(d).rows
    [[2.0]]
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from hybridtune.files import atomic_write, atomic_write_text, load_safetensors, load_torch, read_json

REMEDY = "the continual run directory is damaged; restore it from a copy or start again with trainer.overwrite=true"

STATE_JSON = "continual_state.json"
STATE_PT = "continual_state.pt"
ADAPTERS_DIR = "adapters"
STAGES_DIR = "stages"
SECTION_FILE = "continual.yaml"


@dataclass
class ContinualState:
    completed: int = 0  # stages whose matrix row is recorded
    baseline: list[float] | None = None
    rows: list[list[float]] = field(default_factory=list)
    stage_steps: list[int] = field(default_factory=list)
    stage_reports: list[dict[str, Any]] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    wandb_id: str | None = None

    @property
    def global_step(self) -> int:
        return sum(self.stage_steps)


def save_json_state(run_dir: str | Path, state: ContinualState) -> None:
    atomic_write_text(Path(run_dir) / STATE_JSON, json.dumps(asdict(state), indent=2, default=str) + "\n")


def load_json_state(run_dir: str | Path) -> ContinualState | None:
    path = Path(run_dir) / STATE_JSON
    if not path.is_file():
        return None
    data = read_json(path, REMEDY)
    fields = ContinualState.__dataclass_fields__
    return ContinualState(**{k: v for k, v in data.items() if k in fields})


def save_strategy_states(run_dir: str | Path, stage: int, states: list[dict[str, Any]]) -> None:
    atomic_write(Path(run_dir) / STATE_PT, lambda tmp: torch.save({"stage": int(stage), "strategies": states}, tmp))


def load_strategy_states(run_dir: str | Path, stage: int) -> list[dict[str, Any]]:
    path = Path(run_dir) / STATE_PT
    data = load_torch(path, REMEDY)
    if int(data["stage"]) != stage:
        raise ValueError(f"{path} holds the strategies after stage {data['stage']}, but {STATE_JSON} says stage "
                         f"{stage} was the last completed; the run directory is inconsistent")
    return list(data["strategies"])


def adapter_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Every parameter of every named adapter of a peft model (``.<adapter>.`` in its name); for a model without
    ``peft_config``, every parameter that requires grad."""
    names = list(getattr(model, "peft_config", {}) or {})
    if not names:
        return {n: p for n, p in model.named_parameters() if p.requires_grad}
    pattern = re.compile(r"\.(" + "|".join(re.escape(a) for a in names) + r")(\.|$)")
    return {n: p for n, p in model.named_parameters() if pattern.search(n)}


def snapshot_path(run_dir: str | Path, stage: int) -> Path:
    return Path(run_dir) / ADAPTERS_DIR / f"stage-{stage:02d}.safetensors"


def save_snapshot(run_dir: str | Path, stage: int, model: torch.nn.Module) -> Path:
    path = snapshot_path(run_dir, stage)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in adapter_parameters(model).items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


@torch.no_grad()
def load_snapshot(run_dir: str | Path, stage: int, model: torch.nn.Module) -> None:
    """Copy the adapters saved after ``stage`` into ``model`` (which must already hold adapters of those names)."""
    path = snapshot_path(run_dir, stage)
    saved = load_safetensors(path, REMEDY)
    params = adapter_parameters(model)
    missing = sorted(set(saved) - set(params))
    if missing:
        raise ValueError(f"{path} has adapter parameters the model lacks: {missing[:3]}; resume with the same "
                         f"continual.adapter strategy and adapter settings")
    for name, tensor in saved.items():
        params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def stage_dir(run_dir: str | Path, stage: int, label: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.#-]+", "_", label).strip("_") or "domain"
    return Path(run_dir) / STAGES_DIR / f"{stage:02d}-{safe}"


__all__ = ["ContinualState", "STATE_JSON", "STATE_PT", "ADAPTERS_DIR", "STAGES_DIR", "SECTION_FILE",
           "save_json_state", "load_json_state", "save_strategy_states", "load_strategy_states",
           "adapter_parameters", "snapshot_path", "save_snapshot", "load_snapshot", "stage_dir"]
