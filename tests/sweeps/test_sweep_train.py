"""End to end: a 2-trial local grid sweep through ``hybridtune train`` on a tiny random model (no server)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from hybridtune.config import load_config, read_yaml
from hybridtune.sweeps import run_sweep

pytestmark = pytest.mark.skipif(importlib.util.find_spec("hybridtune.commands.train") is None,
                                reason="hybridtune train is not part of this checkout")


@pytest.mark.slow
def test_two_trial_local_sweep_through_hybridtune_train(tmp_path, monkeypatch):
    from hybridtune.testing import tiny_model, tiny_tokenizer

    monkeypatch.setenv("HYBRIDTUNE_CACHE", str(tmp_path / "cache"))
    model_dir = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "model": {"name": str(model_dir)},
        "conversion": {"calib_tokens": 64},
        "adapter": {"r": 2, "target_modules": ["q_proj", "v_proj"]},
        "data": {"train": "python-docs", "block_size": 32, "max_train_tokens": 256, "eval_tokens": 64},
        "trainer": {"output_dir": str(tmp_path / "never-used"), "steps": 2, "batch_size": 2, "eval_every": 2,
                    "save_every": 2},
        "tracking": {"backend": "none"},
    }))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "program": str(base), "method": "grid", "metric": {"name": "ppl_spiking_after", "goal": "minimize"},
        "parameters": {"adapter.r": {"values": [2, 4]}, "conversion.compensation": {"value": False}},
        "command": ["${env}", "hybridtune", "train", "${program}", "${args}"],
    }, sort_keys=False))
    summary = run_sweep(sweep, local=True, out=str(tmp_path / "out"), quiet=True)
    trials = summary["trials"]
    assert [t["status"] for t in trials] == ["ok", "ok"], [t["stderr_tail"][-2000:] for t in trials]
    for trial in trials:
        run_dir = Path(trial["output_dir"])
        assert trial["metric_file"] == str(run_dir / "report.json") and trial["value"] > 0
        saved = read_yaml(run_dir / "config.yaml")  # what the trainer actually ran with
        assert saved["adapter"]["r"] == trial["params"]["adapter.r"]
        assert saved["conversion"]["compensation"] is False
        assert saved["trainer"]["output_dir"] == str(run_dir)
    assert not (tmp_path / "never-used").exists()
    best = load_config(tmp_path / "out" / "best.yaml")
    assert best.adapter.r == summary["best"]["params"]["adapter.r"] and best.model.name == str(model_dir)
    assert (tmp_path / "out" / "sweep.png").is_file()
