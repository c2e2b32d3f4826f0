"""The trial recorder: runs one sweep trial's command and writes ``<out>/trials/<run id>/trial.json``.

Both the W&B agent (online) and the local runner start every trial as::

    python -m hybridtune.sweeps.trial --out=DIR --metric=NAME [--timeout=S] -- <command with --k=v args>

It reads the parameters the agent wrote to ``$WANDB_SWEEP_PARAM_PATH`` and the run id from ``$WANDB_RUN_ID``, appends
``--trainer.output_dir=DIR/trials/<run id>/run`` (so trials never share an output directory), runs the command in
its own process group while copying its output to the console and to ``stdout.log`` / ``stderr.log``, then reads
the metric from the trial's output directory (:func:`read_metric`). SIGTERM / SIGINT stop the trial's whole process
group and record it as ``interrupted``. The exit code is the trial's.

Statuses: ``running``, ``ok``, ``failed`` (non-zero exit), ``no_metric`` (exit 0 but no finite metric found),
``timeout``, ``interrupted``.

Example:
    >>> lookup({"eval": {"ppl": 12.5}}, "eval/ppl"), lookup({"eval/ppl": 3.0}, "eval/ppl")
    (12.5, 3.0)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

# Files the trainer writes into its output dir that may hold the metric, in the order they are searched
# (hybridtune train writes report.json at the end and metrics.jsonl, one row per logged step, as it goes).
METRIC_FILES = ("report.json", "summary.json", "metrics.json", "results.json", "eval.json")
METRICS_LOG = "metrics.jsonl"
GRACE_S = 10.0
TAIL_CHARS = 4000


def lookup(obj: Any, name: str) -> Any:
    """Value at key path ``name`` in nested mappings: the flat key first, then paths split at ``/`` or ``.``."""
    if not isinstance(obj, dict):
        return None
    if name in obj:
        return obj[name]
    for sep in ("/", "."):
        parts = name.split(sep)
        for i in range(len(parts) - 1, 0, -1):
            head, rest = sep.join(parts[:i]), sep.join(parts[i:])
            if head in obj:
                found = lookup(obj[head], rest)
                if found is not None:
                    return found
    return None


def read_metric(run_dir: str | Path, name: str) -> tuple[Any, str | None]:
    """(value, file it came from) for metric ``name`` in a trial's output dir; (None, None) if absent.

    Searches :data:`METRIC_FILES` in ``run_dir``, then the last row of ``metrics.jsonl`` that has the key (the
    value a W&B run summary keeps by default), then the W&B ``wandb-summary.json`` files below ``run_dir``.
    """
    run_dir = Path(run_dir)
    candidates = [run_dir / f for f in METRIC_FILES]
    for path in candidates:
        value = _from_json(path, name)
        if value is not None:
            return value, str(path)
    log = run_dir / METRICS_LOG
    if log.is_file():
        value = None
        for line in log.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                break  # a torn last line
            found = lookup(row, name)
            value = found if found is not None else value
        if value is not None:
            return value, str(log)
    if run_dir.is_dir():
        for path in sorted(run_dir.rglob("wandb-summary.json"), key=lambda p: p.stat().st_mtime, reverse=True):
            value = _from_json(path, name)
            if value is not None:
                return value, str(path)
    return None, None


def _from_json(path: Path, name: str) -> Any:
    if not path.is_file():
        return None
    try:
        return lookup(json.loads(path.read_text()), name)
    except (OSError, ValueError):
        return None


def as_number(value: Any) -> float | None:
    """A finite float, or None (booleans, strings, NaN and infinities are not metric values)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def read_params(path: str | None) -> dict[str, Any]:
    """The ``{key: {value: v}}`` file the W&B agent writes, as ``{key: v}``."""
    if not path or not Path(path).is_file():
        return {}
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    return {k: (v.get("value") if isinstance(v, dict) else v) for k, v in data.items() if k != "wandb_version"}


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - TAIL_CHARS))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _pump(src, log_path: Path, echo) -> None:
    with open(log_path, "wb") as log:
        for chunk in iter(lambda: src.read1(65536), b""):
            log.write(chunk)
            log.flush()
            if echo is not None:
                try:
                    echo.write(chunk)
                    echo.flush()
                except (OSError, ValueError):
                    pass


