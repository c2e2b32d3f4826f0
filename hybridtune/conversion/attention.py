"""Spiking attention through transformers' attention interface (``ALL_ATTENTION_FUNCTIONS``).

Conversion registers one attention function, ``"hybridtune_spiking"``, with a boolean mask function, and sets the
model's ``config._attn_implementation`` to it. Attention modules that carry a :class:`SpikingAttention` (as the
child ``hybridtune_attention``) run the spiking path; any other module falls back to PyTorch SDPA, unchanged.

Spiking path, per head: the query is encoded as graded spikes (per-(token, head) dynamic threshold over the head
dim), so ``Q K^T`` is spike-driven (each query spike accumulates a key element over every visible key); the
probabilities come from ``softmax`` (float), ``nrelu`` (``relu(s) / sum relu(s)``) or ``spike``
(``relu(s) / n_visible``: normalisation by a per-position constant, as in spike-driven self-attention) and are
encoded as graded spikes (per-row threshold: mean over the visible keys / divisor), so ``P V`` is spike-driven
(each spike accumulates one value row). Keys and values are not spikes: they act as dynamic synaptic weights. Replacing softmax in a pretrained
model without recovery training loses a lot of quality; the benchmark reports it as measured.

Example:
    >>> fn = attention_function()
    >>> fn.__name__
    'spiking_attention_forward'
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hybridtune.neurons import SpikeStats
from hybridtune.neurons.stats import recomputing

ATTN_IMPLEMENTATION = "hybridtune_spiking"
SOFTMAX_MODES = ("keep", "nrelu", "spike")


class SpikingAttention(nn.Module):
    """Per-attention-module settings and statistics of the spiking path.

    ``q_encoder`` / ``p_encoder`` are graded neurons used through ``quantize`` (their own ``stats`` stay unused);
    statistics go to ``self.stats`` because the fan-out of a query spike varies with the number of visible keys.
    ``float_ops`` holds the last forward's float work (score scaling, softmax / normalisation) for the census.
    """

    def __init__(self, softmax: str, q_encoder: nn.Module, p_encoder: nn.Module):
        super().__init__()
        if softmax not in SOFTMAX_MODES:
            raise ValueError(f"softmax={softmax!r} is not valid; choose one of {SOFTMAX_MODES}")
        self.softmax = softmax
        self.q_encoder = q_encoder
        self.p_encoder = p_encoder
        self.stats: SpikeStats | None = None
        self.fan_out = 0  # variable; SOPs are computed per query row

    def extra_repr(self) -> str:
        return f"softmax={self.softmax!r}"


def _visible_mask(mask: Tensor | None, q_len: int, k_len: int, device: torch.device, causal: bool) -> Tensor | None:
    """Boolean ``[B|1, 1, Lq, Lk]`` (True = attend) from the model's mask, or a causal one when it passed None."""
    if mask is not None:
        if mask.dtype == torch.bool:
            return mask
        return mask == 0  # additive float mask: 0 = attend, large negative = masked
    if not causal or q_len == 1:
        return None
    offset = k_len - q_len  # queries are the last q_len positions (cached prefix)
    i = torch.arange(q_len, device=device)[:, None]
    j = torch.arange(k_len, device=device)[None, :]
    return (j <= i + offset)[None, None]


def _straight_through(v: Tensor, encoded: Tensor) -> Tensor:
    return encoded if not (torch.is_grad_enabled() and v.requires_grad) else v + (encoded - v).detach()


def _record(stats: SpikeStats, spikes: Tensor, neuron_steps: Tensor | int, silent: Tensor | int,
            sops: Tensor) -> None:
    values = torch.stack([spikes.double(), torch.as_tensor(neuron_steps, dtype=torch.float64),
                          torch.as_tensor(silent, dtype=torch.float64), sops.double()]).tolist()
    stats.spikes += values[0]
    stats.neuron_steps += int(values[1])
    stats.silent += int(values[2])
    stats.sops += values[3]


