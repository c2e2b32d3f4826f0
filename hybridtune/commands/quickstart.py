"""``hybridtune quickstart [overrides...] [--out DIR]``: the main job on the embedded default, in minutes on a CPU.

Converts SmolLM2-135M (embedded GGUF) into a frozen spiking model at T = 1 (cached under ``~/.cache/hybridtune``
after the first time), attaches spiking LoRA, trains it with the surrogate learner on the built-in ``python-docs``
domain, and prints held-out perplexity before / after training next to the ANN's, spikes per neuron and the
energy estimate, plus where the W&B offline files are. ``configs/quickstart.yaml`` is the same run as a file
(``hybridtune train configs/quickstart.yaml`` repeats it); overrides work as for ``train``.
"""

from __future__ import annotations

import argparse
import json

from .train import accept_overrides, format_summary

# The run, embedded so an installed package needs no files; configs/quickstart.yaml must say the same (tested).
QUICKSTART: dict = {
    "model": {"name": "default"},
    "adapter": {"r": 8, "alpha": 16.0, "target_modules": ["q_proj", "v_proj", "up_proj", "down_proj"],
                "neuron": "mt", "threshold": 0.05, "max_spikes": 8},
    "learners": [{"name": "surrogate", "params": "all", "lr": 2.0e-3}],
    "data": {"train": "python-docs", "block_size": 128, "eval_tokens": 2048},
    "trainer": {"steps": 24, "batch_size": 4, "grad_accum": 1, "warmup_steps": 3, "scheduler": "cosine",
                "eval_every": 12, "save_every": 12, "keep_last": 1, "seed": 0},
    "tracking": {"backend": "wandb", "mode": "offline", "project": "hybridtune-quickstart"},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output directory (default: runs/quickstart-<date>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the quick start in --out")
    parser.add_argument("--no-cache", action="store_true", help="convert afresh instead of using the cache")
    accept_overrides(parser)


def embedded_overrides() -> list[str]:
    """:data:`QUICKSTART` as ``section.key=<json>`` overrides (JSON is YAML, so they parse back exactly)."""
    out = []
    for section, body in QUICKSTART.items():
        items = body.items() if isinstance(body, dict) else [(None, body)]
        for key, value in items:
            out.append(f"{section}{'.' + key if key else ''}={json.dumps(value)}")
    return out


def quickstart_config(overrides: list[str] = (), out: str | None = None):
    """The quick start's RunConfig with ``overrides`` applied (``out``: the output directory)."""
    from ..config import load_config

    default_out = "runs/quickstart-{time}"  # expanded by check_run, the same on every process
    return load_config(None, [*embedded_overrides(), f"trainer.output_dir={out or default_out}", *overrides])


def run(args: argparse.Namespace) -> int:
    from ..trainers.domain import run_domain_adaptation
    from ..trainers.loop import process_state
    from .progress import StepTimeEstimate
    from .train import check_run, cli_overrides

    overrides = [o for o in cli_overrides(args) if not o.startswith("trainer.output_dir=")]
    if args.resume and not args.out:
        print("hybridtune quickstart: --resume needs --out DIR (the run to continue)")
        return 2
    main = process_state().is_main_process
    say = print if main else (lambda _m: None)
    cfg = quickstart_config(overrides, args.out)
    say(f"hybridtune quick start: {cfg.model.name} -> spiking (T=1) + spiking LoRA r={cfg.adapter.r}, "
        f"{cfg.trainer.steps} steps on {cfg.data.train}")
    cfg = check_run(cfg, say=say, command="quickstart")
    report = run_domain_adaptation(cfg, echo=print, use_cache=not args.no_cache, callbacks=[StepTimeEstimate()])
    if main:
        print(format_summary(report))
    return 0
