"""``convert``: run a family's recipe (validate -> calibrate -> replace -> finalize) on a transformers model.

Example:
    >>> from hybridtune.testing import tiny_model, tiny_batch
    >>> snn = convert(tiny_model("llama"), ConversionConfig(coverage=("ffn_act", "linear_inputs"), compensation=False))
    >>> out = snn(**tiny_batch(), labels=tiny_batch()["input_ids"])
    >>> out.logits.shape, any(p.requires_grad for p in snn.parameters())
    (torch.Size([2, 16, 256]), False)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from hybridtune.conversion.calibration import calibration_ids, resolve_calib
from hybridtune.conversion.config import ConversionConfig
from hybridtune.conversion.outliers import get_outliers
from hybridtune.conversion.plan import Plan
from hybridtune.conversion.recipe import CalibrationState, get_recipe

INFO_ATTR = "hybridtune_conversion"


@dataclass
class ConversionInfo:
    """What a converted model carries (``model.hybridtune_conversion``) and ``save_spiking`` writes."""

    config: ConversionConfig
    family: str
    base_fingerprint: str
    plan: Plan
    state: CalibrationState = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    base_model: str | None = None


def conversion_info(model: nn.Module) -> ConversionInfo:
    """The ``ConversionInfo`` of a converted model, or a ValueError saying the model is not converted."""
    info = getattr(_unwrap(model), INFO_ATTR, None)
    if info is None:
        raise ValueError("this model is not a converted spiking model: call hybridtune.conversion(model, config, "
                         "calib=...) or hybridtune.load_spiking(base_model, dir) first")
    return info


def is_converted(model: nn.Module) -> bool:
    return getattr(_unwrap(model), INFO_ATTR, None) is not None


def _unwrap(model: nn.Module) -> nn.Module:
    # a peft model keeps the converted transformers model at .base_model.model
    inner = getattr(getattr(model, "base_model", None), "model", None)
    return inner if isinstance(inner, nn.Module) and getattr(inner, INFO_ATTR, None) is not None else model


def needs_calibration(config: ConversionConfig) -> bool:
    """True when ``config`` needs calibration data: static thresholds, compensation, or an outlier strategy that
    calibrates (per-channel scales, smoothing)."""
    return config.threshold == "static" or config.compensation or any(
        get_outliers(name).needs_calibration for name in config.outliers)


def convert(model: nn.Module, config: ConversionConfig | None = None, calib: Any = None, *, tokenizer: Any = None,
            recipe: Any = None, state: CalibrationState | None = None) -> nn.Module:
    """Convert ``model`` in place into a frozen spiking model and return it (still a ``transformers`` model).

    Args:
        model: a causal LM whose ``config.model_type`` has a registered recipe (or pass ``recipe``).
        config: a :class:`ConversionConfig` (default ``ConversionConfig()``, the same as ``hybridtune convert``
            and the trainer: FFN activations + all linear inputs, base-2 graded spikes, per-token threshold
            mean|v|/8, expectation compensation).
        calib: calibration data when the config needs it (static thresholds, compensation or calibrated outlier
            strategies such as ``channel_scale``): a token tensor,
            a ``Corpus``, a corpus name or text (the latter three need ``tokenizer``). None: the corpus
            ``config.calib_data``. The first ``config.calib_tokens`` tokens (train split of a corpus) are used, so
            calibration is deterministic.
        tokenizer: tokenises text calibration data; None: the tokenizer of the model's name when
            :func:`hybridtune.load_model` loaded it.
        recipe: override the family's registered recipe.
        state: a calibration state to apply instead of calibrating (``load_spiking`` uses this).

    The base weights are shared, not copied (GPT-2's ``Conv1D`` weights are transposed copies), except where an
    outlier strategy (``config.outliers``) folds a rotation or scale into them: those get new tensors (the model's
    own parameters are replaced, never written in place; a tied ``lm_head`` is untied). Every parameter
    ends with ``requires_grad=False``. Converting an already converted model is refused.
    """
    from hybridtune.models import model_fingerprint

    config = (config or ConversionConfig()).validate()
    if is_converted(model):
        raise ValueError("this model is already converted; convert a fresh base model (load_model(...) again)")
    family = str(getattr(model.config, "model_type", ""))
    recipe = recipe or get_recipe(family)
    fingerprint = model_fingerprint(model)
    plan = recipe.validate(model, config)
    calibration: dict[str, Any] = {}
    strategies = [get_outliers(name) for name in config.outliers]
    if state is not None:  # a saved state: re-apply the same outlier transforms, then install
        for strategy in strategies:
            strategy.apply(model, plan, recipe, config, state)
    else:
        ids = None
        if needs_calibration(config):
            calib = config.calib_data if calib is None else calib
            if calib is None:
                raise ValueError(f"conversion ({config.label}) needs calibration data: pass calib=<token tensor, "
                                 "Corpus or corpus name> (and tokenizer= for text), or set calib_data")
            calib = resolve_calib(calib)
            if tokenizer is None and not isinstance(calib, Tensor):
                tokenizer = _own_tokenizer(model, config)
            block = min(config.calib_block, _max_positions(model))
            ids = calibration_ids(calib, config.calib_tokens, block, tokenizer)
            calibration = {"tokens": int(ids.numel()), "block": int(ids.shape[1]), "source": _describe(calib)}
        state = {}
        for strategy in strategies:  # in order: each calibrates on the model the previous ones transformed
            for site, entry in strategy.calibrate(model, plan, recipe, config, ids).items():
                state.setdefault(site, {}).update(entry)
            strategy.apply(model, plan, recipe, config, state)
        # the outlier strategies' entries go to the recipe (compensation simulates scaled encoders); a recipe with
        # the four-argument calibrate of earlier versions still works when no strategy calibrated anything
        state = recipe.calibrate(model, plan, config, ids, state) if state else recipe.calibrate(model, plan, config,
                                                                                                 ids)
    for strategy in strategies:
        plan.float_notes.extend(strategy.float_notes())
    recipe.replace(model, plan, state, config)
    recipe.finalize(model, plan, config)
    for strategy in strategies:  # e.g. float_sink hooks the finished model
        finalize = getattr(strategy, "finalize", None)
        if finalize is not None:
            finalize(model, plan, config)
    setattr(model, INFO_ATTR, ConversionInfo(config, family, fingerprint, plan, state, calibration,
                                             getattr(model, "hybridtune_source", None)))
    return model


def _own_tokenizer(model: nn.Module, config: ConversionConfig) -> Any:
    """The tokenizer of the name :func:`hybridtune.load_model` loaded ``model`` from (read, not stored)."""
    from hybridtune.models import load_tokenizer

    name = getattr(model, "hybridtune_name", None)
    if name is None:
        raise ValueError(f"conversion ({config.label}) calibrates on text ({config.calib_data!r}) but this model was "
                         "not loaded with hybridtune.load_model, so its tokenizer is unknown: pass tokenizer=..., or "
                         "calib=<token ids tensor>, or ConversionConfig(compensation=False) for a conversion that "
                         "needs no calibration")
    return load_tokenizer(name)


def _max_positions(model: nn.Module) -> int:
    cfg = getattr(model.config, "get_text_config", lambda: model.config)()
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1 << 30


def _describe(calib: Any) -> str:
    if isinstance(calib, Tensor):
        return f"token tensor {list(calib.shape)}"
    name = getattr(calib, "name", None)
    if name is not None:
        content = getattr(calib, "content_hash", None)
        digest = content("train") if callable(content) else None
        return f"corpus {name} (train split{', content ' + digest[:12] if digest else ''})"
    return f"{type(calib).__name__}"


def convert_from_config(model: nn.Module, section: Any, *, calib: Any = None, tokenizer: Any = None) -> nn.Module:
    """Convert with the run config's ``conversion`` section (a ``ConversionConfig``) or a dict of its fields.

    Example:
        >>> from hybridtune.testing import tiny_model
        >>> snn = convert_from_config(tiny_model("gpt2"), {"coverage": ["ffn_act"], "compensation": False})
        >>> type(snn.transformer.h[0].mlp.c_proj).__name__
        'SpikingLinear'
    """
    config = section if isinstance(section, ConversionConfig) else ConversionConfig.from_dict(section)
    return convert(model, config.validate(), calib=calib, tokenizer=tokenizer)
