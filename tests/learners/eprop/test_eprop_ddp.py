"""Two CPU processes (torchrun + gloo) stay identical after eprop steps because the learner averages its estimates
across ranks; without the averaging (the negative control) they drift apart. Also resumes from a checkpoint.

Marked ``slow``: two fresh interpreters each import torch / transformers.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = '''\
import sys
from pathlib import Path
import torch
from safetensors.torch import save_file
import hybridtune.learners.eprop.learner as eprop
from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
from hybridtune.config import RunConfig
from hybridtune.learners import learner
from hybridtune.testing import tiny_model
from hybridtune.trainers import Trainer, make_accelerator

out = Path(sys.argv[1])
acc = None
synced = eprop.mean_across_ranks
for sync in (True, False):
    eprop.mean_across_ranks = synced if sync else (lambda accelerator, tensors: dict(tensors))
    cfg = RunConfig()
    cfg.trainer.output_dir, cfg.trainer.steps, cfg.trainer.batch_size = str(out / f"run-{{sync}}"), 3, 2
    cfg.trainer.save_every, cfg.trainer.scheduler, cfg.tracking.backend = 3, "constant", "none"
    acc = acc or make_accelerator(cfg)
    torch.manual_seed(0)
    model = get_spiking_peft_model(tiny_model("llama"), spiking_lora_config(
        r=4, neuron="lif", threshold=0.02, init_b_std=0.05, target_modules=["v_proj", "up_proj", "down_proj"]))
    ids = (torch.arange(20)[None] + torch.arange(16)[:, None] * 3) % 60 + 3
    ep = learner("eprop", params="lora_", lr=1e-2, feedback="one_hop")
    trainer = Trainer(model, cfg, learners=[ep], train_data={{"input_ids": ids}}, accelerator=acc)
    assert not isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel)
    trainer.fit()
    save_file({{k: v.detach().contiguous() for k, v in trainer.owned.items()}},
              str(out / f"sync-{{sync}}-rank{{acc.process_index}}.safetensors"))
'''


@pytest.mark.slow
def test_two_processes_stay_identical_after_eprop_steps(tmp_path, torchrun):
    script = tmp_path / "ddp_eprop.py"
    script.write_text(SCRIPT.format())
    done = torchrun([script, tmp_path], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    synced = [load_file(str(tmp_path / f"sync-True-rank{r}.safetensors")) for r in (0, 1)]
    drifting = [load_file(str(tmp_path / f"sync-False-rank{r}.safetensors")) for r in (0, 1)]
    factors = [k for k in synced[0] if ".lora_" in k and "neuron" not in k]
    assert factors
    for name in synced[0]:
        assert torch.equal(synced[0][name], synced[1][name]), name
    assert any(not torch.equal(drifting[0][k], drifting[1][k]) for k in factors)
