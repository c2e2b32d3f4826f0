"""Continual strategies' numerics held against direct formulas: the replay buffer and draws, the EWC penalty, its
gradient, the proximal pull, the Fisher estimate, and the learner wrapper that adds the EWC gradient."""

from __future__ import annotations

import pytest
import torch

from hybridtune.continual.strategies import (
    EWC,
    EWCLearner,
    ReplayBuffer,
    ewc_gradient,
    ewc_penalty,
    ewc_pull,
    fisher_diagonal,
    replay_count,
    replay_indices,
    replay_quotas,
)
from hybridtune.learners import SetupContext, SurrogateLearner
from hybridtune.perplexity import model_nll


def _blocks(n: int, fill: int, length: int = 6) -> dict[str, torch.Tensor]:
    ids = torch.full((n, length), fill) + torch.arange(n).view(-1, 1) * 0
    ids[:, 0] = torch.arange(n)  # a block id in column 0
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def test_replay_quotas_split_evenly_and_sum_to_capacity():
    assert replay_quotas(10, 3) == [4, 3, 3]
    assert replay_quotas(2, 3) == [1, 1, 0]
    assert sum(replay_quotas(64, 5)) == 64 and replay_quotas(5, 0) == []


def test_replay_buffer_stays_bounded_and_balanced():
    buf = ReplayBuffer(capacity=9, seed=1)
    buf.add(0, _blocks(20, 100))
    assert len(buf) == 9
    first = buf.kept[0]["input_ids"][:, 0].tolist()
    buf.add(1, _blocks(4, 200))
    buf.add(2, _blocks(30, 300))
    blocks, source = buf.tensors()
    assert len(buf) == 9 and blocks["input_ids"].shape == (9, 6)
    assert source.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert buf.kept[0]["input_ids"][:, 0].tolist() == first[:3]  # trimming keeps a prefix of the random subset
    assert (blocks["input_ids"][:, 1] == source * 100 + 100).all()  # every block is its domain's
    again = ReplayBuffer(capacity=1)
    again.load_state_dict(buf.state_dict())
    assert torch.equal(again.tensors()[0]["input_ids"], blocks["input_ids"])


def test_replay_draws_are_a_pure_function_of_seed_stage_cursor():
    a = replay_indices(50, 6, seed=0, stage=1, cursor=7)
    assert torch.equal(a, replay_indices(50, 6, seed=0, stage=1, cursor=7))
    assert not torch.equal(a, replay_indices(50, 6, seed=0, stage=1, cursor=8))
    assert len(set(a.tolist())) == 6  # distinct rows when the buffer is large enough
    small = replay_indices(3, 8, seed=0, stage=1, cursor=0)
    assert small.shape == (8,) and small.max() < 3


def test_replay_count_rounds_and_refuses_empty_shares():
    assert replay_count(0.25, 4) == 1 and replay_count(0.5, 2) == 1 and replay_count(0.0, 4) == 0
    with pytest.raises(ValueError, match="between 1 and batch_size - 1"):
        replay_count(0.1, 4)
    with pytest.raises(ValueError):
        replay_count(0.9, 2)


def _direct_ewc(theta, tasks, strength):
    return 0.5 * strength * sum((f * (theta - star) ** 2).sum() for f, star in tasks)


def test_ewc_sums_match_the_per_task_formula_and_its_gradient():
    gen = torch.Generator().manual_seed(0)
    tasks = [(torch.rand(5, 3, generator=gen, dtype=torch.float64),
              torch.randn(5, 3, generator=gen, dtype=torch.float64)) for _ in range(3)]
    fisher = sum(f for f, _ in tasks)
    anchor = sum(f * s for f, s in tasks)
    const = float(sum((f * s * s).sum() for f, s in tasks))
    theta = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    direct = _direct_ewc(theta, tasks, strength=2.5)
    value = ewc_penalty({"w": theta}, {"w": fisher}, {"w": anchor}, {"w": const}, strength=2.5)
    assert value == pytest.approx(float(direct), rel=1e-10)
    (grad,) = torch.autograd.grad(direct, theta)
    torch.testing.assert_close(ewc_gradient(theta.detach(), fisher, anchor, 2.5), grad)
    assert ewc_penalty({"other": theta}, {"w": fisher}, {"w": anchor}, {"w": const}, 2.5) == 0.0


def test_ewc_pull_moves_toward_the_anchor_and_never_past_it():
    theta = torch.tensor([1.0, 1.0, 1.0])
    fisher = torch.tensor([0.0, 1.0, 100.0])
    anchor = fisher * torch.tensor([0.0, 0.0, 0.0])  # theta* = 0 where F > 0
    step = ewc_pull(theta, fisher, anchor, strength=1.0, rate=0.1)
    assert step.tolist() == pytest.approx([0.0, -0.1, -1.0])  # F = 0: no pull; large F: clamped at the anchor


def _tiny_peft(th):
    model = th.lora_model(family="llama", target_modules=["q_proj", "v_proj"])
    with torch.no_grad():  # nonzero B so that A gets gradients too
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    return model


def test_fisher_diagonal_is_the_mean_squared_per_block_gradient(th):
    model = _tiny_peft(th)
    data = th.pattern_blocks(6, length=12)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = fisher_diagonal(model, data, params, blocks=6, keys=("input_ids", "attention_mask"))
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(6):
        batch = {k: v[i:i + 1] for k, v in data.items()}
        nll, count = model_nll(model, batch, ("input_ids", "attention_mask"))
        grads = torch.autograd.grad(nll.sum() / count, list(params.values()))
        for n, g in zip(params, grads):
            expected[n] += g ** 2 / 6
    for n in params:
        torch.testing.assert_close(fisher[n], expected[n], rtol=1e-4, atol=1e-10)
    assert any(float(f.sum()) > 0 for f in fisher.values())


def test_ewc_learner_adds_the_penalty_gradient_before_the_inner_step():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    ewc = EWC(strength=3.0)
    ewc.fisher, ewc.anchor = {"w": torch.tensor([1.0, 0.5])}, {"w": torch.tensor([0.0, 0.5 * -1.0])}
    ewc.const, ewc.tasks = {"w": 0.5}, 1
    inner = SurrogateLearner(lr=0.1, optimizer="SGD", scheduler="constant", max_grad_norm=None)
    wrapped = EWCLearner(inner, ewc)
    wrapped.setup(SetupContext(model=None, accelerator=None, params={"w": w}, total_steps=3))
    assert wrapped.uses_backward and wrapped.name == "surrogate"
    (w * torch.tensor([1.0, 1.0])).sum().backward()  # task gradient: [1, 1]
    assert wrapped.step()
    # EWC gradient: 3 * (F w - A) = 3 * ([1, -1] - [0, -0.5]) = [3, -1.5]; SGD: w -= 0.1 * (task + ewc)
    assert w.detach().tolist() == pytest.approx([1.0 - 0.1 * 4.0, -2.0 - 0.1 * (1.0 - 1.5)])
    expected_penalty = 0.5 * 3.0 * (1.0 * (1.0 - 0.0) ** 2 + 0.5 * (-2.0 + 1.0) ** 2)
    assert wrapped.metrics()["ewc_penalty"] == pytest.approx(expected_penalty)
