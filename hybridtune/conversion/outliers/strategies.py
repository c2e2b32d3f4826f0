"""Outlier-handling strategies (exact in float, free or cheap at run time) and their registry.

A strategy runs inside ``convert`` after the plan is made and before thresholds are calibrated, in the order the
config lists them (``conversion.outliers``): ``calibrate`` returns state tensors (saved with the model, so
``load_spiking`` re-applies the same transform), ``apply`` changes weights or installs online transforms.

Built-ins:

- ``rotate``: an orthogonal rotation of the residual stream folded into the weights (randomised Hadamard, random
  orthogonal where no Hadamard order is known), norm gains folded into their readers first, a tied ``lm_head``
  untied; plus a per-head rotation folded into ``v_proj`` / ``o_proj``. Free at run time (QuaRot, Ashkboos et al.
  2024; SpinQuant, Liu et al. 2024). Pre-norm RMSNorm decoders only (Llama, Qwen, Mistral).
- ``rotate_heads``: only the per-head rotation (``v_proj`` / ``o_proj``), free, for any family with a separate
  ``v_proj``; the residual stream keeps its outlier channels (for ``channel_scale_out``).
- ``hadamard_down`` / ``hadamard_inputs``: an online Hadamard transform of the FFN down projection's input (and of
  ``o_proj``'s), its ``1/n`` folded into the weight; charged as float additions. Every family.
- ``channel_scale`` / ``channel_scale_max``: a calibrated per-channel factor ``s`` in the FFN activation encoders'
  threshold (the sites no rotation reaches),
  ``theta[t, c] = s_c * stat_t(v / s) / divisor``; ``s`` folds into the consuming weights (``W diag(s)``), so
  outlier channels get coarser steps instead of saturating the count. Dynamic thresholds only.
- ``act_absmax``: the FFN activation sites' per-token threshold becomes ``max|v_t| / (2**K - 1)`` (no saturation).
- ``clip_free``: every dynamic threshold is floored at ``max|v_t| / (2**K - 1)``: the fine mean-based step for
  ordinary tokens, no clipped outliers for massive-activation tokens.
- ``float_sink``: the first token of a fresh sequence (the attention sink) stays float at every site and is left
  out of calibration; its consumers' float MACs are charged (``hybridtune.conversion.outliers.sink``).
- ``smooth``: SmoothQuant's factor (Xiao et al. 2023) ``s_c = max|x_c|^a / max|W_c|^(1-a)`` at norm outputs,
  ``x / s`` folded into the norm gain and ``diag(s)`` into the readers. Free.

Example:
    >>> sorted(available_outliers())[:3]
    ['act_absmax', 'channel_scale', 'channel_scale_all']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from hybridtune.conversion.outliers.folding import (
    rotate_embedding,
    rotate_heads_reader,
    rotate_heads_writer,
    rotate_reader,
    rotate_writer,
    scale_reader_columns,
    unit_norm_gain,
    untie_output_embedding,
)
from hybridtune.conversion.outliers.hadamard import random_hadamard
from hybridtune.conversion.outliers.online import attach_hadamard_input
from hybridtune.conversion.outliers.sink import FloatSink
from hybridtune.conversion.plan import Plan, get_module
from hybridtune.module_kinds import is_fused_experts, is_linear_like, is_moe_block, norm_gain_offset, norm_kind

StrategyState = dict[str, dict[str, Tensor]]  # site -> {kind: tensor}, merged into the calibration state


@runtime_checkable
class OutlierStrategy(Protocol):
    """What ``convert`` calls for each name in ``conversion.outliers``.

    Optional members: ``encoder_overrides(site, config, layout) -> dict`` (keyword arguments for the site's
    encoder), ``finalize(model, plan, config)`` (after the sites are installed), ``calibration_start`` (the first
    block position calibration observes; see ``calibration.calibration_start``).
    """

    name: str
    needs_calibration: bool

    def calibrate(self, model: nn.Module, plan: Plan, recipe: Any, config: Any,
                  calib_ids: Tensor | None) -> StrategyState: ...

    def apply(self, model: nn.Module, plan: Plan, recipe: Any, config: Any, state: StrategyState) -> None: ...

    def float_notes(self) -> list[str]: ...


def _layers(model: nn.Module, layout: Any) -> list[str]:
    return [f"{layout.layers}.{i}" for i in range(len(get_module(model, layout.layers)))]


def _layout(recipe: Any, name: str) -> Any:
    layout = getattr(recipe, "layout", None)
    if layout is None:
        raise ValueError(f"conversion.outliers: {name!r} needs a recipe with a DecoderLayout (module paths)")
    return layout


class ResidualRotation:
    """Rotate the residual stream by a seeded orthogonal ``R`` folded into every writer and reader (see module doc)."""

    needs_calibration = False

    def __init__(self, seed: int = 0, residual: bool = True, name: str = "rotate"):
        self.seed, self.residual, self.name = seed, residual, name

    def calibrate(self, model, plan, recipe, config, calib_ids) -> StrategyState:
        return {}

    def check(self, model: nn.Module, layout: Any) -> None:
        """Refuse families where the rotation would not be exact (centred norms, norms on block outputs, MoE)."""
        for name, module in model.named_modules():
            if norm_kind(module) == "layer":
                raise ValueError(f"conversion.outliers: 'rotate' needs RMSNorm (LayerNorm's mean subtraction does "
                                 f"not commute with a rotation: {name}); use 'hadamard_inputs' for this family")
            if name.endswith(("post_attention_layernorm", "post_feedforward_layernorm")) and \
                    layout.mlp_norm != "post_attention_layernorm":
                raise ValueError(f"conversion.outliers: 'rotate' cannot fold through a norm on a block output "
                                 f"({name}); use 'hadamard_inputs' for this family")
            if is_moe_block(module) or is_fused_experts(module):
                raise ValueError(f"conversion.outliers: 'rotate' does not rotate MoE experts ({name}); use "
                                 "'hadamard_inputs' for this family")

    def apply(self, model, plan, recipe, config, state) -> None:
        layout = _layout(recipe, self.name)
        if not self.residual:
            self.rotate_heads(model, layout)
            return
        self.check(model, layout)
        untie_output_embedding(model)
        hidden = model.get_input_embeddings().weight.shape[1]
        r = random_hadamard(hidden, self.seed)
        with torch.no_grad():
            rotate_embedding(model.get_input_embeddings(), r)
            for p in _layers(model, layout):
                for norm, readers in ((layout.attn_norm, layout.attn_inputs), (layout.mlp_norm, layout.mlp_inputs)):
                    gain = unit_norm_gain(get_module(model, f"{p}.{norm}"))
                    for path in readers:
                        reader = get_module(model, f"{p}.{path}")
                        if gain is not None:
                            scale_reader_columns(reader, gain)
                        rotate_reader(reader, r)
                rotate_writer(get_module(model, f"{p}.{layout.attn_out}"), r)
                rotate_writer(get_module(model, f"{p}.{layout.mlp_down}"), r)
            gain = unit_norm_gain(get_module(model, layout.final_norm))
            head = get_module(model, layout.lm_head)
            if gain is not None:
                scale_reader_columns(head, gain)
            rotate_reader(head, r)
        self.rotate_heads(model, layout)

    def rotate_heads(self, model: nn.Module, layout: Any) -> None:
        """Per-head rotation of the attention values folded into ``v_proj`` (writer) and ``o_proj`` (reader)."""
        v_paths = [c for c in layout.attn_inputs if c.endswith("v_proj")]
        if not v_paths:
            raise ValueError(f"conversion.outliers: {self.name!r} needs a separate v_proj (this family fuses q/k/v: "
                             f"{layout.attn_inputs}); use 'hadamard_inputs'")
        text = getattr(model.config, "get_text_config", lambda: model.config)()
        hidden = model.get_input_embeddings().weight.shape[1]
        head_dim = int(getattr(text, "head_dim", None) or hidden // int(text.num_attention_heads))
        r_head = random_hadamard(head_dim, self.seed + 1)
        with torch.no_grad():
            for p in _layers(model, layout):
                rotate_heads_writer(get_module(model, f"{p}.{v_paths[0]}"), r_head, head_dim)
                rotate_heads_reader(get_module(model, f"{p}.{layout.attn_out}"), r_head, head_dim)

    def float_notes(self) -> list[str]:
        return []  # folded into the weights: nothing runs at inference time


class OnlineHadamardInputs:
    """Online Hadamard transform on the inputs of the layout's linears named in ``targets`` (e.g. ``mlp_down``)."""

    needs_calibration = False

    def __init__(self, name: str, targets: tuple[str, ...]):
        self.name, self.targets = name, targets

    def calibrate(self, model, plan, recipe, config, calib_ids) -> StrategyState:
        return {}

    def apply(self, model, plan, recipe, config, state) -> None:
        layout = _layout(recipe, self.name)
        with torch.no_grad():
            for p in _layers(model, layout):
                for target in self.targets:
                    path = f"{p}.{getattr(layout, target)}"
                    try:
                        linear = model.get_submodule(path)
                    except AttributeError:
                        continue  # e.g. a MoE layer has no dense down_proj there
                    if is_linear_like(linear):
                        attach_hadamard_input(linear)

    def float_notes(self) -> list[str]:
        names = ", ".join(self.targets)
        return [f"online Hadamard transform of the inputs of {names} (additions only; census op online_hadamard)"]


