"""How the padding / document-boundary reset mask and the state-carry decision reach the adapter layers.

Adapter layers only see the hidden states ``x [B, T, in]``, not the model call's ``attention_mask``. So
:func:`install_sequence_hook` puts one forward *pre*-hook (``with_kwargs=True``) on the transformers model that the
peft model wraps (``peft_model.base_model.model``; both the training forward and ``generate`` call it). Per model
call the hook:

1. pops the optional ``doc_start [B, T]`` kwarg (``True`` where a packed document starts; the model never sees it),
2. reads ``attention_mask`` (2-D ``[B, past + T]``; other shapes are ignored) and the KV cache (``cache``, or the
   older ``past_key_values``),
3. builds a :class:`SequenceInfo` -- ``reset = doc_start | pad[t] | pad[t-1]`` (padding never leaks into real tokens,
   and a token right after padding starts fresh), ``valid = attention_mask[:, -T:]``, and ``carry = True`` iff the
   cache already holds tokens (a generation step continues from the stored LIF membrane, like the KV cache),
4. hands it to every ``SpikingLoraLinear`` under the model for the duration of the call: a forward hook that
   runs even when the call raises puts back what the layers held before (None outside :func:`sequence_context`).

So no model call leaves its info behind. Gradient checkpointing re-runs layer forwards during backward, after the
call: a layer keeps the info of its last differentiable call with the membrane it started from (its replay record,
see ``SpikingLoraLinear``) and replays both. A layer uses the info only when its input's ``[B, T]`` matches.
Code that calls the model but cannot pass ``doc_start``
(e.g. ``hybridtune.perplexity``'s ``batch_context``), and calls that bypass the model (a layer called directly),
use :func:`sequence_context`.

Example:
    >>> import torch
    >>> reset_mask(torch.tensor([[0, 1, 1, 1]]), torch.tensor([[False, False, False, True]]), 4).tolist()
    [[True, True, False, True]]
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from hybridtune.models import cached_tokens

HOOK_ATTR = "_hybridtune_sequence_hook"
PENDING_ATTR = "_hybridtune_pending_doc_start"  # doc_start handed to the hook by sequence_context
LAYERS_ATTR = "_hybridtune_spiking_layers"  # the hooked model's adapter layers, listed once per install


@dataclass
class SequenceInfo:
    """What one model call tells the adapter layers: ``shape (B, T)``, ``reset [B, T]`` (LIF state is zeroed before
    integrating token t), ``valid [B, T]`` (non-padding tokens; None = all), ``carry`` (continue from the stored
    membrane instead of zeros)."""

    shape: tuple[int, int]
    reset: Tensor | None = None
    valid: Tensor | None = None
    carry: bool = False

    def matches(self, bsz: int, steps: int) -> bool:
        return self.shape == (bsz, steps)


def reset_mask(attention_mask: Tensor | None, doc_start: Tensor | None, steps: int) -> Tensor | None:
    """``reset [B, steps]`` from a 2-D ``attention_mask [B, past + steps]`` and/or ``doc_start [B, steps]``.

    ``reset[t] = doc_start[t] | pad[t] | pad[t-1]``, where ``pad[-1]`` comes from the mask's past columns (False when
    there are none: a fresh call starts from zeros anyway). None when neither mask is given.
    """
    reset = None
    if attention_mask is not None and attention_mask.dim() == 2:
        width = attention_mask.shape[1]
        if width < steps:
            raise ValueError(f"attention_mask covers {width} tokens but the call has {steps}")
        valid = attention_mask.bool()
        pad = ~valid[:, width - steps:]
        if width > steps:
            prev_pad = ~valid[:, width - steps - 1: width - 1]
        else:
            prev_pad = torch.cat([torch.zeros_like(pad[:, :1]), pad[:, :-1]], dim=1)
        reset = pad | prev_pad
    if doc_start is not None:
        if doc_start.dim() != 2 or doc_start.shape[1] != steps:
            raise ValueError(f"doc_start must be [B, T={steps}] bool; got shape {list(doc_start.shape)}")
        reset = doc_start.bool() if reset is None else reset | doc_start.bool()
    return reset


@runtime_checkable
class SequenceConsumer(Protocol):
    """A layer that reads the sequence info of the current call (the spiking LoRA layers)."""

    sequence_info: SequenceInfo | None


def spiking_layers(model: nn.Module) -> Iterator[nn.Module]:
    return (m for m in model.modules() if isinstance(m, SequenceConsumer))


def set_sequence_info(model: nn.Module, info: SequenceInfo | None) -> list[SequenceInfo | None]:
    """Hand ``info`` to the adapter layers of ``model``; returns what each held before (for :func:`restore`)."""
    layers = getattr(model, LAYERS_ATTR, None)  # cached on a hooked model: no module walk per forward
    layers = list(spiking_layers(model)) if layers is None else layers
    previous = [layer.sequence_info for layer in layers]
    for layer in layers:
        layer.sequence_info = info
    return previous


def restore_sequence_info(model: nn.Module, previous: list[SequenceInfo | None]) -> None:
    layers = getattr(model, LAYERS_ATTR, None)
    for layer, info in zip(list(spiking_layers(model)) if layers is None else layers, previous):
        layer.sequence_info = info


def sequence_info_from_call(arguments: dict) -> SequenceInfo | None:
    """Build the info from a model call's bound arguments (``input_ids`` / ``inputs_embeds``, ``attention_mask``,
    ``cache`` / ``past_key_values``, ``doc_start``)."""
    ids = arguments.get("input_ids")
    if ids is None:
        embeds = arguments.get("inputs_embeds")
        if embeds is None:
            return None
        bsz, steps = embeds.shape[:2]
    else:
        bsz, steps = ids.shape[:2] if ids.dim() >= 2 else (1, ids.shape[0])
    mask = arguments.get("attention_mask")
    mask = mask if isinstance(mask, Tensor) and mask.dim() == 2 else None
    doc_start = arguments.get("doc_start")
    if doc_start is not None:
        device = (ids if ids is not None else arguments["inputs_embeds"]).device
        doc_start = doc_start.to(device)
    reset = reset_mask(mask, doc_start, steps)
    valid = mask[:, mask.shape[1] - steps:].bool() if mask is not None else None
    return SequenceInfo((bsz, steps), reset=reset, valid=valid, carry=cached_tokens(arguments) > 0)


def install_sequence_hook(hf_model: nn.Module) -> None:
    """Attach the pre-hook and the restoring hook to ``hf_model`` (idempotent) and (re)list its adapter layers.
    ``hf_model`` is the
    transformers model the adapters live in (``peft_model.base_model.model``); call again after adding adapters
    on new target modules (the spiking peft model's ``add_adapter`` / ``load_adapter`` do)."""
    object.__setattr__(hf_model, LAYERS_ATTR, list(spiking_layers(hf_model)))
    if getattr(hf_model, HOOK_ATTR, None) is not None:
        return
    signature = inspect.signature(hf_model.forward)
    outer: list[list[SequenceInfo | None]] = []  # what the layers held before each call in flight (re-entrant calls)

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict):
        doc_start = kwargs.pop("doc_start", None)
        try:
            arguments = signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            arguments = dict(kwargs)
        extra = arguments.pop("kwargs", None)
        if isinstance(extra, dict):
            arguments.update(extra)
        pending = getattr(module, PENDING_ATTR, None)
        if doc_start is None and pending is not None:
            ref = arguments.get("input_ids")
            ref = ref if ref is not None else arguments.get("inputs_embeds")
            if ref is not None and tuple(pending.shape) == tuple(ref.shape[:2]):
                doc_start = pending
        arguments["doc_start"] = doc_start
        outer.append(set_sequence_info(module, sequence_info_from_call(arguments)))
        return args, kwargs

    def post_hook(module: nn.Module, args: tuple, kwargs: dict, output):
        if outer:
            restore_sequence_info(module, outer.pop())

    handle = hf_model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    hf_model.register_forward_hook(post_hook, with_kwargs=True, always_call=True)
    setattr(hf_model, HOOK_ATTR, handle)


