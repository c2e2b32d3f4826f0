"""A small local (no-backward) learner used to test that rules of the STDP kind plug into the trainer unchanged.

``HebbianA`` owns ``lora_A`` factors, asks for the adapters' spike recording, and at each step applies the
Hebbian update ``dA = lr * s^T x / N`` (bottleneck spikes x input spikes, averaged over tokens), averaged across
ranks first unless ``sync=False`` (which lets replicas drift: the negative control of the 2-process test).
"""

from __future__ import annotations

import torch

from hybridtune.learners import Observation, SetupContext, apply_update, mean_across_ranks


class HebbianA:
    uses_backward = False

    def __init__(self, params="lora_A", lr: float = 1e-3, sync: bool = True, name: str = "hebbian"):
        self.name, self.params, self.lr, self.sync = name, params, lr, sync
        self.records_seen = 0
        self._sums: dict[str, torch.Tensor] = {}
        self._tokens = 0
        self._last: dict[str, float] = {}

    def setup(self, ctx: SetupContext) -> None:
        self.accelerator, self._params = ctx.accelerator, dict(ctx.params)
        for p in self._params.values():
            p.requires_grad_(False)  # a local rule: DDP must not expect gradients for these

    def recording(self, model):
        from hybridtune.adapters import recording

        return recording(model, membrane=False, outputs=False)

    def observe(self, obs: Observation) -> None:
        for rec in obs.recording.pop():
            name = f"{rec.layer}.lora_A.{rec.adapter}.weight"
            if name not in self._params:
                continue
            s = rec.bottleneck_spikes.float().flatten(0, 1)  # [N, r]
            x = rec.inputs().flatten(0, 1)  # [N, in]
            self._sums[name] = self._sums.get(name, 0) + s.T @ x
            self.records_seen += 1
        self._tokens += int(obs.batch["attention_mask"].sum())

    def step(self) -> bool:
        deltas = {k: v / max(self._tokens, 1) for k, v in self._sums.items()}
        if self.sync:
            deltas = mean_across_ranks(self.accelerator, deltas)
        norm = apply_update(self._params, deltas, self.lr)
        self._last = {"update_norm": norm}
        self.reset()
        return True

    def reset(self) -> None:
        self._sums, self._tokens = {}, 0

    def state_dict(self):
        return {"records_seen": self.records_seen}

    def load_state_dict(self, state) -> None:
        self.records_seen = int(state["records_seen"])

    def metrics(self):
        return dict(self._last)