def is_ffn_act(site: Any, layout: Any) -> bool:
    """Whether ``site`` encodes an FFN activation output (what no rotation can reach: it feeds an elementwise
    product, or GPT-2's ``c_proj`` through a nonlinearity)."""
    act = getattr(layout, "mlp_act", "mlp.act_fn").rsplit(".", 1)[-1]
    return site.kind == "output" and site.module.rsplit(".", 1)[-1] in (act, "act_fn", "activation_fn", "act")


class ChannelScale:
    """Per-channel threshold factor ``s_c = stat_c ** alpha`` (geometric mean 1), calibrated on the site's input.

    ``where="ffn_act"`` (default) scales only the FFN activation sites: the rotated sites are flat already and a
    per-channel factor there only adds error (measured); ``"outputs"`` also the norm outputs (without a residual
    rotation); ``"all"`` every site.
    """

    needs_calibration = True

    def __init__(self, name: str, stat: str = "rms", alpha: float = 1.0, where: str = "ffn_act"):
        if stat not in ("rms", "max_abs", "mean_abs"):
            raise ValueError(f"ChannelScale: stat={stat!r} is not one of 'rms', 'max_abs', 'mean_abs'")
        if where not in ("ffn_act", "outputs", "all"):
            raise ValueError(f"ChannelScale: where={where!r} is not 'ffn_act', 'outputs' or 'all'")
        self.name, self.stat, self.alpha, self.where = name, stat, alpha, where

    def _sites(self, plan: Plan, recipe: Any) -> list:
        layout = getattr(recipe, "layout", None)
        return [s for s in plan.sites if s.kind != "threshold_norm" and (
            self.where == "all" or (self.where == "outputs" and s.kind == "output") or is_ffn_act(s, layout))]

    def calibrate(self, model, plan, recipe, config, calib_ids) -> StrategyState:
        from hybridtune.conversion.calibration import channel_statistics

        if config.threshold != "dynamic":
            raise ValueError(f"conversion.outliers: {self.name!r} scales a dynamic per-token threshold per channel; "
                             "static thresholds are per channel already (drop it or set threshold: dynamic)")
        stats = channel_statistics(model, Plan(plan.family, self._sites(plan, recipe)), calib_ids, self.stat,
                                   calibration_start(config))
        out: StrategyState = {}
        for name, stat in stats.items():
            s = stat.clamp(min=float(stat.max()) * 1e-6).pow(self.alpha)
            s = s / s.log().mean().exp()  # geometric mean 1: the per-token threshold keeps its meaning
            out[name] = {"scale": s.float()}
        return out

    def apply(self, model, plan, recipe, config, state) -> None:
        missing = [s.name for s in self._sites(plan, recipe) if "scale" not in state.get(s.name, {})]
        if missing:
            raise ValueError(f"calibration state has no channel scale for site(s) {missing[:3]}")

    def float_notes(self) -> list[str]:
        return []  # the factor lives in the threshold and the consumer weights; the census charges the reduction


