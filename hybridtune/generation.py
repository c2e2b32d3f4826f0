"""Text generation from a spiking model (optionally with a spiking LoRA adapter), with its spike / energy account.

:func:`generate_text` wraps Hugging Face ``generate``: tokens stream to a callback as they are decoded, stateful
(LIF) adapters carry their membrane from token to token exactly as in training (the sequence hook sees the KV cache
and sets ``carry``; see :mod:`hybridtune.adapters.sequence`), and every forward of the generation -- the prompt's
prefill and each decode step -- is counted by :func:`hybridtune.accounting.census.count_ops`, so the result holds
spikes per neuron, SOPs and the energy estimate of exactly the tokens this generation processed.

Beam search reorders the KV cache between steps but not the LIF membranes of stateful adapters, so it is refused
for them (:class:`GenerationError`); memoryless adapters (``mt``, ``heaviside``) and bases without adapters can
beam-search.

Example:
    >>> from hybridtune.testing import tiny_model, tiny_tokenizer
    >>> out = generate_text(tiny_model("llama"), tiny_tokenizer(), "ab", GenerationSettings(max_new_tokens=3))
    >>> len(out.token_ids)
    3
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


class GenerationError(ValueError):
    """Settings or inputs generation cannot honour; the message names the culprit and what would be valid."""


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings (greedy unless ``do_sample``); ``seed`` makes sampling reproducible."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    num_beams: int = 1
    repetition_penalty: float = 1.0
    seed: int | None = None

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if not self.temperature > 0:
            raise GenerationError(f"temperature={self.temperature} must be > 0")
        if self.top_k is not None and self.top_k < 1:
            raise GenerationError(f"top_k={self.top_k} must be >= 1")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p={self.top_p} must lie in (0, 1]")
        if self.num_beams < 1:
            raise GenerationError(f"num_beams={self.num_beams} must be >= 1")
        if not self.repetition_penalty > 0:
            raise GenerationError(f"repetition_penalty={self.repetition_penalty} must be > 0")

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for ``model.generate`` (sampling knobs only when sampling)."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                                  "num_beams": self.num_beams, "repetition_penalty": self.repetition_penalty}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_k=self.top_k or 0, top_p=self.top_p or 1.0)
        return kwargs


@dataclass
class GenerationResult:
    """What one generation produced: the new text and ids, the prompt length, and its accounting report."""

    prompt: str
    text: str
    token_ids: list[int]
    prompt_tokens: int
    settings: dict[str, Any]
    accounting: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def stateful_adapters(model: nn.Module) -> list[str]:
    """Names of the modules holding a stateful (LIF) bottleneck neuron that carries a membrane across tokens."""
    from hybridtune.adapters import BottleneckNeuron

    return [name for name, m in model.named_modules() if isinstance(m, BottleneckNeuron) and m.strategy.stateful]


def check_settings(model: nn.Module, settings: GenerationSettings) -> None:
    """Refuse what this model cannot decode correctly (beam search with stateful adapters)."""
    settings.validate()
    if settings.num_beams > 1:
        stateful = stateful_adapters(model)
        if stateful:
            raise GenerationError(
                f"num_beams={settings.num_beams}: beam search reorders the KV cache between steps but not the LIF "
                f"membranes of stateful adapters ({len(stateful)} neurons, e.g. {stateful[0]}), so beams would mix "
                "states. Use greedy decoding or sampling (num_beams=1), or an adapter with a memoryless neuron "
                "(mt, heaviside)")


def prompt_ids(tokenizer: Any, prompt: str, chat: bool = False) -> torch.Tensor:
    """``[1, L]`` token ids of ``prompt``; ``chat=True`` applies the tokenizer's chat template as one user turn."""
    if not prompt:
        raise GenerationError("the prompt is empty; pass text (or --file FILE with text in it)")
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise GenerationError(
                f"chat=True but the tokenizer ({type(tokenizer).__name__}, {getattr(tokenizer, 'name_or_path', '')!r})"
                " has no chat template; drop --chat to use the prompt as plain text")
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    return tokenizer(prompt, return_tensors="pt")["input_ids"]


