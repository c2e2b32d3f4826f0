"""Assemble "spiking base + adapter" for evaluation: what ``hybridtune eval --spiking DIR --adapter DIR`` needs.

Example:
    >>> import tempfile
    >>> import hybridtune.conversion as hc
    >>> from hybridtune.testing import tiny_model
    >>> from hybridtune.adapters import SpikingLoraConfig, get_spiking_peft_model
    >>> d = tempfile.mkdtemp()
    >>> snn = hc.convert(tiny_model("llama"), hc.ConversionConfig(compensation=False))
    >>> _ = hc.save_spiking(snn, d + "/snn")
    >>> get_spiking_peft_model(snn, SpikingLoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(d + "/ad")
    >>> pm = load_for_eval(d + "/ad", spiking_dir=d + "/snn", model=tiny_model("llama"))
    >>> pm.training, sorted(pm.peft_config)
    (False, ['default'])
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .model import load


def load_for_eval(adapter_dir: str | Path, spiking_dir: str | Path | None = None, model: nn.Module | str | None = None,
                  dtype: torch.dtype = torch.float32, adapter_name: str | None = None) -> nn.Module:
    """Load the base (``model``: a module, a name for ``hybridtune.models.load_model``, or None for the name the
    spiking directory recorded, else ``"default"``), re-apply the conversion from ``spiking_dir`` when given, then
    restore the adapters from ``adapter_dir`` (all of them, or ``adapter_name``). Returns the peft model in eval
    mode; both loads check base-model fingerprints and refuse mismatches."""
    if model is None or isinstance(model, str):
        from hybridtune.models import load_model

        name = model
        if name is None and spiking_dir is not None:
            from hybridtune.conversion import read_spiking

            name = read_spiking(spiking_dir)[0].get("base_model")
        model = load_model(name or "default", dtype=dtype)
    if spiking_dir is not None:
        from hybridtune.conversion import load_spiking

        model = load_spiking(model, spiking_dir)
    return load(model, adapter_dir, adapter_name=adapter_name, is_trainable=False).eval()
