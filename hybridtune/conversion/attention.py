"""Spiking attention through transformers' attention interface (``ALL_ATTENTION_FUNCTIONS``).

Conversion registers one attention function, ``"hybridtune_spiking"``, with a boolean mask function, and sets the
model's ``config._attn_implementation`` to it. Attention modules that carry a :class:`SpikingAttention` (as the
child ``hybridtune_attention``) run the spiking path; any other module falls back to PyTorch SDPA, unchanged.

Spiking path, per head: the query is encoded as graded spikes (per-(token, head) dynamic threshold over the head
dim), so ``Q K^T`` is spike-driven (each query spike accumulates a key element over every visible key); the
probabilities come from a :class:`Normalisation` strategy (registry :data:`NORMALISATIONS`, ``conversion.softmax``
names one) and are encoded as graded spikes (per-row threshold: mean over the visible keys / divisor), so ``P V`` is
spike-driven (each spike accumulates one value row). Keys and values are not spikes: they act as dynamic synaptic
weights. The strategies:

- ``keep``: float softmax;
- ``nrelu``: ``relu(s) / sum relu(s)``;
- ``spike``: ``relu(s) / n_visible`` (normalisation by a per-position constant, as in spike-driven self-attention);
- ``relu_count`` (recoverable): ``g_h relu(tau_h s + b_h) / n_visible``, initialised at ``tau = g = b = 1``, the
  first-order expansion ``(1 + s) / n`` of ``exp(s) / sum exp(s)`` around uniform scores;
- ``relu_sum`` (recoverable): ``relu(tau_h s + b_h) / sum relu(tau_h s + b_h)`` over the visible keys, a running-sum
  normalisation (the row sum stays float); ``nrelu`` at its initial ``tau = 1, b = 0``;
- ``sigmoid`` (recoverable): ``sigmoid(tau_h s + b_h - log n_visible)``, a gate that needs no row sum; at
  ``tau = 1, b = 0`` it is ``exp(s) / n`` for scores well below ``log n``, i.e. softmax where the row's
  ``sum exp(s)`` is ``n``;
- ``relu_knots`` (recoverable): ``f(s) / sum f(s)`` with ``f(s) = sum_m a_hm relu(s - c_hm)``, 8 learnable
  thresholds and weights per head (a multi-threshold neuron on the score), started as the piecewise-linear
  interpolant of ``exp``;
- ``relu_knots_max`` (recoverable): the same ``f`` on ``s - max_visible s``, shift-invariant like softmax, started as
  the interpolant of ``exp`` on ``[-7, 0]`` (no fit needed).

With ``clip_free`` among the conversion's outlier strategies, the q and P encoders' thresholds are floored like
every other dynamic threshold (``max / (2**K - 1)``), so a bounded count never clips a row's largest entry: a peaky
probability row (one key taking most of the weight among hundreds) would otherwise saturate at the bound.

A recoverable strategy owns a few per-head parameters (``tau``, ``b`` and for ``relu_count`` ``g``), registered on the
:class:`SpikingAttention` module (``hybridtune_attention.params.*``), frozen after conversion; the recovery stage
(:mod:`hybridtune.recovery`) trains them so each attention output matches softmax attention on the same q / k / v.
Their trained values are part of the conversion's state (:func:`replacement_state`), so they are saved with it and
fingerprinted. Replacing softmax in a pretrained model without recovery loses a lot of quality; the benchmarks
report it as measured.

Example:
    >>> fn = attention_function()
    >>> fn.__name__
    'spiking_attention_forward'
    >>> sorted(NORMALISATIONS)
    ['keep', 'nrelu', 'relu_count', 'relu_knots', 'relu_knots_max', 'relu_sum', 'sigmoid', 'spike']
    >>> [n for n in NORMALISATIONS if NORMALISATIONS[n].recoverable]
    ['relu_count', 'relu_sum', 'sigmoid', 'relu_knots', 'relu_knots_max']
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from hybridtune.neurons import SpikeStats
from hybridtune.neurons.stats import recomputing

ATTN_IMPLEMENTATION = "hybridtune_spiking"
STATE_PREFIX = "softmax."  # conversion-state kinds of an attention site: softmax.tau, softmax.bias, softmax.gain


@runtime_checkable
class Normalisation(Protocol):
    """What computes attention probabilities from the scaled scores (one strategy per ``conversion.softmax`` name).

    ``probabilities(scores [B,H,Lq,Lk], visible [B|1,1,Lq,Lk] bool | None, n_visible [B|1,1,Lq,1] | int, params)``
    returns non-negative probabilities, zero where not visible. ``float_cost`` is the float work per visible
    (query, key) pair and head as ``(MACs, adds)``, charged by the census; ``float_note`` says what stays float.
    ``initial_parameters(heads)`` is ``{}`` for a strategy with nothing to recover.
    """

    name: str
    recoverable: bool
    float_note: str
    float_cost: tuple[float, float]

    def initial_parameters(self, heads: int) -> dict[str, Tensor]: ...

    def fitted_parameters(self, offset: Tensor) -> dict[str, Tensor]:
        """Closed-form values from the per-head mean log-partition offset ``E[logsumexp(s) - log n]`` (see
        :func:`log_partition_offset`); ``{}`` for a strategy with nothing to fit."""
        ...

    def probabilities(self, scores: Tensor, visible: Tensor | None, n_visible: Tensor | int,
                      params: nn.ParameterDict) -> Tensor: ...


def _masked(probs: Tensor, visible: Tensor | None) -> Tensor:
    return probs if visible is None else probs.masked_fill(~visible, 0.0)


def _row_normalised(probs: Tensor) -> Tensor:
    """Each row over its sum (the visible keys'; masked ones are already zero)."""
    return probs / probs.sum(-1, keepdim=True).clamp(min=1e-9)


def _per_head(params: nn.ParameterDict, name: str, like: Tensor) -> Tensor:
    return params[name].to(like.dtype)[None, :, None, None]  # [1, H, 1, 1]


class _Fixed:
    """A normalisation without parameters."""

    recoverable = False

    def initial_parameters(self, heads: int) -> dict[str, Tensor]:
        return {}

    def fitted_parameters(self, offset: Tensor) -> dict[str, Tensor]:
        return {}


class Softmax(_Fixed):
    name = "keep"
    float_note = "softmax (exp and normalisation; its output is encoded)"
    float_cost = (2.0, 1.0)  # exp and divide (MAC-equivalents), the row sum

    def probabilities(self, scores, visible, n_visible, params):
        if visible is not None:
            scores = scores.masked_fill(~visible, float("-inf"))
        return torch.softmax(scores, dim=-1)


class NormalisedRelu(_Fixed):
    name = "nrelu"
    float_note = "attention normalisation (nrelu: relu and one division per score, the row sum)"
    float_cost = (1.0, 1.0)  # relu is free; one division per score and the row sum

    def probabilities(self, scores, visible, n_visible, params):
        return _row_normalised(_masked(torch.relu(scores), visible))


class CountNormalisedRelu(_Fixed):
    name = "spike"
    float_note = "attention normalisation (spike: relu and one division by n_visible per score)"
    float_cost = (1.0, 0.0)

    def probabilities(self, scores, visible, n_visible, params):
        return _masked(torch.relu(scores), visible) / n_visible


class LearnedCountRelu:
    """``g_h relu(tau_h s + b_h) / n_visible``; init ``(1 + s) / n``, the first-order expansion of softmax."""

    name, recoverable = "relu_count", True
    float_note = ("attention normalisation (relu_count: per score one multiply-add tau s + b and one multiply by "
                  "g / n_visible; 3 float parameters per head)")
    float_cost = (2.0, 1.0)

    def initial_parameters(self, heads: int) -> dict[str, Tensor]:
        return {"tau": torch.ones(heads), "bias": torch.ones(heads), "gain": torch.ones(heads)}

    def fitted_parameters(self, offset: Tensor) -> dict[str, Tensor]:
        # exp(s - lse) = exp(x) / n with x = s - (lse - log n) ~ (1 + x) / n: b = 1 - E[lse - log n]
        return {"tau": torch.ones_like(offset), "bias": 1.0 - offset, "gain": torch.ones_like(offset)}

    def probabilities(self, scores, visible, n_visible, params):
        tau, bias, gain = (_per_head(params, k, scores) for k in ("tau", "bias", "gain"))
        return _masked(torch.relu(scores * tau + bias), visible) * (gain / n_visible)


class LearnedSumRelu:
    """``relu(tau_h s + b_h) / sum_visible relu(tau_h s + b_h)``: a running-sum normalisation; init ``nrelu``."""

    name, recoverable = "relu_sum", True
    float_note = ("attention normalisation (relu_sum: per score one multiply-add tau s + b, the row sum and one "
                  "division; 2 float parameters per head)")
    float_cost = (2.0, 2.0)  # the multiply-add and the division; the bias add and the row sum

    def initial_parameters(self, heads: int) -> dict[str, Tensor]:
        return {"tau": torch.ones(heads), "bias": torch.zeros(heads)}

    def fitted_parameters(self, offset: Tensor) -> dict[str, Tensor]:
        return self.initial_parameters(offset.shape[0])  # scale-free in the partition: nothing to fit from it

    def probabilities(self, scores, visible, n_visible, params):
        tau, bias = (_per_head(params, k, scores) for k in ("tau", "bias"))
        return _row_normalised(_masked(torch.relu(scores * tau + bias), visible))


class SigmoidGate:
    """``sigmoid(tau_h s + b_h - log n_visible)``: no row sum; init ``tau = 1, b = 0``."""

    name, recoverable = "sigmoid", True
    float_note = ("attention normalisation (sigmoid: per score one multiply-add tau s + b - log n and a float "
                  "sigmoid (exp, divide); 2 float parameters per head)")
    float_cost = (3.0, 1.0)  # the multiply-add, exp and divide of the sigmoid

    def initial_parameters(self, heads: int) -> dict[str, Tensor]:
        return {"tau": torch.ones(heads), "bias": torch.zeros(heads)}

    def fitted_parameters(self, offset: Tensor) -> dict[str, Tensor]:
        # sigmoid(s + b - log n) ~ exp(s - (lse - log n)) / n = softmax when b = -(lse - log n): b = -E[lse - log n]
        return {"tau": torch.ones_like(offset), "bias": -offset}

    def probabilities(self, scores, visible, n_visible, params):
        tau, bias = (_per_head(params, k, scores) for k in ("tau", "bias"))
        log_n = torch.log(torch.as_tensor(n_visible, dtype=scores.dtype, device=scores.device))
        return _masked(torch.sigmoid(scores * tau + bias - log_n), visible)


def _exp_knots(centre: Tensor, knots: int) -> dict[str, Tensor]:
    """Knots ``c = centre + [-3, 4]`` (per head) and log slope increments of the piecewise-linear interpolant of
    ``exp`` through them, continued past the last knot with its tangent."""
    offsets = torch.linspace(-3.0, 4.0, knots, dtype=torch.float64)
    slopes = torch.cat([_exp_secants(offsets), offsets[-1:].exp()])  # the tangent at the last knot
    heads = centre.shape[0]
    return {"knots": (centre.double()[:, None] + offsets[None]).float(),
            "log_slope": _log_increments(slopes).expand(heads, knots).clone()}


def _exp_secants(points: Tensor) -> Tensor:
    """The slopes of ``exp`` between neighbouring points."""
    return (points[1:].exp() - points[:-1].exp()) / (points[1:] - points[:-1])


def _log_increments(slopes: Tensor) -> Tensor:
    """``log a_m`` of ``f = sum_m a_m relu(x - c_m)`` whose slope past knot ``m`` is ``slopes[m]`` (``exp`` is
    convex, so every increment is positive)."""
    return torch.cat([slopes[:1], slopes[1:] - slopes[:-1]]).log().float()


class LearnedKnots:
    """``f(s) / sum_visible f(s)`` with ``f(s) = sum_m a_hm relu(s - c_hm)``: a multi-threshold score neuron.

    Each knot ``c_hm`` is a threshold and ``a_hm`` the weight of what passes it, so ``f`` is a per-head,
    piecewise-linear, learnable stand-in for ``exp``; it starts as the interpolant of ``exp`` through 8 knots
    around the head's typical log-partition offset, where ``relu_sum`` is one straight line.
    """

    name, recoverable, knots = "relu_knots", True, 8
    float_note = ("attention normalisation (relu_knots: per score 8 thresholds, 8 weighted terms, the row sum and one "
                  "division; 16 float parameters per head)")
    float_cost = (9.0, 9.0)  # the 8 weights and the division; the 8 threshold subtractions and the row sum

    def initial_parameters(self, heads: int) -> dict[str, Tensor]:
        return _exp_knots(torch.zeros(heads), self.knots)

    def fitted_parameters(self, offset: Tensor) -> dict[str, Tensor]:
        return _exp_knots(offset, self.knots)

    def probabilities(self, scores, visible, n_visible, params):
        return _row_normalised(_masked(_knot_sum(scores, params), visible))


def _knot_sum(x: Tensor, params: nn.ParameterDict) -> Tensor:
    """``f(x) = sum_m a_hm relu(x - c_hm)`` per head, one threshold at a time (no ``[B, H, Lq, Lk, M]`` tensor)."""
    knots = params["knots"].to(x.dtype)
    slopes = params["log_slope"].exp().to(x.dtype)
    f = torch.zeros_like(x)
    for m in range(knots.shape[1]):
        f = f + slopes[:, m, None, None] * torch.relu(x - knots[:, m, None, None])
    return f


def _below_max_knots(heads: int, knots: int, lowest: float = -7.0) -> dict[str, Tensor]:
    """Knots at ``knots`` of the ``knots + 1`` evenly spaced points from ``lowest`` to 0 (all but 0), slopes the
    secants of ``exp`` between neighbours: ``f`` interpolates ``exp`` on ``[lowest, 0]`` (exact at every point but
    the first, where it is 0 instead of ``e^lowest``) and is 0 below."""
    points = torch.linspace(lowest, 0.0, knots + 1, dtype=torch.float64)
    return {"knots": points[:-1].float().expand(heads, knots).clone(),
            "log_slope": _log_increments(_exp_secants(points)).expand(heads, knots).clone()}


class MaxShiftedKnots(LearnedKnots):
    """``f(s - m) / sum_visible f(s - m)``, ``m`` the row's largest visible score: ``relu_knots`` made shift-invariant.

    Softmax does not change when a row's scores move together; a fixed ``f`` does, and rows whose scores sit far
    above or below its knots (attention sinks above all) are what ``relu_knots`` cannot follow. Shifting by the row
    max, as a numerically stable softmax does, puts every row's top score at 0, so ``f`` only needs to follow ``exp``
    on ``[-7, 0]``: it starts as that interpolant and needs no fit. As a neuron: each knot is a threshold ``m + c_hm``
    set per row by its largest input (a winner-take-all reference), which stays float with the row sum.
    """

    name = "relu_knots_max"
    float_note = ("attention normalisation (relu_knots_max: the row max, per score 8 thresholds above it, 8 weighted "
                  "terms, the row sum and one division; 16 float parameters per head)")
    float_cost = (9.0, 10.0)  # relu_knots' and one comparison per score for the row max

    def initial_parameters(self, heads: int) -> dict[str, Tensor]:
        return _below_max_knots(heads, self.knots)

    def fitted_parameters(self, offset: Tensor) -> dict[str, Tensor]:
        return self.initial_parameters(offset.shape[0])  # shift-invariant: a row's log-partition offset is moot

    def probabilities(self, scores, visible, n_visible, params):
        with torch.no_grad():  # the reference, like a dynamic threshold: not a path for gradients
            masked = scores if visible is None else scores.masked_fill(~visible, float("-inf"))
            top = masked.amax(-1, keepdim=True)
            top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # fully masked rows
        return _row_normalised(_masked(_knot_sum(scores - top, params), visible))


NORMALISATIONS: dict[str, Normalisation] = {s.name: s for s in (Softmax(), NormalisedRelu(), CountNormalisedRelu(),
                                                                 LearnedCountRelu(), LearnedSumRelu(),
                                                                 SigmoidGate(), LearnedKnots(), MaxShiftedKnots())}
SOFTMAX_MODES = tuple(NORMALISATIONS)
RECOVERABLE = tuple(name for name, s in NORMALISATIONS.items() if s.recoverable)


def normalisation(name: str) -> Normalisation:
    """The strategy registered as ``name`` (a ValueError naming the valid ones otherwise)."""
    if name not in NORMALISATIONS:
        raise ValueError(f"softmax={name!r} is not valid; choose one of {SOFTMAX_MODES}")
    return NORMALISATIONS[name]


def log_partition_offset(scores: Tensor, visible: Tensor | None, n_visible: Tensor | int) -> tuple[Tensor, int]:
    """Per head, the sum over query rows of ``logsumexp(visible scores) - log n_visible``, and the number of rows.

    Softmax is ``exp(s - lse)``; a normalisation that divides by ``n`` instead of the row sum matches it when its
    bias removes this offset, so its mean over calibration rows gives the recoverable strategies' closed-form
    start (:meth:`Normalisation.fitted_parameters`).
    """
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    n = torch.as_tensor(n_visible, dtype=scores.dtype, device=scores.device)
    offset = torch.logsumexp(scores, dim=-1, keepdim=True) - torch.log(n)  # [B, H, Lq, 1]
    offset = torch.nan_to_num(offset, nan=0.0, posinf=0.0, neginf=0.0)  # fully masked rows contribute nothing
    return offset.sum(dim=(0, 2, 3)), offset.shape[0] * offset.shape[2]


@runtime_checkable
class TransferProbe(Protocol):
    """Receives, per attention forward, the module, its spiking output, the softmax reference on the same q / k / v,
    the scores its normalisation saw and their visibility (the recovery stage installs one as
    ``SpikingAttention.transfer``)."""

    def add(self, attention: SpikingAttention, output: Tensor, reference: Tensor, scores: Tensor,
            visible: Tensor | None, n_visible: Tensor | int) -> None: ...


class SpikingAttention(nn.Module):
    """Per-attention-module settings, parameters and statistics of the spiking path.

    ``q_encoder`` / ``p_encoder`` are graded neurons used through ``quantize`` (their own ``stats`` stay unused);
    statistics go to ``self.stats`` because the fan-out of a query spike varies with the number of visible keys.
    ``params`` holds the normalisation's per-head parameters (empty unless it is recoverable; ``heads`` is then
    required), initialised from ``state`` (a conversion-state entry: ``softmax.<name>`` tensors) when given.
    ``transfer`` (None unless the recovery stage set one) makes the forward compare its output with softmax
    attention on the same inputs; q / k / v are then detached and the returned output too, so a loss reaches only
    this module's parameters.
    """

    def __init__(self, softmax: str, q_encoder: nn.Module, p_encoder: nn.Module, heads: int | None = None,
                 state: dict[str, Tensor] | None = None):
        super().__init__()
        self.norm = normalisation(softmax)
        self.softmax = softmax
        self.q_encoder = q_encoder
        self.p_encoder = p_encoder
        initial = {}
        if self.norm.recoverable:
            if heads is None:
                raise ValueError(f"softmax={softmax!r} has per-head parameters: pass heads=")
            initial = self.norm.initial_parameters(heads)
            for key, value in (state or {}).items():
                if key.startswith(STATE_PREFIX) and key[len(STATE_PREFIX):] in initial:
                    initial[key[len(STATE_PREFIX):]] = value.detach().float().cpu().clone()
        self.params = nn.ParameterDict({k: nn.Parameter(v, requires_grad=False) for k, v in initial.items()})
        self.stats: SpikeStats | None = None
        self.transfer: TransferProbe | None = None
        self.fan_out = 0  # variable; SOPs are computed per query row

    @property
    def float_cost(self) -> tuple[float, float]:
        """Float ``(MACs, adds)`` of the normalisation per visible (query, key) pair and head (for the census)."""
        return self.norm.float_cost

    def extra_repr(self) -> str:
        return f"softmax={self.softmax!r}"


def replacement_state(model: nn.Module) -> dict[str, dict[str, Tensor]]:
    """``{attention module path: {"softmax.<name>": tensor}}``: the recoverable parameters' current values, in the
    form of a conversion-state entry (what ``save_spiking`` writes and ``convert(state=...)`` reinstalls)."""
    out: dict[str, dict[str, Tensor]] = {}
    for name, module in model.named_modules():
        if isinstance(module, SpikingAttention) and len(module.params):
            path = name.rsplit(".hybridtune_attention", 1)[0]
            out[path] = {f"{STATE_PREFIX}{k}": p.detach().to("cpu").clone() for k, p in module.params.items()}
    return out


def replacement_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every recoverable normalisation parameter of ``model`` by its full name (empty when there is none)."""
    return {n: p for n, p in model.named_parameters(remove_duplicate=False) if ".hybridtune_attention.params." in n}


def softmax_attention(query: Tensor, key: Tensor, value: Tensor, visible: Tensor | None, scaling: float,
                      softcap: float | None = None) -> Tensor:
    """Float softmax attention ``softmax(q k^T scaling) v`` ``[B, H, Lq, D]`` (k / v already repeated per head):
    what the ANN computes on the same inputs, the attention-transfer reference."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    return torch.matmul(torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0), value)


def heads_of(module: nn.Module) -> int | None:
    """Number of query heads of a transformers attention module (None when it does not say)."""
    cfg = getattr(module, "config", None)
    return getattr(module, "num_heads", None) or getattr(cfg, "num_attention_heads", None) or \
        getattr(cfg, "n_head", None)


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
                              softcap: float | None = None, **kwargs) -> tuple[Tensor, Tensor | None]:
    """Attention-interface function: ``(module, q [B,H,Lq,D], k, v [B,Hkv,Lk,D], mask) -> ([B,Lq,H,D], P)``, with
    ``P [B,H,Lq,Lk]`` the spike-coded probabilities that weighted the values (as eager attention returns its softmax;
    eprop's one_hop path reads them), None on the SDPA fallback."""
    spec = getattr(module, "hybridtune_attention", None)
    if spec is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      softcap=softcap, **kwargs)
    transfer = spec.transfer
    if transfer is not None:  # attention transfer: a loss on this output reaches only this module's parameters
        query, key, value = query.detach(), key.detach(), value.detach()
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
    n_vis = visible.sum(-1, keepdim=True).clamp_(min=1) if visible is not None else lk
    probs = spec.norm.probabilities(scores, visible, n_vis, spec.params)
    probs = torch.nan_to_num(probs, nan=0.0)  # fully masked rows (padding) -> zeros, not NaN
    p_counts, p_theta = _quantize_rows(spec.p_encoder, probs, visible)
    p_spk = _straight_through(probs, p_counts * p_theta)
    if dropout > 0.0 and module.training:
        p_spk = nn.functional.dropout(p_spk, p=dropout)
    out = torch.matmul(p_spk, value)
    if transfer is not None:
        with torch.no_grad():
            reference = softmax_attention(query, key, value, visible, scaling, softcap)
        transfer.add(spec, out, reference, scores.detach(), visible, n_vis)
        out = out.detach()

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
    return out.transpose(1, 2).contiguous(), p_spk


def _quantize_rows(encoder: nn.Module, probs: Tensor, visible: Tensor | None) -> tuple[Tensor, Tensor]:
    """Graded counts of attention rows with theta = mean over the *visible* entries / divisor (floored at the row's
    max / cap when the encoder's threshold is clip-free).

    Averaging over visible keys only makes a query's threshold independent of how many masked (future or padded)
    keys its row happens to carry, so a cached token-by-token decode equals the full-sequence forward.
    """
    from hybridtune.neurons import graded_quantize

    strategy = encoder.threshold
    floor = getattr(strategy, "floor", None)  # a ClipFreeThreshold's: the row's largest entry never saturates
    with torch.no_grad():
        n_vis = visible.sum(-1, keepdim=True).clamp_(min=1) if visible is not None else probs.shape[-1]
        theta = (probs.sum(-1, keepdim=True) / n_vis).div_(strategy.divisor)
        if floor is not None:
            theta = torch.maximum(theta, floor(probs))
        theta = theta.clamp_(min=1e-12)
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
