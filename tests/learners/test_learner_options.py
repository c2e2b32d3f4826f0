"""Learner options are typed per learner: each built-in's options dataclass mirrors its keyword arguments and
defaults, and a bad option fails in ``learner()``, ``hybridtune validate`` and the trainer naming the key and the
valid ones."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from hybridtune.cli import main
from hybridtune.config import ConfigError, load_config
from hybridtune.learners import learner
from hybridtune.learners.registry import COMMON_KEYS, get_factory, options_type, register_learner
from hybridtune.learners.surrogate import SurrogateLearner

BUILTINS = ("surrogate", "stdp", "rstdp", "eprop")


def keyword_defaults(cls: type) -> dict:
    """Every keyword argument of ``cls.__init__`` (following ``**options`` into the base class) and its default."""
    out: dict = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                out.setdefault(p.name, p.default)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return {k: v for k, v in out.items() if k not in COMMON_KEYS}


@pytest.mark.parametrize("name", BUILTINS)
def test_options_dataclass_mirrors_the_learner_arguments_and_defaults(name):
    tp = options_type(name)
    assert dataclasses.is_dataclass(tp)
    declared = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(tp)}
    assert declared == keyword_defaults(get_factory(name))


@pytest.mark.parametrize(("name", "options", "key", "fragment"), [
    ("stdp", {"tau_pr": 4.0}, "options.tau_pr", "did you mean 'tau_pre'"),
    ("rstdp", {"estimator": "antithetc"}, "options.estimator", "did you mean 'antithetic'"),
    ("surrogate", {"max_grad_norm": "off"}, "options.max_grad_norm", "'default'"),
    ("eprop", {"top_chunk": 1.5}, "options.top_chunk", "expected an integer"),
])
def test_a_bad_option_names_the_key_and_the_valid_ones(name, options, key, fragment):
    with pytest.raises(ConfigError) as err:
        learner(name, **options)
    assert err.value.key == key and fragment in str(err.value)


def test_validate_and_the_trainer_name_the_learner_and_the_option(tmp_path, capsys):
    from hybridtune.trainers.loop import build_learners

    path = tmp_path / "run.yaml"
    path.write_text("learners:\n  - {name: stdp, params: all, lr: 0.01, options: {tau_post: 4, rulle: local}}\n")
    with pytest.raises(ConfigError) as err:
        build_learners(load_config(path))
    assert err.value.key == "learners[0].options.rulle" and "did you mean 'rule'" in str(err.value)
    assert main(["validate", str(path)]) == 2
    message = capsys.readouterr().err
    assert "learners[0].options.rulle" in message and "tau_pre" in message and str(path) in message


def test_a_third_party_learner_declares_its_options():
    @dataclasses.dataclass
    class Opts:
        momentum: float = 0.9

    class Mine(SurrogateLearner):
        options_type = Opts

        def __init__(self, params="all", lr=1e-3, momentum=0.9, name="mine"):
            super().__init__(params, lr, optimizer="SGD", optimizer_kwargs={"momentum": momentum}, name=name)

    register_learner("test-mine-options", Mine, overwrite=True)
    assert learner("test-mine-options", momentum=1).optimizer_kwargs == {"momentum": 1.0}
    with pytest.raises(ConfigError, match="options.momentun: unknown key; did you mean 'momentum'"):
        learner("test-mine-options", momentun=0.5)
