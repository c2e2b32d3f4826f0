"""Llama 4 mixture-of-experts with spiking experts: sparse dispatch over the fused 3-D expert weights.

transformers' ``Llama4TextExperts`` keeps all experts in two 3-D parameters (``gate_up_proj [E, H, 2I]``,
``down_proj [E, I, H]``) and runs every expert on every token with the input scaled by its router score (zero for
experts not in the top-k). Here each expert runs only on the tokens routed to it -- the same result, since an
unselected expert sees a zero input and the experts have no bias -- so spike statistics cover routed tokens only.
The router stays the model's own module (a linear plus top-k and sigmoid); with ``linear_inputs`` it consumes the
encoded norm output like every other consumer. The expert weights are used as they are (not copied).

Example:
    >>> from hybridtune.testing import tiny_model
    >>> model = tiny_model("llama4")
    >>> moe = next(m for m in model.modules() if type(m).__name__ == "Llama4TextMoe")
    >>> x = torch.randn(1, 5, model.config.hidden_size)
    >>> torch.allclose(SpikingMoE(moe)(x)[0], moe(x)[0], atol=1e-5)
    True
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SpikingMoE(nn.Module):
    """Drop-in for ``Llama4TextMoe``: ``forward(h) -> (out [N, H], router_logits)``.

    ``act_encoder`` encodes the expert activation output (``ffn_act``), ``down_encoder`` the input of the expert
    down projections (``linear_inputs``); either may be None (float). Both are shared by all experts (one population
    per expert in hardware, identical parameters here: dynamic per-token thresholds).
    """

    def __init__(self, moe: nn.Module, act_encoder: nn.Module | None = None, down_encoder: nn.Module | None = None):
        super().__init__()
        self.top_k, self.hidden_dim, self.num_experts = moe.top_k, moe.hidden_dim, moe.num_experts
        self.router = moe.router
        self.shared_expert = moe.shared_expert
        self.experts = moe.experts  # keeps gate_up_proj / down_proj and act_fn under their original names
        self.act_encoder = act_encoder
        self.down_encoder = down_encoder
        if act_encoder is not None and hasattr(act_encoder, "fan_out"):
            act_encoder.fan_out = 1  # each spike of act(gate) scales one element of up
        if down_encoder is not None and hasattr(down_encoder, "fan_out"):
            down_encoder.fan_out = self.hidden_dim
        self.routed_rows = 0  # tokens x experts actually routed in the last forward (read by the census)

    def forward(self, hidden_states: Tensor) -> tuple[Tensor, Tensor]:
        x = hidden_states.reshape(-1, self.hidden_dim)
        scores, logits = self.router(x)
        out = self.shared_expert(x)
        gate_up, down = self.experts.gate_up_proj, self.experts.down_proj
        routed = 0
        for e in range(self.num_experts):
            rows = torch.nonzero(scores[:, e] > 0, as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            routed += rows.numel()
            xe = x.index_select(0, rows) * scores.index_select(0, rows)[:, e:e + 1]
            gate, up = (xe @ gate_up[e]).chunk(2, dim=-1)
            act = self.experts.act_fn(gate)
            if self.act_encoder is not None:
                act = self.act_encoder(act)
            h = act * up
            if self.down_encoder is not None:
                h = self.down_encoder(h)
            out = out.index_add(0, rows, h @ down[e])
        self.routed_rows = routed
        return out, logits

    census_counted: tuple[str, ...] = ()  # the router and the encoders count themselves

    def census_ops(self, args: tuple, output: tuple, add) -> None:
        """What the accounting census counts (``hybridtune.accounting.CountsOwnOps``): the routed experts' GEMMs and
        gate products over the rows actually routed in this forward."""
        rows, h = self.routed_rows, self.hidden_dim
        i2 = self.experts.gate_up_proj.shape[-1]
        add("moe_routing", ann_mac=rows * h)
        add("linear:experts_gate_up", ann_mac=rows * h * i2,
            spike_driven=bool(getattr(self, "hybridtune_spike_input", False)))
        add("linear:experts_down", ann_mac=rows * (i2 // 2) * h, spike_driven=self.down_encoder is not None)
        add("glu_product", ann_mac=rows * (i2 // 2), spike_driven=self.act_encoder is not None)

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, top_k={self.top_k}, hidden={self.hidden_dim}"
