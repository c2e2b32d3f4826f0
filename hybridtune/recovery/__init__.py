"""Recovery of a converted model whose softmax was replaced: stage 1, *attention transfer*.

A recoverable softmax replacement (``conversion.softmax: relu_count | relu_sum | sigmoid``, see
:mod:`hybridtune.conversion.attention`) owns a few per-head parameters. Stage 1 trains exactly those, so that each
block's spiking attention output matches softmax attention computed on the fly from the same q / k / v (mean squared
error; no second model in memory). Stage 2 is ordinary adapter training (the trainer, any learner); the trainer
runs both from the run config's ``recovery`` section (:mod:`hybridtune.trainers.recovery`).

Example:
    >>> import torch
    >>> from hybridtune.conversion import ConversionConfig, convert
    >>> from hybridtune.testing import tiny_model, tiny_batch
    >>> cfg = ConversionConfig(coverage=("ffn_act", "linear_inputs", "attention"), softmax="sigmoid",
    ...                        compensation=False)
    >>> snn = convert(tiny_model("llama"), cfg)
    >>> before = attention_mse(snn, tiny_batch())
    >>> losses = transfer(snn, [tiny_batch()] * 20, lr=0.05)
    >>> attention_mse(snn, tiny_batch()) < before
    True
"""

from __future__ import annotations

from hybridtune.recovery.curve import curve_point, write_curve
from hybridtune.recovery.transfer import (
    TransferLoss,
    attention_mse,
    attention_transfer,
    fit_replacements,
    record_replacements,
    recoverable,
    train_only_replacements,
    transfer,
    transfer_step,
)

__all__ = ["TransferLoss", "attention_mse", "attention_transfer", "fit_replacements", "record_replacements",
           "recoverable", "transfer", "transfer_step", "train_only_replacements", "curve_point", "write_curve"]
