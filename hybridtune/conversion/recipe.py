"""Conversion recipes: ``validate -> calibrate -> replace -> finalize``, and the per-family registry.

A recipe is any object with those four methods (the :class:`Recipe` protocol). :class:`DecoderRecipe` implements
them for pre-norm decoder stacks from a :class:`DecoderLayout` of module paths, so supporting a new family is
usually one layout (see ``families.py``); ``register_recipe(family, recipe)`` adds it, keyed by the HF
``config.model_type``.

Example:
    >>> from hybridtune.conversion import get_recipe
    >>> type(get_recipe("qwen3")).__name__
    'DecoderRecipe'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from hybridtune.config_schema import ConfigError
from hybridtune.conversion.attention import SpikingAttention, heads_of, normalisation, register_attention
from hybridtune.conversion.calibration import residuals, static_thresholds
from hybridtune.conversion.config import ConversionConfig
from hybridtune.conversion.modules import ThresholdNorm, attach_output_encoder, make_encoder, mark_spike_input
from hybridtune.conversion.outliers import calibration_start, get_outliers
from hybridtune.conversion.outliers.strategies import ClipFree
from hybridtune.conversion.plan import Plan, Site, get_module, in_features, out_features, set_module, to_spiking_linear

CalibrationState = dict[str, dict[str, Tensor]]  # site -> {"theta", "residual", "scale", "smooth": [C]} (optional)


@runtime_checkable
class Recipe(Protocol):
    """What ``convert`` calls, in this order. ``calib_ids`` is None when the config needs no calibration."""

    def validate(self, model: nn.Module, config: ConversionConfig) -> Plan: ...

    def calibrate(self, model: nn.Module, plan: Plan, config: ConversionConfig,
                  calib_ids: Tensor | None, state: CalibrationState | None = None) -> CalibrationState: ...

    def replace(self, model: nn.Module, plan: Plan, state: CalibrationState, config: ConversionConfig) -> None: ...

    def finalize(self, model: nn.Module, plan: Plan, config: ConversionConfig) -> None: ...


@dataclass(frozen=True)
class DecoderLayout:
    """Module paths of a pre-norm decoder stack; layer paths are relative to ``{layers}.{i}``."""

    layers: str = "model.layers"
    attn: str = "self_attn"
    attn_norm: str = "input_layernorm"
    attn_inputs: tuple[str, ...] = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    attn_out: str = "self_attn.o_proj"
    mlp_norm: str = "post_attention_layernorm"
    mlp_inputs: tuple[str, ...] = ("mlp.gate_proj", "mlp.up_proj")
    mlp_act: str = "mlp.act_fn"
    mlp_down: str = "mlp.down_proj"
    glu: bool = True  # act(gate) * up (SwiGLU / GeGLU); False: act output feeds mlp_down directly (GPT-2)
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    float_notes: tuple[str, ...] = ()  # family-specific float ops to name in the report


_ALWAYS_FLOAT = (
    "token embedding lookup and the residual-stream adds",
    "rotary position embedding",
    "SiLU/GELU evaluation (its output is what ffn_act encodes)",
    "per-token threshold statistics (mean|v| or rms per token, one reduction per encoded tensor)",
)


class DecoderRecipe:
    """The generic recipe for a decoder family described by a :class:`DecoderLayout`."""

    def __init__(self, layout: DecoderLayout | None = None):
        self.layout = layout or DecoderLayout()

    # ------------------------------------------------------------------------------------------------ validate
    def validate(self, model: nn.Module, config: ConversionConfig) -> Plan:
        config.validate()
        plan = Plan(family=str(model.config.model_type))
        cov = set(config.coverage)
        layers = get_module(model, self.layout.layers)
        for i in range(len(layers)):
            self.layer_sites(model, f"{self.layout.layers}.{i}", config, plan)
        if "linear_inputs" in cov:
            self.add_norm_site(model, plan, config, self.layout.final_norm, (self.layout.lm_head,))
        self.apply_skip(plan, config)
        check_groups(plan, config)
        plan.float_notes.extend(self.float_notes(config, plan))
        return plan

    def attention_sites(self, model: nn.Module, p: str, config: ConversionConfig, plan: Plan) -> None:
        """One decoder layer's attention sites: q/k/v and o_proj inputs, and the attention module itself."""
        lay, cov = self.layout, set(config.coverage)
        if "linear_inputs" in cov:
            self.add_norm_site(model, plan, config, f"{p}.{lay.attn_norm}", tuple(f"{p}.{c}" for c in lay.attn_inputs))
            self.add_input_site(model, plan, f"{p}.{lay.attn_out}")
        if "attention" in cov:
            plan.attention.append(f"{p}.{lay.attn}")

    def layer_sites(self, model: nn.Module, p: str, config: ConversionConfig, plan: Plan) -> None:
        """Add one decoder layer's sites (override for layers that differ, e.g. MoE)."""
        lay = self.layout
        self.attention_sites(model, p, config, plan)
        self.mlp_sites(model, plan, config, p, lay.mlp_norm, lay.mlp_inputs, lay.mlp_act, lay.mlp_down, lay.glu)

    def mlp_sites(self, model: nn.Module, plan: Plan, config: ConversionConfig, p: str, norm: str | None,
                  inputs: tuple[str, ...], act: str, down: str, glu: bool) -> None:
        """FFN sites; ``norm=None`` when the caller encodes the FFN input itself (a MoE block's shared norm)."""
        cov = set(config.coverage)
        if "linear_inputs" in cov and norm is not None:
            self.add_norm_site(model, plan, config, f"{p}.{norm}", tuple(f"{p}.{c}" for c in inputs))
        act_feeds_down = "ffn_act" in cov and not glu
        if "ffn_act" in cov:
            channels = out_features(get_module(model, f"{p}.{inputs[0]}"))
            if glu:
                plan.sites.append(Site(f"{p}.{act}", "output", f"{p}.{act}", channels=channels, fan_out=1))
            else:
                self.add_output_site(model, plan, f"{p}.{act}", (f"{p}.{down}",), channels)
        if "linear_inputs" in cov and not act_feeds_down:
            self.add_input_site(model, plan, f"{p}.{down}")

    def add_input_site(self, model: nn.Module, plan: Plan, path: str) -> None:
        linear = get_module(model, path)
        plan.sites.append(Site(path, "input", path, channels=in_features(linear), fan_out=out_features(linear)))

    def add_output_site(self, model: nn.Module, plan: Plan, path: str, consumers: tuple[str, ...], channels: int,
                        extra: tuple[str, ...] = (), extra_fan_out: int = 0, foldable: bool = True) -> None:
        fan_out = sum(out_features(get_module(model, c)) for c in consumers) + extra_fan_out
        plan.sites.append(Site(path, "output", path, consumers, extra, channels, fan_out, foldable))

    def add_norm_site(self, model: nn.Module, plan: Plan, config: ConversionConfig, norm: str,
                      consumers: tuple[str, ...], extra: tuple[str, ...] = (), extra_fan_out: int = 0,
                      foldable: bool = True) -> None:
        """The encoded output of a norm feeding linears: an output encoder on the norm, or (``norms``) a
        ThresholdNorm in its place."""
        channels = in_features(get_module(model, consumers[0]))
        self.add_output_site(model, plan, norm, consumers, channels, extra, extra_fan_out, foldable)
        if "norms" in config.coverage:
            plan.sites[-1].kind = "threshold_norm"

    def apply_skip(self, plan: Plan, config: ConversionConfig) -> None:
        if not config.skip:
            return
        keep = []
        for site in plan.sites:
            names = (site.module, *site.consumers, *site.extra_consumers)
            if any(pat in n for pat in config.skip for n in names):
                fed = f" (feeds {', '.join(site.consumers + site.extra_consumers)})" if site.consumers else ""
                plan.skipped.append(f"{site.name}{fed}")
            else:
                keep.append(site)
        plan.sites = keep
        plan.attention = [a for a in plan.attention if not any(pat in a for pat in config.skip)]

    def float_notes(self, config: ConversionConfig, plan: Plan) -> list[str]:
        cov = set(config.coverage)
        notes = list(_ALWAYS_FLOAT) + list(self.layout.float_notes)
        if "attention" not in cov:
            notes.append("attention QK^T and PV matmuls and softmax")
        elif config.softmax == "keep":
            notes.append("softmax (exp and normalisation; its output is encoded)")
        else:
            notes.append(normalisation(config.softmax).float_note)
        if "norms" not in cov:
            notes.append("RMSNorm/LayerNorm" + ("" if "linear_inputs" not in cov else " (their outputs are encoded)"))
        else:
            notes.append("norms that do not feed a linear (e.g. Gemma 3's post-norms, Qwen 3's q/k norms)")
        if "linear_inputs" not in cov:
            notes.append("all linear layers (q/k/v/o, FFN projections, lm_head)")
        if "ffn_act" in cov and "linear_inputs" not in cov and self.layout.glu:
            notes.append("FFN down projection (its input is the count x value product, not spikes)")
        notes.extend(f"skipped by config: {s}" for s in plan.skipped)
        return notes

    # ----------------------------------------------------------------------------------------------- calibrate
    def calibrate(self, model: nn.Module, plan: Plan, config: ConversionConfig,
                  calib_ids: Tensor | None, state: CalibrationState | None = None) -> CalibrationState:
        """Thresholds and compensation, added to ``state`` (e.g. the outlier strategies' entries)."""
        state = {} if state is None else state
        if not (config.threshold == "static" or config.compensation):
            return state
        if calib_ids is None:
            raise ValueError(f"conversion with threshold={config.threshold!r}, compensation={config.compensation} "
                             "needs calibration data: pass calib=<corpus, corpus name or token tensor>")
        if config.threshold == "static":
            for name, theta in static_thresholds(model, plan, config, calib_ids, calibration_start(config)).items():
                state.setdefault(name, {}).setdefault("theta", theta)  # an outlier strategy's theta wins
        if config.compensation:
            encoders = {}
            for site in plan.sites:
                if site.compensable:
                    entry = state.get(site.name, {})
                    encoders[site.name] = self.simulator(model, site, config, entry.get("theta"), entry.get("scale"))
            for name, r in residuals(model, plan, encoders, calib_ids, calibration_start(config)).items():
                state.setdefault(name, {})["residual"] = r
        return state

    def simulator(self, model: nn.Module, site: Site, config: ConversionConfig, theta: Tensor | None,
                  scale: Tensor | None = None):
        """``(observed_in, observed_out) -> encoded value`` exactly as the installed site will compute it."""
        if site.kind == "threshold_norm":
            tn = ThresholdNorm(get_module(model, site.module), self.encoder(site, config, None))
            return lambda x, y: tn(x)
        enc = self.encoder(site, config, theta, scale)
        if site.kind == "input":
            return lambda x, y: enc(x)
        return lambda x, y: enc(y)

    def encoder(self, site: Site, config: ConversionConfig, theta: Tensor | None,
                scale: Tensor | None = None) -> nn.Module:
        if site.kind == "threshold_norm":
            enc = make_encoder(config, None, mode="rms", divisor=config.divisor)
        else:
            overrides: dict[str, Any] = {}
            for name in config.outliers:  # e.g. act_absmax: a different per-token statistic at FFN activations
                hook = getattr(get_outliers(name), "encoder_overrides", None)
                if hook is not None:
                    overrides.update(hook(site, config, self.layout))
            enc = make_encoder(config, theta if config.threshold == "static" else None, scale=scale,
                               group=config.threshold_group, **overrides)
        enc.fan_out = site.fan_out
        return enc

    # ------------------------------------------------------------------------------------------------- replace
    def replace(self, model: nn.Module, plan: Plan, state: CalibrationState, config: ConversionConfig) -> None:
        self.replace_special(model, plan, config)
        for site in plan.sites:
            entry = state.get(site.name, {})
            theta = entry.get("theta")
            if config.threshold == "static" and site.kind != "threshold_norm" and theta is None:
                raise ValueError(f"calibration state has no threshold for site {site.name}")
            residual = entry.get("residual") if config.compensation and site.compensable else None
            self.install(model, site, self.encoder(site, config, theta, entry.get("scale")), residual)
        if plan.attention:
            self.install_attention(model, plan, config, state)

    def replace_special(self, model: nn.Module, plan: Plan, config: ConversionConfig) -> None:
        """Module swaps that come before the sites (e.g. MoE blocks); none for plain decoders."""

    def install(self, model: nn.Module, site: Site, encoder: nn.Module, residual: Tensor | None) -> None:
        if site.kind == "input":
            to_spiking_linear(model, site.module, encoder, residual)
            get_module(model, site.module).encoder.fan_out = site.fan_out
            return
        inner = get_module(model, site.module)
        if site.kind == "threshold_norm":
            set_module(model, site.module, ThresholdNorm(inner, encoder))
        else:
            attach_output_encoder(inner, encoder)
        for path in site.consumers:
            to_spiking_linear(model, path, None, residual)
        for path in site.extra_consumers:
            mark_spike_input(get_module(model, path))
        encoder.fan_out = site.fan_out

    def install_attention(self, model: nn.Module, plan: Plan, config: ConversionConfig,
                          state: CalibrationState | None = None) -> None:
        """``SpikingAttention`` on every planned attention module; a recoverable normalisation's per-head
        parameters start from ``state[path]`` (``softmax.*``, a recovered conversion) when it has them."""
        divisor = config.attention_divisor or config.divisor
        # the clip_free outlier strategy floors every dynamic threshold, the query's and the probability row's too
        clip_free = config.threshold == "dynamic" and any(isinstance(get_outliers(n), ClipFree)
                                                          for n in config.outliers)
        for path in plan.attention:
            module = get_module(model, path)
            q_enc = make_encoder(config, None, mode="mean_abs", divisor=divisor, clip_free=clip_free)
            p_enc = make_encoder(config, None, mode="mean_abs", divisor=divisor, clip_free=clip_free)
            spec = SpikingAttention(config.softmax, q_enc, p_enc, heads_of(module), (state or {}).get(path))
            module.hybridtune_attention = spec.to(next(module.parameters()).device)
        model.config._attn_implementation = register_attention()

    # ------------------------------------------------------------------------------------------------ finalize
    def finalize(self, model: nn.Module, plan: Plan, config: ConversionConfig) -> None:
        model.requires_grad_(False)
        model.eval()