def spiking_attention_forward(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                              attention_mask: Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                              softcap: float | None = None, **kwargs) -> tuple[Tensor, None]:
    """Attention-interface function: ``(module, q [B,H,Lq,D], k, v [B,Hkv,Lk,D], mask) -> ([B,Lq,H,D], None)``."""
    spec = getattr(module, "hybridtune_attention", None)
    if spec is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      softcap=softcap, **kwargs)
    b, h, lq, d = query.shape
    groups = h // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    lk = key.shape[2]
    scaling = d ** -0.5 if scaling is None else scaling
    visible = _visible_mask(attention_mask, lq, lk, query.device, bool(getattr(module, "is_causal", True)))

    q_counts, q_theta = spec.q_encoder.quantize(query)
    q_spk = _straight_through(query, q_counts * q_theta)
    scores = torch.matmul(q_spk, key.transpose(2, 3)).mul_(scaling)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if spec.softmax == "keep":
        if visible is not None:
            scores = scores.masked_fill(~visible, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
    else:
        probs = torch.relu(scores)
        if visible is not None:
            probs = probs.masked_fill(~visible, 0.0)
        if spec.softmax == "nrelu":
            probs = probs / probs.sum(-1, keepdim=True).clamp_(min=1e-9)
        else:
            n_vis = visible.sum(-1, keepdim=True).clamp_(min=1) if visible is not None else lk
            probs = probs / n_vis
    probs = torch.nan_to_num(probs, nan=0.0)  # fully masked rows (padding) -> zeros, not NaN
    p_counts, p_theta = _quantize_rows(spec.p_encoder, probs, visible)
    p_spk = _straight_through(probs, p_counts * p_theta)
    if dropout > 0.0 and module.training:
        p_spk = nn.functional.dropout(p_spk, p=dropout)
    out = torch.matmul(p_spk, value)

    if spec.stats is not None and not recomputing():
        with torch.no_grad():
            n_visible = visible.sum(-1, dtype=torch.float64) if visible is not None else \
                torch.full((1, 1, lq), float(lk), dtype=torch.float64, device=query.device)  # [B|1, 1, Lq]
            qc = _spikes(spec.q_encoder, q_counts).sum(-1, dtype=torch.float64)  # [B, H, Lq]
            pc = _spikes(spec.p_encoder, p_counts)
            p_steps = n_visible.expand(b, h, lq).sum()
            p_silent = p_steps - torch.count_nonzero(p_counts)  # masked entries have p = 0, hence q = 0
            q_sops = (qc * n_visible).sum()
            _record(spec.stats, qc.sum(), q_counts.numel(), q_counts.numel() - torch.count_nonzero(q_counts), q_sops)
            _record(spec.stats, pc.sum(dtype=torch.float64), p_steps, p_silent,
                    pc.sum(dtype=torch.float64) * d)
    return out.transpose(1, 2).contiguous(), None


def _quantize_rows(encoder: nn.Module, probs: Tensor, visible: Tensor | None) -> tuple[Tensor, Tensor]:
    """Graded counts of attention rows with theta = mean over the *visible* entries / divisor.

    Averaging over visible keys only makes a query's threshold independent of how many masked (future or padded)
    keys its row happens to carry, so a cached token-by-token decode equals the full-sequence forward.
    """
    from hybridtune.neurons import graded_quantize

    with torch.no_grad():
        n_vis = visible.sum(-1, keepdim=True).clamp_(min=1) if visible is not None else probs.shape[-1]
        theta = (probs.sum(-1, keepdim=True) / n_vis).div_(encoder.threshold.divisor).clamp_(min=1e-12)
        return graded_quantize(probs, theta, encoder.max_spikes), theta


def _spikes(encoder: nn.Module, counts: Tensor) -> Tensor:
    from hybridtune.neurons import spike_count

    return spike_count(counts, getattr(encoder, "counting", "unary"))


def attention_function():
    """The function registered as ``"hybridtune_spiking"`` (for tests and introspection)."""
    return spiking_attention_forward


def register_attention() -> str:
    """Register the spiking attention function and its (boolean, SDPA-style) mask with transformers; idempotent."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if ATTN_IMPLEMENTATION not in ALL_ATTENTION_FUNCTIONS:
        ALL_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, spiking_attention_forward)
    if ATTN_IMPLEMENTATION not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, sdpa_mask)
    return ATTN_IMPLEMENTATION
