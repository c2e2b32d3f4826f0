"""What a Hugging Face module is, recognised by its structure rather than its class name.

The conversion, the adapters, the census and the NIR export all need to know a few kinds of third-party module:
transformers' GPT-2 ``Conv1D`` (a linear with its weight stored ``[in, out]``), the norms (LayerNorm, RMSNorm, the
weightless L2 norm of Llama 4's q / k), fused MoE experts and their router block, and attention blocks. They are
recognised here, once, by the attributes and parameter shapes the code then relies on, so this floor needs no
``transformers`` import and a family with new class names but the same structure works unchanged.

One fact is not visible in the structure: Gemma's RMSNorm multiplies by ``(1 + weight)``. That is the only test
by class name (:func:`norm_gain_offset`).

Example:
    >>> import torch
    >>> norm_kind(torch.nn.LayerNorm(4)), norm_kind(torch.nn.RMSNorm(4)), norm_kind(torch.nn.Linear(4, 4))
    ('layer', 'rms', None)
"""

from __future__ import annotations

from torch import nn

__all__ = ["NORM_KINDS", "is_attention", "is_conv1d", "is_fused_experts", "is_linear_like", "is_moe_block",
           "linear_dims", "norm_gain_offset", "norm_kind"]

NORM_KINDS = ("layer", "rms", "l2")  # centred with bias; gain only; neither (unit gain)


def is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D``: ``nf`` outputs, a 2-D weight stored ``[in, nf]`` (not an ``nn.Linear``)."""
    weight = getattr(module, "weight", None)
    nf = getattr(module, "nf", None)
    return (not isinstance(module, nn.Linear) and isinstance(nf, int) and weight is not None
            and weight.dim() == 2 and weight.shape[1] == nf)


def is_linear_like(module: nn.Module) -> bool:
    """An ``nn.Linear`` (including its subclasses) or a transformers ``Conv1D``."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def linear_dims(module: nn.Module) -> tuple[int, int] | None:
    """``(in_features, out_features)`` of a linear-like module, else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if is_conv1d(module):
        return int(module.weight.shape[0]), int(module.nf)
    return None


def norm_kind(module: nn.Module) -> str | None:
    """``"layer"``, ``"rms"`` or ``"l2"`` for a normalisation module, None for anything else.

    A norm is a leaf (children other than a conversion's ``hybridtune_encoder`` disqualify it) with an epsilon
    (``eps`` or transformers' ``variance_epsilon``) and only 1-D parameters: a bias makes it a LayerNorm, a gain
    alone an RMSNorm, no parameter at all an L2 norm. This package's own modules are never third-party norms (a
    threshold strategy also has an epsilon and no parameters): they say what they compute themselves.
    """
    if isinstance(module, nn.LayerNorm):
        return "layer"
    if type(module).__module__.partition(".")[0] == "hybridtune":
        return None
    if any(name != "hybridtune_encoder" for name, _ in module.named_children()):
        return None
    if not (hasattr(module, "variance_epsilon") or hasattr(module, "eps")):
        return None
    params = dict(module.named_parameters(recurse=False))
    if any(p.dim() != 1 for p in params.values()) or set(params) - {"weight", "bias"}:
        return None
    if params.get("bias") is not None:
        return "layer"
    return "rms" if params.get("weight") is not None else "l2"


def norm_gain_offset(norm: nn.Module) -> float:
    """What a norm adds to its ``weight`` to get its gain: 1 for Gemma's ``(1 + weight)`` RMSNorm, else 0."""
    return 1.0 if norm_kind(norm) == "rms" and type(norm).__name__.startswith("Gemma") else 0.0


def is_fused_experts(module: nn.Module) -> bool:
    """Fused MoE experts (Llama 4): 3-D ``gate_up_proj [E, hidden, 2 * inter]`` and ``down_proj`` parameters."""
    gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return (isinstance(gate_up, nn.Parameter) and isinstance(down, nn.Parameter)
            and gate_up.dim() == 3 and down.dim() == 3 and hasattr(module, "hidden_size"))


def is_moe_block(module: nn.Module) -> bool:
    """A MoE block that routes tokens to its experts: a ``router``, ``experts`` and ``num_experts``."""
    return all(hasattr(module, a) for a in ("router", "experts", "num_experts", "hidden_dim"))


def is_attention(module: nn.Module) -> bool:
    """A self-attention block: separate q / k / v / o projections, or GPT-2's fused ``c_attn`` with ``c_proj``."""
    separate = all(isinstance(getattr(module, a, None), nn.Module) for a in ("q_proj", "k_proj", "v_proj", "o_proj"))
    fused = isinstance(getattr(module, "c_attn", None), nn.Module) and isinstance(getattr(module, "c_proj", None),
                                                                                  nn.Module)
    return separate or fused