def check_groups(plan: Plan, config: ConversionConfig) -> None:
    """``conversion.threshold_group`` must divide the width of every grouped site (all but norm-as-threshold ones):
    said before any work, naming the sites."""
    group = config.threshold_group
    if group is None:
        return
    bad = sorted({f"{s.name} ({s.channels})" for s in plan.sites
                  if s.kind != "threshold_norm" and s.channels and s.channels % group})
    if bad:
        raise ConfigError(f"threshold_group={group} does not divide the channels of {len(bad)} site(s): "
                          f"{', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}; use a divisor of every width, or "
                          "null (one threshold per token)", "conversion.threshold_group")


_RECIPES: dict[str, Any] = {}


def register_recipe(family: str, recipe: Any, overwrite: bool = False) -> None:
    """Register a recipe (an instance or a zero-argument class) for a model family (``config.model_type``).

    Example:
        >>> register_recipe("my_llama", DecoderRecipe(DecoderLayout()))
        >>> "my_llama" in available_recipes()
        True
    """
    instance = recipe() if isinstance(recipe, type) else recipe
    missing = [m for m in ("validate", "calibrate", "replace", "finalize") if not callable(getattr(instance, m, None))]
    if missing:
        raise TypeError(f"recipe for {family!r} lacks {', '.join(missing)} (validate -> calibrate -> replace -> "
                        "finalize)")
    if family in _RECIPES and not overwrite:
        raise ValueError(f"a recipe for family {family!r} is already registered (pass overwrite=True to replace it)")
    _RECIPES[family] = instance


def available_recipes() -> list[str]:
    return sorted(_RECIPES)


def get_recipe(family: str) -> Any:
    """The recipe registered for ``family`` or a ValueError listing the registered families (the built-in ones are
    registered by the package's ``__init__``, which runs before any of its modules)."""
    recipe = _RECIPES.get(family)
    if recipe is None:
        raise ValueError(f"no conversion recipe for model family {family!r}; registered: "
                         f"{', '.join(available_recipes())}. Add one with hybridtune.conversion.register_recipe(family, "
                         "DecoderRecipe(DecoderLayout(...)))")
    return recipe

