"""A new user's first hour (issue 20), one test (or group) per numbered point, all through the CLI on a tiny model:
own text (1), the trained adapter used with no manual convert (2), report (3), validate = train's checks (4), a
misspelt model name (5), remedies the user can type (6), numbers with their context (7), a quiet console (8)."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

from hybridtune.cli import build_parser, main

# four paragraphs: too few documents to hold one out whole, so the end of the text is held out
NOTES = "\n\n".join(sentence * 3 for sentence in (
    "Spiking neurons send events instead of numbers. ", "A graded spike carries a small integer. ",
    "Thresholds are calibrated on a little text. ", "Adapters learn on top of the frozen base. "))


def _helpers():
    path = Path(__file__).parents[1] / "trainers" / "trainer_helpers.py"
    spec = importlib.util.spec_from_file_location("trainer_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


th = _helpers()


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    yield
    _reset_accelerate()


def _notes_dir(root: Path) -> Path:
    notes = root / "my_notes"
    notes.mkdir(exist_ok=True)
    (notes / "notes.txt").write_text(NOTES, encoding="utf-8")
    return notes


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One finished run on a directory holding a single text file (trained once for the tests that read it)."""
    root = tmp_path_factory.mktemp("first-hour")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRIDTUNE_CACHE", str(root / "cache"))
        mp.setenv("TQDM_DISABLE", "1")
        config = th.tiny_run_yaml(root, data={"train": str(_notes_dir(root))},
                                  trainer={"steps": 2, "eval_every": 2, "output_dir": str(root / "runs" / "own-{time}")})
        assert main(["train", str(config)]) == 0
        _reset_accelerate()
        (run,) = (root / "runs").iterdir()
        yield {"root": root, "run": run, "config": config, "cache": root / "cache"}


# 1. own text: a directory with one file trains; too little text is refused before any work, saying what to change


def test_a_directory_with_one_file_trains_and_says_how_it_was_split(trained_run):
    run = trained_run["run"]
    assert run.name.startswith("own-") and run.name != "own-{time}"  # time-stamped: a failed run blocks nothing
    report = json.loads((run / "report.json").read_text())
    assert report["data"]["eval_tokens"] > 0 and report["tokens_trained"] > 0


def test_train_prints_the_split_the_plan_and_a_measured_time_estimate(tmp_path, capsys):
    config = th.tiny_run_yaml(tmp_path, data={"train": str(_notes_dir(tmp_path))},
                              trainer={"steps": 2, "eval_every": 2})
    assert main(["train", str(config)]) == 0
    out = capsys.readouterr().out
    assert "the last 10% of the text is held out" in out and "documents: paragraphs" in out
    assert "plan: 2 steps x 4 blocks of 32 tokens" in out
    assert "first step:" in out and "tokens/s measured" in out


def test_too_little_text_is_refused_before_any_work_with_what_to_change(tmp_path, capsys):
    (tmp_path / "short.txt").write_text("A few words.\n\nAnd a few more.", encoding="utf-8")
    config = th.tiny_run_yaml(tmp_path, data={"train": str(tmp_path / "short.txt")})
    for command in ("validate", "train"):
        start = time.perf_counter()
        assert main([command, str(config)]) == 2
        assert time.perf_counter() - start < 5
        err = capsys.readouterr().err
        assert "data.train:" in err and "data.block_size=" in err and "trainer.batch_size=" in err, err
    assert not (tmp_path / "run").exists()


def test_sample_by_and_encoding_are_keys_the_command_line_accepts(tmp_path, capsys):
    (tmp_path / "latin.txt").write_bytes(("caf\u00e9 au lait, " * 40 + "\n\n").encode("latin-1") * 4)
    config = th.tiny_run_yaml(tmp_path, data={"train": str(tmp_path / "latin.txt")})
    assert main(["validate", str(config)]) == 2
    assert "data.encoding=latin-1" in capsys.readouterr().err
    assert main(["validate", str(config), "data.encoding=latin-1", "--data.sample_by=line"]) == 0
    assert main(["validate", str(config), "data.encoding=latin1x"]) == 2
    assert "data.encoding:" in capsys.readouterr().err


