"""Calibration: deterministic token selection and streaming per-channel statistics at every site of a plan.

Two passes over the *ANN* (before any replacement), each a plain forward with hooks and no stored activations:
pass 1 collects per-channel ``mean|v|`` / ``rms`` / ``max|v|`` for static thresholds; pass 2 (compensation) measures
the per-channel mean residual ``E[u - encode(u)]`` in the space the consumers see, with the thresholds of pass 1,
and this is what ``fold_compensation`` puts into the consumers' bias (bias correction measured on ANN activations).

Example:
    >>> import torch
    >>> calibration_ids(torch.arange(10), tokens=6, block=4).tolist()
    [[0, 1, 2, 3], [4, 5, 6, 7]]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from hybridtune.conversion.config import ConversionConfig
from hybridtune.conversion.plan import Plan, Site, get_module


def calibration_ids(calib: Any, tokens: int, block: int, tokenizer: Any = None, split: str = "train") -> Tensor:
    """The first ``tokens`` tokens of ``calib`` as ``[n_blocks, block]`` (rounded up to whole blocks).

    ``calib``: a token tensor (any shape, flattened in order), a mapping with ``input_ids``, a ``Corpus``
    (its ``split`` text, tokenised with ``tokenizer``), a corpus name, or a plain string.
    """
    if isinstance(calib, Mapping) and "input_ids" in calib:
        calib = calib["input_ids"]
    if isinstance(calib, Tensor):
        ids = calib.reshape(-1).to(torch.long)
    else:
        ids = _tokenize(calib, tokens + block, tokenizer, split)
    if ids.numel() == 0:
        raise ValueError("calibration data is empty")
    block = min(block, ids.numel())
    n_blocks = max(1, -(-min(tokens, ids.numel()) // block))  # ceil, at least one block
    n_blocks = min(n_blocks, ids.numel() // block)
    return ids[: n_blocks * block].reshape(n_blocks, block)


def resolve_calib(calib: Any) -> Any:
    """A corpus name (short, one line) becomes its ``Corpus``; anything else is returned as is."""
    if isinstance(calib, str) and "\n" not in calib and len(calib) < 256:
        from hybridtune.data import corpus

        try:
            return corpus(calib)
        except Exception as exc:  # noqa: BLE001 - report any lookup failure with the valid alternatives
            raise ValueError(f"calib={calib!r} is neither a token tensor nor a known corpus: {exc}") from exc
    return calib


def _tokenize(calib: Any, need: int, tokenizer: Any, split: str) -> Tensor:
    if tokenizer is None:
        raise ValueError("calibration from text or a corpus needs tokenizer=...; or pass token ids (a tensor)")
    calib = resolve_calib(calib)
    text = calib.text(split) if hasattr(calib, "text") else str(calib)
    # tokenise a growing prefix: the whole text of a corpus can be far longer than what calibration needs
    chars = need * 6
    while True:
        ids = tokenizer(text[:chars], return_tensors="pt", add_special_tokens=False)["input_ids"].reshape(-1)
        if ids.numel() >= need or chars >= len(text):
            return ids
        chars *= 2


def _observe(site: Site) -> str:
    return "input" if site.kind in ("input", "threshold_norm") else "output"


def _observed(t: Any, start: int) -> Tensor | None:
    if not isinstance(t, Tensor):
        return None
    t = t.detach()
    return t[:, start:] if start and t.dim() >= 3 else t  # [B, T, C]: drop the first `start` positions


def _hooked_forward(model: nn.Module, plan: Plan, ids: Tensor, fn: Callable[[Site, Tensor, Tensor], None],
                    start: int = 0) -> None:
    """Forward ``ids`` block by block with ``fn(site, observed_in, observed_out)`` called at every site, on the
    block positions from ``start`` on."""
    handles = []
    for site in plan.sites:
        def hook(module, args, output, site=site):
            fn(site, _observed(args[0] if args else None, start), _observed(output, start))
        handles.append(get_module(model, site.module).register_forward_hook(hook))
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for row in ids:
                model(input_ids=row[None].to(_device(model)))
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def channel_statistics(model: nn.Module, plan: Plan, ids: Tensor, stat: str, start: int = 0) -> dict[str, Tensor]:
    """Per-channel ``mean|v|``, ``rms(v)`` or ``max|v|`` (``stat``) of the encoded tensor at every site (float32
    ``[C]``, threshold-norm sites excluded): the input of an input site, the output of an output site; block
    positions from ``start`` on (``outliers.calibration_start``: 1 when the first token stays float)."""
    if stat not in ("mean_abs", "rms", "max_abs"):
        raise ValueError(f"channel_statistics: stat={stat!r} is not one of 'mean_abs', 'rms', 'max_abs'")
    sums: dict[str, list] = {}

    def collect(site: Site, x: Tensor | None, y: Tensor | None) -> None:
        if site.kind == "threshold_norm":
            return
        v = (x if _observe(site) == "input" else y).reshape(-1, site.channels).float()
        acc = sums.setdefault(site.name, [torch.zeros(site.channels, dtype=torch.float64), 0])
        # float32 reduction within a block (fast), float64 accumulation across blocks
        if stat == "mean_abs":
            part = v.abs().sum(0)
        elif stat == "rms":
            part = torch.linalg.vector_norm(v, ord=2, dim=0).square_()
        else:
            part = v.abs().amax(0)
        part = part.to("cpu", torch.float64)
        acc[0] = torch.maximum(acc[0], part) if stat == "max_abs" else acc[0] + part
        acc[1] += v.shape[0]

    _hooked_forward(model, plan, ids, collect, start)
    out = {}
    for name, (acc, n) in sums.items():
        value = acc / n if stat == "mean_abs" else (acc / n).sqrt() if stat == "rms" else acc
        out[name] = value.float()
    return out


def static_thresholds(model: nn.Module, plan: Plan, config: ConversionConfig, ids: Tensor,
                      start: int = 0) -> dict[str, Tensor]:
    """Static thresholds ``stat(|v|) / divisor`` at every site (threshold-norm sites excluded), per channel
    (``[C]``) or, with ``threshold_granularity: tensor``, one per site (a scalar: the statistic over all channels)."""
    mode = config.threshold_mode
    out = {}
    for name, stat in channel_statistics(model, plan, ids, mode, start).items():
        if config.threshold_granularity == "tensor":
            stat = stat.mean() if mode == "mean_abs" else stat.square().mean().sqrt() if mode == "rms" else stat.max()
        out[name] = (stat / config.divisor).clamp_(min=1e-8)
    return out


def residuals(model: nn.Module, plan: Plan, encoders: Mapping[str, Callable[[Tensor, Tensor], Tensor]],
              ids: Tensor, start: int = 0) -> dict[str, Tensor]:
    """Per-channel mean of ``u - encode(u)`` in the consumers' input space at every compensable site (block positions
    from ``start`` on).

    ``encoders[site]`` maps ``(observed_in, observed_out)`` to the value the consumers would see after encoding.
    """
    sums: dict[str, list] = {}

    def collect(site: Site, x: Tensor | None, y: Tensor | None) -> None:
        enc = encoders.get(site.name)
        if enc is None:
            return
        u = x if site.kind == "input" else y
        r = (u.float() - enc(x, y).float()).reshape(-1, site.channels)
        acc = sums.setdefault(site.name, [torch.zeros(site.channels, dtype=torch.float64), 0])
        acc[0] += r.sum(0).to("cpu", torch.float64)
        acc[1] += r.shape[0]

    _hooked_forward(model, plan, ids, collect, start)
    return {name: (s / n).float() for name, (s, n) in sums.items()}
