"""Export block 0 of the converted default model with its spiking LoRA adapter to NIR, read it back and replay its
linear layers on real activations.

The block's layers are fed the encoded inputs they saw while the model ran on held-out python-docs tokens (captured
with forward hooks), once through the torch model and once through the read-back NIR graph
(``hybridtune.export.run_graph``); the script records the largest difference relative to the output's scale, the
node types used, the file size, and the full list of what NIR could not represent.

Usage: python benchmarks/nir_export.py --spiking DIR --adapter DIR [--model default] [--tokens 64]
Writes benchmarks/results/nir_export.json (and the .nir file next to it unless --keep-file is off).
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    import nir

    from hybridtune import __version__
    from hybridtune.adapters import sequence_context
    from hybridtune.data import corpus
    from hybridtune.export import block_module, export_model, read_info, run_graph
    from hybridtune.generation import load_for_generation

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--spiking", required=True)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "nir_export.json"))
    args = parser.parse_args()

    model, tokenizer, _ = load_for_generation(args.spiking, args.adapter, args.model)
    block, _ = block_module(model, 0)
    text = next(iter(corpus("python-docs").documents("eval")))
    ids = tokenizer(text, return_tensors="pt")["input_ids"][:, : args.tokens]
    captured: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in block.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "get_base_layer") or type(module).__name__ == "SpikingLinear":
            if any(name.startswith(p + ".") for p in captured):
                continue
            captured[name] = None

            def hook(mod, inputs, output, name=name):
                base = mod.get_base_layer() if hasattr(mod, "get_base_layer") else mod
                x = inputs[0].detach()
                captured[name] = base.encode(x) if hasattr(base, "encode") else x
                outputs[name] = output.detach()

            hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=ids)
    for h in hooks:
        h.remove()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "block0.nir"
        graph, left_out = export_model(model, blocks=1)
        nir.write(str(path), graph)
        size = path.stat().st_size
        back = nir.read(str(path))
    layers = {}
    with torch.no_grad(), sequence_context(model, steps=ids.shape[1]):
        for name, x in captured.items():
            sub = back.nodes[f"block0.{name}"]
            got = run_graph(sub, x[0].to(torch.float32))
            want = outputs[name][0]
            kinds = collections.Counter(type(n).__name__ for n in sub.nodes.values())
            layers[name] = {"max_abs_diff": float((got - want).abs().max()),
                            "output_rms": float(want.pow(2).mean().sqrt()),
                            "nodes": dict(sorted(kinds.items()))}
            print(name, layers[name])
    info = read_info(back)
    result = {"what": "NIR export of block 0 of the converted default model + spiking LoRA adapter, read back and "
                      "replayed on captured activations", "model": args.model, "tokens": int(ids.shape[1]),
              "file_bytes": size, "layers": layers, "represented": info["represented"], "left_out": left_out,
              "nir": _version("nir"), "hybridtune": __version__, "machine": platform.platform(),
              "command": "python benchmarks/nir_export.py --spiking <quick start conversion> --adapter <quick start "
                         "adapter>"}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", args.out)


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
