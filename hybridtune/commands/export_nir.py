"""``hybridtune export-nir``: write the spiking parts of a converted model (+ adapter) to a NIR file.

The work is :func:`hybridtune.export.export_model`; this module loads, writes atomically and prints what was left
out. Bad input (missing directories, a missing ``nir`` package, a block count out of range, an existing output
without ``--force``) exits 2 naming the culprit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """examples:
  hybridtune export-nir --spiking runs/qs/spiking --adapter runs/qs/adapter --out block0.nir --blocks 1
  python -c "import nir; g = nir.read('block0.nir'); print(list(g.nodes))"
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--spiking", required=True, metavar="DIR", help="converted spiking model (calibration state)")
    parser.add_argument("--adapter", default=None, metavar="DIR", help="spiking LoRA adapter saved by hybridtune")
    parser.add_argument("--model", default=None,
                        help="the base (default: the one --spiking was converted from)")
    parser.add_argument("--out", required=True, metavar="FILE.nir", help="where to write the NIR graph")
    parser.add_argument("--blocks", type=int, default=None, metavar="N", help="export blocks 0..N-1 (default: all)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file")


def _fail(message: str) -> int:
    print(f"hybridtune export-nir: {message}", file=sys.stderr)
    return 2


def _load(args: argparse.Namespace):
    from ..generation import load_for_generation

    for flag in ("spiking", "adapter"):
        value = getattr(args, flag)
        if value is not None and not Path(value).is_dir():
            raise FileNotFoundError(f"--{flag} {value}: no such directory")
    return load_for_generation(args.spiking, args.adapter, args.model)[0]


def run(args: argparse.Namespace) -> int:
    from ..adapters import SpikingAdapterLoadError
    from ..models import ModelLoadError

    out = Path(args.out)
    if out.suffix != ".nir":
        return _fail(f"--out {out}: the file name must end in .nir")
    if out.exists() and not args.force:
        return _fail(f"--out {out} exists; pass --force to overwrite it")
    if args.blocks is not None and args.blocks < 1:
        return _fail(f"--blocks {args.blocks}: must be >= 1")
    try:
        import nir
    except ImportError:
        return _fail("the nir package is not installed: pip install 'hybridtune[nir]' (or pip install nir)")
    from ..export import export_model

    try:
        model = _load(args)
        graph, left_out = export_model(model, args.blocks)
    except (ModelLoadError, SpikingAdapterLoadError, FileNotFoundError, ValueError) as exc:
        return _fail(str(exc))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    nir.write(str(tmp), graph)
    tmp.replace(out)
    layers = [name for name, node in graph.nodes.items() if isinstance(node, nir.NIRGraph)]
    blocks = len({name.split(".", 1)[0] for name in layers})
    print(f"wrote {out}: {blocks} block(s), {len(layers)} linear-layer sub-graphs (block<i>.<layer>)")
    print(f"left out ({len(left_out)}; also in the file's metadata['hybridtune']):")
    for item in left_out:
        print(f"  - {item}")
    return 0
