"""Operation census of one forward: what the ANN would compute, and what the spiking model still does in float.

Forward hooks count, per layer and per named op, the ANN's MACs / adds and the spiking model's remaining float
MACs / adds; ops whose input is spikes are marked *spike-driven* (their work is the SOPs the encoders count).
Modules are recognised by type, by their structure (:mod:`hybridtune.module_kinds`: norms, GPT-2's ``Conv1D``,
fused MoE experts and their router block, attention blocks), by the :class:`CountsOwnOps` protocol (the conversion's own modules -- a norm
realised as threshold adaptation, the spiking MoE -- say what a forward computes) and by the duck-typed markers
conversion sets (``hybridtune_spike_input``, a ``hybridtune_encoder`` child on an activation whose output is encoded,
``hybridtune_attention`` on attention modules), so this floor imports nothing from ``conversion``.

Counting conventions (per element unless said): linear ``N*in*out`` MACs (+ ``N*out`` adds for a bias);
RMSNorm 3 MACs, LayerNorm 3 MACs + 1 add, L2 norm 2 MACs; activation 1 MAC-equivalent; gate product 1 MAC;
attention ``QK^T`` and ``PV`` ``d`` MACs per visible (query, key) pair and head, softmax 2 MAC-equivalents
(exp, divide) + 1 add per pair; rotary 2 MACs per q / k element; residual stream 2 adds per hidden element and
layer; a dynamic per-token threshold 1 add (mean|v|) or 1 MAC (rms, or channel-scaled) per encoded element for
its statistic, 1 MAC + 1 add per element for ``v / theta_t`` and its rounding, and 1 MAC per consumer output and
token for the rescale by ``theta_t`` (static thresholds: none, theta folds into the weights); an online Hadamard
transform its additions. Embedding lookups: 0.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False))
    >>> with count_ops(net) as census:
    ...     _ = net(torch.randn(2, 4))
    >>> census.totals()["ann_mac"], census.totals()["snn_mac"]
    (24.0, 24.0)
"""

from __future__ import annotations

import re
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..module_kinds import NORM_KINDS, is_attention, is_fused_experts, is_moe_block, linear_dims, norm_kind
from ..neurons import (
    PER_TOKEN_THRESHOLDS,
    ChannelScaledThreshold,
    ClipFreeThreshold,
    GroupedThreshold,
    SpikeStats,
    SpikingLinear,
)
from .stats import count_spikes

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)(?:\.|$)")
_DECODER_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.\d+$")
_TORCH_ACTS = (nn.SiLU, nn.GELU, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Mish)


def layer_of(name: str) -> str:
    """Layer label of a module name: ``"3"`` for ``model.layers.3.mlp``, ``"head"`` / ``"embed"`` / ``"other"``.

    Example:
        >>> layer_of("model.layers.12.mlp.down_proj"), layer_of("lm_head"), layer_of("model.norm")
        ('12', 'head', 'head')
    """
    m = _LAYER.search(name)
    if m:
        return m.group(1)
    if "lm_head" in name or name.endswith(("norm", "ln_f")) or ".norm." in name or ".ln_f." in name:
        return "head"
    if "emb" in name or name.endswith("wte") or name.endswith("wpe"):
        return "embed"
    return "other"


@dataclass
class OpCount:
    """Counts of one (layer, op): the ANN's MACs / adds and the spiking model's remaining float MACs / adds."""

    ann_mac: float = 0.0
    ann_ac: float = 0.0
    snn_mac: float = 0.0
    snn_ac: float = 0.0
    spike_driven_mac: float = 0.0  # ANN MACs the spiking model replaces by SOPs


