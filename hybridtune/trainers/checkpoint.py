"""Checkpoints that hold what training changes — never the frozen base model — written atomically, last K kept.

A checkpoint ``<run_dir>/checkpoints/step-00000040/`` holds:

- ``adapter.safetensors``: every learner-owned parameter, by name (the adapters, thresholds, decays, ...);
- ``learners.pt``: each learner's ``state_dict()`` (optimizer, scheduler, traces, baselines; tensors and plain data
  only, loaded with ``weights_only=True``);
- ``rng_<rank>.pt``: every rank's Python / NumPy / torch (CPU and CUDA) generator states;
- ``trainer_state.json``: step, data cursor, tokens seen, skipped steps, early-stopping state, W&B run id, and the
  SHA-256 of every other file of the checkpoint. It is written last, so its presence marks a complete checkpoint.

Ranks write into ``.tmp-step-...``, every file is ``fsync``-ed, and the main process renames the directory into
place once all are done (a rename is atomic on one file system), then deletes all but the newest ``keep_last``. A
run killed while saving leaves only a ``.tmp-`` directory, which the next save replaces and resume ignores. Resume
takes the newest checkpoint that *verifies* (:func:`verify_checkpoint`: the state file parses and every file has
its recorded hash), so a checkpoint damaged after the fact (a power loss, a full disk, a bad copy) falls back to the
one before it.

Example:
    >>> import tempfile, torch
    >>> d = tempfile.mkdtemp()
    >>> p = save_checkpoint(d, 3, adapter={"w": torch.ones(2)}, learners=[{"k": 1}], state={"cursor": 6})
    >>> ck = load_checkpoint(latest_checkpoint(d))
    >>> ck.state["step"], ck.state["cursor"], ck.adapter["w"].tolist(), ck.learners
    (3, 6, [1.0, 1.0], [{'k': 1}])
    >>> (p / "adapter.safetensors").write_bytes(b"torn")
    4
    >>> verify_checkpoint(p) is not None, newest_verified_checkpoint(d) is None
    (True, True)
"""

from __future__ import annotations

import os
import random
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from ..files import (
    FileError,
    atomic_write_json,
    fsync_dir,
    fsync_file,
    load_safetensors,
    load_torch,
    read_json,
    sha256_file,
    writing,
)

CHECKPOINTS = "checkpoints"
PREFIX = "step-"
STATE_FILE = "trainer_state.json"
FILES_KEY = "files"  # trainer_state.json: {file name: sha256} of the checkpoint's other files
REMEDY = ("the checkpoint is damaged; resume falls back to an older intact one on its own, or delete this "
          "checkpoint directory")


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
    """Write checkpoint ``step`` (every rank calls this; see the module docstring). Returns its final path.

    A failed write (disk full, permissions) raises :class:`~hybridtune.files.FileError` on the rank that hit it; the
    previous checkpoints are untouched.
    """
    is_main = accelerator is None or accelerator.is_main_process
    rank = 0 if accelerator is None else accelerator.process_index
    root = checkpoint_dir(run_dir)
    name = f"{PREFIX}{step:08d}"
    tmp, final = root / f".tmp-{name}", root / name
    with writing(tmp):
        if is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        _barrier(accelerator)
        rng_file = tmp / f"rng_{rank}.pt"
        torch.save(rng_state(), rng_file)
        fsync_file(rng_file)
        if is_main:
            save_file({k: v.detach().to("cpu").contiguous() for k, v in adapter.items()},
                      str(tmp / "adapter.safetensors"))
            torch.save(list(learners), tmp / "learners.pt")
            fsync_file(tmp / "adapter.safetensors")
            fsync_file(tmp / "learners.pt")
        _barrier(accelerator)
        if is_main:
            hashes = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            atomic_write_json(tmp / STATE_FILE, {**state, "step": int(step), FILES_KEY: hashes}, allow_nan=True)
            fsync_dir(tmp)
            if final.exists():  # re-saving a step after resume: replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(root)
            for old in list_checkpoints(run_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    _barrier(accelerator)
    return final


def verify_checkpoint(path: str | Path) -> str | None:
    """None when checkpoint ``path`` is intact, else what is wrong with it (one line naming the file).

    Checks that the state file parses and that every file it lists has the recorded SHA-256 (checkpoints written
    before hashes were recorded: that every file loads).
    """
    p = Path(path)
    try:
        state = read_json(p / STATE_FILE, REMEDY)
        if not isinstance(state, dict) or "step" not in state:
            return f"{p / STATE_FILE}: not a trainer state (no step)"
        hashes = state.get(FILES_KEY)
        if hashes is None:  # an older checkpoint: loading is the check
            load_checkpoint(p)
            return None
        for name, digest in hashes.items():
            f = p / name
            if not f.is_file():
                return f"{f}: missing"
            if sha256_file(f) != digest:
                return f"{f}: content differs from the hash recorded at save time (damaged)"
    except FileError as exc:
        return str(exc)
    return None


def newest_verified_checkpoint(run_dir: str | Path, say: Any = None) -> Path | None:
    """The newest checkpoint of ``run_dir`` that :func:`verify_checkpoint` accepts; damaged newer ones are reported
    through ``say`` (default: a warning) and skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        message = f"skipping damaged checkpoint {path.name}: {problem}"
        say(message) if say is not None else warnings.warn(message, stacklevel=2)
    return None


@dataclass
class Checkpoint:
    path: Path
    adapter: dict[str, torch.Tensor]
    learners: list[dict[str, Any]]
    state: dict[str, Any]
    rng: dict[str, Any] | None


def load_checkpoint(path: str | Path, rank: int = 0) -> Checkpoint:
    """Read a checkpoint (``rank`` picks whose RNG states; None if that rank has none, e.g. a larger world).

    A missing, truncated or corrupt file raises :class:`~hybridtune.files.FileError` naming it.
    """
    p = Path(path)
    if not (p / STATE_FILE).is_file():
        raise FileError(p, f"not a complete checkpoint (no {STATE_FILE})", REMEDY)
    rng_file = p / f"rng_{rank}.pt"
    state = read_json(p / STATE_FILE, REMEDY)
    state.pop(FILES_KEY, None)
    return Checkpoint(
        path=p,
        adapter=load_safetensors(p / "adapter.safetensors", REMEDY),
        learners=load_torch(p / "learners.pt", REMEDY),
        state=state,
        rng=load_torch(rng_file, REMEDY) if rng_file.is_file() else None,
    )


__all__ = ["CHECKPOINTS", "STATE_FILE", "Checkpoint", "checkpoint_dir", "list_checkpoints", "latest_checkpoint",
           "rng_state", "set_rng_state", "save_checkpoint", "load_checkpoint", "verify_checkpoint",
           "newest_verified_checkpoint"]
