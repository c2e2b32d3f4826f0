"""Nothing lost, nothing silently wrong: overwrite only deletes run directories, resume refuses what it cannot
continue, a finished run resumed changes nothing, a missing report is completed, damaged checkpoints fall back,
files that cannot be read or written fail naming the file, and everything is fsynced before its rename."""

from __future__ import annotations

import errno
import json
import os
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from hybridtune.config_schema import ConfigError
from hybridtune.files import FileError
from hybridtune.tracking import read_metrics
from hybridtune.trainers import Trainer, TrainerCallback
from hybridtune.trainers.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    newest_verified_checkpoint,
    save_checkpoint,
)
from hybridtune.trainers.report import load_report, write_report
from hybridtune.trainers.rundir import RUN_MARKER, open_run_dir


def _fit(th, tmp_path, name="run", data=None, callbacks=(), **trainer):
    cfg = th.run_config(tmp_path, name, **trainer)
    data = data if data is not None else th.pattern_blocks(32)
    t = Trainer(th.lora_model(lora_dropout=0.1), cfg, train_data=data, eval_data=th.pattern_blocks(4, seed=3),
                callbacks=list(callbacks))
    return t, t.fit()


def _adapter(run_dir):
    return load_file(str(list_checkpoints(run_dir)[-1] / "adapter.safetensors"))


# -- overwrite and the output directory ------------------------------------------------------------------------------
def test_overwrite_never_deletes_a_directory_the_project_did_not_create(tmp_path, th):
    user = tmp_path / "run"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    cfg = th.run_config(tmp_path, overwrite=True)
    with pytest.raises(ConfigError) as err:
        open_run_dir(cfg)
    assert err.value.key == "trainer.output_dir" and RUN_MARKER in str(err.value) and "nothing was removed" in str(
        err.value)
    assert (user / "thesis.tex").read_text() == "years of work"