class ActivationAbsMax:
    """FFN activation sites scale to their maximum, so a K-phase count never (or rarely) saturates there.

    Dynamic thresholds: ``theta_t = max|v_t| / (2**K - 1)`` per token (the max is one comparison per element,
    charged as an add like mean|v|). Static thresholds: ``theta_c = max_c|v| / (2**K - 1)`` per channel, the max
    over the calibration tokens. The SiLU / GELU output is sparse and heavy-tailed (measured on the default model:
    up to ~100x its per-token mean|v|, 3 % of elements beyond 8x), so a mean-based threshold saturates any small
    budget there. Needs ``phases``.
    """

    needs_calibration = False  # dynamic: nothing to calibrate; static thresholds need calibration data anyway

    def __init__(self, name: str = "act_absmax"):
        self.name = name

    def _sites(self, plan: Plan, recipe: Any) -> list:
        return [s for s in plan.sites if is_ffn_act(s, getattr(recipe, "layout", None))]

    def calibrate(self, model, plan, recipe, config, calib_ids) -> StrategyState:
        self._check(config)
        if config.threshold != "static":
            return {}
        from hybridtune.conversion.calibration import channel_statistics

        cap = float((1 << config.phases) - 1)
        stats = channel_statistics(model, Plan(plan.family, self._sites(plan, recipe)), calib_ids, "max_abs", calibration_start(config))
        return {name: {"theta": (m / cap).clamp_(min=1e-8)} for name, m in stats.items()}

    def _check(self, config: Any) -> None:
        if config.phases is None:
            raise ValueError(f"conversion.outliers: {self.name!r} sets the FFN activation threshold to "
                             "max|v| / (2**phases - 1); it needs conversion.phases")

    def apply(self, model, plan, recipe, config, state) -> None:
        self._check(config)

    def encoder_overrides(self, site: Any, config: Any, layout: Any) -> dict[str, Any]:
        if config.threshold != "dynamic" or not is_ffn_act(site, layout):
            return {}
        return {"mode": "max_abs", "divisor": float((1 << config.phases) - 1)}

    def float_notes(self) -> list[str]:
        return []


