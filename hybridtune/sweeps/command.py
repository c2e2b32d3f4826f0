"""The trial command: W&B macro substitution, an optional multi-process launcher, and the trial recorder wrapper.

The same command template goes to the W&B server (online) and to the local runner, so both run a trial the same
way: ``[python -m hybridtune.sweeps.trial --out DIR --metric M --] + <the sweep's command>``. The recorder
appends ``--trainer.output_dir=<DIR>/trials/<run id>/run`` after ``${args}`` and records the outcome.

Example:
    >>> expand_command(["${env}", "hybridtune", "train", "c.yaml", "${args}"], {"adapter.r": 4}, program=None)
    ['/usr/bin/env', 'hybridtune', 'train', 'c.yaml', '--adapter.r=4']
    >>> apply_launcher(["${env}", "hybridtune", "train", "c.yaml", "${args}"], "torchrun", 2, cpu=True)[:5]
    ['${env}', 'ACCELERATE_USE_CPU=1', 'torchrun', '--standalone', '--nproc_per_node=2']
"""

from __future__ import annotations

import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

from hybridtune.config_schema import ConfigError
from hybridtune.sweeps.params import format_arg

LAUNCHERS = ("none", "accelerate", "torchrun")
RECORDER_MODULE = "hybridtune.sweeps.trial"
_ENVVAR = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")


def expand_command(command: list[str], params: dict[str, Any], program: str | None,
                   environ: dict[str, str] | None = None) -> list[str]:
    """Resolve the macros as the W&B agent does: ``${env}`` -> /usr/bin/env, ``${interpreter}`` -> the running
    Python (the agent writes ``python``), ``${program}``, ``${args}`` -> ``--k=v`` items, ``${envvar:NAME}``."""
    environ = os.environ if environ is None else environ
    macros: dict[str, list[str]] = {
        "env": ["/usr/bin/env"] if platform.system() != "Windows" else [],
        "interpreter": [sys.executable],
        "program": [program] if program else [],
        "args": [format_arg(k, v) for k, v in params.items()],
    }
    out: list[str] = []
    for word in command:
        word = _ENVVAR.sub(lambda m: environ.get(m.group(1), m.group(1)), str(word))
        if word.startswith("${") and word.endswith("}") and word[2:-1] in macros:
            out += macros[word[2:-1]]
        else:
            out.append(word)
    return out


def _split_prefix(command: list[str]) -> tuple[list[str], list[str]]:
    """(``${env}`` and NAME=value words, the rest)."""
    i = 0
    while i < len(command) and (command[i] == "${env}" or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", command[i])):
        i += 1
    return command[:i], command[i:]


def _python_target(rest: list[str], program: str | None) -> list[str]:
    """What to hand a Python launcher: ``-m hybridtune.cli ...``, ``script.py ...`` or ``-m module ...``."""
    head = rest[0]
    name = Path(head).name
    if name == "hybridtune":
        return ["-m", "hybridtune.cli", *rest[1:]]
    if head == "${interpreter}" or re.fullmatch(r"python[0-9.]*", name):
        return rest[1:]
    if head.endswith(".py") or (head == "${program}" and program and program.endswith(".py")):
        return rest
    raise ConfigError(f"cannot put {head!r} under a launcher: the command must start with hybridtune, python or a "
                      f".py script (after ${{env}})", "command")


def apply_launcher(command: list[str], launcher: str, num_processes: int, cpu: bool | None = None,
                   program: str | None = None) -> list[str]:
    """Rewrite the command template to run under ``accelerate launch`` or ``torchrun`` with ``num_processes``.

    On CPU (``cpu=None`` asks torch) ``ACCELERATE_USE_CPU=1`` is set through ``/usr/bin/env`` and more than one
    process uses ``accelerate launch --multi_gpu`` (``accelerate launch --cpu`` starts a single process);
    ``torchrun --standalone`` picks a free rendezvous port per trial.
    """
    if launcher not in LAUNCHERS:
        raise ConfigError(f"got {launcher!r}; allowed: {', '.join(LAUNCHERS)}", "launcher")
    if launcher == "none":
        return list(command)
    if num_processes < 1:
        raise ConfigError(f"got {num_processes}; must be >= 1", "num_processes")
    if any(Path(w).name in ("accelerate", "torchrun") for w in command):
        raise ConfigError("the sweep command already starts a launcher; drop --launcher", "command")
    prefix, rest = _split_prefix(command)
    if not rest:
        raise ConfigError("the command has nothing to launch", "command")
    target = _python_target(rest, program)
    if cpu is None:
        import torch

        cpu = not torch.cuda.is_available()
    env = ["ACCELERATE_USE_CPU=1"] if cpu else []
    prefix = (prefix if prefix[:1] == ["${env}"] else ["${env}", *prefix]) + env
    n = num_processes
    if launcher == "torchrun":
        return [*prefix, "torchrun", "--standalone", f"--nproc_per_node={n}", *target]
    if cpu and n > 1:
        head = ["accelerate", "launch", "--multi_gpu", f"--num_processes={n}", "--num_machines=1",
                "--mixed_precision=no", "--dynamo_backend=no"]
    elif cpu:
        head = ["accelerate", "launch", "--cpu", "--num_processes=1"]
    else:
        head = ["accelerate", "launch", f"--num_processes={n}", *(["--multi_gpu"] if n > 1 else [])]
    return [*prefix, *head, *target]


def wrap_with_recorder(command: list[str], out_dir: str | Path, metric: str, timeout: float | None = None,
                       quiet: bool = False, python: str | None = None) -> list[str]:
    """Put the trial recorder (:mod:`hybridtune.sweeps.trial`) in front of a command template."""
    words = [python or sys.executable, "-m", RECORDER_MODULE, f"--out={Path(out_dir).resolve()}",
             f"--metric={metric}"]
    if timeout:
        words.append(f"--timeout={timeout:g}")
    if quiet:
        words.append("--quiet")
    return [*words, "--", *command]


__all__ = ["expand_command", "apply_launcher", "wrap_with_recorder", "LAUNCHERS", "RECORDER_MODULE"]
