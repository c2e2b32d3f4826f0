"""``hybridtune doctor``: versions, the embedded default model, and which op backends are available and why."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import json
import platform
import sys

from hybridtune.model_wheels import CHUNKED_MODELS, cache_path, installed

PACKAGES = ("torch", "transformers", "peft", "accelerate", "snntorch", "wandb", "safetensors", "gguf", "datasets")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")


def _version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


def _chunked_status(model) -> dict:
    """Installed or not (and the install command), and whether it is already assembled in the cache."""
    if not installed(model):
        return {"installed": False, "install": model.install}
    path = cache_path(model)
    return {"installed": True, "assembled": path.is_file(), "cache": str(path)}


def collect() -> dict:
    """Everything doctor reports, as a dict (also recorded in results files)."""
    from .. import __version__
    from ..models import DEFAULT_INSTALL, ModelLoadError, default_model_dir

    facts: dict = {"hybridtune": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    facts["packages"] = {name: _version(name) for name in PACKAGES}
    try:
        facts["default_model"] = {"installed": True, "dir": str(default_model_dir())}
    except ModelLoadError:
        facts["default_model"] = {"installed": False, "install": DEFAULT_INSTALL}
    facts["other_models"] = {name: _chunked_status(model) for name, model in CHUNKED_MODELS.items()}
    try:
        import torch

        facts["cuda"] = {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    except ImportError:
        facts["cuda"] = {"available": False, "torch_cuda": None}
    try:
        ops = importlib.import_module("hybridtune.ops")
        try:
            ops.activate()  # resolve what a run would use now (auto may compile the kernel on a GPU machine)
        except Exception as exc:  # e.g. cuda requested where it cannot load: say so, doctor itself must not fail
            facts["op_backend_error"] = str(exc)
        facts["op_backends"] = ops.backend_info()
    except ImportError as exc:
        facts["op_backends"] = {"error": f"hybridtune.ops unavailable: {exc}"}
    return facts


def run(args: argparse.Namespace) -> int:
    facts = collect()
    if args.json:
        print(json.dumps(facts, indent=2, default=str))
        return 0
    print(f"hybridtune {facts['hybridtune']}  (python {facts['python']}, {facts['platform']})")
    for name, version in facts["packages"].items():
        print(f"  {name:<13} {version}")
    dm = facts["default_model"]
    print("default model:", f"installed at {dm['dir']}" if dm["installed"] else f"MISSING - install with: {dm['install']}")
    for name, status in facts["other_models"].items():
        if not status["installed"]:
            print(f"model {name}: not installed (optional) - install with: {status['install']}")
        else:
            where = f"assembled at {status['cache']}" if status["assembled"] else "assembled on first use"
            print(f"model {name}: installed, {where}")
    print("cuda:", "available" if facts["cuda"]["available"] else "not available",
          f"(torch built with CUDA {facts['cuda']['torch_cuda']})" if facts["cuda"]["torch_cuda"] else "(CPU build of torch)")
    print("spike_lora op backends:")
    for key, value in facts["op_backends"].items():
        print(f"  {key}: {value}")
    if "op_backend_error" in facts:
        print(f"  ERROR: {facts['op_backend_error']}")
    return 0
