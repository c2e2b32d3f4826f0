"""Continual-learning metrics on hand-made perplexity matrices, the matrix record / table / heatmap, and the
``continual`` config section (loading, overrides, errors)."""

from __future__ import annotations

import json
import math

import pytest

from hybridtune.config_schema import ConfigError
from hybridtune.continual.config import ContinualSection, load_continual_config
from hybridtune.continual.metrics import (
    average_final,
    average_final_nll,
    backward_transfer,
    forgetting,
    forgetting_per_domain,
    forward_transfer,
    summarize,
)
from hybridtune.continual.report import matrix_record, plot_heatmap, table_rows, write_matrix

# Rows: after stage 0, 1, 2. Columns: domains 0, 1, 2. Lower is better.
P = [[10.0, 50.0, 40.0],
     [12.0, 20.0, 35.0],
     [15.0, 18.0, 30.0]]
B = [25.0, 60.0, 45.0]


def test_average_final_perplexity_and_loss():
    assert average_final(P) == pytest.approx((15 + 18 + 30) / 3)
    assert average_final_nll(P) == pytest.approx((math.log(15) + math.log(18) + math.log(30)) / 3)


def test_backward_transfer_is_positive_for_forgetting():
    # domain 0: 15 - 10 = +5 (forgot), domain 1: 18 - 20 = -2 (improved); mean over the T-1 = 2 earlier domains
    assert backward_transfer(P) == pytest.approx((5 - 2) / 2)


def test_forgetting_uses_the_best_value_since_the_domain_was_learned():
    # domain 0: min(P[0][0], P[1][0]) = 10 -> 15 - 10 = 5; domain 1: min(P[1][1]) = 20 -> 18 - 20 = -2
    assert forgetting_per_domain(P) == pytest.approx([5.0, -2.0])
    assert forgetting(P) == pytest.approx(1.5)
    # an intermediate improvement makes forgetting exceed BWT: P[1][0] = 8 < P[0][0]
    Q = [[10.0, 50.0, 40.0], [8.0, 20.0, 35.0], [15.0, 18.0, 30.0]]
    assert forgetting_per_domain(Q)[0] == pytest.approx(15 - 8)
    assert backward_transfer(Q) == pytest.approx((5 - 2) / 2)
    assert forgetting(Q) > backward_transfer(Q)


def test_forward_transfer_is_negative_when_earlier_stages_help():
    # domain 1 before its stage: 50 vs untrained 60 (-10); domain 2: 35 vs 45 (-10)
    assert forward_transfer(P, B) == pytest.approx(-10.0)
    assert forward_transfer(P, [25.0, 40.0, 30.0]) == pytest.approx((10 + 5) / 2)


def test_single_domain_and_bad_shapes():
    assert backward_transfer([[3.0]]) is None and forgetting([[3.0]]) is None
    assert forward_transfer([[3.0]], [4.0]) is None
    with pytest.raises(ValueError, match="row 1 has 1 entries"):
        backward_transfer([[1.0, 2.0], [3.0]])
    with pytest.raises(ValueError, match="baseline has 2 entries"):
        forward_transfer(P, [1.0, 2.0])
    with pytest.raises(ValueError, match="empty"):
        average_final([])


def test_summarize_and_record_of_a_partial_run(tmp_path):
    full = summarize(P, B)
    assert full["final_ppl"] == [15.0, 18.0, 30.0] and full["diagonal_ppl"] == [10.0, 20.0, 30.0]
    partial = matrix_record(["a", "b", "c"], B, P[:2])
    assert not partial["complete"] and partial["row_labels"] == ["before", "after 0: a", "after 1: b"]
    # metrics of the stages done: the top-left 2x2 block
    assert partial["metrics"]["bwt"] == pytest.approx(12.0 - 10.0)
    assert partial["metrics"]["avg_final_ppl"] == pytest.approx((12 + 20) / 2)
    assert partial["metrics"]["avg_final_ppl_all_domains"] == pytest.approx((12 + 20 + 35) / 3)
    record = matrix_record(["a", "b", "c"], B, P)
    assert record["complete"] and record["metrics"]["fwt"] == pytest.approx(-10.0)
    record["matrix"][0][0] = float("inf")
    write_matrix(tmp_path / "m.json", record)
    back = json.loads((tmp_path / "m.json").read_text())
    assert back["matrix"][0][0] is None and back["baseline"] == B and "bwt" in back["definitions"]


def test_table_rows_and_heatmap(tmp_path):
    record = matrix_record(["a", "b", "c"], B, P)
    rows = table_rows(record)
    assert rows[0] == ["before", *B] and rows[3] == ["after 2: c", *P[2]]
    path = plot_heatmap(record, tmp_path / "heatmap.png")
    assert path.stat().st_size > 1000


def test_continual_section_from_yaml_and_overrides(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("trainer: {steps: 7}\ncontinual:\n  domains: [python-docs, python-code]\n"
                        "  replay: {share: 0.25}\n")
    cfg, cont = load_continual_config(cfg_file, ["--continual.replay.buffer_blocks=8", "trainer.batch_size=8",
                                                 "continual.domains.1=unicode-names"])
    assert cfg.trainer.steps == 7 and cfg.trainer.batch_size == 8
    assert cont.domains == ["python-docs", "unicode-names"]
    assert cont.replay.share == 0.25 and cont.replay.buffer_blocks == 8
    assert cont.to_dict()["regularizer"]["name"] == "none"


@pytest.mark.parametrize("overrides, key", [
    (["continual.replay.shar=0.3"], "continual.replay.shar"),
    (["continual.adapter=per_tsk"], "continual.adapter"),
    (["continual.replay.share=1.5"], "continual.replay.share"),
    (["continual.adapter=per_task", "continual.regularizer.name=ewc"], "continual.regularizer.name"),
    (["continual.domains=[]"], "continual.domains"),
    (["trainer.stepz=3"], "trainer.stepz"),
])
def test_continual_config_errors_name_the_key_and_the_file(tmp_path, overrides, key):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("continual: {adapter: shared}\n")
    with pytest.raises(ConfigError) as err:
        load_continual_config(cfg_file, overrides)
    assert err.value.key == key and err.value.source == str(cfg_file)


def test_example_configs_are_valid():
    from pathlib import Path

    files = sorted((Path(__file__).parents[2] / "configs" / "continual").glob("*.yaml"))
    seen = set()
    for f in files:
        _cfg, cont = load_continual_config(f)
        assert len(cont.domains) == 3
        seen.add((cont.adapter, cont.replay.share > 0, cont.regularizer.name))
    assert {("shared", False, "none"), ("per_task", False, "none"), ("shared", True, "none"),
            ("shared", False, "ewc")} <= seen
    assert ContinualSection().domains == ["python-docs", "python-code", "unicode-names"]
