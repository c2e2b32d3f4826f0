"""The data position (a pure function of seed and cursor), atomic checkpoints, RNG round trips, run-dir rules."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from hybridtune.config import RunConfig
from hybridtune.config_schema import ConfigError
from hybridtune.trainers.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from hybridtune.trainers.rundir import open_run_dir
from hybridtune.trainers.sampler import BlockSampler, DataTooSmallError, as_tensors


def test_ranks_partition_each_global_micro_batch():
    ranks = [BlockSampler(20, 3, world_size=2, rank=r, seed=1) for r in (0, 1)]
    for cursor in range(7):
        joined = torch.cat([s.indices(cursor) for s in ranks])
        assert torch.equal(joined, ranks[0].global_indices(cursor))
    epoch0 = torch.cat([ranks[0].global_indices(c) for c in range(ranks[0].per_epoch)])
    assert len(set(epoch0.tolist())) == len(epoch0) == 18  # no block twice within an epoch; 2 dropped
    assert not torch.equal(ranks[0].permutation(0), ranks[0].permutation(1))


def test_accumulation_split_sees_the_same_blocks():
    small, big = BlockSampler(16, 2, seed=0), BlockSampler(16, 4, seed=0)
    for step in range(9):  # across an epoch boundary too (4 steps per epoch)
        joined = torch.cat([small.indices(2 * step), small.indices(2 * step + 1)])
        assert torch.equal(joined, big.indices(step))


def test_too_little_data_is_a_clear_error():
    with pytest.raises(DataTooSmallError, match="trainer.batch_size"):
        BlockSampler(3, 2, world_size=2)


def test_as_tensors_fills_mask_and_labels():
    t = as_tensors({"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.tensor([[1, 1, 0]])})
    assert t["labels"].tolist() == [[5, 6, -100]]
    with pytest.raises(ValueError, match=r"\[N, L\]"):
        as_tensors({"input_ids": torch.arange(3)})


def test_rng_state_round_trip():
    state = rng_state()
    a = (random.random(), float(np.random.rand()), torch.rand(2).tolist())
    set_rng_state(state)
    assert (random.random(), float(np.random.rand()), torch.rand(2).tolist()) == a


def test_checkpoint_is_atomic_and_pruned(tmp_path):
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, adapter={"w": torch.full((2,), float(step))}, learners=[{"n": step}],
                        state={"cursor": step}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000006"]
    # a save killed before its state file: a .tmp directory, ignored by resume
    half = tmp_path / "checkpoints" / ".tmp-step-00000008"
    half.mkdir()
    (half / "adapter.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path).name == "step-00000006"
    ck = load_checkpoint(latest_checkpoint(tmp_path))
    assert ck.adapter["w"].tolist() == [6.0, 6.0] and ck.learners == [{"n": 6}] and ck.state["step"] == 6
    save_checkpoint(tmp_path, 8, adapter={"w": torch.zeros(2)}, learners=[], state={}, keep_last=2)
    assert not half.exists() and latest_checkpoint(tmp_path).name == "step-00000008"


def test_run_dir_rules(tmp_path):
    cfg = RunConfig()
    cfg.trainer.output_dir = str(tmp_path / "out")
    run = open_run_dir(cfg)
    assert (run.path / "config.yaml").is_file() and run.checkpoint is None
    with pytest.raises(ConfigError, match="already exists"):
        open_run_dir(cfg)
    cfg.trainer.resume = True
    assert open_run_dir(cfg).checkpoint is None  # nothing saved yet: starts from step 0
    cfg.adapter.r = 4
    with pytest.raises(ConfigError) as err:
        open_run_dir(cfg)
    assert err.value.key == "adapter.r" and "saved 8, now 4" in str(err.value)