def test_overwrite_replaces_a_run_directory_and_the_cli_exits_2_on_a_foreign_one(tmp_path, th, capsys):
    from hybridtune.cli import main

    run = open_run_dir(th.run_config(tmp_path)).path
    assert (run / RUN_MARKER).is_file()
    (run / "old-checkpoint-file").write_text("x")
    open_run_dir(th.run_config(tmp_path, overwrite=True))
    assert not (run / "old-checkpoint-file").exists() and (run / RUN_MARKER).is_file()

    config = th.tiny_run_yaml(tmp_path, name="cli")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    assert main(["train", str(config), "--out", str(tmp_path / "notes"), "trainer.overwrite=true"]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_resume_on_a_directory_without_a_run_is_refused(tmp_path, th):
    (tmp_path / "empty").mkdir()
    for name in ("typo", "empty"):  # missing; present but holding no run
        with pytest.raises(ConfigError, match="cannot resume") as err:
            open_run_dir(th.run_config(tmp_path, name, resume=True))
        assert err.value.key == "trainer.output_dir"
    assert not (tmp_path / "typo").exists() and not any((tmp_path / "empty").iterdir())


def test_resume_refuses_every_changed_trajectory_setting_and_lists_them(tmp_path, th):
    _fit(th, tmp_path, steps=2, save_every=2, scheduler="constant")
    cfg = th.run_config(tmp_path, steps=4, resume=True, scheduler="cosine", max_grad_norm=0.5, warmup_steps=1)
    with pytest.raises(ConfigError) as err:
        open_run_dir(cfg)
    message = str(err.value)
    for key in ("trainer.scheduler", "trainer.max_grad_norm", "trainer.warmup_steps"):
        assert key in message, message
    assert "3 setting(s)" in message


def test_an_unwritable_output_directory_is_a_clear_error(tmp_path, th):
    (tmp_path / "a_file").write_text("")
    cfg = th.run_config(tmp_path / "a_file", "run")  # a directory below a regular file cannot be created
    with pytest.raises(FileError) as err:
        open_run_dir(cfg)
    assert str(tmp_path / "a_file" / "run") in str(err.value) and "cannot write" in str(err.value)


# -- finished runs and reports -------------------------------------------------------------------------------------
def test_resuming_a_finished_run_is_a_no_op_that_says_so(tmp_path, th, capsys):
    _, first = _fit(th, tmp_path, steps=4, save_every=2, eval_every=2)
    report = (tmp_path / "run" / "report.json").read_text()
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    _, again = _fit(th, tmp_path, steps=4, save_every=2, eval_every=2, resume=True)
    assert "already finished at step 4" in capsys.readouterr().out
    assert (tmp_path / "run" / "report.json").read_text() == report
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics
    assert again["eval_ppl_after"] == first["eval_ppl_after"] is not None


class _DieBeforeReport(TrainerCallback):
    def on_train_end(self, trainer, result):
        trainer.tracker.log({"energy/late_row": 1.0}, trainer.state.step)  # logged after the last checkpoint
        raise RuntimeError("killed between the last checkpoint and the report")


def test_a_kill_between_the_last_checkpoint_and_the_report_is_completed_on_resume(tmp_path, th):
    _, full = _fit(th, tmp_path, "full", steps=4, save_every=2, eval_every=2)
    with pytest.raises(RuntimeError, match="killed"):
        _fit(th, tmp_path, "part", steps=4, save_every=2, eval_every=2, callbacks=[_DieBeforeReport()])
    assert not (tmp_path / "part" / "report.json").exists()
    _, resumed = _fit(th, tmp_path, "part", steps=4, save_every=2, eval_every=2, resume=True)
    for key in ("steps", "tokens_trained", "train_loss", "eval_ppl_before", "eval_ppl_after", "best_eval_ppl"):
        assert resumed[key] == full[key] and resumed[key] is not None, key
    assert resumed["eval"] == full["eval"]
    rows = read_metrics(tmp_path / "part" / "metrics.jsonl")
    assert not any("energy/late_row" in r for r in rows)  # the row logged after the checkpoint was dropped
    assert [r["step"] for r in rows] == [r["step"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl")]


def test_a_report_is_never_replaced_by_a_worse_one(tmp_path):
    write_report(tmp_path, {"steps": 4, "ppl_spiking_after": 30.0, "train_loss": 2.0}, [])
    with pytest.warns(UserWarning, match="kept"):
        write_report(tmp_path, {"steps": 4, "ppl_spiking_after": None, "train_loss": 2.0}, [])
    with pytest.warns(UserWarning, match="kept"):
        write_report(tmp_path, {"steps": 2, "ppl_spiking_after": 31.0, "train_loss": 2.0}, [])
    assert load_report(tmp_path)["ppl_spiking_after"] == 30.0
    write_report(tmp_path, {"steps": 6, "ppl_spiking_after": 29.0, "train_loss": 1.9}, [])  # a longer run
    assert load_report(tmp_path)["steps"] == 6


# -- damaged files -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncate_adapter", "truncate_learners", "truncate_rng", "empty_state"])
def test_resume_falls_back_to_the_newest_checkpoint_that_verifies(tmp_path, th, damage):
    _fit(th, tmp_path, "full", steps=6, save_every=2, eval_every=3)
    _fit(th, tmp_path, "part", steps=6, save_every=2, eval_every=3, callbacks=[_StopAt(4)])
    newest = list_checkpoints(tmp_path / "part")[-1]
    assert newest.name == "step-00000004"
    target = {"truncate_adapter": "adapter.safetensors", "truncate_learners": "learners.pt",
              "truncate_rng": "rng_0.pt", "empty_state": "trainer_state.json"}[damage]
    data = (newest / target).read_bytes()
    (newest / target).write_bytes(b"" if damage == "empty_state" else data[: len(data) // 2])
    with pytest.warns(UserWarning, match="skipping damaged checkpoint step-00000004"):
        _fit(th, tmp_path, "part", steps=6, save_every=2, eval_every=3, resume=True)
    full, part = _adapter(tmp_path / "full"), _adapter(tmp_path / "part")
    assert full.keys() == part.keys()
    for name in full:
        assert torch.equal(full[name], part[name]), name  # resumed from step 2: still bit-identical


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, step, logs):
        trainer.should_stop = step >= self.step


@pytest.mark.parametrize("target", ["adapter.safetensors", "learners.pt", "rng_0.pt", "trainer_state.json"])
def test_loading_a_damaged_checkpoint_names_the_file(tmp_path, target):
    path = save_checkpoint(tmp_path, 1, adapter={"w": torch.ones(8)}, learners=[{"m": torch.ones(4)}], state={})
    (path / target).write_bytes((path / target).read_bytes()[:20])
    with pytest.raises(FileError) as err:
        load_checkpoint(path)
    assert str(path / target) in str(err.value) and "cannot read it" in str(err.value)
    with pytest.warns(UserWarning, match="skipping damaged checkpoint"):
        assert newest_verified_checkpoint(tmp_path) is None


def test_when_no_checkpoint_verifies_resume_stops_with_the_remedy(tmp_path, th):
    _fit(th, tmp_path, steps=2, save_every=2)
    for ck in list_checkpoints(tmp_path / "run"):
        (ck / "adapter.safetensors").write_bytes(b"x")
    with pytest.warns(UserWarning), pytest.raises(FileError, match="no checkpoint of this run verifies"):
        open_run_dir(th.run_config(tmp_path, steps=2, save_every=2, resume=True))


# -- durable writes ----------------------------------------------------------------------------------------------------
def test_checkpoints_and_reports_are_fsynced_before_their_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b))[1])
    final = save_checkpoint(tmp_path, 3, adapter={"w": torch.ones(2)}, learners=[], state={})
    tmp_dir = str(tmp_path / "checkpoints" / ".tmp-step-00000003")
    rename = events.index(("replace", tmp_dir))
    synced = {path for kind, path in events[:rename] if kind == "fsync"}
    for name in ("adapter.safetensors", "learners.pt", "rng_0.pt", "trainer_state.json"):
        assert any(name in p and ".tmp-step-00000003" in p for p in synced), name
    assert final.is_dir()
    events.clear()
    write_report(tmp_path, {"steps": 1}, [{"step": 1, "train/loss": 1.0}])
    renamed = [i for i, (kind, path) in enumerate(events) if kind == "replace"]
    assert renamed and all(events[i - 1][0] == "fsync" for i in renamed)


def test_a_full_disk_during_a_checkpoint_is_a_clear_error_and_loses_nothing(tmp_path, th, monkeypatch):
    trainer, _ = _fit(th, tmp_path, steps=2, save_every=2)
    before = _adapter(tmp_path / "run")
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    trainer.state.step = 4
    with pytest.raises(FileError) as err:
        trainer.save()
    monkeypatch.setattr(torch, "save", real_save)
    message = str(err.value)
    assert "no space left on the device" in message and ".tmp-step-00000004" in message and "--resume" in message
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000002"]
    assert all(torch.equal(before[k], v) for k, v in _adapter(tmp_path / "run").items())


def test_torch_s_own_full_disk_error_is_reported_as_a_full_disk(tmp_path, monkeypatch):
    import shutil

    from hybridtune import files

    def torn(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 51840 vs 51728")

    monkeypatch.setattr(torch, "save", torn)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(free=0))
    with pytest.raises(FileError, match="no space left on the device"):
        save_checkpoint(tmp_path, 1, adapter={"w": torch.ones(2)}, learners=[], state={})
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(free=10 << 30))
    with pytest.raises(RuntimeError, match="unexpected pos"):  # plenty of space: not ours to reinterpret
        save_checkpoint(tmp_path, 1, adapter={"w": torch.ones(2)}, learners=[], state={})
    assert files._NEARLY_FULL > 0


