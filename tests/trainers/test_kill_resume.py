"""A run killed with SIGKILL and resumed logs exactly the losses of an uninterrupted run (subprocesses, CPU).

LoRA dropout is on, so the resumed run only matches if the RNG states come back too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from hybridtune.tracking import read_metrics
from hybridtune.trainers.checkpoint import latest_checkpoint

SCRIPT = '''\
import sys, time
from pathlib import Path
sys.path.insert(0, {helpers!r})
import trainer_helpers as th
from hybridtune.trainers import Trainer, TrainerCallback

out, name, resume, hang_at = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "resume", int(sys.argv[4])

class Hang(TrainerCallback):
    def on_step_end(self, trainer, step, logs):
        if step == hang_at:
            (out / "ready").write_text(str(step))
            time.sleep(600)  # wait here to be killed

cfg = th.run_config(out, name, steps=10, save_every=3, eval_every=5, resume=resume)
model = th.lora_model(lora_dropout=0.1)
Trainer(model, cfg, train_data=th.pattern_blocks(32), eval_data=th.pattern_blocks(4, seed=3),
        callbacks=[Hang()] if hang_at else []).fit()
'''


def _run(script, out, name, mode="fresh", hang_at=0, **kw):
    env = {**os.environ, "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, str(script), str(out), name, mode, str(hang_at)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_sigkill_then_resume_reproduces_the_uninterrupted_losses(tmp_path, helpers_dir):
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT.format(helpers=str(helpers_dir)))
    full = _run(script, tmp_path, "full")
    victim = _run(script, tmp_path, "part", hang_at=8)
    deadline = time.time() + 240
    while not (tmp_path / "ready").exists():
        assert victim.poll() is None, victim.stdout.read()
        assert time.time() < deadline, "the run never reached step 8"
        time.sleep(0.2)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(30)
    assert victim.returncode == -signal.SIGKILL
    assert latest_checkpoint(tmp_path / "part").name == "step-00000006"
    logged = [r["step"] for r in read_metrics(tmp_path / "part" / "metrics.jsonl") if "train/loss" in r]
    assert logged[-1] == 8  # steps 7-8 were logged after the checkpoint and must be replaced, not duplicated

    resumed = _run(script, tmp_path, "part", mode="resume")
    assert resumed.wait(240) == 0, resumed.stdout.read()
    assert full.wait(240) == 0, full.stdout.read()

    def curve(name, key):
        return [(r["step"], r[key]) for r in read_metrics(tmp_path / name / "metrics.jsonl") if key in r]

    assert [s for s, _ in curve("part", "train/loss")] == list(range(1, 11))
    assert curve("part", "train/loss") == curve("full", "train/loss")
    assert curve("part", "eval/ppl") == curve("full", "eval/ppl")
