"""Built-in recipes: Llama / Qwen 2-3 / Mistral, Gemma 3, Llama 4 (MoE experts, shared expert, router), GPT-2.

Example:
    >>> from hybridtune.conversion import available_recipes
    >>> {"llama", "gemma3_text", "llama4_text", "qwen3", "gpt2"} <= set(available_recipes())
    True
"""

from __future__ import annotations

from torch import nn

from hybridtune.conversion.config import ConversionConfig
from hybridtune.conversion.modules import make_encoder
from hybridtune.conversion.moe import SpikingMoE
from hybridtune.conversion.plan import Plan, get_module, set_module
from hybridtune.conversion.recipe import _RECIPES, DecoderLayout, DecoderRecipe

LLAMA = DecoderLayout()
QWEN3 = DecoderLayout(float_notes=("Qwen 3 q_norm / k_norm (per-head RMSNorm on q and k inside attention)",))
GEMMA3_TEXT = DecoderLayout(
    mlp_norm="pre_feedforward_layernorm",
    float_notes=("Gemma 3 post_attention_layernorm / post_feedforward_layernorm (on block outputs, feed no linear)",
                 "Gemma 3 q_norm / k_norm and the embedding scale"),
)
GEMMA3_MULTIMODAL = DecoderLayout(
    layers="model.language_model.layers", final_norm="model.language_model.norm", mlp_norm="pre_feedforward_layernorm",
    float_notes=GEMMA3_TEXT.float_notes + ("the vision tower and projector (not converted)",),
)
GPT2 = DecoderLayout(
    layers="transformer.h", attn="attn", attn_norm="ln_1", attn_inputs=("attn.c_attn",), attn_out="attn.c_proj",
    mlp_norm="ln_2", mlp_inputs=("mlp.c_fc",), mlp_act="mlp.act", mlp_down="mlp.c_proj", glu=False,
    final_norm="transformer.ln_f", lm_head="lm_head", float_notes=("GPT-2 learned position-embedding add",),
)


class Llama4Recipe(DecoderRecipe):
    """Llama 4: dense layers as Llama (``feed_forward`` with ``activation_fn``); MoE layers become ``SpikingMoE``.

    MoE layers: the post-attention norm output is encoded once and feeds the router, the shared expert's gate/up
    and the routed experts' fused ``gate_up_proj`` (``top_k`` experts per token). The expert activation
    (``ffn_act``) and the experts' ``down_proj`` input (``linear_inputs``) are encoded inside ``SpikingMoE`` with
    dynamic per-token thresholds even when the config asks for static ones, and get no compensation: the fused
    3-D expert weights have no bias to fold into (the router has none either, so this site is not compensated).
    """

    def __init__(self, layout: DecoderLayout | None = None):
        super().__init__(layout or DecoderLayout(
            mlp_inputs=("feed_forward.gate_proj", "feed_forward.up_proj"), mlp_act="feed_forward.activation_fn",
            mlp_down="feed_forward.down_proj",
            float_notes=("Llama 4 router top-k and sigmoid (the router linear itself consumes spikes with "
                         "linear_inputs)", "routed-input scaling by the router score (one multiply per element)",
                         "Llama 4 L2 q/k norm and attention temperature tuning"),
        ))

    def layer_sites(self, model: nn.Module, p: str, config: ConversionConfig, plan: Plan) -> None:
        lay, cov = self.layout, set(config.coverage)
        self.attention_sites(model, p, config, plan)
        ff = get_module(model, f"{p}.feed_forward")
        if type(ff).__name__ != "Llama4TextMoe":
            self.mlp_sites(model, plan, config, p, lay.mlp_norm, lay.mlp_inputs, lay.mlp_act, lay.mlp_down, True)
            return
        plan.moe.append(f"{p}.feed_forward")
        shared = "feed_forward.shared_expert"
        if "linear_inputs" in cov:
            routed_fan_out = ff.num_experts + ff.top_k * int(ff.experts.gate_up_proj.shape[-1])
            self.add_norm_site(model, plan, config, f"{p}.{lay.mlp_norm}",
                               (f"{p}.{shared}.gate_proj", f"{p}.{shared}.up_proj"),
                               extra=(f"{p}.feed_forward.router",), extra_fan_out=routed_fan_out, foldable=False)
        self.mlp_sites(model, plan, config, p, None, (f"{shared}.gate_proj", f"{shared}.up_proj"),
                       f"{shared}.activation_fn", f"{shared}.down_proj", True)

    def replace_special(self, model: nn.Module, plan: Plan, config: ConversionConfig) -> None:
        cov = set(config.coverage)
        for path in plan.moe:
            moe = get_module(model, path)
            dynamic = config.with_(threshold="dynamic", threshold_mode="mean_abs")
            act = make_encoder(dynamic, group=config.threshold_group) if "ffn_act" in cov else None
            down = make_encoder(dynamic, group=config.threshold_group) if "linear_inputs" in cov else None
            spiking = SpikingMoE(moe, act, down)
            # with linear_inputs the experts' gate_up consumes the encoded norm output (census: SOPs)
            spiking.hybridtune_spike_input = "linear_inputs" in cov
            set_module(model, path, spiking)


BUILTIN = {
    "llama": DecoderRecipe(LLAMA), "mistral": DecoderRecipe(LLAMA), "qwen2": DecoderRecipe(LLAMA),
    "qwen3": DecoderRecipe(QWEN3),
    "gemma3_text": DecoderRecipe(GEMMA3_TEXT), "gemma3": DecoderRecipe(GEMMA3_MULTIMODAL),
    "llama4_text": Llama4Recipe(),
    "llama4": Llama4Recipe(DecoderLayout(
        layers="model.language_model.layers", final_norm="model.language_model.norm",
        mlp_inputs=("feed_forward.gate_proj", "feed_forward.up_proj"), mlp_act="feed_forward.activation_fn",
        mlp_down="feed_forward.down_proj", float_notes=("the vision tower and projector (not converted)",))),
    "gpt2": DecoderRecipe(GPT2),
}


def _register_builtins() -> None:
    for family, recipe in BUILTIN.items():
        _RECIPES.setdefault(family, recipe)  # a user's earlier registration wins


_register_builtins()
