"""ANN -> spiking conversion at T = 1: config, per-family recipes, calibration, save / load.

Example:
    >>> import hybridtune.conversion as hc
    >>> from hybridtune.testing import tiny_model, tiny_batch
    >>> snn = hc.convert(tiny_model("qwen3"), hc.ConversionConfig(coverage=("ffn_act",), compensation=False))
    >>> snn.generate(tiny_batch()["input_ids"][:1, :4], max_new_tokens=3, do_sample=False).shape
    torch.Size([1, 7])
"""

from __future__ import annotations

from hybridtune.conversion.api import (
    ConversionInfo,
    conversion_info,
    convert,
    convert_from_config,
    is_converted,
    needs_calibration,
)
from hybridtune.conversion.attention import ATTN_IMPLEMENTATION, SpikingAttention, register_attention
from hybridtune.conversion.calibration import calibration_ids
from hybridtune.conversion.config import COVERAGE_LEVELS, ConversionConfig
from hybridtune.conversion.evaluate import evaluate_spiking, spiking_report, summary_line
from hybridtune.conversion.modules import ThresholdNorm, attach_output_encoder, make_encoder, output_encoder
from hybridtune.conversion.moe import SpikingMoE
from hybridtune.conversion.plan import Plan, Site
from hybridtune.conversion.recipe import (
    DecoderLayout,
    DecoderRecipe,
    Recipe,
    available_recipes,
    get_recipe,
    register_recipe,
)
from hybridtune.conversion.state import load_spiking, read_spiking, save_spiking

from . import families  # noqa: F401 - registers the built-in recipes

__all__ = [
    "ATTN_IMPLEMENTATION",
    "COVERAGE_LEVELS",
    "ConversionConfig",
    "ConversionInfo",
    "DecoderLayout",
    "DecoderRecipe",
    "Plan",
    "Recipe",
    "Site",
    "SpikingAttention",
    "SpikingMoE",
    "ThresholdNorm",
    "attach_output_encoder",
    "available_recipes",
    "calibration_ids",
    "conversion_info",
    "convert",
    "convert_from_config",
    "evaluate_spiking",
    "get_recipe",
    "is_converted",
    "load_spiking",
    "make_encoder",
    "needs_calibration",
    "output_encoder",
    "read_spiking",
    "register_attention",
    "register_recipe",
    "save_spiking",
    "spiking_report",
    "summary_line",
]
