"""``trainer.sharding: fsdp`` on two CPU processes (torchrun + gloo, torch's FSDP2): the frozen base is sharded (each
rank stores half of it), the adapters stay whole, and

* surrogate training ends, after 3 steps, where one process with the same global batch ends;
* local learners (stdp, which gathers the base weights it reads, and eprop; no backward through the base) keep
  both ranks identical and end where the unsharded run ends;
* a run stopped at step 2 and resumed under FSDP (with gradient checkpointing, which recomputes each block's
  forward, gathers included, in backward) ends where the uninterrupted run ends;
* the adapter saved from the sharded model loads on an unsharded base.

The evaluation set has 5 blocks: rank 0 runs two evaluation batches, rank 1 one, so the sharded evaluation must pad
rank 1 with an uncounted forward (else the ranks' weight gathers would not pair up and the run would hang).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]

SCRIPT = '''\
import sys
from pathlib import Path
sys.path.insert(0, {helpers!r})
import torch
from safetensors.torch import save_file
import trainer_helpers as th
from test_fsdp import setup
from hybridtune.sharding import sharded_fraction
from hybridtune.trainers import Trainer, TrainerCallback, make_accelerator

out = Path(sys.argv[1])
acc = None


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, step, logs):
        trainer.should_stop = trainer.should_stop or step == self.step


def run(name, learner, stop=None, **options):
    global acc
    cfg, learners, model = setup(th, out, name, learner, batch_size=2, sharding="fsdp", **options)
    acc = acc or make_accelerator(cfg)
    assert acc.num_processes == 2, acc.num_processes
    trainer = Trainer(model, cfg, learners=learners, train_data=th.pattern_blocks(32),
                      eval_data=th.pattern_blocks(5, seed=2), accelerator=acc,
                      callbacks=[StopAt(stop)] if stop else [])
    assert trainer.sharded and abs(sharded_fraction(trainer.unwrapped, trainer.owned.values()) - 0.5) < 0.02
    result = trainer.fit()
    save_file({{k: v.detach().contiguous() for k, v in trainer.owned.items()}},
              str(out / f"{{name}}-rank{{acc.process_index}}.safetensors"))
    return trainer, result


trainer, result = run("surrogate", "surrogate")
(out / f"surrogate-ppl-rank{{acc.process_index}}.txt").write_text(repr(result["eval_ppl_after"]))
# the adapter directory written from the sharded model (every rank computes the base's fingerprint, rank 0 writes)
trainer.unwrapped.save_pretrained(str(out / "adapter"), is_main_process=acc.is_main_process)
run("stdp", "stdp")
run("eprop", "eprop")
# stopped at step 2 and resumed; with gradient checkpointing, which must not change the steps
run("resumed", "surrogate", stop=2, gradient_checkpointing=True)
run("resumed", "surrogate", resume=True, gradient_checkpointing=True)
'''

# eprop's one_hop feedback reaches v_proj through o_proj and up_proj through down_proj
MODELS = {"surrogate": {}, "stdp": {},
          "eprop": {"neuron": "lif", "target_modules": ["v_proj", "o_proj", "up_proj", "down_proj"]}}


def setup(th, out, name: str, learner: str, **trainer):
    """``(config, learners, model)`` of one run: 3 steps of ``learner`` (the shipped config of a local rule);
    ``th``: the trainer_helpers module."""
    from hybridtune.config import load_config
    from hybridtune.learners import SurrogateLearner
    from hybridtune.trainers.loop import build_learners

    cfg = th.run_config(out, name, steps=3, eval_every=3, save_every=3, **trainer)
    if learner != "surrogate":
        cfg.learners = load_config(REPO / "configs" / "learners" / f"{learner}.yaml").learners
    learners = build_learners(cfg) if learner != "surrogate" else [SurrogateLearner(lr=1e-2)]
    return cfg, learners, th.lora_model(spiking=True, threshold=0.02, seed=0, init_b_std=0.01, **MODELS[learner])


def single_process(tmp_path, th, learner: str):
    """The same run on one process with the global batch (2 ranks x 2 blocks = 4 blocks per step), unsharded."""
    from hybridtune.trainers import Trainer

    cfg, learners, model = setup(th, tmp_path, f"one-{learner}", learner, batch_size=4)
    trainer = Trainer(model, cfg, learners=learners, train_data=th.pattern_blocks(32),
                      eval_data=th.pattern_blocks(5, seed=2))
    result = trainer.fit()
    start = dict(th.lora_model(spiking=True, threshold=0.02, seed=0, init_b_std=0.01, **MODELS[learner])
                 .named_parameters())
    owned = {k: v.detach().clone() for k, v in trainer.owned.items()}
    assert max((owned[k] - start[k].detach()).abs().max().item() for k in owned) > 1e-3  # it really trained
    return owned, result


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, helpers_dir, torchrun, th):
    out = tmp_path_factory.mktemp("fsdp2p")
    script = out / "fsdp_script.py"
    script.write_text(SCRIPT.format(helpers=str(helpers_dir)))
    done = torchrun([script, out], cwd=out, env={"HYBRIDTUNE_CACHE": str(out / "cache")}, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def ranks(out, name: str) -> list[dict[str, torch.Tensor]]:
    found = [load_file(str(out / f"{name}-rank{r}.safetensors")) for r in (0, 1)]
    assert found[0].keys() == found[1].keys() and any("lora_A" in k for k in found[0])
    for key in found[0]:
        torch.testing.assert_close(found[0][key], found[1][key], atol=0, rtol=0)  # ranks identical
    return found


def test_fsdp_surrogate_matches_one_process(fsdp_run, tmp_path, th):
    sharded = ranks(fsdp_run, "surrogate")[0]
    reference, result = single_process(tmp_path, th, "surrogate")
    for key, want in reference.items():
        torch.testing.assert_close(sharded[key], want, atol=2e-5, rtol=1e-4)
    # the padded, sharded evaluation counts every block once: the same perplexity as one process
    ppl = [float((fsdp_run / f"surrogate-ppl-rank{r}.txt").read_text()) for r in (0, 1)]
    assert ppl[0] == ppl[1] and ppl[0] == pytest.approx(result["eval_ppl_after"], rel=1e-4)


@pytest.mark.parametrize("learner", ["stdp", "eprop"])
def test_fsdp_local_learner_keeps_ranks_identical_and_matches_one_process(fsdp_run, tmp_path, th, learner):
    sharded = ranks(fsdp_run, learner)[0]
    reference, _ = single_process(tmp_path, th, learner)
    for key, want in reference.items():
        torch.testing.assert_close(sharded[key], want, atol=2e-5, rtol=1e-4)


def test_fsdp_resume_continues_the_same_run(fsdp_run):
    from hybridtune.trainers.checkpoint import list_checkpoints

    resumed, straight = ranks(fsdp_run, "resumed")[0], ranks(fsdp_run, "surrogate")[0]
    assert [p.name for p in list_checkpoints(fsdp_run / "resumed")] == ["step-00000002", "step-00000003"]
    for key, want in straight.items():
        torch.testing.assert_close(resumed[key], want, atol=1e-6, rtol=1e-5)


def test_adapter_saved_under_fsdp_loads_without_sharding(fsdp_run):
    from hybridtune.adapters import load
    from hybridtune.testing import tiny_model

    trained = ranks(fsdp_run, "surrogate")[0]
    torch.manual_seed(0)  # the base the run trained on (its fingerprint is checked on load)
    loaded = dict(load(tiny_model("llama"), fsdp_run / "adapter").named_parameters())
    for key, want in trained.items():
        torch.testing.assert_close(loaded[key].detach(), want, atol=0, rtol=0)


def test_hybridtune_train_with_fsdp_on_two_processes(tmp_path, th, torchrun):
    """The whole pipeline (``hybridtune train``) under ``trainer.sharding: fsdp``: spike counts, the energy summary
    and the adapter directory need every rank's shards; the adapter loads on the unsharded converted base."""
    import json

    from hybridtune.runs import load_run

    config = th.tiny_run_yaml(tmp_path, trainer={"steps": 2, "batch_size": 2, "sharding": "fsdp"})
    done = torchrun(["-m", "hybridtune.cli", "train", config], cwd=tmp_path,
                    env={"HYBRIDTUNE_CACHE": str(tmp_path / "cache")}, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["world_size"] == 2 and report["steps"] == 2 and report["energy"]["spikes_per_neuron"] > 0
    model, _, _ = load_run(tmp_path / "run")  # one process, nothing sharded
    checkpoint = load_file(str(tmp_path / "run" / "checkpoints" / "step-00000002" / "adapter.safetensors"))
    loaded = dict(model.named_parameters())
    for key, want in checkpoint.items():
        torch.testing.assert_close(loaded[key].detach(), want, atol=0, rtol=0)