def _die_with_parent() -> None:
    """Linux: SIGTERM the trial if the recorder itself is killed (e.g. the W&B agent's SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_trial(command: list[str], out: str | Path, metric: str, timeout: float | None = None,
              echo: bool = True) -> int:
    """Run one trial (see the module docstring); returns its exit code."""
    out = Path(out)
    run_id = os.environ.get("WANDB_RUN_ID") or f"manual-{int(time.time())}"
    trials = out / "trials"
    trial_dir = trials / run_id
    run_dir = trial_dir / "run"
    trial_dir.mkdir(parents=True, exist_ok=True)
    index = os.environ.get("HYBRIDTUNE_SWEEP_TRIAL")
    full = [*command, f"--trainer.output_dir={run_dir}"]
    record: dict[str, Any] = {
        "run_id": run_id, "sweep_id": os.environ.get("WANDB_SWEEP_ID"),
        "index": int(index) if index and index.isdigit() else len(list(trials.glob("*/trial.json"))),
        "params": read_params(os.environ.get("WANDB_SWEEP_PARAM_PATH")), "status": "running", "exit_code": None,
        "metric": metric, "value": None, "metric_file": None, "command": full, "output_dir": str(run_dir),
        "host": socket.gethostname(), "started": time.time(), "finished": None, "seconds": None, "stderr_tail": "",
        "note": "",
    }
    path = trial_dir / "trial.json"
    write_json(path, record)
    stop: dict[str, int] = {}
    try:
        proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    except OSError as exc:
        record.update(status="failed", exit_code=127, note=f"cannot start the trial: {exc}", finished=time.time())
        write_json(path, record)
        print(f"hybridtune sweep: trial {run_id}: cannot start {full[0]!r}: {exc}", file=sys.stderr)
        return 127
    record["pid"] = proc.pid
    write_json(path, record)

    def on_signal(signum, _frame):
        stop.setdefault("signal", signum)
        _killpg(proc.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    pumps = [threading.Thread(target=_pump, args=(proc.stdout, trial_dir / "stdout.log",
                                                  sys.stdout.buffer if echo else None), daemon=True),
             threading.Thread(target=_pump, args=(proc.stderr, trial_dir / "stderr.log",
                                                  sys.stderr.buffer if echo else None), daemon=True)]
    for t in pumps:
        t.start()
    deadline = time.monotonic() + timeout if timeout else None
    killed_at = None
    while proc.poll() is None:
        now = time.monotonic()
        if deadline and now > deadline and "signal" not in stop:
            stop["timeout"] = 1
            stop.setdefault("signal", signal.SIGTERM)
            _killpg(proc.pid, signal.SIGTERM)
        if "signal" in stop:
            killed_at = killed_at or now
            if now - killed_at > GRACE_S:
                _killpg(proc.pid, signal.SIGKILL)
        time.sleep(0.05)
    if "signal" in stop:  # leftovers of the group (e.g. torchrun workers)
        _killpg(proc.pid, signal.SIGKILL)
    for t in pumps:
        t.join(timeout=5)
    for s, h in previous.items():
        signal.signal(s, h)
    code = proc.returncode
    value, source = read_metric(run_dir, metric)
    number = as_number(value)
    if "timeout" in stop:
        status, note = "timeout", f"stopped after {timeout:g} s"
    elif "signal" in stop:
        status, note = "interrupted", f"stopped by {signal.Signals(stop['signal']).name}"
    elif code != 0:
        status, note = "failed", f"exit code {code}"
    elif number is None:
        status = "no_metric"
        note = (f"{metric} = {value!r} in {source} is not a finite number" if source else
                f"{metric} not found (or null) in {', '.join(METRIC_FILES)} / {METRICS_LOG} under {run_dir}")
    else:
        status, note = "ok", ""
    finished = time.time()
    record.update(status=status, exit_code=code, value=number, metric_file=source, finished=finished,
                  seconds=round(finished - record["started"], 3), stderr_tail=_tail(trial_dir / "stderr.log"),
                  note=note)
    record.pop("pid", None)
    write_json(path, record)
    if status == "timeout":
        return 124
    if status == "interrupted":
        return 128 + stop["signal"]
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybridtune.sweeps.trial",
                                     description="run and record one hybridtune sweep trial")
    parser.add_argument("--out", required=True, help="the sweep's output directory")
    parser.add_argument("--metric", required=True, help="key path of the metric in the trial's report.json")
    parser.add_argument("--timeout", type=float, default=None, help="stop the trial after this many seconds")
    parser.add_argument("--quiet", action="store_true", help="do not copy the trial's output to the console")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the trial command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no trial command after --")
    return run_trial(command, args.out, args.metric, timeout=args.timeout, echo=not args.quiet)


if __name__ == "__main__":
    sys.exit(main())
