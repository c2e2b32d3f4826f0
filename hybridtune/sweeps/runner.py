"""Running a sweep: online through the W&B server and agent, or locally with no server at all.

Both modes run every trial as a subprocess through the same command template (the sweep's ``command``, optionally
under a launcher, behind the trial recorder of :mod:`hybridtune.sweeps.trial`):

- **online**: ``wandb.sweep(config)`` creates the sweep on the server and ``wandb.agent(sweep_id, count=N)`` runs
  trials; the server chooses the values (grid, random or bayes). Before touching the server we check ``WANDB_MODE``,
  credentials and that the server answers, and fail fast with a hint to use ``--local``.
- **local**: the runner expands the file itself (grid: cartesian product; random: seeded draws of each
  distribution) and does for each trial what the agent does: writes ``{key: {value: v}}`` to a parameter file, sets
  ``WANDB_SWEEP_PARAM_PATH``, ``WANDB_SWEEP_ID``, ``WANDB_RUN_ID`` and ``WANDB_MODE=offline`` (``disabled`` is kept
  if already set) and runs the command with ``${args}`` as ``--key=value``. Ctrl-C stops the running trial's process
  group; the summary so far is written.

Example:
    >>> opts = SweepOptions(local=True, count=2)
    >>> (opts.local, opts.launcher)
    (True, 'none')
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import signal
import socket
import string
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from hybridtune.config_schema import ConfigError
from hybridtune.sweeps.command import apply_launcher, expand_command, wrap_with_recorder
from hybridtune.sweeps.params import check_parameters, grid_trials, random_trials
from hybridtune.sweeps.spec import SweepSpec
from hybridtune.sweeps.summary import SWEEP_RECORD, summarize
from hybridtune.sweeps.trial import GRACE_S, write_json


class SweepUnavailable(RuntimeError):
    """An online sweep cannot start here (no server, no credentials, W&B offline); the message says what to do."""


@dataclass
class SweepOptions:
    """How to run a sweep; mirrors the ``hybridtune sweep`` flags."""

    count: int | None = None
    local: bool = False
    project: str | None = None
    entity: str | None = None
    out: str | None = None
    launcher: str = "none"
    num_processes: int = 1
    cpu: bool | None = None
    method: str | None = None
    seed: int = 0
    timeout: float | None = None
    quiet: bool = False
    connect_timeout: float = 5.0


def _new_id(n: int = 8) -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(n))


def output_dir(spec: SweepSpec, opts: SweepOptions) -> Path:
    """``--out``, or ``runs/sweeps/<file stem>-<time>``; a directory that already holds trials is refused."""
    if opts.out:
        out = Path(opts.out)
    else:
        stem = Path(spec.source).stem if spec.source else "sweep"
        out = Path("runs", "sweeps", f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and (any(out.glob("trials/*/trial.json")) or (out / SWEEP_RECORD).exists()):
        raise ConfigError(f"{out} already holds a sweep; choose another --out, or rebuild its summary with "
                          f"`hybridtune sweep --summary {out}`", "out")
    return out


def command_template(spec: SweepSpec, opts: SweepOptions, out: Path) -> list[str]:
    """The sweep's command under the chosen launcher, behind the trial recorder (macros left in place)."""
    try:
        launched = apply_launcher(spec.command, opts.launcher, opts.num_processes, cpu=opts.cpu, program=spec.program)
    except ConfigError as exc:
        raise ConfigError(exc.detail, exc.key, spec.source) from None
    return wrap_with_recorder(launched, out, spec.metric, timeout=opts.timeout, quiet=opts.quiet)


