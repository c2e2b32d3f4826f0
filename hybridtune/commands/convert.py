"""``hybridtune convert``: convert an ANN into a frozen spiking model (T = 1) and save its calibration state.

The output directory holds no base weights (``spiking.json`` + ``calibration.safetensors``); ``eval --spiking DIR``
and ``report DIR`` re-apply it to the base model after checking the base weights' fingerprint.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="base model: 'default', 'gemma3-270m', a hub id, a local dir "
                                                      "or a .gguf file (default: the config's model.name, else "
                                                      "'default')")
    parser.add_argument("--config", default=None, metavar="FILE", help="run config YAML (its conversion section)")
    parser.add_argument("--out", required=True, metavar="DIR", help="where the calibration state is written")
    parser.add_argument("--overwrite", action="store_true", help="replace DIR if it already holds a spiking model")
    parser.add_argument("overrides", nargs="*", help="conversion.key=value (or --conversion.key=value)")


def run(args: argparse.Namespace) -> int:
    from hybridtune.conversion import conversion_info, convert_from_config, save_spiking
    from hybridtune.conversion.state import JSON_NAME

    from ..config import load_config
    from ..models import ModelLoadError, load_model, load_tokenizer

    cfg = load_config(args.config, list(args.overrides))  # ConfigError -> exit 2 before any work
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not (args.overwrite and (out / JSON_NAME).is_file()):
        reason = "pass --overwrite to replace it" if (out / JSON_NAME).is_file() else "it is not a saved spiking model"
        print(f"hybridtune convert: refusing to write into {out}: it exists and is not empty ({reason})",
              file=sys.stderr)
        return 2
    name = args.model or cfg.model.name
    try:
        model, tokenizer = load_model(name), load_tokenizer(name)
    except ModelLoadError as exc:
        print(f"hybridtune convert: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    snn = convert_from_config(model, cfg.conversion, tokenizer=tokenizer)
    path = save_spiking(snn, out)
    print(f"converted {name} in {time.perf_counter() - start:.1f} s -> {path}")
    info = conversion_info(snn)
    print(f"coverage: {', '.join(info.config.coverage)}; `hybridtune report {path}` gives fidelity and energy")
    return 0
