"""Re-run only the top of a model: the blocks from ``first`` upward, the final norm and ``lm_head``.

A learner that perturbs only the adapters of the top blocks (``rstdp``'s node perturbation with ``top_blocks``)
runs many forwards that differ from the clean one only from the lowest perturbed block upward; every block below
computes the same thing each time. :class:`TailCapture` keeps, during one ordinary model call, what each block from
``first`` upward was called with (positional and keyword arguments: the residual stream, the attention mask, the
position embeddings -- per block, since Gemma 3 gives local and global layers different ones). :meth:`TailCapture.
replay` then calls those blocks again in order, block ``first`` on the kept residual stream and each later one on
its predecessor's output, then the final norm and ``lm_head`` (and the logit soft-capping when the model's config
has one), under :func:`~hybridtune.adapters.sequence_context`, so the adapters see the same resets and padding as
in the model call. Hooks on the replayed modules run as in a model call, so perturbations attached to them apply.

KV caches are dropped from the kept arguments (a replay must not append to a cache). On every supported family
the replayed logits equal the model call's bit for bit on CPU (``tests/learners/test_tail.py``).

Example:
    >>> import torch
    >>> from hybridtune.testing import tiny_model, tiny_batch
    >>> model, batch = tiny_model("llama"), tiny_batch()
    >>> with torch.no_grad(), TailCapture(model, first=1) as tail:
    ...     logits = model(**batch).logits
    ...     replayed = tail.replay(tail.pop(), attention_mask=batch["attention_mask"])
    >>> torch.equal(logits, replayed)
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hybridtune.learners.depth import block_index

__all__ = ["TailCapture", "TailCall", "decoder_blocks"]


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's numbered decoder blocks in order (``layers.N`` for Llama-likes, ``h.N`` for GPT-2).

    Raises ValueError when none, or when more than one container of numbered blocks could be meant.
    """
    groups: dict[str, dict[int, nn.Module]] = {}
    for name, module in model.named_modules():
        parent, _, last = name.rpartition(".")
        if last.isdigit() and block_index(name) == int(last):  # the block itself, not a module inside it
            groups.setdefault(parent, {})[int(last)] = module
    if len(groups) != 1:
        what = "no" if not groups else f"{len(groups)} containers of ({', '.join(sorted(groups))})"
        raise ValueError(f"{type(model).__name__}: found {what} numbered decoder blocks (modules named layers.N, h.N "
                         "or blocks.N under one parent); a tail replay needs exactly one stack of them")
    blocks = next(iter(groups.values()))
    if sorted(blocks) != list(range(len(blocks))):
        raise ValueError(f"{type(model).__name__}: decoder block indices {sorted(blocks)} are not 0..n-1")
    return [blocks[i] for i in range(len(blocks))]


def _without_cache(value: Any) -> Any:
    """None for a KV cache object (a replay must not extend it), the value otherwise."""
    from transformers.cache_utils import Cache

    return None if isinstance(value, Cache) else value


@dataclass
class TailCall:
    """One model call's arguments to the blocks from ``first`` upward: ``(args, kwargs)`` per block, in order."""

    first: int
    calls: list[tuple[tuple, dict[str, Any]]]

    @property
    def hidden(self) -> Tensor:
        """The residual stream block ``first`` received."""
        args, kwargs = self.calls[0]
        return args[0] if args else kwargs["hidden_states"]


class TailCapture:
    """Context manager: keep the block arguments of every model call from block ``first`` upward (see the module
    docstring); :meth:`pop` returns the oldest call's, :meth:`replay` re-runs the top from them."""

    def __init__(self, model: nn.Module, first: int, blocks: list[nn.Module] | None = None,
                 norm: nn.Module | None = None, head: nn.Module | None = None):
        from hybridtune.learners.eprop.top import final_norm, output_head

        self.model = model
        self.blocks = blocks if blocks is not None else decoder_blocks(model)
        if not 0 <= first < len(self.blocks):
            raise ValueError(f"first: block {first} is not one of the model's {len(self.blocks)} blocks")
        self.first = first
        self.norm = norm if norm is not None else final_norm(model)
        self.head = head if head is not None else output_head(model)
        self.softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
        self._calls: list[TailCall] = []
        self._open: TailCall | None = None
        self._handles: list = []
        self._paused = False

    def _pre_hook(self, index: int, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if self._paused:
            return
        kept = (tuple(_without_cache(a) for a in args), {k: _without_cache(v) for k, v in kwargs.items()})
        if "use_cache" in kept[1]:
            kept[1]["use_cache"] = False
        if index == self.first:  # a new model call reaches the tail
            self._open = TailCall(self.first, [])
            self._calls.append(self._open)
        if self._open is not None and len(self._open.calls) == index - self.first:
            self._open.calls.append(kept)

    def __enter__(self) -> TailCapture:
        for index in range(self.first, len(self.blocks)):
            self._handles.append(self.blocks[index].register_forward_pre_hook(
                lambda module, args, kwargs, index=index: self._pre_hook(index, module, args, kwargs),
                with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._calls, self._open = [], [], None

    def pop(self) -> TailCall:
        """The oldest captured call not yet popped."""
        if not self._calls:
            raise RuntimeError("no model call reached the tail blocks: run the model forward inside the capture")
        call = self._calls.pop(0)
        if len(call.calls) != len(self.blocks) - self.first:
            raise RuntimeError(f"the captured call reached {len(call.calls)} of the {len(self.blocks) - self.first} "
                               "tail blocks")
        return call

    @contextmanager
    def _not_capturing(self) -> Iterator[None]:
        paused, self._paused = self._paused, True
        try:
            yield
        finally:
            self._paused = paused

    def replay(self, call: TailCall, attention_mask: Tensor | None = None, doc_start: Tensor | None = None) -> Tensor:
        """The logits ``[B, L, V]`` of the blocks from ``call.first`` upward, the final norm and ``lm_head``, run on
        the kept arguments (pass the model call's ``attention_mask`` / ``doc_start`` for the adapters' resets)."""
        from hybridtune.adapters import sequence_context

        hidden = call.hidden
        steps = hidden.shape[1]
        context = (sequence_context(self.model, attention_mask, doc_start, steps=steps)
                   if attention_mask is not None or doc_start is not None else nullcontext())
        with self._not_capturing(), context:
            for block, (args, kwargs) in zip(self.blocks[call.first:], call.calls):
                if args:
                    out = block(hidden, *args[1:], **kwargs)
                else:
                    out = block(**{**kwargs, "hidden_states": hidden})
                hidden = out[0] if isinstance(out, (tuple, list)) else out
            logits = self.head(self.norm(hidden))
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