@dataclass
class Census:
    """Accumulated op counts plus the spike statistics of every module with ``.stats``."""

    ops: dict[tuple[str, str], OpCount] = field(default_factory=lambda: defaultdict(OpCount))
    stats: dict[str, SpikeStats] = field(default_factory=dict)
    tokens: int = 0

    def add(self, layer: str, op: str, *, ann_mac: float = 0.0, ann_ac: float = 0.0, snn_mac: float | None = None,
            snn_ac: float | None = None, spike_driven: bool = False) -> None:
        """Add an op; by default the spiking model does what the ANN does, or nothing if ``spike_driven``."""
        rec = self.ops[(layer, op)]
        rec.ann_mac += ann_mac
        rec.ann_ac += ann_ac
        if spike_driven:
            rec.spike_driven_mac += ann_mac
            rec.snn_ac += 0.0 if snn_ac is None else snn_ac
            rec.snn_mac += 0.0 if snn_mac is None else snn_mac
        else:
            rec.snn_mac += ann_mac if snn_mac is None else snn_mac
            rec.snn_ac += ann_ac if snn_ac is None else snn_ac

    def totals(self) -> dict[str, float]:
        out = dict.fromkeys(("ann_mac", "ann_ac", "snn_mac", "snn_ac", "spike_driven_mac"), 0.0)
        for rec in self.ops.values():
            for k in out:
                out[k] += getattr(rec, k)
        return out


@runtime_checkable
class CountsOwnOps(Protocol):
    """A module that tells the census what one forward computed (implemented by the conversion's modules).

    ``census_ops(args, output, add)`` calls ``add(op, **counts)`` once per op (``counts`` as in :meth:`Census.add`:
    ``ann_mac``, ``ann_ac``, ``snn_mac``, ``snn_ac``, ``spike_driven``; the census supplies the layer).
    ``census_counted`` names the submodules (relative names) whose float work ``census_ops`` already includes, so
    their own hooks are skipped; their spikes are still counted by the spike statistics.
    """

    census_counted: tuple[str, ...]

    def census_ops(self, args: tuple, output: Any, add: Callable[..., None]) -> None: ...


def _tokens(x: Tensor, width: int) -> int:
    return x.numel() // max(1, width)


def _is_spike_input(module: nn.Module) -> bool:
    if getattr(module, "hybridtune_spike_input", False):
        return True
    return isinstance(module, SpikingLinear) and module.encoder is not None


def _has_bias(module: nn.Module) -> bool:
    if getattr(module, "bias", None) is not None:
        return True
    comp = getattr(module, "compensation_bias", None)
    return comp is not None and bool(torch.any(comp != 0))


def _linear_op(name: str) -> str:
    name = name.removesuffix(".base_layer")  # the layer inside a peft wrapper is still its layer
    return "lm_head" if "lm_head" in name else f"linear:{name.rsplit('.', 1)[-1]}"


def _is_activation(module: nn.Module) -> bool:
    return isinstance(module, _TORCH_ACTS) or type(module).__module__.startswith("transformers.activations")


def _glu_encoder(module: nn.Module) -> nn.Module | None:
    act = getattr(module, "act_fn", None) or getattr(module, "activation_fn", None)
    return None if act is None else act._modules.get("hybridtune_encoder")


def norm_cost(kind: str, elements: int) -> tuple[float, float]:
    """(MACs, adds) of a norm of ``kind`` (:func:`hybridtune.module_kinds.norm_kind`) over ``elements`` values."""
    if kind not in NORM_KINDS:
        raise ValueError(f"unknown norm kind {kind!r}; valid: {', '.join(NORM_KINDS)}")
    if kind == "layer":
        return 3.0 * elements, 1.0 * elements
    if kind == "l2":
        return 2.0 * elements, 0.0
    return 3.0 * elements, 0.0


