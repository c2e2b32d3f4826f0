"""Sweep summary: metric lookup, best trial, table / CSV / best.yaml / PNG, rebuilt from the trial records."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from hybridtune.config import load_config
from hybridtune.sweeps.summary import best_trial, format_table, summarize, table
from hybridtune.sweeps.trial import as_number, lookup, read_metric


def write_trial(out: Path, index: int, params: dict, status: str = "ok", value: float | None = None) -> None:
    d = out / "trials" / f"s-{index:03d}"
    d.mkdir(parents=True)
    (d / "trial.json").write_text(json.dumps({
        "run_id": f"s-{index:03d}", "index": index, "params": params, "status": status, "value": value,
        "metric": "eval_ppl_after", "seconds": 1.5, "output_dir": str(d / "run"), "stderr_tail": ""}))


def make_dir(tmp_path: Path, goal: str = "minimize", base: str | None = None) -> Path:
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({
        "sweep_id": "s", "mode": "local", "method": "grid", "metric": "eval_ppl_after", "goal": goal,
        "names": ["adapter.r", "adapter.neuron"], "base_config": base}))
    write_trial(out, 0, {"adapter.r": 4, "adapter.neuron": "mt"}, value=30.0)
    write_trial(out, 1, {"adapter.r": 8, "adapter.neuron": "lif"}, value=20.0)
    write_trial(out, 2, {"adapter.r": 16, "adapter.neuron": "mt"}, status="failed")
    write_trial(out, 3, {"adapter.r": 16, "adapter.neuron": "lif"}, value=25.0)
    return out


def test_lookup_flat_nested_and_mixed_keys():
    data = {"eval/ppl": 1.0, "eval": {"loss": 2.0, "sub": {"x": 3.0}}, "a.b": {"c": 4.0}}
    assert lookup(data, "eval/ppl") == 1.0
    assert lookup(data, "eval/loss") == 2.0 and lookup(data, "eval.loss") == 2.0
    assert lookup(data, "eval/sub/x") == 3.0 and lookup(data, "a.b.c") == 4.0
    assert lookup(data, "eval/nope") is None and lookup([1], "x") is None


def test_read_metric_searches_report_then_metrics_log_then_wandb_summary(tmp_path):
    assert read_metric(tmp_path, "eval/ppl") == (None, None)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "eval/ppl": 9.0}\n{"step": 2, "train/loss": 1}\n'
                                            '{"step": 3, "eval/ppl": 7.0}\n{"step": 4, "eval/p')
    assert read_metric(tmp_path, "eval/ppl") == (7.0, str(tmp_path / "metrics.jsonl"))
    (tmp_path / "report.json").write_text(json.dumps({"eval_ppl_after": 6.5, "eval_ppl_before": None}))
    assert read_metric(tmp_path, "eval_ppl_after") == (6.5, str(tmp_path / "report.json"))
    nested = tmp_path / "wandb" / "run-x" / "files"
    nested.mkdir(parents=True)
    (nested / "wandb-summary.json").write_text(json.dumps({"custom": 3}))
    assert read_metric(tmp_path, "custom")[0] == 3
    assert [as_number(v) for v in (1, 2.5, float("nan"), float("inf"), True, "3")] == [1.0, 2.5, None, None, None,
                                                                                       None]


def test_best_trial_respects_the_goal():
    records = [{"status": "ok", "value": 3.0}, {"status": "ok", "value": 5.0}, {"status": "failed", "value": None},
               {"status": "no_metric", "value": None}]
    assert best_trial(records, "minimize")["value"] == 3.0
    assert best_trial(records, "maximize")["value"] == 5.0
    assert best_trial(records[2:], "minimize") is None


def test_summary_rebuilds_table_csv_best_config_and_png(tmp_path, capsys):
    base = tmp_path / "base.yaml"
    base.write_text("trainer:\n  steps: 7\nadapter:\n  alpha: 4.0\n")
    out = make_dir(tmp_path, base=str(base))
    summary = summarize(out)
    printed = capsys.readouterr().out
    assert "eval_ppl_after" in printed and "best: s-001" in printed and "4 trials (1 failed, 3 ok)" in printed
    assert summary["best"]["run_id"] == "s-001" and summary["counts"] == {"ok": 3, "failed": 1}
    cfg = load_config(out / "best.yaml")
    assert (cfg.adapter.r, cfg.adapter.neuron, cfg.trainer.steps, cfg.adapter.alpha) == (8, "lif", 7, 4.0)
    assert (out / "best.yaml").read_text().startswith("# best trial s-001")
    lines = (out / "summary.csv").read_text().splitlines()
    assert lines[0] == "#,run,status,eval_ppl_after,adapter.r,adapter.neuron,seconds" and len(lines) == 5
    png = (out / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    again = json.loads((out / "summary.json").read_text())
    assert again["best"]["run_id"] == "s-001" and len(again["trials"]) == 4


def test_summary_for_maximize_and_without_a_sweep_record(tmp_path):
    out = make_dir(tmp_path, goal="maximize")
    assert summarize(out, plot_png=False, echo=False)["best"]["run_id"] == "s-000"
    (out / "sweep.json").unlink()
    summary = summarize(out, plot_png=False, echo=False)  # metric and names recovered from the trial records
    assert summary["metric"] == "eval_ppl_after" and summary["names"] == ["adapter.r", "adapter.neuron"]
    assert summary["best"]["run_id"] == "s-001"


def test_missing_matplotlib_gives_an_actionable_note_and_the_rest_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = make_dir(tmp_path)
    summary = summarize(out, echo=False)
    assert "plot" not in summary["files"] and not (out / "sweep.png").exists()
    assert any("pip install matplotlib" in n and "--summary" in n for n in summary["notes"])
    assert (out / "best.yaml").is_file() and (out / "summary.csv").is_file()


def test_an_empty_sweep_directory_summarizes_to_nothing(tmp_path):
    summary = summarize(tmp_path, echo=False)
    assert summary["trials"] == [] and summary["best"] is None
    with pytest.raises(Exception, match="not a sweep output directory"):
        summarize(tmp_path / "missing")


def test_table_formats_values():
    header, rows = table([{"index": 0, "run_id": "a", "status": "ok", "value": 1 / 3,
                           "params": {"c": ["x", "y"], "b": True}, "seconds": 2.0}], ["c", "b"], "m")
    assert rows == [["0", "a", "ok", "0.333333", '["x", "y"]', "True", "2"]]
    text = format_table(header, rows)
    assert text.splitlines()[0].split() == ["#", "run", "status", "m", "c", "b", "seconds"]
