"""Plastic learners in the trainer: mixes split by parameter group, metrics through the tracker, exact resume, and the
example configs under configs/learners/ (loaded, validated, and one run end to end on a tiny model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
from hybridtune.config import RunConfig, load_config
from hybridtune.learners import SurrogateLearner
from hybridtune.learners.plasticity.rstdp_learner import RSTDPLearner
from hybridtune.learners.plasticity.stdp_learner import STDPLearner
from hybridtune.testing import tiny_model
from hybridtune.tracking import read_metrics
from hybridtune.trainers import Trainer, TrainerCallback
from hybridtune.trainers.checkpoint import latest_checkpoint

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "learners"


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")  # tests/conftest.py


def model(neuron="lif", seed=0, targets=("q_proj", "v_proj")):
    torch.manual_seed(seed)
    return get_spiking_peft_model(tiny_model("llama"), spiking_lora_config(
        r=4, neuron=neuron, threshold=0.02, init_b_std=0.05, target_modules=list(targets)))


def blocks(n=24, length=20, seed=0):
    """Counting sequences with a document boundary in the middle of every block and padding on some."""
    gen = torch.Generator().manual_seed(seed)
    ids = (torch.randint(0, 40, (n, 1), generator=gen) + torch.arange(length)) % 40 + 3
    mask = torch.ones_like(ids)
    mask[::4, -3:] = 0
    doc_start = torch.zeros_like(ids, dtype=torch.bool)
    doc_start[:, 0] = doc_start[:, length // 2] = True
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100),
            "doc_start": doc_start}


def config(tmp_path, name="run", steps=4, **trainer):
    cfg = RunConfig()
    t = cfg.trainer
    t.output_dir, t.steps, t.batch_size, t.eval_every, t.save_every = str(tmp_path / name), steps, 4, 2, 2
    t.scheduler = "constant"
    cfg.tracking.backend = "none"
    for k, v in trainer.items():
        setattr(t, k, v)
    return cfg


def mixed_learners():
    """STDP on q_proj's lora_A, escape-noise R-STDP on v_proj's factors, surrogate on everything else."""
    return [STDPLearner(params=r"q_proj\.lora_A", lr=0.05, tau_pre=4, tau_post=4, max_update_norm=0.05),
            RSTDPLearner(estimator="stdp", params=r"v_proj\.lora_[AB]", lr=0.05, escape=True, baseline="ema", gamma=0.9,
                         max_update_norm=0.05),
            SurrogateLearner(params="rest", lr=1e-2)]


def test_stdp_on_lora_a_with_surrogate_on_the_rest(tmp_path):
    m = model()
    start = {n: p.detach().clone() for n, p in m.named_parameters() if "lora_" in n}
    learners = [STDPLearner(params="lora_A", lr=0.05, max_update_norm=0.05), SurrogateLearner(params="rest", lr=1e-2)]
    trainer = Trainer(m, config(tmp_path), learners=learners, train_data=blocks(), eval_data=blocks(4, seed=9))
    result = trainer.fit()
    owned_by_stdp = set(learners[0]._params)
    assert owned_by_stdp and all("lora_A" in n for n in owned_by_stdp)
    assert not set(learners[1]._params) & owned_by_stdp  # split once, disjoint
    for name, p in trainer.owned.items():
        assert p.requires_grad == (name not in owned_by_stdp)
    changed = {n for n, p in m.named_parameters() if n in start and not torch.equal(p, start[n])}
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    stdp_rows = [r for r in rows if "learner/stdp/update_norm/mean" in r]
    assert len(stdp_rows) == 4 and all(r["learner/stdp/update_norm/mean"] > 0 for r in stdp_rows)
    assert all("learner/stdp/rate/mean" in r and "learner/stdp/step_s" in r for r in stdp_rows)
    assert result["eval_ppl_after"] is not None and result["learners"]["stdp"]["steps"] == 4.0


def test_rstdp_on_all_adapters_with_a_surrogate_trained_threshold(tmp_path):
    m = model()
    learners = [RSTDPLearner(estimator="stdp",
                             params="lora_A|lora_B", lr=0.05, escape=True), SurrogateLearner(params="rest", lr=1e-2)]
    thresholds = {n: p.detach().clone() for n, p in m.named_parameters() if "log_threshold" in n}
    trainer = Trainer(m, config(tmp_path, steps=2), learners=learners, train_data=blocks())
    trainer.fit()
    assert set(learners[1]._params) >= set(thresholds)  # the thresholds went to the surrogate learner
    assert any(not torch.equal(dict(m.named_parameters())[n], t) for n, t in thresholds.items())
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "learner/rstdp/reward" in r]
    assert len(rows) == 2 and all(k in rows[0] for k in ("learner/rstdp/baseline", "learner/rstdp/advantage/mean",
                                                         "learner/rstdp/advantage/std"))


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, step, logs):
        trainer.should_stop = step >= self.step


def test_resume_restores_learner_state_exactly(tmp_path):
    data, held = blocks(), blocks(4, seed=9)
    full = Trainer(model(), config(tmp_path, "full", steps=4, save_every=10), learners=mixed_learners(),
                   train_data=data, eval_data=held)
    full.fit()
    part_cfg = config(tmp_path, "part", steps=4, save_every=2)
    Trainer(model(), part_cfg, learners=mixed_learners(), train_data=data, eval_data=held,
            callbacks=[_StopAt(2)]).fit()
    assert latest_checkpoint(tmp_path / "part").name == "step-00000002"
    part_cfg.trainer.resume = True
    learners = mixed_learners()
    resumed = Trainer(model(seed=7), part_cfg, learners=learners, train_data=data, eval_data=held)
    resumed.load(latest_checkpoint(tmp_path / "part"))
    assert learners[1].steps == 2 and learners[1].baseline.mean is not None  # state came back before training
    resumed.fit()
    for name, p in full.owned.items():
        torch.testing.assert_close(resumed.owned[name], p, rtol=0, atol=0, msg=name)
    for a, b in zip(full.learners[:2], resumed.learners[:2]):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa["steps"] == sb["steps"] == 4
        assert all(torch.equal(sa["beta"][k], sb["beta"][k]) for k in sa["beta"])
    assert torch.equal(full.learners[1].baseline.mean, resumed.learners[1].baseline.mean)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_validate_and_name_their_learners(path):
    from hybridtune.trainers import build_learners

    cfg = load_config(path)
    names = [spec.name for spec in cfg.learners]
    assert any(n in ("stdp", "rstdp", "eprop") for n in names)
    learners = build_learners(cfg)  # options are accepted by the factories
    assert [lr.name for lr in learners] == names


def test_sweep_options_tau_pre_tau_post_reach_the_stdp_learner():
    from hybridtune.trainers import build_learners

    cfg = load_config(CONFIGS / "mix_stdp_surrogate.yaml", ["--learners.0.options.tau_pre=3.5",
                                                            "learners.0.options.tau_post=20"])
    stdp = build_learners(cfg)[0]
    assert (stdp.tau_pre, stdp.tau_post) == (3.5, 20.0)


def test_mix_config_runs_end_to_end_on_a_tiny_model(tmp_path, monkeypatch):
    from hybridtune.trainers.domain import run_domain_adaptation

    model_dir = tmp_path / "tiny-llama"
    from hybridtune.testing import tiny_tokenizer

    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"def add{i}(a, b):\n    return a + b + {i}\n" for i in range(80)))
    cfg = load_config(CONFIGS / "mix_stdp_surrogate.yaml", [
        f"model.name={model_dir}", "conversion.compensation=false", f"data.train={corpus}", "data.block_size=32",
        "data.eval_tokens=128", "data.max_train_tokens=null", "trainer.steps=2", "trainer.batch_size=2",
        "trainer.eval_every=2", "trainer.save_every=2", f"trainer.output_dir={tmp_path / 'run'}",
        "tracking.backend=none", "adapter.target_modules=[q_proj, v_proj]"])
    monkeypatch.setenv("HYBRIDTUNE_CACHE", str(tmp_path / "cache"))
    report = run_domain_adaptation(cfg)
    assert report["steps"] == 2 and report["ppl_spiking_after"] is not None
    assert "update_norm/mean" in report["learners"]["stdp"]


def test_stdp_and_rstdp_are_found_by_name():
    """The built-in names resolve to these classes (what ``name: stdp`` in a run config builds)."""
    from hybridtune.learners import available_learners, get_factory, learner

    for name, cls in (("stdp", STDPLearner), ("rstdp", RSTDPLearner)):
        assert name in available_learners() and get_factory(name) is cls
        assert isinstance(learner(name, params="lora_A", lr=1e-3, tau_pre=4.0), cls)
