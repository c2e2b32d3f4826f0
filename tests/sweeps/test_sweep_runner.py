"""Local and (faked-server) online sweeps with a small fake trial program; Ctrl-C, crashes, timeouts, 2 ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hybridtune.config import load_config
from hybridtune.config_schema import ConfigError
from hybridtune.sweeps import run_sweep
from hybridtune.sweeps.runner import SweepUnavailable, check_online

# A stand-in for `hybridtune train`: parses its --key=value args with load_config (as every rank of the trainer
# does), records what it saw, optionally crashes or sleeps, and writes report.json into trainer.output_dir.
FAKE = '''\
import json, os, sys, time
from pathlib import Path
from hybridtune.config import load_config
rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
if os.environ.get("FAKE_ACCELERATE"):
    from accelerate import Accelerator
    acc = Accelerator()
    rank, world = acc.process_index, acc.num_processes
cfg = load_config(os.environ.get("FAKE_BASE") or None, sys.argv[1:])
out = Path(cfg.trainer.output_dir)
out.mkdir(parents=True, exist_ok=True)
(out / f"pid-{rank}").write_text(str(os.getpid()))
seen = {"argv": sys.argv[1:], "world": world, "r": cfg.adapter.r, "lr": cfg.learners[0].lr,
        "compensation": cfg.conversion.compensation, "options": cfg.learners[0].options,
        "coverage": cfg.conversion.coverage,
        "env": {k: os.environ.get(k) for k in ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH",
                                               "WANDB_MODE")}}
if os.environ.get("FAKE_WANDB") and rank == 0:
    import wandb
    run = wandb.init(project="fake", dir=str(out), config={"adapter": {"r": -1}})
    seen["wandb_config"] = {k: v for k, v in dict(run.config).items() if "." in k}
    run.finish()
(out / f"seen-{rank}.json").write_text(json.dumps(seen))
if cfg.adapter.r == int(os.environ.get("FAKE_CRASH_R", "-1")):
    print("fake trial crashed on purpose", file=sys.stderr)
    sys.exit(3)
time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
if rank == 0:
    (out / "report.json").write_text(json.dumps({"eval": {"ppl": cfg.adapter.r * 10 + cfg.learners[0].lr * 1000}}))
'''


def make_sweep(tmp_path: Path, parameters: dict, method: str = "grid", extra: dict | None = None) -> Path:
    (tmp_path / "fake_train.py").write_text(FAKE)
    data = {"program": str(tmp_path / "fake_train.py"), "method": method,
            "metric": {"name": "eval/ppl", "goal": "minimize"}, "parameters": parameters, **(extra or {})}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def seen(record: dict, rank: int = 0) -> dict:
    return json.loads((Path(record["output_dir"]) / f"seen-{rank}.json").read_text())


def test_local_grid_runs_every_trial_and_writes_the_summary(tmp_path):
    sweep = make_sweep(tmp_path, {"adapter.r": {"values": [2, 4]}, "learners.0.lr": {"values": [0.001, 0.01]}})
    summary = run_sweep(sweep, local=True, out=str(tmp_path / "out"), quiet=True)
    trials = summary["trials"]
    assert [t["status"] for t in trials] == ["ok"] * 4
    assert [t["params"] for t in trials] == [{"adapter.r": r, "learners.0.lr": lr} for r in (2, 4)
                                             for lr in (0.001, 0.01)]
    assert len({t["output_dir"] for t in trials}) == 4  # one output dir per trial
    for t in trials:  # the trial's own config holds the swept values
        s = seen(t)
        assert (s["r"], s["lr"]) == (t["params"]["adapter.r"], t["params"]["learners.0.lr"])
        assert t["value"] == pytest.approx(s["r"] * 10 + s["lr"] * 1000)
    best = summary["best"]
    assert best["params"] == {"adapter.r": 2, "learners.0.lr": 0.001} and best["value"] == pytest.approx(21.0)
    out = tmp_path / "out"
    for name in ("summary.json", "summary.csv", "best.yaml", "sweep.png", "sweep.json"):
        assert (out / name).is_file(), name
    cfg = load_config(out / "best.yaml")
    assert cfg.adapter.r == 2 and cfg.learners[0].lr == 0.001
    rows = (out / "summary.csv").read_text().splitlines()
    assert rows[0].split(",")[:4] == ["#", "run", "status", "eval/ppl"] and len(rows) == 5


def test_trials_see_the_agent_environment_and_wandb_locks_the_swept_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_WANDB", "1")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the local runner must choose offline by itself
    sweep = make_sweep(tmp_path, {"adapter.r": {"values": [4]}, "conversion.compensation": {"values": [False]}})
    summary = run_sweep(sweep, local=True, out=str(tmp_path / "out"), quiet=True)
    (trial,) = summary["trials"]
    s = seen(trial)
    env = s["env"]
    assert env["WANDB_MODE"] == "offline" and env["WANDB_RUN_ID"] == trial["run_id"]
    assert env["WANDB_SWEEP_ID"] == trial["sweep_id"] == summary["sweep_id"]
    params = yaml.safe_load(Path(env["WANDB_SWEEP_PARAM_PATH"]).read_text())
    assert params["wandb_version"] == 1 and params["adapter.r"] == {"value": 4}
    # wandb.init read the parameter file exactly as under the agent: the swept keys are in the run config
    assert s["wandb_config"] == {"adapter.r": 4, "conversion.compensation": False}
    assert list((Path(trial["output_dir"]) / "wandb").glob("offline-run-*"))


def test_booleans_nested_keys_and_lists_survive_the_round_trip(tmp_path):
    sweep = make_sweep(tmp_path, {"conversion.compensation": {"values": [True, False]},
                                  "learners.0.options.tau_pre": {"value": 4.5},
                                  "conversion.coverage": {"value": ["ffn_act", "attention"]}})
    summary = run_sweep(sweep, local=True, out=str(tmp_path / "out"), quiet=True)
    assert [t["status"] for t in summary["trials"]] == ["ok", "ok"]
    for trial in summary["trials"]:
        s = seen(trial)
        assert s["compensation"] is trial["params"]["conversion.compensation"]
        assert s["options"] == {"tau_pre": 4.5} and s["coverage"] == ["ffn_act", "attention"]
        assert "--conversion.compensation=" + str(trial["params"]["conversion.compensation"]) in s["argv"]
    best = load_config(tmp_path / "out" / "best.yaml")
    assert best.learners[0].options == {"tau_pre": 4.5} and best.conversion.coverage == ("ffn_act", "attention")


def test_a_crashing_trial_is_recorded_and_the_rest_complete(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CRASH_R", "3")
    sweep = make_sweep(tmp_path, {"adapter.r": {"values": [2, 3, 4]}})
    summary = run_sweep(sweep, local=True, out=str(tmp_path / "out"), quiet=True)
    status = {t["params"]["adapter.r"]: t for t in summary["trials"]}
    assert [status[r]["status"] for r in (2, 3, 4)] == ["ok", "failed", "ok"]
    crashed = status[3]
    assert crashed["exit_code"] == 3 and "crashed on purpose" in crashed["stderr_tail"]
    assert crashed["value"] is None and summary["counts"] == {"ok": 2, "failed": 1}
    assert summary["best"]["params"] == {"adapter.r": 2}


def test_a_bad_parameter_fails_before_any_trial(tmp_path):
    sweep = make_sweep(tmp_path, {"adapter.r": {"values": [2]}, "adapter.rnak": {"values": [4]}})
    with pytest.raises(ConfigError) as err:
        run_sweep(sweep, local=True, out=str(tmp_path / "out"))
    assert err.value.key == "parameters.adapter.rnak" and str(sweep) in str(err.value)
    assert not (tmp_path / "out").exists()


def test_a_wrong_value_type_fails_before_any_trial(tmp_path):
    sweep = make_sweep(tmp_path, {"adapter.r": {"values": [2, 2.5]}})
    with pytest.raises(ConfigError, match="expected an integer") as err:
        run_sweep(sweep, local=True, out=str(tmp_path / "out"))
    assert err.value.key == "parameters.adapter.r" and not (tmp_path / "out").exists()


def test_bayes_needs_the_server_unless_run_as_random(tmp_path):
    sweep = make_sweep(tmp_path, {"learners.0.lr": {"distribution": "log_uniform_values", "min": 0.001,
                                                    "max": 0.01}}, method="bayes")
    with pytest.raises(ConfigError, match="--method random") as err:
        run_sweep(sweep, local=True, out=str(tmp_path / "out"))
    assert err.value.key == "method"
    a = run_sweep(sweep, local=True, method="random", count=2, seed=5, out=str(tmp_path / "a"), quiet=True)
    b = run_sweep(sweep, local=True, method="random", count=2, seed=5, out=str(tmp_path / "b"), quiet=True)
    assert [t["params"] for t in a["trials"]] == [t["params"] for t in b["trials"]]
    assert all(0.001 <= t["params"]["learners.0.lr"] <= 0.01 for t in a["trials"])


def test_random_needs_a_count(tmp_path):
    sweep = make_sweep(tmp_path, {"adapter.r": {"values": [2, 4]}}, method="random")
    with pytest.raises(ConfigError, match="--count") as err:
        run_sweep(sweep, local=True, out=str(tmp_path / "out"))
    assert err.value.key == "count"


def test_an_existing_sweep_directory_is_not_reused(tmp_path):
    sweep = make_sweep(tmp_path, {"adapter.r": {"values": [2]}})
    run_sweep(sweep, local=True, out=str(tmp_path / "out"), quiet=True)
    with pytest.raises(ConfigError, match="--summary") as err:
        run_sweep(sweep, local=True, out=str(tmp_path / "out"), quiet=True)
    assert err.value.key == "out"


def test_a_trial_past_its_timeout_is_stopped_and_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_SLEEP", "30")
    sweep = make_sweep(tmp_path, {"adapter.r": {"values": [2]}})
    start = time.monotonic()
    summary = run_sweep(sweep, local=True, out=str(tmp_path / "out"), quiet=True, timeout=2)
    assert time.monotonic() - start < 20
    (trial,) = summary["trials"]
    assert trial["status"] == "timeout" and trial["exit_code"] != 0
    assert not _alive(int((Path(trial["output_dir"]) / "pid-0").read_text()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie waiting to be reaped by init counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_ctrl_c_stops_the_running_trial_and_keeps_the_summary(tmp_path):
    sweep = make_sweep(tmp_path, {"adapter.r": {"values": [2, 4, 8]}})
    out = tmp_path / "out"
    env = {**os.environ, "FAKE_SLEEP": "60"}
    proc = subprocess.Popen([sys.executable, "-m", "hybridtune.cli", "sweep", str(sweep), "--local", "--quiet",
                             "--out", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pid_file = None
        deadline = time.monotonic() + 60
        while pid_file is None and time.monotonic() < deadline:
            found = list(out.glob("trials/*/run/pid-0"))
            pid_file = found[0] if found and found[0].read_text() else None
            time.sleep(0.1)
        assert pid_file is not None, "the first trial never started"
        trial_pid = int(pid_file.read_text())
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    summary = json.loads((out / "summary.json").read_text())
    assert [t["status"] for t in summary["trials"]] == ["interrupted"]  # the sweep stopped; no later trials
    assert not _alive(trial_pid)


@pytest.mark.slow
def test_args_reach_the_config_on_both_ranks_of_a_two_process_trial(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ACCELERATE", "1")
    sweep = make_sweep(tmp_path, {"adapter.r": {"values": [4]}, "conversion.compensation": {"values": [False]},
                                  "learners.0.options.tau_post": {"values": [16.0]}})
    summary = run_sweep(sweep, local=True, out=str(tmp_path / "out"), launcher="torchrun", num_processes=2,
                        cpu=True, quiet=True)
    (trial,) = summary["trials"]
    assert trial["status"] == "ok", trial["stderr_tail"]
    ranks = [seen(trial, rank) for rank in (0, 1)]
    for s in ranks:
        assert s["world"] == 2
        assert (s["r"], s["compensation"], s["options"]) == (4, False, {"tau_post": 16.0})
    assert ranks[0]["argv"] == ranks[1]["argv"]


def test_online_fails_fast_without_a_server(tmp_path, monkeypatch):
    sweep = make_sweep(tmp_path, {"adapter.r": {"values": [2]}})
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(SweepUnavailable, match="--local"):
        run_sweep(sweep, out=str(tmp_path / "out"))
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    with pytest.raises(SweepUnavailable, match="credentials"):
        check_online()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    start = time.monotonic()
    with pytest.raises(SweepUnavailable, match="does not answer"):
        check_online(connect_timeout=2)
    assert time.monotonic() - start < 10
    assert not (tmp_path / "out").exists()


def test_online_path_through_a_fake_server_runs_the_command_the_agent_would(tmp_path, monkeypatch):
    """wandb.sweep / wandb.agent replaced by a fake server that expands the grid and runs the stored command with
    wandb's own macro substitution, as the real agent's _command_run does."""
    import wandb
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    from hybridtune.sweeps import runner as sweep_runner

    stored: dict = {}

    def fake_sweep(config, project=None, entity=None):
        stored.update(config=json.loads(json.dumps(config)), project=project)
        return "fakesweep"

    def fake_agent(sweep_id, project=None, entity=None, count=None):
        from hybridtune.sweeps.params import grid_trials
        from hybridtune.sweeps.spec import parse_sweep

        cfg = stored["config"]
        for i, params in enumerate(grid_trials(parse_sweep(cfg).parameters)[:count]):
            run_id = f"run{i}"
            param_file = tmp_path / "wandb" / f"sweep-{sweep_id}" / f"config-{run_id}.yaml"
            sweep_runner.write_param_file(param_file, params)
            args = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
            words = []
            for word in create_sweep_command(list(cfg["command"])):
                macro = {"env": ["/usr/bin/env"], "program": [cfg["program"]],
                         "interpreter": ["python"], **args}.get(word[2:-1]) if word.startswith("${") else None
                words += macro if macro is not None else [word]
            env = {**os.environ, "WANDB_SWEEP_ID": sweep_id, "WANDB_RUN_ID": run_id,
                   "WANDB_SWEEP_PARAM_PATH": str(param_file), "WANDB_MODE": "disabled"}
            subprocess.run(words, env=env, stdin=subprocess.DEVNULL, start_new_session=True, check=False)

    monkeypatch.setattr(sweep_runner, "check_online", lambda timeout=5.0: "http://fake")
    monkeypatch.setattr(wandb, "sweep", fake_sweep)
    monkeypatch.setattr(wandb, "agent", fake_agent)
    sweep = make_sweep(tmp_path, {"adapter.r": {"values": [2, 4, 8]}})
    summary = run_sweep(sweep, out=str(tmp_path / "out"), count=2, project="p", quiet=True)
    assert stored["project"] == "p" and stored["config"]["command"][-1] == "${args}"
    assert stored["config"]["command"][1:3] == ["-m", "hybridtune.sweeps.trial"]
    assert [t["status"] for t in summary["trials"]] == ["ok", "ok"]
    assert [t["params"] for t in summary["trials"]] == [{"adapter.r": 2}, {"adapter.r": 4}]
    assert summary["sweep_id"] == "fakesweep" and summary["mode"] == "online"
    assert load_config(tmp_path / "out" / "best.yaml").adapter.r == 2
