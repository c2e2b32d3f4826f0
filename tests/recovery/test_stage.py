"""Recovery as a trainer stage: ``hybridtune train`` runs stage 1 then stage 2, resumes mid-stage on the same curve,
and saves a recovered conversion that ``eval --spiking DIR --adapter DIR`` loads with its fingerprint check."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from hybridtune.config import load_config
from hybridtune.testing import tiny_model, tiny_tokenizer
from hybridtune.trainers import interrupt

TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int\n    y: int\n"


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")  # tests/conftest.py


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    model_dir = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(TEXT.replace("add", f"add{i % 7}") for i in range(60)))
    return tmp_path, model_dir, corpus


def _config(root: Path, model_dir: Path, corpus: Path, name: str, *extra: str):
    return load_config(None, [
        f"model.name={model_dir}", "conversion.compensation=false", f"data.train={corpus}", "data.block_size=32",
        "data.eval_tokens=64", "trainer.steps=2", "trainer.batch_size=2", "trainer.eval_every=2",
        "trainer.save_every=2", f"trainer.output_dir={root / name}", "tracking.backend=none",
        "trainer.scheduler=constant",
        "adapter.target_modules=[q_proj, v_proj]", "conversion.coverage=[ffn_act,linear_inputs,attention]",
        "conversion.softmax=sigmoid", "recovery.stage1_steps=4", "recovery.eval_every=2", "recovery.save_every=1",
        "recovery.stage1_lr=0.05", "learners.0.lr=0.01", *extra])


def _curve(run: Path) -> list[dict]:
    return json.loads((run / "recovery_curve.json").read_text())["points"]


def test_resume_mid_stage1_gives_the_uninterrupted_curve(setup, monkeypatch):
    from hybridtune.trainers import recovery as stage
    from hybridtune.trainers.domain import run_domain_adaptation

    root, model_dir, corpus = setup
    whole = run_domain_adaptation(_config(root, model_dir, corpus, "whole"))
    points = _curve(root / "whole")
    assert [p["stage"] for p in points] == [0, 1, 1, 1, 2, 2]  # before, the fit, steps 2 and 4, stage 2
    assert whole["recovery"]["tokens_stage1"] == points[3]["tokens"] > points[1]["tokens"] > 0
    assert points[-1]["tokens"] == whole["recovery"]["tokens_stage1"] + whole["tokens_trained"]

    real_step, calls = stage.transfer_step, []

    def step_then_signal(*args, **kwargs):  # a SIGTERM arrives during stage 1's second step
        calls.append(1)
        out = real_step(*args, **kwargs)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(stage, "transfer_step", step_then_signal)
    with pytest.raises(interrupt.TrainingInterrupted), interrupt.checkpoint_on_signals():
        run_domain_adaptation(_config(root, model_dir, corpus, "cut"))
    assert sorted(p.name for p in (root / "cut/recovery/checkpoints").iterdir())[-1] == "step-00000002"
    assert not (root / "cut/recovery_curve.json").exists()
    monkeypatch.setattr(stage, "transfer_step", real_step)
    resumed = run_domain_adaptation(_config(root, model_dir, corpus, "cut", "trainer.resume=true"))
    assert len(calls) == 2  # the resumed run did steps 3 and 4 only
    assert _curve(root / "cut") == points
    assert resumed["eval_ppl_after"] == whole["eval_ppl_after"]


def test_recovered_model_saves_and_loads_with_eval(setup):
    from hybridtune.adapters import load
    from hybridtune.commands.eval import add_arguments, evaluate
    from hybridtune.conversion import load_spiking
    from hybridtune.conversion.attention import replacement_parameters
    from hybridtune.trainers.domain import run_domain_adaptation

    root, model_dir, corpus = setup
    report = run_domain_adaptation(_config(root, model_dir, corpus, "run", "recovery.stage1_steps=2"))
    run = root / "run"
    assert (run / "recovery_curve.png").is_file() or "matplotlib" in report["recovery"]["png"]
    snn = load_spiking(tiny_model("llama"), run / "spiking")
    trained = replacement_parameters(snn)
    assert trained and any(not torch.equal(p, torch.ones_like(p)) for n, p in trained.items() if n.endswith("tau"))
    load(snn, run / "adapter")  # the fingerprint check passes on the recovered conversion
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model", str(model_dir), "--spiking", str(run / "spiking"), "--adapter",
                              str(run / "adapter"), "--data", str(corpus), "--block-size", "32", "--max-tokens", "64"])
    assert evaluate(args)["ppl"] == pytest.approx(report["eval_ppl_after"], rel=1e-6)
    from hybridtune.runs import load_run  # `hybridtune eval --run RUN` finds the recovered conversion itself

    model, _, info = load_run(run)
    assert info["conversion_from_cache"] is False
    loaded = {n.removeprefix("base_model.model."): p for n, p in replacement_parameters(model).items()}  # peft
    assert loaded.keys() == trained.keys() and all(torch.equal(p, loaded[n]) for n, p in trained.items())
    # the conversion the run started from (the cache, without the trained parameters) is refused for this adapter
    from hybridtune.adapters.model import SpikingAdapterLoadError
    from hybridtune.conversion import ConversionConfig, convert

    fresh = convert(tiny_model("llama"), ConversionConfig(coverage=("ffn_act", "linear_inputs", "attention"),
                                                          softmax="sigmoid", compensation=False))
    with pytest.raises(SpikingAdapterLoadError, match="conversion"):
        load(fresh, run / "adapter")
