"""``hybridtune train``: overrides in both forms, exit 2 naming the key before any work, a tiny end-to-end run,
``--resume``, and the conversion cache."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from hybridtune.cli import build_parser, main
from hybridtune.tracking import read_metrics


@pytest.fixture(scope="module")
def th():
    """The trainer tests' helpers (tiny model directory, corpus file, run YAML), loaded from their file."""
    path = Path(__file__).parents[1] / "trainers" / "trainer_helpers.py"
    spec = importlib.util.spec_from_file_location("trainer_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    yield
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def test_overrides_in_both_forms_keep_their_order():
    args = build_parser().parse_args(["train", "run.yaml", "trainer.steps=3", "--trainer.steps=5", "--resume",
                                      "--learners.0.lr=1e-3", "--out", "somewhere"])
    assert args.config == "run.yaml" and args.resume and args.out == "somewhere"
    assert args.overrides == ["trainer.steps=3", "--trainer.steps=5", "--learners.0.lr=1e-3"]
    from hybridtune.commands.train import cli_overrides

    assert cli_overrides(args)[-2:] == ["trainer.output_dir=somewhere", "trainer.resume=true"]


def test_a_stray_flag_is_still_an_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["train", "run.yaml", "--bogus"])
    assert exit_.value.code == 2 and "--bogus" in capsys.readouterr().err


@pytest.mark.parametrize("override, key", [
    ("trainer.stepz=3", "trainer.stepz"),
    ("trainer.steps=many", "trainer.steps"),
    ("trainer.scheduler=cosin", "trainer.scheduler"),
    ("learners.0.name=stdpp", "learners[0].name"),
    ("learners.0.options={momentm: 0.9}", "learners[0].options.momentm"),  # typed per learner
    ("learners.0.params=[lora_A", "learners[0].params"),
    ("data.train=/no/such/corpus.txt", "data.train"),
    ("model.name=/no/such/model", "model.name"),
    ("tracking.backend=mlflow", "tracking.backend"),
])
def test_bad_configs_exit_2_naming_the_key_before_any_work(tmp_path, th, capsys, override, key):
    config = th.tiny_run_yaml(tmp_path)
    assert main(["train", str(config), override]) == 2
    err = capsys.readouterr().err
    assert f"{key}:" in err, err
    assert not (tmp_path / "run").exists()  # failed before the output directory was touched


def test_train_resume_and_refusal_to_clobber(tmp_path, th, capsys):
    config = th.tiny_run_yaml(tmp_path, trainer={"steps": 2, "eval_every": 1})
    assert main(["train", str(config)]) == 0
    out = capsys.readouterr().out
    assert "spiking, after training" in out and "conversion: converted" in out
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    for key in ("ppl_ann", "ppl_spiking_before", "ppl_spiking_after", "spikes_per_neuron", "tokens_trained"):
        assert isinstance(report[key], (int, float)), key
    assert report["spikes_per_neuron"] > 0 and report["energy"]["energy"]["fp32_45nm"]["ratio"] > 0
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()

    assert main(["train", str(config)]) == 2  # the directory exists: refuse
    assert "trainer.output_dir" in capsys.readouterr().err

    assert main(["train", str(config), "--resume", "--trainer.steps=4"]) == 0
    assert "conversion: loaded from cache" in capsys.readouterr().out
    steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r]
    assert steps == [1, 2, 3, 4]
    resumed = json.loads((tmp_path / "run" / "report.json").read_text())
    assert resumed["steps"] == 4 and resumed["ppl_ann"] == report["ppl_ann"]
    assert resumed["ppl_spiking_before"] == report["ppl_spiking_before"]


def test_errors_only_the_model_can_reveal_still_exit_2(tmp_path, th, capsys):
    config = th.tiny_run_yaml(tmp_path)
    assert main(["train", str(config), "adapter.target_modules=[nope_proj]"]) == 2
    assert "adapter.target_modules[0]:" in capsys.readouterr().err  # now caught before the model loads
    assert main(["train", str(config), "--out", str(tmp_path / "b"), "learners.0.params=nope"]) == 2
    err = capsys.readouterr().err
    assert "learners:" in err and "matches no trainable parameter" in err


def test_op_backend_comes_from_the_config_and_cuda_without_a_gpu_exits_2(tmp_path, th, capsys):
    import torch

    from hybridtune import ops

    config = th.tiny_run_yaml(tmp_path)
    try:
        if not torch.cuda.is_available():
            assert main(["train", str(config), "ops.backend=cuda"]) == 2
            assert "ops.backend:" in capsys.readouterr().err
            assert not (tmp_path / "run").exists()  # refused before anything was written
        assert main(["train", str(config), "ops.backend=torch", "trainer.steps=1"]) == 0
        assert ops.backend_info()["active"] == "torch"
    finally:
        ops.set_backend(None)
