"""The learner registry: built-ins, register_learner, 'module:attr' references and entry-point discovery."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from hybridtune.learners import (
    ENTRY_POINT_GROUP,
    SurrogateLearner,
    UnknownLearnerError,
    available_learners,
    check_learner,
    learner,
    register_learner,
)
from hybridtune.learners import registry as reg


@pytest.fixture
def clean_registry():
    saved = dict(reg._REGISTRY)
    yield
    reg._REGISTRY.clear()
    reg._REGISTRY.update(saved)


def test_builtin_surrogate_takes_keyword_arguments():
    sur = learner("surrogate", params="lora_B", lr=5e-4, optimizer="sgd")
    assert isinstance(sur, SurrogateLearner)
    assert (sur.params, sur.lr, sur.optimizer_name, sur.uses_backward) == ("lora_B", 5e-4, "sgd", True)


def test_unknown_name_lists_what_exists_and_the_closest():
    with pytest.raises(UnknownLearnerError) as err:
        learner("surrogat")
    text = str(err.value)
    assert "did you mean 'surrogate'" in text and ENTRY_POINT_GROUP in text


def test_register_learner_and_refuse_silent_replacement(clean_registry):
    register_learner("sgd-surrogate", lambda **kw: SurrogateLearner(optimizer="SGD", **kw))
    assert learner("sgd-surrogate", lr=0.1).optimizer_name == "SGD"
    assert "sgd-surrogate" in available_learners()
    with pytest.raises(ValueError, match="already registered"):
        register_learner("sgd-surrogate", SurrogateLearner)
    with pytest.raises(ValueError, match="already registered"):
        register_learner("surrogate", SurrogateLearner)
    register_learner("sgd-surrogate", SurrogateLearner, overwrite=True)
    assert learner("sgd-surrogate").optimizer_name == "AdamW"


def test_factory_must_return_a_learner(clean_registry):
    register_learner("broken", lambda **kw: object())
    with pytest.raises(TypeError, match="missing: name, params"):
        learner("broken")
    with pytest.raises(TypeError, match="must be callable"):
        register_learner("x", 3)


def test_module_attr_reference():
    sur = learner("hybridtune.learners.surrogate:SurrogateLearner", lr=0.2)
    assert sur.lr == 0.2
    with pytest.raises(UnknownLearnerError, match="cannot import"):
        learner("hybridtune.learners.surrogate:Nope")


def test_entry_point_discovery(tmp_path, monkeypatch):
    """A third-party package advertising a learner in the group is found by name, without registering it."""
    pkg = tmp_path / "my_rules"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        from hybridtune.learners import SurrogateLearner

        def make(**kw):
            return SurrogateLearner(name="thirdparty", **kw)
    """))
    info = tmp_path / "my_rules-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-rules\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nthirdparty = my_rules:make\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert "thirdparty" in available_learners()
    assert learner("thirdparty", lr=0.3).name == "thirdparty"
    sys.modules.pop("my_rules", None)


def test_check_learner_names_missing_members():
    class Half:
        name, params, uses_backward = "half", "all", True

        def setup(self, ctx):
            pass

    with pytest.raises(TypeError) as err:
        check_learner(Half())
    assert "recording" in str(err.value) and "state_dict" in str(err.value)
