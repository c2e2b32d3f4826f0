"""``float_sink``: the attention-sink token -- the first position of a fresh sequence -- stays float at every site.

A decoder writes a few massive activations into the hidden state of its first position (the attention sink: every
head parks attention there), up to ~1000x the per-token mean on the default model. One such token sets every static
per-channel maximum and forces a bounded code into coarse steps for all other tokens (measured on the default model,
2 x 2,048 eval tokens, static ``max|v| / 127``, K = 8: 1.049x the ANN's perplexity as is, 1.004x with the first
token kept float and left out of calibration). This strategy does both, and charges what it costs:

- calibration (static thresholds, compensation residuals, calibrated scales) observes block positions 1.. only
  (``calibration_start = 1``);
- every site encoder created by the recipe gets a :class:`~hybridtune.neurons.FirstTokenSwitch`: in a call that
  starts at position 0 (no KV cache holds tokens yet) the first token passes through in float; a generation step
  that continues a cache encodes all its tokens. A hook on the model (module-level functions, so deep copies keep
  working) turns the switches on for such a call and off after it, even when the call raises;
- the accounting census charges the consumers' float multiply-accumulates on that token (``float_sink``): one
  token per sequence, ``1 / block_len`` of the linear work.

As in IntactKV / PrefixQuant (Liu et al. 2024; Chen et al. 2024), who keep the sink token's KV cache in full
precision for 4-bit activation quantization.

Example:
    >>> from hybridtune.conversion import ConversionConfig, convert
    >>> from hybridtune.testing import tiny_model, tiny_batch
    >>> snn = convert(tiny_model("llama"), ConversionConfig(outliers=("float_sink",), compensation=False))
    >>> first_token_switches(snn)[0].active, len(first_token_switches(snn)) > 0
    (False, True)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from hybridtune.models import cached_tokens
from hybridtune.neurons import FirstTokenSwitch, GradedNeuron

SWITCHES_ATTR = "_hybridtune_first_token_switches"  # the model's switches, listed once at conversion
OUTER_ATTR = "_hybridtune_first_token_outer"  # what the switches held before each call in flight (re-entrant calls)


class FloatSink:
    """The ``float_sink`` outlier strategy (see the module doc)."""

    needs_calibration = False
    calibration_start = 1  # calibration skips the sink position

    def __init__(self, name: str = "float_sink"):
        self.name = name

    def calibrate(self, model, plan, recipe, config, calib_ids) -> dict:
        self._check(config)
        return {}

    def apply(self, model, plan, recipe, config, state) -> None:
        self._check(config)

    def _check(self, config: Any) -> None:
        if config.neuron != "graded":
            raise ValueError(f"conversion.outliers: {self.name!r} keeps the first token of graded (T = 1) neurons in "
                             "float; use neuron: graded")

    def encoder_overrides(self, site: Any, config: Any, layout: Any) -> dict[str, Any]:
        return {"first_token": True}

    def finalize(self, model: nn.Module, plan: Any, config: Any) -> None:
        install_first_token_hook(model)

    def float_notes(self) -> list[str]:
        return ["the first token of every fresh sequence (the attention sink) at every encoded site: its "
                "activations stay float and its consumers' MACs are charged (float_sink)"]


def first_token_switches(model: nn.Module) -> list[FirstTokenSwitch]:
    """The first-token switches of ``model``'s graded neurons (listed at conversion)."""
    return list(getattr(model, SWITCHES_ATTR, ()))


def _set(model: nn.Module, active: bool) -> list[bool]:
    switches = getattr(model, SWITCHES_ATTR, ())
    before = [s.active for s in switches]
    for s in switches:
        s.active = active
    return before


def _pre_hook(model: nn.Module, args: tuple, kwargs: dict):
    # positional calls pass input_ids first and never a cache before it: the keyword arguments suffice
    getattr(model, OUTER_ATTR).append(_set(model, cached_tokens(kwargs) == 0))
    return None


def _post_hook(model: nn.Module, args: tuple, kwargs: dict, output):
    outer = getattr(model, OUTER_ATTR)
    if outer:
        for switch, before in zip(getattr(model, SWITCHES_ATTR, ()), outer.pop()):
            switch.active = before
    return None


def install_first_token_hook(model: nn.Module) -> None:
    """List ``model``'s first-token switches and hook the model so they are on exactly during calls that start at
    position 0 (idempotent)."""
    switches = [m.first_token for m in model.modules() if isinstance(m, GradedNeuron) and m.first_token is not None]
    object.__setattr__(model, SWITCHES_ATTR, switches)
    if getattr(model, OUTER_ATTR, None) is not None:
        return
    object.__setattr__(model, OUTER_ATTR, [])
    model.register_forward_pre_hook(_pre_hook, with_kwargs=True)
    model.register_forward_hook(_post_hook, with_kwargs=True, always_call=True)
