"""Ctrl-C and SIGTERM end a training run at the next step boundary, with a checkpoint, then exit 130 / 143.

The command line (``hybridtune train``, ``quickstart``) enters :func:`checkpoint_on_signals` around the job; a
library caller that does not is left with Python's default handling (a library never installs signal handlers
behind its caller's back). Inside, the handlers only *record* a signal while the trainer is in its loop
(:func:`deferred`); the loop checks :func:`pending` after every optimizer step, agrees on it across ranks, saves a
checkpoint and raises :class:`TrainingInterrupted`, which the CLI turns into exit status ``128 + signal``. Outside
the loop (loading, converting) a signal interrupts at once; a second signal while one is pending does too.

Example:
    >>> import os, signal
    >>> with checkpoint_on_signals(), deferred():
    ...     os.kill(os.getpid(), signal.SIGTERM)
    ...     pending()
    15
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal (after its checkpoint, when one could be written); ``exit_code`` = 128 + signum."""

    def __init__(self, signum: int, checkpoint: str | None = None):
        self.signum, self.checkpoint = int(signum), checkpoint
        self.exit_code = 128 + self.signum
        name = signal.Signals(self.signum).name
        where = f"; checkpoint {checkpoint} written, continue with --resume" if checkpoint else ""
        super().__init__(f"stopped by {name}{where}")


class _State:
    installed = False
    deferring = False
    pending: int | None = None


_STATE = _State()


def _handler(signum, frame) -> None:
    if _STATE.deferring and _STATE.pending is None:
        _STATE.pending = signum  # finish the step, checkpoint, then stop
        return
    raise TrainingInterrupted(signum)


@contextmanager
def checkpoint_on_signals() -> Iterator[None]:
    """Install the SIGINT / SIGTERM handlers for the block (main thread only; restored afterwards)."""
    if threading.current_thread() is not threading.main_thread() or _STATE.installed:
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _handler)
    _STATE.installed, _STATE.pending = True, None
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _STATE.installed, _STATE.deferring, _STATE.pending = False, False, None


@contextmanager
def deferred() -> Iterator[None]:
    """While inside, an installed handler records the signal instead of raising (the training loop)."""
    before = _STATE.deferring
    _STATE.deferring = _STATE.installed
    try:
        yield
    finally:
        _STATE.deferring = before


def armed() -> bool:
    """Whether :func:`checkpoint_on_signals` is active (the same on every rank of a launched job)."""
    return _STATE.installed


def pending() -> int | None:
    """The signal recorded inside :func:`deferred`, if any."""
    return _STATE.pending


def clear() -> None:
    _STATE.pending = None


def agreed_signal(accelerator: Any = None) -> int | None:
    """The signal every rank agrees to stop on (the largest any rank received), or None; every rank must call it
    at the same point of the loop."""
    if not armed():
        return None
    signum = pending() or 0
    if accelerator is not None and accelerator.num_processes > 1:
        import torch

        flag = torch.tensor([signum], device=accelerator.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        signum = int(flag[0])
    return signum or None


__all__ = ["TrainingInterrupted", "checkpoint_on_signals", "deferred", "armed", "pending", "clear", "agreed_signal", "SIGNALS"]
