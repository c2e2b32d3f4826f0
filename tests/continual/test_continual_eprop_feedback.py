"""A continual run trained by ``eprop`` with random feedback keeps the feedback matrices beside its final adapter
(as a domain run does), so the adapter names the feedback it was trained with."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from hybridtune.continual.config import ContinualSection
from hybridtune.continual.data import Domain
from hybridtune.continual.trainer import ContinualTrainer
from hybridtune.learners.eprop import EpropLearner
from hybridtune.learners.eprop.feedback import FEEDBACK_FILE


def _blocks(stride: int, n: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = (torch.randint(0, 40, (n, 1), generator=gen) + stride * torch.arange(16)) % 40 + 3
    doc_start = torch.zeros_like(ids, dtype=torch.bool)
    doc_start[:, 0] = True
    return {"input_ids": ids, "doc_start": doc_start}


def test_the_final_adapter_holds_the_random_feedback_of_the_eprop_run(tmp_path, th):
    cfg = th.run_config(tmp_path, "run", steps=2, batch_size=4, save_every=2, eval_every=2)
    doms = [Domain.from_blocks(f"stride{s}", _blocks(s, 8, i), _blocks(s, 4, 10 + i)) for i, s in enumerate((1, 3))]
    model = th.lora_model(spiking=True, neuron="lif", threshold=0.02, target_modules=["v_proj", "down_proj"])
    learners = []

    def eprop():
        learners.append(EpropLearner(params="lora_", lr=1e-2, feedback="random", seed=5, top_blocks=None))
        return learners[-1:]

    report = ContinualTrainer(model, cfg, doms, learners=eprop,
                              section=ContinualSection(domains=["stride1", "stride3"], stage_eval=False)).fit()
    saved = load_file(str(tmp_path / "run" / "adapter" / FEEDBACK_FILE))
    used = learners[-1].feedback.matrices  # the last stage's learner (the factory also ran once to check options)
    assert set(saved) == set(used) and len(saved) == 4  # v_proj and down_proj of both blocks
    assert all(torch.equal(saved[k], used[k]) for k in used)
    stage_copy = report["stages"][-1]["beside_adapter"]
    assert len(stage_copy) == 1 and stage_copy[0].endswith(FEEDBACK_FILE)
    state = json.loads((tmp_path / "run" / "continual_state.json").read_text())
    assert state["stage_reports"][-1]["beside_adapter"] == stage_copy  # a resumed run copies it from there
