"""SIGTERM / SIGINT during training: a checkpoint at the step boundary, exit 143 / 130, and a resume that ends
bit-identical to an uninterrupted run (subprocesses, real signals, LoRA dropout on so the RNG states matter)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from hybridtune.tracking import read_metrics
from hybridtune.trainers.checkpoint import latest_checkpoint

SCRIPT = '''\
import sys, time
from pathlib import Path
sys.path.insert(0, {helpers!r})
import trainer_helpers as th
from hybridtune.trainers import Trainer, TrainerCallback
from hybridtune.trainers import interrupt

out, name, resume, wait_at = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "resume", int(sys.argv[4])

class WaitForSignal(TrainerCallback):
    def on_step_end(self, trainer, step, logs):
        if step == wait_at:
            (out / "ready").write_text(str(step))
            deadline = time.time() + 120
            while interrupt.pending() is None and time.time() < deadline:
                time.sleep(0.05)

cfg = th.run_config(out, name, steps=10, save_every=4, eval_every=5, resume=resume)
model = th.lora_model(lora_dropout=0.1)
try:
    with interrupt.checkpoint_on_signals():  # what the CLI enters around every command
        Trainer(model, cfg, train_data=th.pattern_blocks(32), eval_data=th.pattern_blocks(4, seed=3),
                callbacks=[WaitForSignal()] if wait_at else []).fit()
except interrupt.TrainingInterrupted as exc:
    print(exc)
    sys.exit(exc.exit_code)
'''


def _run(script, out, name, mode="fresh", wait_at=0):
    env = {**os.environ, "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, str(script), str(out), name, mode, str(wait_at)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _interrupt(script, out, signum):
    victim = _run(script, out, "part", wait_at=7)  # save_every=4: without the signal, step 4 is the newest
    deadline = time.time() + 240
    while not (out / "ready").exists():
        assert victim.poll() is None, victim.stdout.read()
        assert time.time() < deadline, "the run never reached step 7"
        time.sleep(0.1)
    os.kill(victim.pid, signum)
    victim.wait(120)
    return victim.returncode, victim.stdout.read()


def test_sigterm_checkpoints_the_current_step_and_resumes_bit_identically(tmp_path, helpers_dir):
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT.format(helpers=str(helpers_dir)))
    full = _run(script, tmp_path, "full")
    assert full.wait(240) == 0, full.stdout.read()
    code, output = _interrupt(script, tmp_path, signal.SIGTERM)
    assert code == 143, output
    assert "stopped by SIGTERM" in output and "continue with --resume" in output
    assert latest_checkpoint(tmp_path / "part").name == "step-00000007"  # nothing lost

    resumed = _run(script, tmp_path, "part", mode="resume")
    assert resumed.wait(240) == 0, resumed.stdout.read()
    a = load_file(str(latest_checkpoint(tmp_path / "full") / "adapter.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "part") / "adapter.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name

    def curve(name):
        return [(r["step"], r["train/loss"]) for r in read_metrics(tmp_path / name / "metrics.jsonl")
                if "train/loss" in r]

    assert curve("part") == curve("full") and len(curve("full")) == 10


def test_ctrl_c_checkpoints_the_current_step_and_exits_130(tmp_path, helpers_dir):
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT.format(helpers=str(helpers_dir)))
    code, output = _interrupt(script, tmp_path, signal.SIGINT)
    assert code == 130, output
    assert latest_checkpoint(tmp_path / "part").name == "step-00000007"


def test_the_cli_exits_with_the_signal_s_status(monkeypatch, capsys):
    from hybridtune import cli
    from hybridtune.commands import doctor
    from hybridtune.trainers.interrupt import TrainingInterrupted

    def stopped(args):
        raise TrainingInterrupted(signal.SIGTERM, "run/checkpoints/step-00000007")

    monkeypatch.setattr(doctor, "run", stopped)
    assert cli.main(["doctor"]) == 143
    assert "SIGTERM" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are restored after the command