def _streamer(tokenizer: Any, on_text: Callable[[str], None]):
    from transformers import TextStreamer

    class _CallbackStreamer(TextStreamer):  # TextStreamer's word-boundary buffering, printed through a callback
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return _CallbackStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def generate_text(model: nn.Module, tokenizer: Any, prompt: str, settings: GenerationSettings | None = None, *,
                  chat: bool = False, on_text: Callable[[str], None] | None = None,
                  account: bool = True) -> GenerationResult:
    """Generate a continuation of ``prompt`` with ``model`` (ANN, spiking, or a spiking peft model).

    ``on_text`` receives decoded text as it is produced (streaming). With ``account`` the result's ``accounting``
    is the :func:`hybridtune.accounting.report.build_report` of every forward of this generation (its ``tokens``:
    prompt tokens + generated tokens fed back, i.e. all tokens the model processed). The model's carried LIF
    state is cleared before and after, so one generation never leaks into the next.
    """
    from hybridtune.neurons import reset_state

    settings = settings or GenerationSettings()
    check_settings(model, settings)
    ids = prompt_ids(tokenizer, prompt, chat)
    device = next(model.parameters()).device
    ids = ids.to(device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs = settings.generate_kwargs()
    if on_text is not None:
        kwargs["streamer"] = _streamer(tokenizer, on_text)
    generator_state = torch.random.get_rng_state() if settings.seed is not None else None
    was_training = model.training
    model.eval()
    reset_state(model)
    try:
        if settings.seed is not None:  # restored below: a library call leaves the global RNG as it found it
            torch.manual_seed(settings.seed)
        with torch.no_grad():
            if account:
                from hybridtune.accounting.census import count_ops
                from hybridtune.accounting.report import build_report

                with count_ops(model) as census:
                    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pad_token_id=pad_id,
                                         **kwargs)
                new = out[0, ids.shape[1]:]
                census.tokens = int(ids.shape[1] + max(0, new.numel() - 1))  # the last new token is never fed back
                accounting = build_report(census)
            else:
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pad_token_id=pad_id,
                                     **kwargs)
                new, accounting = out[0, ids.shape[1]:], None
    finally:
        reset_state(model)
        model.train(was_training)
        if generator_state is not None:
            torch.random.set_rng_state(generator_state)
    token_ids = [int(t) for t in new]
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    return GenerationResult(prompt=prompt, text=text, token_ids=token_ids, prompt_tokens=int(ids.shape[1]),
                            settings=dataclasses.asdict(settings), accounting=accounting)


def load_for_generation(spiking: str | None = None, adapter: str | None = None,
                        model: str | None = None) -> tuple[nn.Module, Any, str]:
    """``(model, tokenizer, base name)``: the base (``model``, else the one ``spiking`` was converted from, else
    ``"default"``), converted from ``spiking`` when given, with the ``adapter`` on top when given."""
    from hybridtune.models import ModelLoadError, load_model, load_tokenizer

    if adapter and not spiking:
        raise GenerationError("--adapter needs --spiking DIR: spiking LoRA adapters sit on a converted spiking model")
    name = model
    if name is None and spiking:
        from hybridtune.conversion import read_spiking

        name = read_spiking(spiking)[0].get("base_model")
    name = name or "default"
    try:
        base = load_model(name)
    except ModelLoadError as exc:
        if model is None and spiking:  # the name came from the spiking directory: say where, and what to pass
            raise ModelLoadError(f"{spiking}/spiking.json records the base model as {name!r}, which does not load "
                                 f"({exc}); pass --model M (e.g. --model default)") from None
        raise
    if adapter:
        from hybridtune.adapters import load_for_eval

        net = load_for_eval(adapter, spiking_dir=spiking, model=base)
    else:
        net = base
        if spiking:
            from hybridtune.conversion import load_spiking

            net = load_spiking(net, spiking)
    return net.eval(), load_tokenizer(name), name


def summary_line(result: GenerationResult) -> str:
    """One line: generated tokens, spikes per neuron and the energy ratio against the ANN (45 nm FP32)."""
    line = f"[{len(result.token_ids)} tokens generated from a {result.prompt_tokens}-token prompt"
    acc = result.accounting
    if acc and acc["total"]["neuron_steps"]:
        total = acc["total"]
        energy = total["energy"].get("fp32_45nm") or next(iter(total["energy"].values()))
        line += (f"; over all {acc['tokens']} tokens processed: {total['spikes_per_neuron']:.3f} spikes/neuron, "
                 f"{total['sops']:.3g} SOPs, energy {energy['snn_pj'] / 1e6:.3g} µJ "
                 f"({energy['ratio']:.2f}x less than the ANN)")
    elif acc is not None:
        line += "; no spiking neurons (an ANN): nothing to count"
    return line + "]"


__all__ = ["GenerationError", "GenerationResult", "GenerationSettings", "check_settings", "generate_text",
           "load_for_generation", "prompt_ids", "stateful_adapters", "summary_line"]