class _Hooks:
    """Builds the forward hooks of a census for one model."""

    def __init__(self, model: nn.Module, census: Census):
        self.model, self.census = model, census
        # spikes of each encoder's latest call, keyed by the output tensor's id (with a weak reference that tells a
        # reused id from the same tensor, and keeps no activation alive): an adapter whose input is a shared
        # encoder's output finds its input spikes here
        self.encoder_calls: dict[int, tuple[weakref.ref, float]] = {}
        self._spikes_before: dict[int, float] = {}
        self._prune_at = 64
        self.counted_inside = {f"{name}.{child}" if name else child for name, m in model.named_modules()
                               if isinstance(m, CountsOwnOps) for child in m.census_counted}

    def register(self) -> list:
        handles = []
        for name, module in self.model.named_modules():
            if hasattr(module, "lora_neuron") and hasattr(module, "get_base_layer"):
                handles += self.adapter_hooks(name, module)
                continue
            if hasattr(module, "fan_out") and "stats" in vars(module):
                handles += self.encoder_hooks(module)
            hook = self.hook_for(name, module)
            if hook is not None:
                kwargs = {"with_kwargs": True} if hook[1] else {}
                handles.append(module.register_forward_hook(hook[0], **kwargs))
        return handles

    def hook_for(self, name: str, module: nn.Module):  # noqa: C901 - one dispatch table
        layer, add = layer_of(name), self.census.add
        if isinstance(module, CountsOwnOps):
            def own(mod, args, out):
                mod.census_ops(args, out, lambda op, **counts: add(layer, op, **counts))
            return own, False
        if name in self.counted_inside:
            return None
        dims = linear_dims(module)
        if dims is not None:
            def linear(mod, args, out, dims=dims):
                n = _tokens(args[0], dims[0])
                add(layer, _linear_op(name), ann_mac=n * dims[0] * dims[1], spike_driven=_is_spike_input(mod))
                if _has_bias(mod):
                    add(layer, "bias_add", ann_ac=n * dims[1])
            return linear, False
        kind = norm_kind(module)
        if kind is not None:
            def norm(mod, args, out):
                mac, ac = norm_cost(kind, args[0].numel())
                add(layer, "norm", ann_mac=mac, ann_ac=ac)
            return norm, False
        if hasattr(module, "threshold") and hasattr(module, "stats"):
            dynamic = isinstance(module.threshold, PER_TOKEN_THRESHOLDS)
            first_float = getattr(module, "first_token", None) is not None
            if not dynamic and not first_float:
                return None  # static: theta folds into the consumer weights; the comparison is the neuron's firing
            weighted = isinstance(module.threshold, ChannelScaledThreshold)
            inner = module.threshold.inner if weighted else module.threshold
            grouped = inner if isinstance(inner, GroupedThreshold) else None
            floored = isinstance(grouped.inner if grouped else inner, ClipFreeThreshold)

            def threshold(mod, args, out):
                v = args[0]
                width = v.shape[-1] if v.dim() else 1
                floats = mod.float_tokens(v) if first_float else 0
                if floats:  # tokens passed through in float (float_sink): every consumer multiplies them in float
                    add(layer, "float_sink", snn_mac=floats * width * max(1, mod.fan_out))
                if not dynamic:
                    return
                # per-token threshold on the encoded tokens: the statistic (a weighted sum when channel-scaled),
                # v / theta_t and its rounding per element, and the rescale of every consumer output by theta_t
                e = v.numel() - floats * width
                if mod.threshold.mode == "rms" or weighted:
                    add(layer, "threshold_stats", snn_mac=e)
                else:
                    add(layer, "threshold_stats", snn_ac=e)
                if floored:  # the per-token max|v| that keeps the count from saturating: a comparison per element
                    add(layer, "threshold_stats", snn_ac=e)
                add(layer, "threshold_divide_round", snn_mac=e, snn_ac=e)
                # a consumer output rescales one partial sum per threshold: per token, or per group of channels
                groups = grouped.groups(width) if grouped else 1
                add(layer, "threshold_rescale", snn_mac=(_tokens(v, width) - floats) * max(1, mod.fan_out) * groups)
            return threshold, False
        if hasattr(module, "adds_per_vector") and hasattr(module, "n"):
            def online_transform(mod, args, out):  # an online Hadamard transform: additions only
                add(layer, "online_hadamard", snn_ac=_tokens(args[0], mod.n) * mod.adds_per_vector)
            return online_transform, False
        if _is_activation(module):
            def act(mod, args, out):
                add(layer, "activation", ann_mac=out.numel())
            return act, False
        if is_fused_experts(module):
            def experts(mod, args, out):
                rows = _tokens(args[0], mod.hidden_size)
                i2 = mod.gate_up_proj.shape[-1]
                add(layer, "linear:experts_gate_up", ann_mac=rows * mod.hidden_size * i2)
                add(layer, "linear:experts_down", ann_mac=rows * (i2 // 2) * mod.hidden_size)
                add(layer, "glu_product", ann_mac=rows * (i2 // 2))
            return experts, False
        if is_moe_block(module):
            def routing(mod, args, out):
                add(layer, "moe_routing", ann_mac=_tokens(args[0], mod.hidden_dim) * mod.num_experts * mod.hidden_dim)
            return routing, False
        if hasattr(module, "up_proj") and (hasattr(module, "act_fn") or hasattr(module, "activation_fn")):
            def glu(mod, args, out):
                up = mod.up_proj
                n = _tokens(args[0], up.in_features)
                add(layer, "glu_product", ann_mac=n * up.out_features, spike_driven=_glu_encoder(mod) is not None)
            return glu, False
        if _DECODER_LAYER.search(name):
            def residual(mod, args, kwargs, out):
                h = kwargs.get("hidden_states", args[0] if args else None)
                if h is not None:
                    add(layer, "residual_add", ann_ac=2.0 * h.numel())
            return residual, True
        if is_attention(module):
            return self.attention_hook(layer, module), True
        return None

    def _prune(self) -> None:
        """Forget the calls whose output tensor is gone. Only those: dropping a live entry (as clearing the whole
        dict did) loses the spikes of an adapter that reads it later, and whether that happened depended on how
        tensor ids were reused, so identical calls gave different SOP counts."""
        self.encoder_calls = {k: v for k, v in self.encoder_calls.items() if v[0]() is not None}
        self._prune_at = max(64, 2 * len(self.encoder_calls))

    def encoder_hooks(self, module: nn.Module) -> list:
        """Remember the spikes of each call of an encoder (the delta of its stats) by its output tensor."""
        def before(mod, args):
            self._spikes_before[id(mod)] = mod.stats.spikes if mod.stats is not None else 0.0

        def after(mod, args, out):
            if isinstance(out, Tensor) and mod.stats is not None:
                if len(self.encoder_calls) > self._prune_at:
                    self._prune()
                spikes = mod.stats.spikes - self._spikes_before.get(id(mod), 0.0)
                self.encoder_calls[id(out)] = (weakref.ref(out), spikes)
        return [module.register_forward_pre_hook(before), module.register_forward_hook(after)]

    def adapter_hooks(self, name: str, module: nn.Module) -> list:
        """A spiking LoRA layer: its fused op bypasses the base layer's and the factors' forwards, so count here.

        Base linear as usual; ``lora_shrink`` (input x A^T) is spike-driven when the base input is, its SOPs are
        the input spikes times the rank; ``lora_expand`` (bottleneck spikes x B^T) is spike-driven, its SOPs are
        counted by the bottleneck neurons (fan-out ``out_features``); adding the adapter output is one add each.
        """
        layer, add = layer_of(name), self.census.add
        base = module.get_base_layer()
        dims = linear_dims(base)
        own = getattr(base, "encoder", None)
        own = own if own is not None and "stats" in vars(own) else None

        def before(mod, args):
            if own is not None:
                self._spikes_before[id(mod)] = own.stats.spikes if own.stats is not None else 0.0

        def after(mod, args, out):
            names = [] if mod.disable_adapters or mod.merged else mod._active_spiking()
            if not names or dims is None:
                return  # the base layer ran as a module and counted itself
            n = _tokens(args[0], dims[0])
            rank = sum(int(mod.r[a]) for a in names)
            spiking_in = _is_spike_input(base)
            add(layer, _linear_op(name), ann_mac=n * dims[0] * dims[1], spike_driven=spiking_in)
            if _has_bias(base):
                add(layer, "bias_add", ann_ac=n * dims[1])
            add(layer, "lora_shrink", ann_mac=n * dims[0] * rank, spike_driven=spiking_in)
            add(layer, "lora_expand", ann_mac=n * rank * dims[1], spike_driven=True)
            add(layer, "lora_add", ann_ac=n * dims[1])
            if not spiking_in or self.census.stats is None:
                return
            if own is not None:
                spikes = (own.stats.spikes if own.stats is not None else 0.0) - self._spikes_before.get(id(mod), 0.0)
            else:
                call = self.encoder_calls.get(id(args[0]))
                spikes = call[1] if call is not None and call[0]() is args[0] else 0.0
            key = f"{name}.lora_shrink"
            self.census.stats.setdefault(key, SpikeStats()).sops += spikes * rank
        return [module.register_forward_pre_hook(before), module.register_forward_hook(after)]

    def attention_hook(self, layer: str, module: nn.Module):
        add = self.census.add
        cfg = getattr(module, "config", None)
        heads = getattr(module, "num_heads", None) or getattr(cfg, "num_attention_heads", None)
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(module, "head_dim", None)

        def attention(mod, args, kwargs, out):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            b, lq = hidden.shape[0], hidden.shape[1]
            d = head_dim or hidden.shape[-1] // heads
            pairs = _visible_pairs(mod, kwargs, b, lq)  # summed over the batch
            score_macs = heads * pairs * d
            spec = getattr(mod, "hybridtune_attention", None)
            spiking = spec is not None
            add(layer, "attention_qk", ann_mac=score_macs, spike_driven=spiking)
            add(layer, "attention_pv", ann_mac=score_macs, spike_driven=spiking)
            # the spiking path's normalisation says its float (MACs, adds) per pair and head (relu is free; nrelu
            # sums and divides, spike divides by a per-position constant, the recoverable ones add an affine map)
            macs, acs = getattr(spec, "float_cost", (2.0, 1.0))
            add(layer, "softmax", ann_mac=2.0 * heads * pairs, ann_ac=heads * pairs, snn_mac=macs * heads * pairs,
                snn_ac=acs * heads * pairs)
            if spiking:
                add(layer, "threshold_stats", snn_ac=b * heads * lq * d + heads * pairs)
            if kwargs.get("position_embeddings") is not None:
                add(layer, "rotary", ann_mac=2.0 * b * lq * (heads + kv_heads) * d)
        return attention


def _visible_pairs(module: nn.Module, kwargs: dict, b: int, lq: int) -> float:
    """Visible (query, key) pairs summed over the batch, from the model's mask or the causal triangle."""
    mask = kwargs.get("attention_mask")
    if isinstance(mask, Tensor) and mask.dim() == 4:
        visible = mask if mask.dtype == torch.bool else mask == 0
        total = float(visible.sum())
        return total * (b if visible.shape[0] == 1 else 1)
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    lk = lq
    if cache is not None and hasattr(cache, "get_seq_length"):
        try:
            lk = max(lq, int(cache.get_seq_length(getattr(module, "layer_idx", 0) or 0)))
        except (TypeError, IndexError, AttributeError):
            lk = lq
    window = getattr(module, "sliding_window", None)
    offset = lk - lq
    n = torch.arange(1, lq + 1, dtype=torch.float64) + offset  # keys visible to each query
    if window:
        n = n.clamp(max=window)
    return float(n.sum()) * b


@contextmanager
def count_ops(model: nn.Module) -> Iterator[Census]:
    """Census of every forward inside the block (spike statistics attached too; see ``count_spikes``).

    Example:
        >>> net = torch.nn.Linear(4, 2)
        >>> with count_ops(net) as c:
        ...     _ = net(torch.randn(3, 4))
        >>> c.totals()["ann_mac"], c.totals()["ann_ac"]
        (24.0, 6.0)
    """
    census = Census()
    handles = _Hooks(model, census).register()
    try:
        with count_spikes(model) as stats:
            census.stats = stats
            yield census
    finally:
        for h in handles:
            h.remove()
