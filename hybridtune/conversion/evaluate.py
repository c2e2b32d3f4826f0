"""Perplexity plus accounting of a converted model: what ``hybridtune eval --spiking`` and ``report`` call.

Example:
    >>> import torch
    >>> from hybridtune.testing import tiny_model
    >>> from hybridtune.conversion import ConversionConfig, convert
    >>> ids = torch.randint(3, 256, (2, 16))
    >>> out = evaluate_spiking(convert(tiny_model("llama"), ConversionConfig(compensation=False)), {"input_ids": ids},
    ...                        ann=tiny_model("llama"))
    >>> sorted(k for k in out if k.startswith("ppl")), out["accounting"]["tokens"]
    (['ppl', 'ppl_ann', 'ppl_ratio'], 32)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from hybridtune.accounting import energy_report, format_report, load_report, write_report
from hybridtune.conversion.state import JSON_NAME, load_spiking, read_spiking


def evaluate_spiking(model: nn.Module, blocks: dict[str, Tensor], *, ann: nn.Module | None = None,
                     batch_size: int = 1, report_tokens: int | None = 2048) -> dict[str, Any]:
    """Perplexity of ``model`` on ``blocks`` (``input_ids`` [N, L], optional ``labels`` / ``attention_mask``), the
    ANN's perplexity and the ratio when ``ann`` is given, and ``accounting`` (an ``energy_report``) over the first
    blocks holding at most ``report_tokens`` tokens (None: all).
    """
    from hybridtune.perplexity import perplexity

    result: dict[str, Any] = dict(perplexity(model, blocks, batch_size=batch_size))
    if ann is not None:
        result["ppl_ann"] = perplexity(ann, blocks, batch_size=batch_size)["ppl"]
        result["ppl_ratio"] = result["ppl"] / result["ppl_ann"]
    ids = blocks["input_ids"]
    n = ids.shape[0] if report_tokens is None else max(1, min(ids.shape[0], report_tokens // ids.shape[1]))
    mask = blocks.get("attention_mask")
    result["accounting"] = energy_report(model, ids[:n], None if mask is None else mask[:n], batch_size=batch_size,
                                         extra={"perplexity": result["ppl"]})
    return result


def spiking_report(directory: str | os.PathLike, *, model: str = "default", data: str = "python-docs",
                   split: str = "eval", max_tokens: int = 2048, block_size: int = 512, out: str | None = None,
                   plot: bool = True) -> dict[str, Any]:
    """The report of a saved spiking model (``hybridtune report DIR``).

    If ``DIR`` (or ``out``) already holds a ``report.json`` it is read; otherwise the base ``model`` is loaded,
    the conversion in ``DIR`` re-applied, perplexity (with the ANN's) and accounting computed on ``max_tokens``
    of ``data`` and written as ``report.json`` + PNGs to ``out`` (default ``DIR/report``).
    """
    from hybridtune.data import corpus, pack
    from hybridtune.models import load_model, load_tokenizer

    directory = Path(directory)
    target = Path(out) if out is not None else directory / "report"
    for candidate in (directory, target):
        if (candidate / "report.json").is_file():
            return load_report(candidate)
    if not (directory / JSON_NAME).is_file():
        raise FileNotFoundError(f"{directory} holds neither report.json nor a saved spiking model ({JSON_NAME})")
    meta, _ = read_spiking(directory)
    tokenizer = load_tokenizer(model)
    corp = corpus(data)
    blocks = pack(tokenizer, corp.documents(split), block_size, max_tokens=max_tokens)
    tensors = {"input_ids": blocks.input_ids, "labels": blocks.labels, "attention_mask": blocks.attention_mask}
    snn = load_spiking(load_model(model), directory)
    result = evaluate_spiking(snn, tensors, ann=load_model(model), report_tokens=max_tokens)
    report = result.pop("accounting")
    report.update({"perplexity": result["ppl"], "ppl_ann": result["ppl_ann"], "ppl_ratio": result["ppl_ratio"],
                   "model": model, "data": data, "split": split, "content_hash": corp.content_hash(split),
                   "block_size": block_size, "spiking_dir": str(directory), "saved": meta.get("calibration", {})})
    write_report(report, target, plot=plot)
    return report


def summary_line(report: dict[str, Any]) -> str:
    """One paragraph for the terminal (``format_report``)."""
    return format_report(report)

