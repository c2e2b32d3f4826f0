"""``hybridtune quickstart``: the run shipped in the package is configs/quickstart.yaml (the same file), the example
configs are valid and build their learners, and a shortened quick start on the real default model runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybridtune.cli import build_parser, main
from hybridtune.commands.quickstart import quickstart_config
from hybridtune.config import load_config, to_dict

CONFIGS = Path(__file__).parents[2] / "configs"


def test_packaged_quickstart_is_the_yaml_in_configs():
    from importlib import resources

    packaged = resources.files("hybridtune.config").joinpath("quickstart.yaml").read_text()
    assert packaged == (CONFIGS / "quickstart.yaml").read_text()  # one file, shipped as package data
    from_file = to_dict(load_config(CONFIGS / "quickstart.yaml"))
    loaded = to_dict(quickstart_config([], out=from_file["trainer"]["output_dir"]))
    assert loaded == from_file


def test_the_quickstart_yaml_is_declared_package_data():
    import tomllib

    pyproject = tomllib.loads((CONFIGS.parent / "pyproject.toml").read_text())
    assert "config/quickstart.yaml" in pyproject["tool"]["setuptools"]["package-data"]["hybridtune"]


def test_quickstart_arguments():
    args = build_parser().parse_args(["quickstart", "trainer.steps=2", "--out", "d", "--data.block_size=64"])
    assert args.out == "d" and args.overrides == ["trainer.steps=2", "--data.block_size=64"]
    cfg = quickstart_config(args.overrides, args.out)
    assert (cfg.trainer.steps, cfg.data.block_size, cfg.trainer.output_dir) == (2, 64, "d")
    assert quickstart_config([]).trainer.output_dir.startswith("runs/quickstart-")


def test_quickstart_bad_override_exits_2(capsys, tmp_path):
    assert main(["quickstart", "--out", str(tmp_path / "q"), "adapter.rr=4"]) == 2
    assert "adapter.rr" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_are_valid_and_build_their_learners(path):
    from hybridtune.trainers import build_learners

    cfg = load_config(path)
    learners = build_learners(cfg)
    assert len(learners) == len(cfg.learners)


@pytest.mark.real_model
def test_shortened_quickstart_on_the_default_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HYBRIDTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "qs"
    code = main(["quickstart", "--out", str(out), "trainer.steps=2", "trainer.batch_size=2", "trainer.eval_every=2",
                 "data.block_size=64", "data.eval_tokens=256", "data.max_train_tokens=4096",
                 "conversion.calib_tokens=256"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads((out / "report.json").read_text())
    for key in ("ppl_ann", "ppl_spiking_before", "ppl_spiking_after", "spikes_per_neuron", "tokens_trained"):
        assert isinstance(report[key], (int, float)) and report[key] > 0, key
    assert report["tokens_trained"] == 2 * 2 * 64
    assert report["ppl_spiking_after"] < 2 * report["ppl_ann"]  # converted and trained, not broken
    assert "ANN (not converted)" in printed and "wandb sync" in printed
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