def plan_trials(spec: SweepSpec, opts: SweepOptions) -> tuple[str, list[dict[str, Any]]]:
    """(method, the parameter sets of a local sweep)."""
    method = opts.method or spec.method
    if method == "bayes":
        raise ConfigError("bayes search needs the W&B server (the model of the metric lives there); run the sweep "
                          "online, or run it locally as a random search with --method random", "method", spec.source)
    if method == "grid":
        trials = grid_trials(spec.parameters)
        return method, trials[: opts.count] if opts.count else trials
    if method == "random":
        count = opts.count or spec.run_cap
        if not count:
            raise ConfigError("a local random search needs --count N (or run_cap in the sweep file)", "count",
                              spec.source)
        return method, random_trials(spec.parameters, count, seed=opts.seed)
    raise ConfigError(f"got {method!r}; allowed: grid, random, bayes", "method", spec.source)


def _sweep_record(spec: SweepSpec, opts: SweepOptions, mode: str, method: str, sweep_id: str,
                  template: list[str], planned: int | None) -> dict[str, Any]:
    base = spec.base_config
    return {"sweep_id": sweep_id, "mode": mode, "method": method, "metric": spec.metric, "goal": spec.goal,
            "names": spec.names, "base_config": str(Path(base).resolve()) if base else None,
            "sweep_file": str(Path(spec.source).resolve()) if spec.source else None, "command": template,
            "planned_trials": planned, "options": asdict(opts), "created": time.time(), "cwd": os.getcwd(),
            "parameters": spec.parameters}


def write_param_file(path: Path, params: dict[str, Any]) -> Path:
    """The agent's parameter file: ``wandb_version: 1`` then ``{key: {value: v}}`` (read by ``wandb.init``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump({k: {"value": v} for k, v in params.items()}, default_flow_style=False, sort_keys=False)
    path.write_text("wandb_version: 1\n\n" + body)
    return path


def _stop_trial(proc: subprocess.Popen) -> None:
    """SIGTERM the recorder (it stops the trial's process group and records it); SIGKILL if it lingers."""
    try:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=GRACE_S + 5)
        except subprocess.TimeoutExpired:
            pass
    except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
        pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


def _ensure_record(out: Path, run_id: str, index: int, params: dict[str, Any], metric: str, code: int | None,
                   interrupted: bool) -> None:
    """If the recorder died before recording, record the trial here so the summary still lists it."""
    path = out / "trials" / run_id / "trial.json"
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):  # torn by a kill mid-write
        record = {}
    if record.get("status") not in (None, "running"):
        return
    record.update(run_id=run_id, index=index, params=params, metric=metric, value=None, exit_code=code,
                  status="interrupted" if interrupted else "failed", finished=time.time(),
                  note="the trial recorder stopped before recording the outcome")
    record.setdefault("stderr_tail", "")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)


def run_local(spec: SweepSpec, opts: SweepOptions) -> dict[str, Any]:
    """Expand and run the sweep here with no server; returns the summary (see :func:`summarize`)."""
    method, trials = plan_trials(spec, opts)
    check_parameters(spec, trials, seed=opts.seed)
    out = output_dir(spec, opts)
    template = command_template(spec, opts, out)
    sweep_id = _new_id()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / SWEEP_RECORD, _sweep_record(spec, opts, "local", method, sweep_id, template, len(trials)))
    mode = "disabled" if os.environ.get("WANDB_MODE", "").lower() == "disabled" else "offline"
    interrupted = False
    print(f"hybridtune sweep: local {method} sweep {sweep_id}: {len(trials)} trials -> {out}", flush=True)
    for i, params in enumerate(trials):
        run_id = f"{sweep_id}-{i:03d}"
        param_file = write_param_file(out / "wandb" / f"sweep-{sweep_id}" / f"config-{run_id}.yaml", params)
        env = {**os.environ, "WANDB_SWEEP_ID": sweep_id, "WANDB_RUN_ID": run_id, "WANDB_MODE": mode,
               "WANDB_SWEEP_PARAM_PATH": str(param_file.resolve()), "HYBRIDTUNE_SWEEP_TRIAL": str(i)}
        if opts.project:
            env["WANDB_PROJECT"] = opts.project
        cmd = expand_command(template, params, spec.program, env)
        shown = " ".join(f"{k}={v}" for k, v in params.items())
        print(f"hybridtune sweep: trial {i + 1}/{len(trials)} {run_id}: {shown}", flush=True)
        code, proc = None, None
        try:
            proc = subprocess.Popen(cmd, env=env, start_new_session=True)
            code = proc.wait()
        except KeyboardInterrupt:
            interrupted = True
            print("\nhybridtune sweep: interrupted; stopping the running trial", file=sys.stderr, flush=True)
            if proc is not None:
                _stop_trial(proc)
                code = proc.returncode
        _ensure_record(out, run_id, i, params, spec.metric, code, interrupted)
        if interrupted:
            break
    summary = summarize(out, echo=True)
    summary["interrupted"] = interrupted
    summary["out"] = str(out)
    return summary


