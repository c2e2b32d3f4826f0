"""A third-party learner advertised through the ``hybridtune.learners`` entry-point group runs in the trainer unchanged.

The "package" is a module plus a ``*.dist-info`` directory (METADATA + entry_points.txt) in a temporary directory put
on ``sys.path`` -- what ``pip install`` of a plugin leaves behind. The run config names the learner like a built-in.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
from hybridtune.config import LearnerSpec, RunConfig
from hybridtune.learners import available_learners, learner
from hybridtune.testing import tiny_model
from hybridtune.tracking import read_metrics

PLUGIN = '''
"""A plugin learner: a local rule written against the public learner API only (Oja's rule on lora_A)."""
import torch
from hybridtune.learners import Observation, SetupContext, apply_update, mean_across_ranks


class OjaA:
    uses_backward = False

    def __init__(self, params="lora_A", lr=1e-3, name="plugin-oja"):
        self.name, self.params, self.lr = name, params, lr
        self.observed = 0

    def setup(self, ctx: SetupContext):
        self.acc, self._params = ctx.accelerator, dict(ctx.params)
        for p in self._params.values():
            p.requires_grad_(False)

    def recording(self, model):
        from hybridtune.adapters import recording
        return recording(model, membrane=False, outputs=False)

    def observe(self, obs: Observation):
        self._d = getattr(self, "_d", {})
        for rec in obs.recording.pop():
            name = f"{rec.layer}.lora_A.{rec.adapter}.weight"
            if name in self._params:
                y = rec.bottleneck_spikes.float().flatten(0, 1)
                x = rec.inputs().flatten(0, 1)
                w = self._params[name].detach()
                d = (y.T @ x - (y * y).sum(0)[:, None] * w) / max(len(x), 1)
                self._d[name] = self._d.get(name, 0) + d
        self.observed += 1

    def step(self):
        apply_update(self._params, mean_across_ranks(self.acc, getattr(self, "_d", {})), self.lr)
        self._d = {}
        return True

    def reset(self):
        self._d = {}

    def state_dict(self):
        return {"observed": self.observed}

    def load_state_dict(self, state):
        self.observed = state["observed"]

    def metrics(self):
        return {"observed": float(self.observed)}
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "toy_plugin_rules.py").write_text(PLUGIN)
    dist = tmp_path / "toy_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""\
        [hybridtune.learners]
        plugin-oja = toy_plugin_rules:OjaA
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "plugin-oja"
    import sys

    sys.modules.pop("toy_plugin_rules", None)


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")  # tests/conftest.py


def test_entry_point_learner_is_found_and_trains_in_the_trainer(plugin, tmp_path):
    from hybridtune.trainers import Trainer

    assert plugin in available_learners()
    assert type(learner(plugin)).__module__ == "toy_plugin_rules"
    torch.manual_seed(0)
    model = get_spiking_peft_model(tiny_model("llama"), spiking_lora_config(
        r=4, neuron="heaviside", threshold=0.01, target_modules=["q_proj", "v_proj"]))
    start = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}
    cfg = RunConfig()
    cfg.learners = [LearnerSpec(name=plugin, params="lora_A", lr=0.1),
                    LearnerSpec(name="surrogate", params="rest", lr=1e-2)]
    t = cfg.trainer
    t.output_dir, t.steps, t.batch_size, t.save_every, t.scheduler = str(tmp_path / "run"), 3, 2, 3, "constant"
    cfg.tracking.backend = "none"
    ids = (torch.arange(16)[None] + torch.arange(8)[:, None]) % 50 + 3
    trainer = Trainer(model, cfg, train_data={"input_ids": ids})  # learners built from the config by name
    trainer.fit()
    plugin_learner = trainer.learners[0]
    assert plugin_learner.observed == 3 and all(not p.requires_grad for p in plugin_learner._params.values())
    assert any(not torch.equal(p, start[n]) for n, p in model.named_parameters() if n in start)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r[f"learner/{plugin}/observed"] for r in rows if f"learner/{plugin}/observed" in r] == [1.0, 2.0, 3.0]
