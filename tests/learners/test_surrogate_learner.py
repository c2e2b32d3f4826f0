"""The surrogate learner: optimizer and scheduler by name, clipping, the inf/NaN check, state round trips; and the
local-update helpers of the protocol."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from hybridtune.learners import (
    OptimDefaults,
    SetupContext,
    SurrogateLearner,
    apply_update,
    mean_across_ranks,
    resolve_optimizer,
)
from hybridtune.learners.surrogate import build_scheduler


def setup(learner, params, total_steps=10, **defaults):
    learner.setup(SetupContext(model=None, accelerator=None, params=params, total_steps=total_steps,
                               defaults=OptimDefaults(**defaults)))
    return learner


def quadratic_grad(params):
    loss = sum((p * p).sum() for p in params.values())
    loss.backward()


def test_sgd_step_is_the_textbook_update():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    sur = setup(SurrogateLearner(lr=0.1, optimizer="SGD", scheduler="constant", max_grad_norm=None), {"w": w})
    quadratic_grad({"w": w})
    expected = w.detach() - 0.1 * 2 * w.detach()
    assert sur.step() is True
    torch.testing.assert_close(w.detach(), expected)
    assert w.grad is None  # zeroed (set to None) after the step
    assert sur.metrics()["grad_norm"] == pytest.approx(2 * math.sqrt(14))


def test_optimizer_names_are_case_insensitive_and_checked():
    assert resolve_optimizer("adamw") is torch.optim.AdamW
    assert resolve_optimizer("torch.optim:SGD") is torch.optim.SGD
    with pytest.raises(ValueError, match="adamw"):
        SurrogateLearner(optimizer="adamx")


def test_clipping_uses_the_trainer_default_unless_overridden():
    w = torch.nn.Parameter(torch.full((4,), 10.0))
    sur = setup(SurrogateLearner(lr=1.0, optimizer="SGD", scheduler="constant"), {"w": w}, max_grad_norm=1.0)
    quadratic_grad({"w": w})
    sur.step()
    torch.testing.assert_close(w.detach(), torch.full((4,), 10.0 - 0.5))  # grad 20 each, norm 40 -> clipped to 1


def test_warmup_then_cosine_and_torch_schedulers_by_name():
    w = torch.nn.Parameter(torch.ones(1))
    sur = setup(SurrogateLearner(lr=1.0, optimizer="SGD", max_grad_norm=None), {"w": w}, total_steps=10,
                scheduler="cosine", warmup_steps=4)
    lrs = []
    for _ in range(10):
        lrs.append(sur.optimizer.param_groups[0]["lr"])
        quadratic_grad({"w": w})
        sur.step()
    assert lrs[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert lrs[5:] == sorted(lrs[5:], reverse=True) and lrs[-1] < 0.1
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)
    step = build_scheduler("StepLR", opt, 0, 10, {"step_size": 2, "gamma": 0.5})
    assert isinstance(step, torch.optim.lr_scheduler.StepLR)
    with pytest.raises(ValueError, match="unknown scheduler"):
        build_scheduler("cosine_annealing_xyz", opt, 0, 10)


def test_non_finite_gradient_skips_without_moving_the_schedule():
    w = torch.nn.Parameter(torch.ones(2))
    sur = setup(SurrogateLearner(lr=0.5, optimizer="SGD", max_grad_norm=None), {"w": w}, scheduler="linear")
    w.grad = torch.tensor([float("nan"), 1.0])
    lr_before = sur.optimizer.param_groups[0]["lr"]
    assert sur.step() is False
    assert torch.equal(w.detach(), torch.ones(2)) and w.grad is None
    assert sur.optimizer.param_groups[0]["lr"] == lr_before and sur.steps_skipped == 1


def test_state_dict_round_trip_reproduces_the_following_updates():
    def make():
        w = torch.nn.Parameter(torch.tensor([0.5, -1.5]))
        return w, setup(SurrogateLearner(lr=0.1, optimizer="AdamW", max_grad_norm=None), {"w": w},
                        scheduler="cosine", warmup_steps=2)

    w1, a = make()
    for _ in range(3):
        quadratic_grad({"w": w1})
        a.step()
    w2, b = make()
    with torch.no_grad():
        w2.copy_(w1)
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # as from a checkpoint: no tensors shared with ``a``
    for _ in range(3):
        quadratic_grad({"w": w1})
        quadratic_grad({"w": w2})
        a.step()
        b.step()
    assert torch.equal(w1, w2)
    assert b.steps_applied == 6


def test_reset_discards_accumulated_gradients():
    w = torch.nn.Parameter(torch.ones(2))
    sur = setup(SurrogateLearner(lr=0.1), {"w": w})
    quadratic_grad({"w": w})
    sur.reset()
    assert w.grad is None


def test_local_update_helpers():
    p = torch.nn.Parameter(torch.zeros(3), requires_grad=False)
    delta = {"p": torch.tensor([3.0, 0.0, 4.0])}
    assert mean_across_ranks(None, delta) == delta  # one process: identity
    norm = apply_update({"p": p}, delta, scale=0.5)
    assert norm == pytest.approx(2.5) and p.tolist() == [1.5, 0.0, 2.0]
    with pytest.raises(KeyError, match="does not own"):
        apply_update({"p": p}, {"q": torch.zeros(3)})
