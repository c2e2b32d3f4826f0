"""The Accelerate loop on tiny models: learning, token-normalised accumulation, the inf/NaN guard, output-dir rules,
checkpoints, in-process resume, early stopping, and a local (no-backward) learner plugged in beside backprop."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from hybridtune.config_schema import ConfigError
from hybridtune.learners import SurrogateLearner
from hybridtune.tracking import read_metrics
from hybridtune.trainers import Trainer, TrainerCallback, latest_checkpoint
from hybridtune.trainers.checkpoint import list_checkpoints


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "train/loss" in r}


def owned(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.owned.items()}


def test_tiny_run_lowers_training_loss(tmp_path, th):
    cfg = th.run_config(tmp_path, steps=25, eval_every=25, save_every=25)
    result = Trainer(th.lora_model(), cfg, train_data=th.pattern_blocks(64), eval_data=th.pattern_blocks(8, seed=1)).fit()
    curve = list(losses(tmp_path / "run").values())
    assert len(curve) == 25
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3 - 0.3
    assert result["eval_ppl_after"] < result["eval_ppl_before"]
    assert result["tokens_trained"] == 25 * 4 * 24
    assert (tmp_path / "run" / "report.json").is_file() and (tmp_path / "run" / "curves.png").is_file()


def _sgd(params: str = "all") -> SurrogateLearner:
    return SurrogateLearner(params=params, lr=0.5, optimizer="SGD", scheduler="constant", max_grad_norm=None)


def test_accumulating_k_micro_batches_equals_one_k_times_larger_batch(tmp_path, th):
    data = th.pattern_blocks(16, pad_every=2)  # uneven token counts: a mean of micro-batch means would differ
    split = Trainer(th.lora_model(), th.run_config(tmp_path, "a", steps=3, batch_size=2, grad_accum=2),
                    learners=[_sgd()], train_data=data)
    whole = Trainer(th.lora_model(), th.run_config(tmp_path, "b", steps=3, batch_size=4, grad_accum=1),
                    learners=[_sgd()], train_data=data)
    split.fit()
    whole.fit()
    a, b = owned(split), owned(whole)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    for step, loss in losses(tmp_path / "a").items():
        assert loss == pytest.approx(losses(tmp_path / "b")[step], rel=1e-6)
    assert any(not torch.equal(a[n], th.lora_model().state_dict()[n]) for n in a if "lora_B" in n)


def test_the_mean_of_micro_batch_means_is_a_different_gradient(th):
    """The negative control of the test above: on the same uneven data, the naive average is measurably off."""
    from hybridtune.perplexity import causal_lm_nll

    model, data = th.lora_model(), th.pattern_blocks(4, pad_every=2)
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(parts):
        model.zero_grad()
        total_targets = sum(int((data["labels"][i, 1:] != -100).sum()) for i in range(4))
        for idx, normaliser in parts(total_targets):
            nll, count = causal_lm_nll(model(input_ids=data["input_ids"][idx]).logits, data["labels"][idx])
            (nll.sum() / (normaliser or count)).backward()
        return torch.cat([p.grad.flatten() for p in params])

    exact = grads(lambda n: [([0, 1], n), ([2, 3], n)])
    naive = grads(lambda n: [([0, 1], 0), ([2, 3], 0)]) / 2
    big = grads(lambda n: [([0, 1, 2, 3], n)])
    torch.testing.assert_close(exact, big)
    assert (naive - big).abs().max() > 1e-4


class _Poison(TrainerCallback):
    """Makes step ``at`` non-finite: NaN logits (``where='loss'``) or a NaN gradient (``where='grad'``)."""

    def __init__(self, at: int, where: str):
        self.at, self.where, self.snapshots = at, where, {}

    def on_train_begin(self, trainer):
        model = trainer.unwrapped
        if self.where == "loss":
            head = model.get_output_embeddings()
            head.register_forward_hook(lambda m, i, out: out * float("nan")
                                       if model.training and trainer.state.step == self.at - 1 else out)
        else:
            p = next(p for n, p in trainer.owned.items() if "lora_B" in n)
            p.register_hook(lambda g: g * float("nan") if trainer.state.step == self.at - 1 else g)

    def on_step_end(self, trainer, step, logs):
        self.snapshots[step] = owned(trainer)


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_non_finite_step_is_skipped_counted_and_logged(tmp_path, where, th):
    poison = _Poison(at=3, where=where)
    trainer = Trainer(th.lora_model(), th.run_config(tmp_path, steps=5), train_data=th.pattern_blocks(32),
                      callbacks=[poison])
    result = trainer.fit()
    assert result["skipped_steps"] == 1
    rows = {r["step"]: r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r}
    assert rows[3]["train/step_applied"] == 0.0 and rows[3]["train/skipped_steps"] == 1
    assert rows[2]["train/skipped_steps"] == 0 and rows[5]["train/skipped_steps"] == 1
    assert math.isnan(rows[3]["train/loss"]) == (where == "loss")
    for name, before in poison.snapshots[2].items():
        assert torch.equal(poison.snapshots[3][name], before), name  # the poisoned step changed nothing
    assert all(torch.isfinite(v).all() for v in poison.snapshots[5].values())
    assert any(not torch.equal(poison.snapshots[5][n], poison.snapshots[3][n]) for n in poison.snapshots[3])
    assert trainer.learners[0].steps_applied == 4


def test_existing_output_dir_is_not_clobbered_unless_overwrite(tmp_path, th):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError) as err:
        Trainer(th.lora_model(), th.run_config(tmp_path, steps=1), train_data=th.pattern_blocks(8)).fit()
    assert err.value.key == "trainer.output_dir" and "overwrite" in str(err.value)
    assert (out / "precious.txt").read_text() == "keep me"
    # overwrite applies to run directories only (see tests/trainers/test_reliability.py); a finished run is replaced
    (out / "precious.txt").unlink()
    Trainer(th.lora_model(), th.run_config(tmp_path, steps=1), train_data=th.pattern_blocks(8)).fit()
    (out / "report.json").write_text("{}")
    Trainer(th.lora_model(), th.run_config(tmp_path, steps=1, overwrite=True), train_data=th.pattern_blocks(8)).fit()
    assert json.loads((out / "report.json").read_text())["steps"] == 1


def test_checkpoints_hold_adapters_not_the_base_model_and_keep_last(tmp_path, th):
    cfg = th.run_config(tmp_path, steps=6, save_every=1, keep_last=2)
    Trainer(th.lora_model(), cfg, train_data=th.pattern_blocks(32)).fit()
    kept = list_checkpoints(tmp_path / "run")
    assert [p.name for p in kept] == ["step-00000005", "step-00000006"]
    tensors = load_file(str(kept[-1] / "adapter.safetensors"))
    assert tensors and all("lora_" in name for name in tensors)
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert {p.name for p in kept[-1].iterdir()} == {"adapter.safetensors", "learners.pt", "rng_0.pt",
                                                    "trainer_state.json"}


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, step, logs):
        trainer.should_stop = step >= self.step


def test_resume_in_process_continues_the_same_trajectory(tmp_path, th):
    data, held = th.pattern_blocks(32), th.pattern_blocks(4, seed=3)
    cfg = th.run_config(tmp_path, "full", steps=6, save_every=10)
    cfg.learners[0].options = {"optimizer": "AdamW"}
    Trainer(th.lora_model(), cfg, train_data=data, eval_data=held).fit()

    part = th.run_config(tmp_path, "part", steps=6, save_every=10)
    part.learners = cfg.learners
    Trainer(th.lora_model(), part, train_data=data, eval_data=held, callbacks=[_StopAt(4)]).fit()
    assert latest_checkpoint(tmp_path / "part").name == "step-00000004"
    part.trainer.resume = True
    resumed = Trainer(th.lora_model(seed=99), part, train_data=data, eval_data=held)  # init overwritten by checkpoint
    result = resumed.fit()
    assert losses(tmp_path / "part") == losses(tmp_path / "full")
    assert result["steps"] == 6 and result["eval_ppl_before"] is not None


def test_resume_refuses_a_changed_trajectory(tmp_path, th):
    Trainer(th.lora_model(), th.run_config(tmp_path, steps=2), train_data=th.pattern_blocks(16)).fit()
    cfg = th.run_config(tmp_path, steps=4, resume=True, seed=5)
    with pytest.raises(ConfigError) as err:
        Trainer(th.lora_model(), cfg, train_data=th.pattern_blocks(16)).fit()
    assert err.value.key == "trainer.seed"


def test_early_stopping_when_held_out_perplexity_stops_improving(tmp_path, th):
    up = th.pattern_blocks(64)
    down = up["input_ids"].flip(1)  # counting down: learning to count up makes it less likely
    held = {"input_ids": down[:8]}
    cfg = th.run_config(tmp_path, steps=40, eval_every=2, early_stopping_patience=2)
    result = Trainer(th.lora_model(), cfg, train_data=up, eval_data=held).fit()
    assert result["stopped_early"] and result["steps"] < 40


def test_a_local_learner_plugs_in_beside_backprop(tmp_path, th, toy):
    model = th.lora_model(spiking=True, neuron="mt", threshold=0.02)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    hebb = toy.HebbianA(params="lora_A", lr=0.05)
    trainer = Trainer(model, th.run_config(tmp_path, steps=3), learners=[hebb, SurrogateLearner(params="rest", lr=1e-2)],
                      train_data=th.pattern_blocks(16))
    assert trainer.model_keys == ("input_ids", "attention_mask", "doc_start")
    trainer.fit()
    assert hebb.records_seen > 0
    for name, p in trainer.owned.items():
        if "lora_A" in name:
            assert not p.requires_grad and p.grad is None
    changed = {n for n, p in model.named_parameters() if n in start and not torch.equal(p, start[n])}
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert any("learner/hebbian/update_norm" in r for r in rows)


def test_only_local_learners_run_without_autograd(tmp_path, th, toy):
    model = th.lora_model(spiking=True, threshold=0.02)
    trainer = Trainer(model, th.run_config(tmp_path, steps=1), learners=[toy.HebbianA(params="all")],
                      train_data=th.pattern_blocks(8))
    assert not trainer.backprop
    nll = trainer.forward(trainer.micro_batch(0))
    assert not nll.requires_grad


def test_gradient_checkpointing_gives_the_same_steps(tmp_path, th):
    """Recomputed forwards (stateful LIF adapters) must neither change the gradient nor be observed twice."""
    out = {}
    for gc in (False, True):
        cfg = th.run_config(tmp_path, f"gc-{gc}", steps=2, gradient_checkpointing=gc)
        sgd = SurrogateLearner(lr=0.1, optimizer="SGD", max_grad_norm=None)
        trainer = Trainer(th.lora_model(spiking=True, neuron="lif", threshold=0.02), cfg, learners=[sgd],
                          train_data=th.pattern_blocks(16))
        trainer.fit()
        out[gc] = (owned(trainer), losses(tmp_path / f"gc-{gc}"))
    assert out[True][1] == out[False][1]
    for name, value in out[False][0].items():
        torch.testing.assert_close(out[True][0][name], value)


def test_bf16_autocast_keeps_fp32_master_weights(tmp_path, th):
    cfg = th.run_config(tmp_path, steps=3, mixed_precision="bf16")
    trainer = Trainer(th.lora_model(), cfg, train_data=th.pattern_blocks(16), eval_data=th.pattern_blocks(4))
    result = trainer.fit()
    assert trainer.accelerator.mixed_precision == "bf16"
    assert all(p.dtype == torch.float32 for p in trainer.owned.values())
    assert math.isfinite(result["train_loss"]) and result["skipped_steps"] == 0
