"""Attention transfer: the loss, the context that installs it, the trainable set, one optimisation step.

:class:`TransferLoss` is the :class:`~hybridtune.conversion.attention.TransferProbe` the spiking attention calls with
its output and the softmax reference on the same q / k / v; :func:`attention_transfer` installs one on every
recoverable attention for the duration of a block (and removes it after). Inside it each attention detaches its
inputs and its returned output, so the loss of layer ``l`` reaches only layer ``l``'s replacement parameters and no
graph is built through the frozen base. :func:`train_only_replacements` makes the replacements' parameters the only
trainable ones for the duration of a block and restores every ``requires_grad`` flag after: the caller's model is
otherwise unchanged. :func:`transfer_step` is one step; :func:`transfer` a whole (checkpoint-free) stage for library
use; the trainer's stage with checkpoints and a recovery curve is :mod:`hybridtune.trainers.recovery`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager

import torch
from torch import Tensor, nn

from hybridtune.adapters import model_call_keys
from hybridtune.conversion import conversion_info
from hybridtune.conversion.attention import (
    SpikingAttention,
    log_partition_offset,
    replacement_parameters,
    replacement_state,
)
from hybridtune.neurons import reset_state


class TransferLoss:
    """Collects one mean squared error per attention forward; :meth:`total` is their mean (each layer's MSE weighs
    the same, whatever its scale)."""

    def __init__(self) -> None:
        self.terms: list[Tensor] = []

    def add(self, attention: SpikingAttention, output: Tensor, reference: Tensor, *observed) -> None:
        self.terms.append(torch.nn.functional.mse_loss(output.float(), reference.float()))

    def total(self) -> Tensor:
        if not self.terms:
            raise ValueError("no attention transfer term was recorded: the model has no recoverable spiking attention "
                             "(conversion.softmax relu_count, relu_sum or sigmoid with 'attention' in the coverage)")
        return torch.stack(self.terms).mean()


def _attentions(model: nn.Module) -> list[SpikingAttention]:
    return [m for m in model.modules() if isinstance(m, SpikingAttention) and len(m.params)]


def recoverable(model: nn.Module) -> bool:
    """True when ``model`` (converted, possibly wrapped by peft) has recoverable attention parameters."""
    return bool(_attentions(model))


class PartitionFit:
    """Accumulates, per recoverable attention, the per-head log-partition offset of the scores it sees
    (:func:`~hybridtune.conversion.attention.log_partition_offset`); :meth:`apply` sets the strategy's closed-form
    parameters from the means."""

    def __init__(self) -> None:
        self.sums: dict[int, list] = {}

    def add(self, attention: SpikingAttention, output: Tensor, reference: Tensor, scores: Tensor,
            visible: Tensor | None, n_visible: Tensor | int) -> None:
        total, rows = log_partition_offset(scores.double(), visible, n_visible)
        entry = self.sums.setdefault(id(attention), [attention, torch.zeros_like(total), 0])
        entry[1] += total
        entry[2] += rows

    @torch.no_grad()
    def apply(self) -> None:
        for attention, total, rows in self.sums.values():
            for name, value in attention.norm.fitted_parameters((total / max(rows, 1)).float()).items():
                attention.params[name].copy_(value.to(attention.params[name].device))


@contextmanager
def _probing(model: nn.Module, probe: object) -> Iterator[object]:
    modules = _attentions(model)
    if not modules:
        raise ValueError("the model has no recoverable spiking attention: convert with 'attention' in "
                         "conversion.coverage and conversion.softmax relu_count, relu_sum or sigmoid")
    for m in modules:
        m.transfer = probe
    try:
        yield probe
    finally:
        for m in modules:
            m.transfer = None


def attention_transfer(model: nn.Module) -> AbstractContextManager[TransferLoss]:
    """Record the attention-transfer loss of every forward inside the block (removed on exit)."""
    return _probing(model, TransferLoss())


@torch.no_grad()
def fit_replacements(model: nn.Module, batches: Iterable[Mapping[str, Tensor]],
                     keys: Sequence[str] | None = None) -> int:
    """Closed-form start of stage 1: forwards over ``batches`` measure each head's mean log-partition offset and set
    the replacements' parameters from it (softmax's row normalisation, in the mean). Returns the tokens read."""
    was_training, tokens = model.training, 0
    model.eval()
    try:
        with _probing(model, PartitionFit()) as fit:
            for batch in batches:
                _forward(model, batch, keys)
                tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else \
                    batch["input_ids"].numel()
        fit.apply()
    finally:
        model.train(was_training)
    return tokens


@contextmanager
def train_only_replacements(model: nn.Module) -> Iterator[dict[str, nn.Parameter]]:
    """Inside the block exactly the replacements' parameters require a gradient; every flag is restored on exit."""
    params = replacement_parameters(model)
    if not params:
        raise ValueError("the model has no recoverable attention parameters (conversion.softmax relu_count, relu_sum "
                         "or sigmoid)")
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
        yield params
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _forward(model: nn.Module, batch: Mapping[str, Tensor], keys: Sequence[str] | None) -> None:
    keys = model_call_keys(model) if keys is None else keys
    reset_state(model)  # blocks are independent sequences: stateful neurons start from rest
    model(**{k: batch[k] for k in keys if k in batch})


