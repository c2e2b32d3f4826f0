"""``hybridtune sweep``: --local, --check, --summary, and exit codes for bad files and missing servers."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from hybridtune.cli import main

TRIAL = '''\
import json, sys
from pathlib import Path
from hybridtune.config import load_config
cfg = load_config(None, sys.argv[1:])
out = Path(cfg.trainer.output_dir)
out.mkdir(parents=True, exist_ok=True)
(out / "report.json").write_text(json.dumps({"eval_ppl_after": 100.0 / cfg.adapter.r}))
'''


def sweep_file(tmp_path: Path, parameters: dict, **extra) -> Path:
    (tmp_path / "trial.py").write_text(TRIAL)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"program": str(tmp_path / "trial.py"), "method": "grid",
                                    "metric": {"name": "eval_ppl_after", "goal": "minimize"},
                                    "parameters": parameters, **extra}))
    return path


def test_local_sweep_then_summary_rebuild(tmp_path, capsys):
    path = sweep_file(tmp_path, {"adapter.r": {"values": [2, 8]}})
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--local", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 trials (2 ok)" in printed and "best:" in printed and "adapter.r=8" in printed
    for name in ("summary.json", "summary.csv", "best.yaml", "sweep.png"):
        (out / name).unlink()
    assert main(["sweep", "--summary", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["best"]["params"] == {"adapter.r": 8}
    assert (out / "best.yaml").is_file() and (out / "sweep.png").is_file()


def test_check_lists_the_trials_without_running(tmp_path, capsys):
    path = sweep_file(tmp_path, {"adapter.r": {"values": [2, 8]}, "conversion.compensation": {"values": [True]}})
    assert main(["sweep", str(path), "--check"]) == 0
    printed = capsys.readouterr().out
    assert "valid" in printed and "2 trials" in printed and "--adapter.r=8 --conversion.compensation=True" in printed
    assert not list(tmp_path.glob("runs"))


def test_bad_parameter_exits_2_naming_the_key(tmp_path, capsys):
    path = sweep_file(tmp_path, {"adapter.thresold": {"values": [0.1]}})
    assert main(["sweep", str(path), "--local", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "parameters.adapter.thresold" in err and "did you mean 'threshold'" in err and str(path) in err
    assert not (tmp_path / "out").exists()


def test_flow_list_command_exits_2(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("method: grid\nmetric: {name: m}\nparameters:\n  adapter.r: {values: [4]}\n"
                    "command: [${env}, hybridtune, train, c.yaml, ${args}]\n")
    assert main(["sweep", str(path), "--local"]) == 2
    assert "block list" in capsys.readouterr().err


def test_online_without_server_exits_2_suggesting_local(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    path = sweep_file(tmp_path, {"adapter.r": {"values": [2]}})
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "--local" in capsys.readouterr().err


def test_no_file_and_all_trials_failing(tmp_path, capsys):
    assert main(["sweep"]) == 2
    path = sweep_file(tmp_path, {"adapter.r": {"values": [2]}})
    (tmp_path / "trial.py").write_text("import sys\nsys.exit(1)\n")
    assert main(["sweep", str(path), "--local", "--quiet", "--out", str(tmp_path / "out")]) == 1
    assert "1 trials (1 failed)" in capsys.readouterr().out
