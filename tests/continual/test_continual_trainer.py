"""ContinualTrainer on tiny models: two- and three-domain sequences, per-task adapters that leave earlier domains
bit-identical, replay shares, resume in the middle of the sequence, tracking, and the ``hybridtune continual`` CLI.

Domains are counting sequences with different strides (``next = previous + stride mod 40``), so what one stage
learns is measurably wrong for another and each block's domain can be read off its tokens.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from hybridtune.continual.config import ContinualSection, RegularizerSection, ReplaySection
from hybridtune.continual.data import Domain
from hybridtune.continual.metrics import backward_transfer, forgetting
from hybridtune.continual.strategies import PerTaskAdapters, SharedAdapter
from hybridtune.continual.trainer import ContinualTrainer
from hybridtune.trainers import TrainerCallback

STRIDES = (1, 39, 3)  # +1, -1, +3 (mod 40)


def _blocks(stride: int, n: int, seed: int, length: int = 20) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    start = torch.randint(0, 40, (n, 1), generator=gen)
    ids = (start + stride * torch.arange(length)) % 40 + 3
    doc_start = torch.zeros_like(ids, dtype=torch.bool)
    doc_start[:, 0] = True
    return {"input_ids": ids, "doc_start": doc_start}


def domains(count: int = 3, n: int = 24) -> list[Domain]:
    return [Domain.from_blocks(f"stride{s}", _blocks(s, n, i), _blocks(s, 4, 100 + i)) for i, s in
            enumerate(STRIDES[:count])]


def stride_of(block: torch.Tensor) -> int:
    return int((block[1] - block[0]) % 40)


def config(th, tmp_path, name: str, **trainer):
    cfg = th.run_config(tmp_path, name, **{"steps": 3, "batch_size": 4, "save_every": 3, "eval_every": 3, **trainer})
    cfg.learners[0].lr = 3e-2
    return cfg


def section(count: int = 3, **kw) -> ContinualSection:
    return ContinualSection(domains=[f"stride{s}" for s in STRIDES[:count]], stage_eval=False, **kw)


class RecordingTracker:
    """Stands in for the W&B backend: remembers every call."""

    name, location = "wandb", None

    def __init__(self):
        self.rows, self.tables, self.images, self.summaries = [], [], [], []

    def log(self, metrics, step):
        self.rows.append((step, dict(metrics)))

    def summary(self, values):
        self.summaries.append(dict(values))

    def log_image(self, key, path, step=None):
        self.images.append((key, str(path), step))

    def log_table(self, key, columns, rows, step=None):
        self.tables.append((key, list(columns), [list(r) for r in rows], step))

    def finish(self):
        pass


def test_two_domain_shared_sequence_reports_matrix_files_and_tracking(tmp_path, th, monkeypatch):
    import hybridtune.continual.trainer as continual_module
    from hybridtune.tracking import JsonlTracker, MultiTracker

    fake = RecordingTracker()
    monkeypatch.setattr(continual_module, "make_tracker", lambda run_dir, **kw: MultiTracker(
        [JsonlTracker(run_dir / "metrics.jsonl"), fake]))
    cfg = config(th, tmp_path, "two")
    report = ContinualTrainer(th.lora_model(), cfg, domains(2), section=section(2)).fit()
    P, b = report["matrix"], report["baseline"]
    assert len(P) == 2 and all(len(r) == 2 for r in P) and len(b) == 2
    assert P[0][0] < b[0] and P[1][1] < b[1]  # each stage learned its domain
    assert report["metrics"]["bwt"] == pytest.approx(backward_transfer(P))
    assert report["metrics"]["forgetting"] == pytest.approx(forgetting(P))
    run = tmp_path / "two"
    for name in ("matrix.json", "report.json", "heatmap.png", "continual_state.json", "continual.yaml",
                 "adapters/stage-00.safetensors", "adapters/stage-01.safetensors", "adapter/adapter_config.json",
                 "stages/00-stride1/report.json", "stages/01-stride39/metrics.jsonl"):
        assert (run / name).exists(), name
    assert json.loads((run / "matrix.json").read_text())["matrix"] == P
    # tracking: stage rows reach the backend at the global step, the matrix as a table, the heatmap as an image
    train_steps = sorted(step for step, row in fake.rows if "train/loss" in row)
    assert train_steps == [1, 2, 3, 4, 5, 6]
    assert {row["stage/index"] for _, row in fake.rows if "train/loss" in row} == {0, 1}
    cl_rows = [row for _, row in fake.rows if "cl/task" in row]
    assert [r["cl/task"] for r in cl_rows] == [-1, 0, 1] and cl_rows[-1]["cl/ppl/stride1"] == P[1][0]
    (key, columns, rows, _step), = fake.tables
    assert key == "cl/ppl_matrix" and columns == ["after", "stride1", "stride39"]
    assert rows == [["before", *b], ["after 0: stride1", *P[0]], ["after 1: stride39", *P[1]]]
    assert any(k == "cl/heatmap" for k, _, _ in fake.images)
    assert fake.summaries[-1]["cl/bwt"] == pytest.approx(report["metrics"]["bwt"])


def _snapshot(run, stage):
    return load_file(str(run / "adapters" / f"stage-{stage:02d}.safetensors"))


def test_per_task_adapters_leave_earlier_domains_bit_identical(tmp_path, th):
    cfg = config(th, tmp_path, "per_task")
    trainer = ContinualTrainer(th.lora_model(spiking=True, threshold=0.02), cfg, domains(3),
                               section=section(3, adapter="per_task"))
    report = trainer.fit()
    P = report["matrix"]
    for j in range(3):
        for i in range(j, 3):
            assert P[i][j] == P[j][j], (i, j)  # exactly: the routed adapter did not change
    assert report["metrics"]["bwt"] == 0.0 and report["metrics"]["forgetting"] == 0.0
    assert report["routing"] == {"stride1": "task0", "stride39": "task1", "stride3": "task2"}
    run = tmp_path / "per_task"
    snaps = [_snapshot(run, k) for k in range(3)]
    assert not any(".default." in n for n in snaps[2])  # the template adapter was replaced by task0
    for k in range(3):
        mine = [n for n in snaps[k] if f".task{k}." in n]
        assert any("lora_B" in n and snaps[k][n].abs().sum() > 0 for n in mine)  # trained in stage k (B starts at 0)
        for later in range(k + 1, 3):
            for n in mine:
                assert torch.equal(snaps[later][n], snaps[k][n]), n
    # the negative control: a shared adapter on the same sequence does change what domain 0 scores
    shared = ContinualTrainer(th.lora_model(spiking=True, threshold=0.02), config(th, tmp_path, "shared"),
                              domains(3), section=section(3)).fit()
    assert shared["matrix"][0][0] == P[0][0]  # same start, same first stage
    assert shared["matrix"][1][0] != shared["matrix"][0][0]


class _ReplayProbe(TrainerCallback):
    """At the start of every stage, reads the blocks of the first micro-batches (a pure function of the cursor)."""

    def __init__(self):
        self.seen = {}

    def on_train_begin(self, trainer):
        self.seen[trainer.stage] = [(trainer.micro_batch(c)["input_ids"], trainer.replay_sources(c))
                                    for c in range(16)]


def test_replay_draws_from_earlier_domains_in_the_configured_share(tmp_path, th):
    probe = _ReplayProbe()
    cfg = config(th, tmp_path, "replay", steps=1, save_every=1)
    cont = section(3, replay=ReplaySection(share=0.5, buffer_blocks=6))
    trainer = ContinualTrainer(th.lora_model(), cfg, domains(3), section=cont, callbacks=[probe])
    trainer.fit()
    assert all(len(src) == 0 for _, src in probe.seen[0])  # nothing to replay in stage 0
    assert all(stride_of(b) == STRIDES[0] for ids, _ in probe.seen[0] for b in ids)
    for stage in (1, 2):
        replayed_domains = set()
        for ids, src in probe.seen[stage]:
            strides = [stride_of(b) for b in ids]
            assert len(ids) == 4 and strides[:2] == [STRIDES[stage]] * 2  # 4 * 0.5 = 2 current blocks ...
            assert [STRIDES[d] for d in src.tolist()] == strides[2:]  # ... and 2 replayed, labelled correctly
            assert all(d < stage for d in src.tolist())
            replayed_domains |= set(src.tolist())
        assert replayed_domains == set(range(stage))
    buffer = trainer.strategies[1].buffer
    assert len(buffer) == 6 and sorted(buffer.tensors()[1].tolist()) == [0, 0, 1, 1, 2, 2]


class _Crash(TrainerCallback):
    """Kills the run (an exception) right after stage ``stage`` saved the checkpoint of step ``step``."""

    def __init__(self, stage: int, step: int):
        self.stage, self.step = stage, step

    def on_save(self, trainer, step, path):
        if trainer.stage == self.stage and step == self.step:
            raise KeyboardInterrupt("simulated kill")


def test_resume_mid_sequence_reproduces_the_uninterrupted_matrix(tmp_path, th):
    def run(name, callbacks=(), resume=False):
        cfg = config(th, tmp_path, name, steps=4, save_every=2, resume=resume)
        cfg.learners[0].options = {"optimizer": "AdamW"}
        cont = section(3, replay=ReplaySection(share=0.25, buffer_blocks=8),
                       regularizer=RegularizerSection(name="ewc", strength=50.0, fisher_blocks=4))
        # a different initialisation on resume: everything must come from the run directory
        model = th.lora_model(spiking=True, threshold=0.02, seed=7 if resume else 0)
        return ContinualTrainer(model, cfg, domains(3), section=cont, callbacks=list(callbacks)).fit()

    full = run("full")
    with pytest.raises(KeyboardInterrupt):
        run("part", callbacks=[_Crash(stage=1, step=2)])
    state = json.loads((tmp_path / "part" / "continual_state.json").read_text())
    assert state["completed"] == 1
    resumed = run("part", resume=True)
    assert resumed["baseline"] == full["baseline"]
    assert resumed["matrix"] == full["matrix"]
    for stage in ("00-stride1", "01-stride39", "02-stride3"):
        def losses(root, stage=stage):
            rows = (root / "stages" / stage / "metrics.jsonl").read_text().splitlines()
            return [json.loads(r).get("train/loss") for r in rows if "train/loss" in r]
        assert losses(tmp_path / "part") == losses(tmp_path / "full")
    penalties = [json.loads(r).get("learner/surrogate/ewc_penalty") for r in
                 (tmp_path / "full" / "stages" / "01-stride39" / "metrics.jsonl").read_text().splitlines()]
    assert any(p is not None and p > 0 for p in penalties)  # EWC was active from stage 1 on


def test_strategy_objects_and_bad_combinations(th):
    from hybridtune.config_schema import ConfigError
    from hybridtune.continual.strategies import EWC, Replay

    doms, cfg = domains(2), th.run_config(__import__("pathlib").Path("/nonexistent"))
    with pytest.raises(ConfigError, match="per_task"):
        ContinualTrainer(th.lora_model(), cfg, doms, strategies=[PerTaskAdapters(), Replay(0.5)])
    with pytest.raises(ConfigError, match="per_task"):
        ContinualTrainer(th.lora_model(), cfg, doms, strategies=[PerTaskAdapters(), EWC()])
    with pytest.raises(ConfigError) as err:
        ContinualTrainer(th.lora_model(), cfg, doms, strategies=[Replay(0.1)])
    assert err.value.key == "continual.replay.share"
    with pytest.raises(ValueError, match="exactly one adapter strategy"):
        ContinualTrainer(th.lora_model(), cfg, doms, strategies=[SharedAdapter(), PerTaskAdapters()])
    trainer = ContinualTrainer(th.lora_model(), cfg, doms, strategies=[Replay(0.5)])
    assert isinstance(trainer.strategies[0], SharedAdapter)  # added when none is given


def test_cli_continual_on_a_tiny_model_and_user_corpora(tmp_path, th, monkeypatch, capsys):
    import yaml

    from hybridtune.cli import main

    monkeypatch.setenv("HYBRIDTUNE_CACHE", str(tmp_path / "cache"))
    prose = tmp_path / "prose.txt"
    prose.write_text("\n\n".join(f"The quick brown fox {i} jumps over the lazy dog." for i in range(60)))
    code = th.corpus_file(tmp_path)
    run_yaml = th.tiny_run_yaml(tmp_path, "cl", trainer={"steps": 2, "save_every": 2, "eval_every": 2})
    data = yaml.safe_load(run_yaml.read_text())
    data["continual"] = {"domains": [str(code), str(prose)], "adapter": "per_task", "stage_eval": False}
    run_yaml.write_text(yaml.safe_dump(data))
    assert main(["continual", str(run_yaml), "--continual.regularizer.name=ewc"]) == 2
    assert "continual.regularizer.name" in capsys.readouterr().err
    with monkeypatch.context() as m:  # validate's checks run first: a misspelt learner fails before any model loads
        m.setattr("hybridtune.continual.pipeline.run_continual", lambda *a, **k: pytest.fail("the run started"))
        assert main(["continual", str(run_yaml), "learners.0.name=surogate"]) == 2
    assert "learners[0].name" in capsys.readouterr().err
    assert main(["continual", str(run_yaml), "continual.heatmap=false", "data.eval_tokens=128"]) == 0
    out = capsys.readouterr().out
    assert "backward transfer" in out and "after 1: prose" in out
    report = json.loads((tmp_path / "cl" / "report.json").read_text())
    assert report["domains"] == ["corpus", "prose"] and report["complete"]
    assert report["metrics"]["bwt"] == 0.0  # per-task adapters
    assert not (tmp_path / "cl" / "heatmap.png").exists()
    assert (tmp_path / "cl" / "adapter" / "hybridtune_config.json").is_file()
    # a finished run resumes to the same report without training again
    assert main(["continual", str(run_yaml), "continual.heatmap=false", "data.eval_tokens=128", "--resume"]) == 0
    assert json.loads((tmp_path / "cl" / "report.json").read_text())["matrix"] == report["matrix"]