def _has_credentials(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    import netrc

    for name in filter(None, (os.environ.get("NETRC"), "~/.netrc", "~/_netrc")):
        path = Path(name).expanduser()
        if not path.is_file():
            continue
        try:
            if netrc.netrc(str(path)).authenticators(host):
                return True
        except (netrc.NetrcParseError, OSError):
            continue
    return False


def check_online(connect_timeout: float = 5.0) -> str:
    """Fail fast (:class:`SweepUnavailable`) unless an online sweep can reach the W&B server; returns its URL."""
    hint = "run the sweep fully offline instead with `hybridtune sweep FILE --local`"
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        raise SweepUnavailable(f"WANDB_MODE={mode}: an online sweep needs the W&B server (unset WANDB_MODE), or {hint}")
    url = os.environ.get("WANDB_BASE_URL")
    if not url:
        import wandb

        url = str(wandb.Settings().base_url)
    parsed = urlparse(url)
    host = parsed.hostname or ""
    if not _has_credentials(host):
        raise SweepUnavailable(f"no W&B credentials for {host} (set WANDB_API_KEY or run `wandb login`), or {hint}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=connect_timeout).close()
    except OSError as exc:
        raise SweepUnavailable(f"the W&B server {url} does not answer ({exc}); {hint}") from None
    return url


def server_config(spec: SweepSpec, template: list[str], method: str) -> dict[str, Any]:
    """The sweep as sent to the server: the file as written, with the recorder-wrapped command."""
    cfg = copy.deepcopy(spec.raw)
    cfg["command"] = template
    cfg["method"] = method
    return cfg


def run_online(spec: SweepSpec, opts: SweepOptions) -> dict[str, Any]:
    """Create the sweep on the W&B server and run an agent here (``opts.count`` trials, or until the server stops)."""
    method = opts.method or spec.method
    check_parameters(spec, seed=opts.seed)
    url = check_online(opts.connect_timeout)
    out = output_dir(spec, opts)
    template = command_template(spec, opts, out)
    import wandb

    project = opts.project or spec.raw.get("project")
    entity = opts.entity or spec.raw.get("entity")
    out.mkdir(parents=True, exist_ok=True)
    sweep_id = wandb.sweep(server_config(spec, template, method), project=project, entity=entity)
    record = _sweep_record(spec, opts, "online", method, sweep_id, template, opts.count)
    record["server"] = url
    write_json(out / SWEEP_RECORD, record)
    print(f"hybridtune sweep: online {method} sweep {sweep_id} ({project or 'default project'}) -> {out}", flush=True)
    interrupted = False
    try:
        wandb.agent(sweep_id, project=project, entity=entity, count=opts.count)
    except BaseException as exc:  # the agent turns Ctrl-C / SIGTERM into its own ShutdownSignal
        if not isinstance(exc, KeyboardInterrupt) and type(exc).__name__ != "ShutdownSignal":
            summarize(out, echo=True)
            raise
        interrupted = True
    summary = summarize(out, echo=True)
    summary["interrupted"] = interrupted
    summary["out"] = str(out)
    return summary


__all__ = ["SweepOptions", "SweepUnavailable", "run_local", "run_online", "check_online", "plan_trials",
           "command_template", "server_config", "write_param_file", "output_dir"]
