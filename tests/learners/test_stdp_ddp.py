"""Two CPU processes (torchrun + gloo) stay identical after STDP / R-STDP steps because the plastic learners average
their updates (and baseline statistics) across ranks; without the averaging (the negative control) they drift apart.

``ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2`` starts two ranks (``accelerate launch --cpu --num_processes 2``
would start one). Marked ``slow``: two fresh interpreters each import torch / transformers.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = '''\
import sys, json
from pathlib import Path
import torch
from safetensors.torch import save_file
import hybridtune.learners.plasticity.learner as plastic
from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
from hybridtune.config import RunConfig
from hybridtune.learners import SurrogateLearner
from hybridtune.learners.plasticity.rstdp_learner import RSTDPLearner
from hybridtune.learners.plasticity.stdp_learner import STDPLearner
from hybridtune.testing import tiny_model
from hybridtune.trainers import Trainer, make_accelerator

out = Path(sys.argv[1])
acc = None
synced = plastic.mean_across_ranks
for sync in (True, False):
    plastic.mean_across_ranks = synced if sync else (lambda accelerator, tensors: dict(tensors))
    cfg = RunConfig()
    cfg.trainer.output_dir, cfg.trainer.steps, cfg.trainer.batch_size = str(out / f"run-{{sync}}"), 3, 2
    cfg.trainer.save_every, cfg.trainer.scheduler, cfg.tracking.backend = 3, "constant", "none"
    acc = acc or make_accelerator(cfg)
    torch.manual_seed(0)  # same initialisation on both ranks: plastic parameters are not DDP-broadcast
    model = get_spiking_peft_model(tiny_model("llama"), spiking_lora_config(
        r=4, neuron="lif", threshold=0.02, init_b_std=0.05, target_modules=["q_proj", "v_proj"]))
    learners = [STDPLearner(params=r"q_proj\\.lora_", lr=0.05, tau_pre=4, tau_post=4),
                RSTDPLearner(estimator="stdp",
                             params=r"v_proj\\.lora_[AB]", lr=0.05, escape=True, baseline="token_ema"),
                SurrogateLearner(params="rest", lr=1e-2)]
    ids = (torch.arange(20)[None] + torch.arange(16)[:, None] * 3) % 60 + 3
    trainer = Trainer(model, cfg, learners=learners, train_data={{"input_ids": ids}}, accelerator=acc)
    trainer.fit()
    rank = acc.process_index
    save_file({{k: v.detach().contiguous() for k, v in trainer.owned.items()}},
              str(out / f"sync-{{sync}}-rank{{rank}}.safetensors"))
    st = learners[1].state_dict()["baseline"]
    torch.save({{"mean": st["mean"], "token_mean": st["token_mean"]}}, out / f"baseline-{{sync}}-rank{{rank}}.pt")
'''


@pytest.mark.slow
def test_two_processes_stay_identical_after_plastic_steps(tmp_path, torchrun):
    script = tmp_path / "ddp_plastic.py"
    script.write_text(SCRIPT.format())
    done = torchrun([script, tmp_path], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    synced = [load_file(str(tmp_path / f"sync-True-rank{r}.safetensors")) for r in (0, 1)]
    drifting = [load_file(str(tmp_path / f"sync-False-rank{r}.safetensors")) for r in (0, 1)]
    plastic_names = [k for k in synced[0] if ("q_proj" in k or "v_proj" in k) and ".lora_" in k and "neuron" not in k]
    assert plastic_names
    for name in synced[0]:
        assert torch.equal(synced[0][name], synced[1][name]), name
    assert any(not torch.equal(drifting[0][k], drifting[1][k]) for k in plastic_names)
    baselines = [torch.load(tmp_path / f"baseline-True-rank{r}.pt") for r in (0, 1)]
    assert torch.equal(baselines[0]["mean"], baselines[1]["mean"])
    assert torch.equal(baselines[0]["token_mean"], baselines[1]["token_mean"])
