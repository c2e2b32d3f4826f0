"""Weight surgery that folds a rotation or a per-channel scale into linear layers, exactly in float.

Every helper *replaces* parameters with new ones (never writes into a tensor in place), so a structural copy that
shares its parameters with a base model (as the benchmarks use) never changes that base model. Arithmetic runs in
float64 and is cast back to the parameter's dtype.

Conventions (row vectors, ``y = x W^T + b``, ``W [out, in]``): a *reader* of a rotated input ``x R`` gets
``W R``; a *writer* whose output is to be rotated gets ``R^T W`` and ``b R``.

Example:
    >>> import torch
    >>> from hybridtune.conversion.outliers.hadamard import random_hadamard
    >>> lin = torch.nn.Linear(4, 3)
    >>> x, r = torch.randn(2, 4), random_hadamard(4).float()
    >>> y = lin(x)
    >>> rotate_reader(lin, r)
    >>> torch.allclose(lin(x @ r), y, atol=1e-5)
    True
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hybridtune.module_kinds import is_conv1d, norm_gain_offset


def _set(module: nn.Module, name: str, value: Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value.to(old.dtype), requires_grad=old.requires_grad))


def _weight64(module: nn.Module) -> Tensor:
    return module.weight.detach().to(torch.float64)


def rotate_reader(linear: nn.Module, r: Tensor) -> None:
    """``W <- W R`` (GPT-2 ``Conv1D``: ``W <- R^T W``): the layer now reads ``x R`` and computes what it did on x."""
    r = r.to(torch.float64).to(linear.weight.device)
    _set(linear, "weight", r.T @ _weight64(linear) if is_conv1d(linear) else _weight64(linear) @ r)


def rotate_writer(linear: nn.Module, r: Tensor) -> None:
    """``W <- R^T W``, ``b <- b R``: the linear's output comes out rotated, ``y R``."""
    r = r.to(torch.float64).to(linear.weight.device)
    _set(linear, "weight", r.T @ _weight64(linear))
    if getattr(linear, "bias", None) is not None:
        _set(linear, "bias", linear.bias.detach().to(torch.float64) @ r)


def rotate_embedding(embedding: nn.Module, r: Tensor) -> None:
    """``E <- E R`` (rows are tokens): the embedding lookup returns rotated vectors."""
    _set(embedding, "weight", _weight64(embedding) @ r.to(torch.float64).to(embedding.weight.device))


def scale_reader_columns(linear: nn.Module, s: Tensor) -> None:
    """``W <- W diag(s)``: fold a per-input-channel factor (a norm gain, a smoothing factor) into the reader."""
    _set(linear, "weight", _weight64(linear) * s.to(torch.float64).to(linear.weight.device)[None, :])


def rotate_heads_writer(linear: nn.Module, r: Tensor, head_dim: int) -> None:
    """Per-head ``R^T W_h`` (and ``b_h R``) on each ``head_dim`` block of output rows (v_proj)."""
    w = _weight64(linear)
    heads = w.shape[0] // head_dim
    r = r.to(torch.float64).to(w.device)
    _set(linear, "weight", torch.einsum("ij,hjk->hik", r.T, w.reshape(heads, head_dim, -1)).reshape_as(w))
    if getattr(linear, "bias", None) is not None:
        b = linear.bias.detach().to(torch.float64).reshape(heads, head_dim)
        _set(linear, "bias", (b @ r).reshape(-1))


def rotate_heads_reader(linear: nn.Module, r: Tensor, head_dim: int) -> None:
    """Per-head ``W_h R`` on each ``head_dim`` block of input columns (o_proj reading rotated heads)."""
    w = _weight64(linear)
    heads = w.shape[1] // head_dim
    r = r.to(torch.float64).to(w.device)
    _set(linear, "weight", (w.reshape(w.shape[0], heads, head_dim) @ r).reshape_as(w))


def unit_norm_gain(norm: nn.Module) -> Tensor | None:
    """Set a norm's gain to the identity and return the old effective gain (None if it has none).

    Plain RMSNorm / LayerNorm: ``weight <- 1``; Gemma's ``(1 + weight)`` RMSNorm: ``weight <- 0``.
    """
    weight = getattr(norm, "weight", None)
    if weight is None:
        return None
    offset = norm_gain_offset(norm)
    gain = weight.detach().to(torch.float64) + offset
    norm.weight = nn.Parameter(torch.full_like(weight, 1.0 - offset), requires_grad=weight.requires_grad)
    return gain


def untie_output_embedding(model: nn.Module) -> None:
    """Give ``lm_head`` its own copy of a tied embedding matrix, and record that the model is no longer tied.

    Folding a rotation into the input embedding and into ``lm_head`` needs two matrices (the embedding is rotated
    as a writer, the head as a reader with the final norm's gain folded in).
    """
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and embed is not None and head.weight is embed.weight:
        head.weight = nn.Parameter(embed.weight.detach().clone(), requires_grad=embed.weight.requires_grad)
    text_config = getattr(model.config, "get_text_config", lambda: model.config)()
    for cfg in {id(model.config): model.config, id(text_config): text_config}.values():
        if getattr(cfg, "tie_word_embeddings", False):
            cfg.tie_word_embeddings = False