class ClipFree:
    """Dynamic thresholds that never saturate: ``theta_t = max(stat_t / divisor, max|v_t| / (2**K - 1))`` at every
    site (see ``hybridtune.neurons.ClipFreeThreshold``). Massive-activation tokens (the attention sink at the first
    position, a few delimiter tokens) would otherwise clip their outlier channels to the bound; they get a coarser
    step instead, every other token keeps the fine one. The per-token max is one comparison per element, charged.
    Needs ``phases`` and dynamic thresholds.
    """

    needs_calibration = False

    def __init__(self, name: str = "clip_free"):
        self.name = name

    def _check(self, config: Any) -> None:
        if config.phases is None and config.max_spikes is None:
            raise ValueError(f"conversion.outliers: {self.name!r} keeps a bounded count from saturating; it needs "
                             "conversion.phases (an unbounded count never saturates)")
        if config.threshold != "dynamic":
            raise ValueError(f"conversion.outliers: {self.name!r} floors a per-token threshold; static thresholds "
                             "have none (drop it or set threshold: dynamic)")

    def calibrate(self, model, plan, recipe, config, calib_ids) -> StrategyState:
        self._check(config)
        return {}

    def apply(self, model, plan, recipe, config, state) -> None:
        self._check(config)

    def encoder_overrides(self, site: Any, config: Any, layout: Any) -> dict[str, Any]:
        return {"clip_free": True} if config.threshold == "dynamic" else {}

    def float_notes(self) -> list[str]:
        return []  # the per-token max is charged by the census with the threshold statistic


