"""Two CPU processes (torchrun + gloo): identical adapter weights on both ranks at the end, for backprop and for a
local rule that averages its update across ranks; and the same config through ``hybridtune train``.

The local rule without averaging (``sync=False``) is the negative control: its replicas drift apart.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

SCRIPT = '''\
import sys
from pathlib import Path
sys.path.insert(0, {helpers!r})
import torch
from safetensors.torch import save_file
import toy_learners
import trainer_helpers as th
from hybridtune.learners import SurrogateLearner
from hybridtune.trainers import Trainer, make_accelerator

out = Path(sys.argv[1])
cfg = th.run_config(out, "sync", steps=3, batch_size=2)
acc = make_accelerator(cfg)
for sync in (True, False):
    cfg = th.run_config(out, f"sync-{{sync}}", steps=3, batch_size=2)
    # different initialisation per rank: DDP must broadcast rank 0's at wrap time
    model = th.lora_model(spiking=True, threshold=0.02, seed=acc.process_index, init_b_std=0.01)
    learners = [toy_learners.HebbianA(params="lora_A", lr=0.05, sync=sync), SurrogateLearner(params="rest", lr=1e-2)]
    trainer = Trainer(model, cfg, learners=learners, train_data=th.pattern_blocks(32),
                      eval_data=th.pattern_blocks(6, seed=2), accelerator=acc)
    trainer.fit()
    save_file({{k: v.detach().contiguous() for k, v in trainer.owned.items()}},
              str(out / f"sync-{{sync}}-rank{{acc.process_index}}.safetensors"))
'''




def test_two_processes_end_with_identical_weights(tmp_path, helpers_dir, torchrun):
    script = tmp_path / "ddp_script.py"
    script.write_text(SCRIPT.format(helpers=str(helpers_dir)))
    done = torchrun([script, tmp_path], cwd=tmp_path, env={"HYBRIDTUNE_CACHE": str(tmp_path / "cache")}, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    synced = [load_file(str(tmp_path / f"sync-True-rank{r}.safetensors")) for r in (0, 1)]
    drifting = [load_file(str(tmp_path / f"sync-False-rank{r}.safetensors")) for r in (0, 1)]
    assert synced[0].keys() == synced[1].keys() and any("lora_A" in k for k in synced[0])
    for name in synced[0]:
        assert torch.equal(synced[0][name], synced[1][name]), name
    lora_a = [k for k in drifting[0] if "lora_A" in k]
    assert any(not torch.equal(drifting[0][k], drifting[1][k]) for k in lora_a)
    report = json.loads((tmp_path / "sync-True" / "report.json").read_text())
    assert report["world_size"] == 2 and report["tokens_trained"] == 3 * 2 * 2 * 24


def test_hybridtune_train_runs_on_two_cpu_processes(tmp_path, th, torchrun):
    config = th.tiny_run_yaml(tmp_path, trainer={"steps": 2, "batch_size": 2})
    done = torchrun(["-m", "hybridtune.cli", "train", config], cwd=tmp_path,
                    env={"HYBRIDTUNE_CACHE": str(tmp_path / "cache")}, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["world_size"] == 2 and report["steps"] == 2
    assert report["ppl_spiking_after"] is not None
    assert done.stdout.count("spiking, after training") == 1  # the summary is printed by the main process only