# 2. the trained adapter: evaluated and used with no manual convert


def test_eval_run_evaluates_the_trained_model_with_no_manual_convert(trained_run, capsys):
    run = trained_run["run"]
    report = json.loads((run / "report.json").read_text())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRIDTUNE_CACHE", str(trained_run["cache"]))
        out_json = trained_run["root"] / "eval.json"
        assert main(["eval", "--run", str(run), "--json", str(out_json)]) == 0
        assert json.loads(out_json.read_text())["ppl"] == pytest.approx(report["ppl_spiking_after"], rel=1e-5)
        assert main(["eval", "--adapter", str(run / "adapter"), "--json", str(out_json)]) == 0
        assert json.loads(out_json.read_text())["ppl"] == pytest.approx(report["ppl_spiking_after"], rel=1e-5)


def test_load_run_gives_a_model_that_generates(trained_run):
    import torch

    from hybridtune.runs import load_run

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRIDTUNE_CACHE", str(trained_run["cache"]))
        model, tokenizer, info = load_run(trained_run["run"] / "adapter")
    assert info["run_dir"] == str(trained_run["run"]) and info["conversion_from_cache"]
    ids = tokenizer("Spiking", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4


# 3. report: a run directory and a conversion directory, ANN beside spiking with context, never stale


def test_report_of_a_run_directory_prints_ann_beside_spiking_with_context(trained_run, capsys):
    run = trained_run["run"]
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "ANN (not converted)" in out and "spiking, after training" in out
    assert "block size 32" in out and "held-out tokens" in out and f"files: {run / 'report.json'}" in out


def test_report_of_a_conversion_never_reprints_results_for_other_data(tmp_path, capsys):
    model_dir = th.tiny_model_dir(tmp_path)
    conv = tmp_path / "conv"
    assert main(["convert", "--model", str(model_dir), "--out", str(conv), "conversion.calib_tokens=256",
                 "conversion.calib_block=64"]) == 0
    common = ["report", str(conv), "--model", str(model_dir), "--block-size", "32"]
    assert main([*common, "--max-tokens", "256"]) == 0
    first = capsys.readouterr().out
    assert "ANN (not converted)" in first and "block size 32, at most 256 tokens" in first
    assert f"files: {conv / 'report' / 'report.json'}" in first
    assert main([*common, "--max-tokens", "128", "--data", "unicode-names"]) == 0
    second = capsys.readouterr().out
    assert "unicode-names" in second and "at most 128 tokens" in second
    saved = json.loads((conv / "report" / "report.json").read_text())
    assert (saved["data"], saved["request"]["max_tokens"]) == ("unicode-names", 128)


# 4. validate runs every check that needs no model load; train runs the same ones first


@pytest.mark.parametrize("override, key", [
    ("learners.0.name=stdpp", "learners[0].name"),
    ("data.train=/no/such/notes.txt", "data.train"),
    ("model.name=defualt", "model.name"),
    ("adapter.target_modules=[q_proj,v_prj]", "adapter.target_modules[1]"),
    ("adapter.r=1000", "adapter.r"),
    ("data.block_size=100000", "data.block_size"),
    ("learners.0.lr=inf", "learners[0].lr"),
    ("trainer.max_grad_norm=nan", "trainer.max_grad_norm"),
    ("conversion.divisor=nan", "conversion.divisor"),
    ("adapter.alpha=.nan", "adapter.alpha"),
    ("trainer.batch_size=100000000", "trainer.batch_size"),
])
def test_validate_and_train_refuse_the_same_configs_fast(tmp_path, capsys, override, key):
    config = th.tiny_run_yaml(tmp_path)
    for command in ("validate", "train"):
        start = time.perf_counter()
        assert main([command, str(config), override]) == 2
        assert time.perf_counter() - start < 5
        err = capsys.readouterr().err
        assert f"{key}:" in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


# 5. a misspelt model name: no hub retries, "did you mean"


def test_a_misspelt_model_name_suggests_default_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    config = th.tiny_run_yaml(tmp_path)
    start = time.perf_counter()
    assert main(["train", str(config), "model.name=defualt"]) == 2
    assert time.perf_counter() - start < 5
    assert "did you mean 'default'?" in capsys.readouterr().err
    assert main(["eval", "--model", "defualt"]) == 2
    assert "did you mean 'default'?" in capsys.readouterr().err


# 6. remedies the user can type where they are, and correct about what they saw


def test_messages_name_options_not_python_keywords(tmp_path, capsys):
    import torch  # noqa: F401  (the adapter below is saved with torch)

    from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
    from hybridtune.testing import tiny_model

    adapter = tmp_path / "loose-adapter"
    get_spiking_peft_model(tiny_model("llama"), spiking_lora_config(r=2, target_modules=["q_proj"])).save_pretrained(
        adapter)
    assert main(["eval", "--model", str(th.tiny_model_dir(tmp_path)), "--adapter", str(adapter)]) == 2
    err = capsys.readouterr().err
    assert "--run RUN_DIR" in err and "--spiking DIR" in err
    (tmp_path / "word.txt").write_text("word", encoding="utf-8")
    assert main(["eval", "--model", str(th.tiny_model_dir(tmp_path)), "--data", str(tmp_path / "word.txt")]) == 2
    err = capsys.readouterr().err
    assert "data.eval=PATH" in err and "split='all'" not in err
    (tmp_path / "rows.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n', encoding="utf-8")
    config = th.tiny_run_yaml(tmp_path, data={"train": str(tmp_path / "rows.jsonl")})
    assert main(["validate", str(config)]) == 2
    assert "line 2 is not a JSON object" in capsys.readouterr().err


# 7. numbers with their context


def test_every_perplexity_printed_names_its_block_size_and_tokens(trained_run, capsys):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRIDTUNE_CACHE", str(trained_run["cache"]))
        assert main(["eval", "--run", str(trained_run["run"]), "--block-size", "16", "--max-tokens", "64"]) == 0
    out = capsys.readouterr().out
    assert "(block size 16, " in out and " tokens scored)" in out


def test_report_json_lists_the_configured_learning_rate(trained_run):
    report = json.loads((trained_run["run"] / "report.json").read_text())
    (metrics,) = report["learners"].values()
    assert metrics["lr"] == 1e-2 and "lr_last_step" in metrics


# 8. a quiet console by default, everything with --verbose


def test_the_console_is_quiet_by_default(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    config = th.tiny_run_yaml(tmp_path, trainer={"steps": 1, "eval_every": 1}, tracking={"backend": "wandb"})
    assert main(["train", str(config)]) == 0
    out, err = capfd.readouterr()
    assert "Run summary" not in out + err and "FutureWarning" not in err
    assert "WANDB_SILENT" not in __import__("os").environ  # the command's quiet settings do not outlive it
    assert build_parser().parse_args(["train", "c.yaml", "--verbose"]).verbose
    assert build_parser().parse_args(["--verbose", "train", "c.yaml"]).verbose
    assert not build_parser().parse_args(["train", "c.yaml"]).verbose


def test_a_command_that_loads_a_model_hides_the_gguf_bar(monkeypatch):
    import importlib

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    original, seen = gguf_utils.tqdm, {}

    def fake_run(args):
        seen["tqdm"] = gguf_utils.tqdm
        return 0

    monkeypatch.setattr(importlib.import_module("hybridtune.commands.eval"), "run", fake_run)
    assert main(["eval", "--model", "default", "--data", "python-docs"]) == 0
    assert seen["tqdm"] is not original and list(seen["tqdm"]([1, 2])) == [1, 2]
    assert gguf_utils.tqdm is original  # restored after the command
