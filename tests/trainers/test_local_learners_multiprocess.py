"""Purely local learners (``configs/learners/stdp.yaml``, ``rstdp.yaml``: no parameter needs a gradient) on two CPU
processes: the model is not wrapped in DDP (which refuses a module without trainable parameters), and the learners'
cross-rank averaging keeps both replicas identical. Each learner runs alone, as its config does. In the same launch,
a SIGTERM that reaches one rank only stops both at the same step boundary, after one checkpoint (exit 143).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = '''\
import sys
from pathlib import Path
sys.path.insert(0, {helpers!r})
import torch
from safetensors.torch import save_file
import trainer_helpers as th
from hybridtune.config import load_config
from hybridtune.trainers import Trainer, make_accelerator
from hybridtune.trainers.loop import build_learners

out, repo = Path(sys.argv[1]), Path(sys.argv[2])
acc = None
for name in ("stdp", "rstdp"):
    cfg = th.run_config(out, name, steps=3, batch_size=2, eval_every=3, save_every=3)
    cfg.learners = load_config(repo / "configs" / "learners" / f"{{name}}.yaml").learners  # the shipped learner
    acc = acc or make_accelerator(cfg)
    assert acc.num_processes == 2, acc.num_processes
    # a different initialisation per rank: the trainer must broadcast rank 0's values
    model = th.lora_model(spiking=True, threshold=0.02, seed=acc.process_index, init_b_std=0.01)
    trainer = Trainer(model, cfg, learners=build_learners(cfg), train_data=th.pattern_blocks(32),
                      eval_data=th.pattern_blocks(6, seed=2), accelerator=acc)
    assert not any(p.requires_grad for p in trainer.unwrapped.parameters())
    assert not isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel)
    before = {{k: v.detach().clone() for k, v in trainer.owned.items()}}
    trainer.fit()
    save_file({{k: v.detach().contiguous() for k, v in trainer.owned.items()}},
              str(out / f"{{name}}-rank{{acc.process_index}}.safetensors"))
    save_file({{k: v.contiguous() for k, v in before.items()}}, str(out / f"{{name}}-init{{acc.process_index}}.safetensors"))

# a signal that reaches only rank 1: both ranks stop at the same step boundary, after one checkpoint
import os, signal
from hybridtune.trainers import TrainerCallback, interrupt

class SignalRankOne(TrainerCallback):
    def on_step_end(self, trainer, step, logs):
        if step == 2 and acc.process_index == 1:
            os.kill(os.getpid(), signal.SIGTERM)

cfg = th.run_config(out, "signal", steps=6, batch_size=2, eval_every=6, save_every=6)
cfg.learners = load_config(repo / "configs" / "learners" / "stdp.yaml").learners
model = th.lora_model(spiking=True, threshold=0.02, seed=0, init_b_std=0.01)
code = 0
try:
    with interrupt.checkpoint_on_signals():
        Trainer(model, cfg, learners=build_learners(cfg), train_data=th.pattern_blocks(32), accelerator=acc,
                callbacks=[SignalRankOne()]).fit()
except interrupt.TrainingInterrupted as exc:
    code = exc.exit_code
(out / f"signal-rank{{acc.process_index}}.code").write_text(str(code))
'''


@pytest.mark.parametrize("learner", ["stdp", "rstdp"])
def test_a_local_learner_alone_on_two_processes_keeps_the_ranks_identical(tmp_path_factory, helpers_dir, torchrun,
                                                                          learner):
    out = _two_process_run(tmp_path_factory, helpers_dir, torchrun)
    final = [load_file(str(out / f"{learner}-rank{r}.safetensors")) for r in (0, 1)]
    start = load_file(str(out / f"{learner}-init0.safetensors"))
    assert final[0].keys() == final[1].keys() and any("lora_A" in k for k in final[0])
    for name in final[0]:
        assert torch.equal(final[0][name], final[1][name]), name
    assert any(not torch.equal(final[0][k], start[k]) for k in final[0])  # the learner did update the adapters


def test_a_signal_on_one_rank_stops_every_rank_at_the_same_checkpoint(tmp_path_factory, helpers_dir, torchrun):
    from hybridtune.trainers.checkpoint import list_checkpoints

    out = _two_process_run(tmp_path_factory, helpers_dir, torchrun)
    assert [(out / f"signal-rank{r}.code").read_text() for r in (0, 1)] == ["143", "143"]
    assert [p.name for p in list_checkpoints(out / "signal")] == ["step-00000002"]


_RUN: dict = {}


def _two_process_run(tmp_path_factory, helpers_dir, torchrun):
    """One torchrun for both learners (each trains alone in it); shared by the parametrised test."""
    from pathlib import Path

    if "out" in _RUN:
        return _RUN["out"]
    out = tmp_path_factory.mktemp("local2p")
    script = out / "local_script.py"
    script.write_text(SCRIPT.format(helpers=str(helpers_dir)))
    repo = Path(__file__).resolve().parents[2]
    done = torchrun([script, out, repo], cwd=out, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _RUN["out"] = out
    return out