@contextlib.contextmanager
def sequence_context(model: nn.Module, attention_mask: Tensor | None = None, doc_start: Tensor | None = None,
                     steps: int | None = None, carry: bool = False) -> Iterator[SequenceInfo]:
    """Hand sequence information to the adapters of ``model`` for the duration of the block.

    * Around **model calls** (code that cannot pass the ``doc_start`` kwarg, e.g. ``perplexity(...,
      batch_context=lambda b: sequence_context(model, doc_start=b.get("doc_start")))``): ``doc_start`` is given to
      the sequence hook, which uses it for every call whose ``[B, T]`` matches (the call's own ``attention_mask``
      and cache still apply).
    * Around **direct layer calls** (no model forward, no hook): the info -- reset from ``attention_mask`` /
      ``doc_start``, ``carry`` -- is set on the layers themselves.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> with sequence_context(nn.Linear(2, 2), doc_start=torch.tensor([[True, False, True]])) as info:
        ...     info.reset.tolist()
        [[True, False, True]]
    """
    ref = doc_start if doc_start is not None else attention_mask
    if steps is None:
        if ref is None:
            raise ValueError("sequence_context needs attention_mask, doc_start or steps")
        steps = doc_start.shape[1] if doc_start is not None else attention_mask.shape[1]
    bsz = ref.shape[0] if ref is not None else 1
    valid = attention_mask[:, attention_mask.shape[1] - steps:].bool() if attention_mask is not None else None
    info = SequenceInfo((bsz, steps), reset_mask(attention_mask, doc_start, steps), valid, carry)
    hooked = [m for m in model.modules() if getattr(m, HOOK_ATTR, None) is not None]
    for module in hooked:
        setattr(module, PENDING_ATTR, doc_start)
    previous = set_sequence_info(model, info)
    try:
        yield info
    finally:
        for module in hooked:
            setattr(module, PENDING_ATTR, None)
        restore_sequence_info(model, previous)