def test_a_full_disk_exits_2_from_the_cli(tmp_path, th, capsys, monkeypatch):
    from hybridtune import files
    from hybridtune.cli import main

    config = th.tiny_run_yaml(tmp_path, trainer={"steps": 2, "eval_every": 2, "save_every": 2})
    real = files.atomic_write

    def no_space(path, writer, remedy=""):
        if str(path).endswith("trainer_state.json"):
            raise files.write_error(path, OSError(errno.ENOSPC, "No space left on device"), remedy)
        return real(path, writer, remedy)

    monkeypatch.setattr(files, "atomic_write", no_space)
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "file error" in err and "no space left on the device" in err and "trainer_state.json" in err


def test_metrics_rewrite_on_resume_is_atomic(tmp_path, monkeypatch):
    from hybridtune.tracking import JsonlTracker

    path = tmp_path / "metrics.jsonl"
    t = JsonlTracker(path)
    for step in range(1, 5):
        t.log({"train/loss": float(step)}, step)
    t.finish()
    before = path.read_text()

    def killed(a, b):
        raise KeyboardInterrupt  # a kill in the middle of the rewrite

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        JsonlTracker(path, resume_step=2)
    assert path.read_text() == before  # the history survives
    assert not [p for p in tmp_path.iterdir() if p.name != "metrics.jsonl"]  # and no temporary file is left


def test_pipeline_json_that_is_damaged_is_measured_again(tmp_path, th, capsys):
    from hybridtune.cli import main

    config = th.tiny_run_yaml(tmp_path, trainer={"steps": 1, "eval_every": 1, "save_every": 1})
    assert main(["train", str(config)]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    (tmp_path / "run" / "pipeline.json").write_text("")
    assert main(["train", str(config), "--resume", "trainer.steps=2"]) == 0
    out = capsys.readouterr().out
    assert "pipeline.json" in out and "measuring again" in out
    resumed = json.loads((tmp_path / "run" / "report.json").read_text())
    assert resumed["steps"] == 2 and resumed["ppl_ann"] == pytest.approx(report["ppl_ann"])
    assert json.loads((tmp_path / "run" / "pipeline.json").read_text())["ppl_ann"] == resumed["ppl_ann"]


def test_train_resume_of_a_finished_run_changes_nothing(tmp_path, th, capsys):
    from hybridtune.cli import main

    config = th.tiny_run_yaml(tmp_path, trainer={"steps": 1, "eval_every": 1, "save_every": 1})
    assert main(["train", str(config)]) == 0
    run = tmp_path / "run"
    before = {name: (run / name).read_bytes() for name in ("report.json", "metrics.jsonl")}
    capsys.readouterr()
    for _ in range(2):  # a job script that always passes --resume
        assert main(["train", str(config), "--resume"]) == 0
        assert "already finished at step 1" in capsys.readouterr().out
    assert {name: (run / name).read_bytes() for name in before} == before
    assert json.loads(before["report.json"])["ppl_spiking_after"] is not None
