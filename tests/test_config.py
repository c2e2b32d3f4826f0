import pytest
import yaml

from hybridtune.config import ConfigError, RunConfig, load_config, parse_override, save_config
from hybridtune.config_schema import to_dict


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = load_config()
    assert isinstance(cfg, RunConfig)
    path = tmp_path / "run.yaml"
    save_config(cfg, path)
    saved = yaml.safe_load(path.read_text())
    assert saved["hybridtune_version"]
    assert to_dict(load_config(path)) == to_dict(cfg)


def test_both_override_forms_and_yaml_values():
    cfg = load_config(None, ["trainer.steps=7", "--adapter.r=4", "--conversion.coverage=[ffn_act]",
                             "learners.0.lr=0.5", "--tracking.tags=[a, b]", "conversion.max_spikes=null"])
    assert cfg.trainer.steps == 7 and cfg.adapter.r == 4
    assert cfg.conversion.coverage == ("ffn_act",) and cfg.learners[0].lr == 0.5
    assert cfg.tracking.tags == ["a", "b"] and cfg.conversion.max_spikes is None


def test_booleans_and_nested_keys():
    cfg = load_config(None, ["--trainer.overwrite=true", "conversion.compensation=False"])
    assert cfg.trainer.overwrite is True and cfg.conversion.compensation is False


def test_misspelt_key_in_file_names_file_key_and_nearest(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trainer:\n  stpes: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "trainer.stpes" in msg and "did you mean 'steps'" in msg


def test_misspelt_override_key():
    with pytest.raises(ConfigError, match="adapter.nueron: unknown key; did you mean 'neuron'"):
        load_config(None, ["adapter.nueron=lif"])


@pytest.mark.parametrize("override, fragment", [
    ("adapter.r=abc", "expected an integer"),
    ("adapter.r=0", "rank must be >= 1"),
    ("conversion.coverage=[ffn]", "did you mean 'ffn_act'"),
    ("tracking.mode=online2", "allowed: 'online', 'offline', 'disabled'"),
    ("trainer.overwrite=yes_please", "expected true or false"),
    ("adapter.dropout=1.5", "must be in [0, 1)"),
])
def test_wrong_types_and_impossible_values(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)


def test_impossible_combination():
    with pytest.raises(ConfigError, match="exclude each other"):
        load_config(None, ["trainer.overwrite=true", "trainer.resume=true"])


def test_parse_override_rejects_missing_equals():
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("--trainer.steps")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("raw, expected", [("1e-05", 1e-05), ("1e+20", 1e20), ("inf", float("inf")), ("None", None),
                                           ("3", 3), ("0.5", 0.5), ("lif", "lif")])
def test_override_values_survive_the_wandb_args_round_trip(raw, expected):
    # W&B's ${args} writes --key=str(value); YAML alone would read 1e-05 and inf as strings
    assert parse_override(f"--learners.0.lr={raw}")[1] == expected


def test_sweep_style_learning_rate_reaches_the_config():
    assert load_config(None, ["--learners.0.lr=1e-05"]).learners[0].lr == 1e-05


def test_conversion_section_reaches_every_conversion_setting():
    from hybridtune.conversion import ConversionConfig

    cfg = load_config(None, ["conversion.threshold=static", "conversion.threshold_mode=max_abs",
                             "conversion.timesteps=8", "conversion.divisor=1", "conversion.skip=[lm_head]",
                             "conversion.calib_block=256", "conversion.attention_divisor=4"])
    conv = cfg.conversion  # the section is the conversion config itself
    assert isinstance(conv, ConversionConfig)
    assert (conv.neuron, conv.timesteps, conv.threshold_mode, conv.counting) == ("if", 8, "max_abs", "unary")
    assert conv.skip == ("lm_head",) and conv.calib_block == 256 and conv.attention_divisor == 4.0
    with pytest.raises(ConfigError, match="conversion.timesteps"):
        load_config(None, ["conversion.neuron=graded", "conversion.timesteps=4"])
    with pytest.raises(ConfigError, match="conversion.threshold_mode"):
        load_config(None, ["conversion.threshold_mode=max_abs"])

CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"


def test_continual_is_a_section_of_the_run_config():
    from hybridtune.config import ContinualSection

    cfg = load_config(CONFIGS / "continual" / "replay.yaml", ["--continual.replay.share=0.5",
                                                               "continual.domains.1=unicode-names"])
    assert isinstance(cfg.continual, ContinualSection)
    assert cfg.continual.replay.share == 0.5 and cfg.continual.domains[1] == "unicode-names"
    assert to_dict(load_config(None, [])).get("continual") == to_dict(ContinualSection())


@pytest.mark.parametrize("override, key, fragment", [
    ("continual.adapter=per_tsk", "continual.adapter", "did you mean 'per_task'"),
    ("continual.replay.shar=0.2", "continual.replay.shar", "valid keys in continual.replay: buffer_blocks, share"),
    ("continual.replay.share=1.5", "continual.replay.share", "must be in [0, 1)"),
    ("continual.domains.7=x", "continual.domains.7", "past the end"),
])
def test_continual_errors_name_the_key_and_the_file(override, key, fragment):
    path = CONFIGS / "continual" / "shared.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(path, [override])
    assert err.value.key == key and fragment in str(err.value) and str(path) in str(err.value)


def test_one_override_parser_for_every_command():
    import inspect

    import hybridtune.commands.train as train
    import hybridtune.continual.config as continual
    import hybridtune.sweeps.params as params
    from hybridtune.config import overrides

    # the commands, the continual pipeline and the sweeps use hybridtune.config.overrides; none parses on its own
    for module in (train, continual, params):
        source = inspect.getsource(module)
        assert "yaml.safe_load(raw" not in source and "def _set_dotted" not in source and "_OVERRIDE" not in source
    assert overrides.is_override("--continual.replay.share=0.5") and not overrides.is_override("--resume")
    assert params.config_type("continual.replay.share") is float
    assert params.config_type("learners.0.options") == dict[str, __import__("typing").Any]