def transfer_step(model: nn.Module, batch: Mapping[str, Tensor], optimizer: torch.optim.Optimizer,
                  keys: Sequence[str] | None = None, average: object = None) -> float:
    """One attention-transfer step on ``batch``: forward, MSE, backward, ``optimizer.step()``; returns the loss.

    ``average`` (optional): called with the list of parameters that have a gradient before the step (e.g. to
    average them over data-parallel ranks)."""
    optimizer.zero_grad(set_to_none=True)
    with attention_transfer(model) as loss:
        _forward(model, batch, keys)
        value = loss.total()
    value.backward()
    if average is not None:
        average([p for g in optimizer.param_groups for p in g["params"] if p.grad is not None])
    optimizer.step()
    return float(value.detach())


@torch.no_grad()
def attention_mse(model: nn.Module, batch: Mapping[str, Tensor], keys: Sequence[str] | None = None) -> float:
    """The attention-transfer loss of ``batch`` (mean over layers of the MSE to softmax attention), no update."""
    was_training = model.training
    model.eval()
    try:
        with attention_transfer(model) as loss:
            _forward(model, batch, keys)
            return float(loss.total())
    finally:
        model.train(was_training)


def transfer(model: nn.Module, batches: Iterable[Mapping[str, Tensor]], lr: float = 1e-2,
             keys: Sequence[str] | None = None, fit: bool = True) -> list[float]:
    """Stage 1 over ``batches``: the closed-form start on the first batch (``fit``, :func:`fit_replacements`), then
    Adam at ``lr`` (only the replacements' parameters change); returns the losses.

    The trained values are recorded in the model's conversion state (:func:`record_replacements`), so a saved
    conversion and an adapter's conversion fingerprint include them."""
    batches = list(batches)
    losses = []
    if fit and batches:
        fit_replacements(model, batches[:1], keys)
    with train_only_replacements(model) as params:
        optimizer = torch.optim.Adam(params.values(), lr=lr)
        for batch in batches:
            losses.append(transfer_step(model, batch, optimizer, keys))
    record_replacements(model)
    return losses


def record_replacements(model: nn.Module) -> None:
    """Write the replacements' current parameter values into the model's conversion state (``softmax.*`` entries
    of the attention sites), which ``save_spiking`` saves and the conversion fingerprint covers."""
    state = conversion_info(model).state
    for path, entry in replacement_state(_converted(model)).items():
        state.setdefault(path, {}).update(entry)


def _converted(model: nn.Module) -> nn.Module:
    # a peft model keeps the converted transformers model at .base_model.model; paths are relative to that model
    inner = getattr(getattr(model, "base_model", None), "model", None)
    return inner if isinstance(inner, nn.Module) and hasattr(inner, "hybridtune_conversion") else model


__all__ = ["TransferLoss", "PartitionFit", "fit_replacements", "attention_transfer", "train_only_replacements",
           "transfer_step", "attention_mse", "transfer", "record_replacements", "recoverable"]