class Smoothing:
    """SmoothQuant at norm-output sites: ``x / s`` folded into the norm gain, ``diag(s)`` into every reader."""

    needs_calibration = True

    def __init__(self, name: str = "smooth", alpha: float = 0.5):
        self.name, self.alpha = name, alpha

    def calibrate(self, model, plan, recipe, config, calib_ids) -> StrategyState:
        from hybridtune.conversion.calibration import channel_statistics

        sites = [s for s in plan.sites if s.kind == "output" and s.consumers and _is_norm(model, s.module)]
        xmax = channel_statistics(model, Plan(plan.family, sites), calib_ids, "max_abs", calibration_start(config))
        out: StrategyState = {}
        for site in sites:
            wmax = torch.stack([get_module(model, c).weight.detach().abs().amax(0).float().cpu()
                                for c in site.consumers]).amax(0)
            s = (xmax[site.name].clamp(min=1e-5) ** self.alpha) / (wmax.clamp(min=1e-5) ** (1 - self.alpha))
            out[site.name] = {"smooth": s.float()}
        return out

    def apply(self, model, plan, recipe, config, state) -> None:
        with torch.no_grad():
            for site in plan.sites:
                s = state.get(site.name, {}).get("smooth")
                if s is None:
                    continue
                norm = get_module(model, site.module)
                gain = unit_norm_gain(norm)
                g = torch.ones_like(s, dtype=torch.float64) if gain is None else gain.cpu()
                for c in site.consumers:
                    scale_reader_columns(get_module(model, c), g.cpu() * s.double())
                # the norm now outputs x / s: its gain becomes 1 / s (Gemma: 1 / s - 1)
                offset = norm_gain_offset(norm)
                norm.weight = nn.Parameter((1.0 / s.double() - offset).to(norm.weight.dtype).to(norm.weight.device),
                                           requires_grad=False)

    def float_notes(self) -> list[str]:
        return []


def _is_norm(model: nn.Module, path: str) -> bool:
    module = get_module(model, path)
    return norm_kind(module) is not None and getattr(module, "weight", None) is not None


_STRATEGIES: dict[str, Callable[[], OutlierStrategy]] = {}


def register_outliers(name: str, factory: Callable[[], OutlierStrategy], overwrite: bool = False) -> None:
    """Register an outlier strategy factory under ``name`` (what ``conversion.outliers`` lists).

    Example:
        >>> register_outliers("rotate_seed7", lambda: ResidualRotation(seed=7))
        >>> get_outliers("rotate_seed7").seed
        7
    """
    if name in _STRATEGIES and not overwrite:
        raise ValueError(f"an outlier strategy named {name!r} is already registered (overwrite=True replaces it)")
    _STRATEGIES[name] = factory


def calibration_start(config: Any) -> int:
    """The first block position calibration observes: 1 when an outlier strategy keeps the first token in float
    (``float_sink``: its massive activations would set every static threshold and residual), else 0."""
    return max((getattr(get_outliers(name), "calibration_start", 0) for name in config.outliers), default=0)


def available_outliers() -> list[str]:
    return sorted(_STRATEGIES)


def get_outliers(name: str) -> OutlierStrategy:
    """A fresh strategy object for ``name`` or a ValueError listing the registered ones."""
    try:
        return _STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"conversion.outliers: unknown strategy {name!r}; choose from "
                         f"{', '.join(available_outliers())}") from None


register_outliers("rotate", ResidualRotation)
register_outliers("rotate_heads", lambda: ResidualRotation(residual=False, name="rotate_heads"))
register_outliers("hadamard_down", lambda: OnlineHadamardInputs("hadamard_down", ("mlp_down",)))
register_outliers("hadamard_inputs", lambda: OnlineHadamardInputs("hadamard_inputs", ("mlp_down", "attn_out")))
register_outliers("channel_scale", lambda: ChannelScale("channel_scale", "rms", 1.0))
register_outliers("channel_scale_max", lambda: ChannelScale("channel_scale_max", "max_abs", 0.5))
register_outliers("channel_scale_all", lambda: ChannelScale("channel_scale_all", "rms", 1.0, where="all"))
register_outliers("channel_scale_out", lambda: ChannelScale("channel_scale_out", "rms", 1.0, where="outputs"))
register_outliers("smooth", lambda: Smoothing("smooth", 0.5))
register_outliers("act_absmax", ActivationAbsMax)
register_outliers("clip_free", ClipFree)
register_outliers("float_sink", FloatSink)
