"""Checkpoints that hold what training changes — never the frozen base model — written atomically, last K kept.

A checkpoint ``<run_dir>/checkpoints/step-00000040/`` holds:

- ``adapter.safetensors``: every learner-owned parameter, by name (the adapters, thresholds, decays, ...);
- ``learners.pt``: each learner's ``state_dict()`` (optimizer, scheduler, traces, baselines; tensors and plain data
  only, loaded with ``weights_only=True``);
- ``rng_<rank>.pt``: every rank's Python / NumPy / torch (CPU and CUDA) generator states;
- ``trainer_state.json``: step, data cursor, tokens seen, skipped steps, early-stopping state, W&B run id. It is
  written last, so its presence marks a complete checkpoint.

Ranks write into ``.tmp-step-...`` and the main process renames it into place once all are done (a rename is atomic
on one file system), then deletes all but the newest ``keep_last``. A run killed while saving leaves only a
``.tmp-`` directory, which the next save replaces and resume ignores.

Example:
    >>> import tempfile, torch
    >>> d = tempfile.mkdtemp()
    >>> p = save_checkpoint(d, 3, adapter={"w": torch.ones(2)}, learners=[{"k": 1}], state={"cursor": 6})
    >>> ck = load_checkpoint(latest_checkpoint(d))
    >>> ck.state["step"], ck.state["cursor"], ck.adapter["w"].tolist(), ck.learners
    (3, 6, [1.0, 1.0], [{'k': 1}])
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CHECKPOINTS = "checkpoints"
PREFIX = "step-"
STATE_FILE = "trainer_state.json"


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def rng_state() -> dict[str, Any]:
    """This process's generator states in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _barrier(accelerator: Any) -> None:
    if accelerator is not None:
        accelerator.wait_for_everyone()


def save_checkpoint(run_dir: str | Path, step: int, *, adapter: Mapping[str, torch.Tensor],
                    learners: list[Mapping[str, Any]], state: Mapping[str, Any], keep_last: int = 2,
                    accelerator: Any = None) -> Path:
    """Write checkpoint ``step`` (every rank calls this; see the module docstring). Returns its final path."""
    is_main = accelerator is None or accelerator.is_main_process
    rank = 0 if accelerator is None else accelerator.process_index
    root = checkpoint_dir(run_dir)
    name = f"{PREFIX}{step:08d}"
    tmp, final = root / f".tmp-{name}", root / name
    if is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    _barrier(accelerator)
    torch.save(rng_state(), tmp / f"rng_{rank}.pt")
    if is_main:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in adapter.items()}, str(tmp / "adapter.safetensors"))
        torch.save(list(learners), tmp / "learners.pt")
    _barrier(accelerator)
    if is_main:
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": int(step)}, indent=2))
        if final.exists():  # re-saving a step after resume: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier(accelerator)
    return final


@dataclass
class Checkpoint:
    path: Path
    adapter: dict[str, torch.Tensor]
    learners: list[dict[str, Any]]
    state: dict[str, Any]
    rng: dict[str, Any] | None


def load_checkpoint(path: str | Path, rank: int = 0) -> Checkpoint:
    """Read a checkpoint (``rank`` picks whose RNG states; None if that rank has none, e.g. a larger world)."""
    p = Path(path)
    if not (p / STATE_FILE).is_file():
        raise FileNotFoundError(f"{p} is not a complete checkpoint (no {STATE_FILE})")
    rng_file = p / f"rng_{rank}.pt"
    return Checkpoint(
        path=p,
        adapter=load_file(str(p / "adapter.safetensors")),
        learners=torch.load(p / "learners.pt", weights_only=True),
        state=json.loads((p / STATE_FILE).read_text()),
        rng=torch.load(rng_file, weights_only=True) if rng_file.is_file() else None,
    )


__all__ = ["CHECKPOINTS", "STATE_FILE", "Checkpoint", "checkpoint_dir", "list_checkpoints", "latest_checkpoint",
           "rng_state", "set_rng_state", "save_checkpoint", "load_checkpoint"]
