"""What the trainer does to make a base fit in memory, as the run config asks: gradient checkpointing for the
duration of a run (undone afterwards), and FSDP2 sharding of the frozen base (``trainer.sharding: fsdp``).

Gradient checkpointing recomputes each decoder block's activations during backward instead of keeping them: less
memory for surrogate training, one more forward of every block per step. :func:`gradient_checkpointing` switches it
on for a ``with`` block and leaves the model's flags as it found them on exit, so a model handed to the trainer is
not left in a mode its owner did not choose.

Sharding (:func:`shard_for_training`) uses torch's FSDP2 directly (:mod:`hybridtune.sharding`): each of N ranks
stores 1 / N of every frozen base weight and all-gathers a block's weights around its forward and backward, while
every parameter a learner owns stays whole and replicated on every rank. Sharding changes the model in place (that
is what frees the memory: the full weights are dropped); a model sharded once is not sharded again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..config_schema import ConfigError
from ..sharding import shard_frozen_base


def _hf_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (the one that owns ``gradient_checkpointing_enable``)."""
    return getattr(getattr(model, "base_model", None), "model", model)


def checkpointing_flags(model: nn.Module) -> tuple[bool, bool]:
    """``(blocks recompute in backward, the input embeddings' require-grad hook is attached)`` of ``model``."""
    hf = _hf_model(model)
    on = any(getattr(m, "gradient_checkpointing", False) is True for m in hf.modules())
    return on, getattr(hf, "_require_grads_hook", None) is not None


@contextmanager
def gradient_checkpointing(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Recompute block activations in backward inside the block (non-reentrant checkpoints, which record nothing
    twice: stateful neurons and spike recordings see one forward); restore the model's own setting on exit."""
    hf = _hf_model(model)
    before = checkpointing_flags(model)
    if not enabled or before[0]:
        yield
        return
    kwargs = {"use_reentrant": False}
    if hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5.x's name
        enable, disable = (lambda: hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs),
                           hf.activation_checkpointing_disable)
    elif hasattr(hf, "gradient_checkpointing_enable"):
        enable, disable = (lambda: hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs),
                           hf.gradient_checkpointing_disable)
    else:
        raise ConfigError(f"{type(hf).__name__} does not support gradient checkpointing; set it to false",
                          "trainer.gradient_checkpointing")
    enable()
    if not before[1] and hasattr(hf, "enable_input_require_grads"):  # inputs of checkpointed blocks need grads
        hf.enable_input_require_grads()
    try:
        yield
    finally:
        disable()
        if not before[1] and getattr(hf, "_require_grads_hook", None) is not None:
            hf.disable_input_require_grads()


def shard_for_training(model: nn.Module, owned: Iterable[nn.Parameter], world_size: int) -> bool:
    """Shard ``model``'s frozen base over the ranks with FSDP2, every ``owned`` (learner) parameter kept whole.

    Returns whether the model is sharded: one process has nothing to shard over (the run goes on unsharded), and a
    model that is sharded already (a later stage of a continual run) stays as it is."""
    from torch.distributed.fsdp import FSDPModule

    if world_size < 2:
        return False
    if any(isinstance(m, FSDPModule) for m in model.modules()):
        return True
    if not torch.distributed.is_initialized():  # pragma: no cover - Accelerate initialises it for every multi-process run
        raise ConfigError("fsdp needs the processes' group, which is not initialised; launch with torchrun or "
                          "accelerate launch", "trainer.sharding")
    shard_frozen_base(model, trainable=list(owned))
    return True


__all__ = ["checkpointing_flags", "gradient_checkpointing", "shard_for_training"]
