"""Trackers: metrics.jsonl (with resume truncation), W&B offline / disabled without a server, TensorBoard."""

from __future__ import annotations

import json

import pytest

from hybridtune.tracking import JsonlTracker, MultiTracker, NullTracker, flatten, make_tracker, read_metrics
from hybridtune.tracking.wandb_backend import effective_mode


def test_jsonl_log_and_resume_truncation(tmp_path):
    path = tmp_path / "metrics.jsonl"
    t = JsonlTracker(path)
    for step in range(1, 6):
        t.log({"train/loss": 1.0 / step}, step)
    t.finish()
    with path.open("a") as fh:
        fh.write('{"step": 6, "train/lo')  # a write torn by a kill
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5]
    resumed = JsonlTracker(path, resume_step=3)  # the checkpoint being resumed had seen steps <= 3
    resumed.log({"train/loss": 0.0}, 4)
    resumed.finish()
    assert [(r["step"], r["train/loss"]) for r in read_metrics(path)] == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.0)]
    fresh = JsonlTracker(path)
    fresh.finish()
    assert read_metrics(path) == []


def test_multi_tracker_fans_out_and_flatten():
    class Recorder(NullTracker):
        name, location = "rec", "/somewhere"

        def __init__(self):
            self.rows = []

        def log(self, metrics, step):
            self.rows.append((step, dict(metrics)))

    a, b = Recorder(), Recorder()
    multi = MultiTracker([a, b])
    multi.log({"x": 1}, 3)
    assert a.rows == b.rows == [(3, {"x": 1})]
    assert multi.location == "/somewhere" and multi.backend("rec") is a
    assert flatten({"a": {"b": 1, "c": {"d": 2.5}}, "e": [1, 2]}) == {"a/b": 1, "a/c/d": 2.5, "e": [1, 2]}


def test_wandb_offline_writes_run_files(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    t = make_tracker(tmp_path, backend="wandb", mode="offline", project="tests", config={"trainer": {"lr": 1e-3}})
    t.log({"train/loss": 2.0}, 1)
    t.summary({"best": 1.5})
    wandb_tracker = t.backend("wandb")
    run_id = wandb_tracker.run_id
    t.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and t.location == str(runs[0])
    assert (runs[0] / f"run-{run_id}.wandb").stat().st_size > 0
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["train/loss"] == 2.0


def test_wandb_disabled_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    t = make_tracker(tmp_path, backend="wandb", mode="disabled", config={"a": 1})
    t.log({"train/loss": 2.0}, 1)
    t.log_image("curves", tmp_path / "missing.png", 1)
    t.finish()
    assert not (tmp_path / "wandb").exists() and t.location is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_wandb_mode_from_the_environment_wins(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert effective_mode("online") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert effective_mode("disabled") == "offline"
    monkeypatch.delenv("WANDB_MODE")
    assert effective_mode("offline") == "offline"
    with pytest.raises(ValueError, match="not one of"):
        effective_mode("shared")


def test_tensorboard_writes_event_files(tmp_path):
    t = make_tracker(tmp_path, backend="tensorboard", config={"a": 1})
    t.log({"train/loss": 2.0, "note": "text is skipped"}, 1)
    t.log_table("matrix", ["stage", "ppl"], [[0, 12.5]])
    t.finish()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert t.location.endswith("tensorboard")


def test_unknown_backend():
    with pytest.raises(ValueError, match="wandb, tensorboard, none"):
        make_tracker("/tmp", backend="mlflow")
