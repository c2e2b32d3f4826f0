"""FSDP2 with the frozen base sharded and the adapters replicated: 2 CPU processes (torchrun + gloo) train the
adapters for 3 surrogate-gradient steps and end where one process with the same global batch ends."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = '''\
import sys
import torch
import torch.distributed as dist
from safetensors.torch import save_file
sys.path.insert(0, {here!r})
from test_sharding import build, train
from hybridtune.sharding import average_gradients, shard_frozen_base, sharded_fraction

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
model = build()
shard_frozen_base(model)
frac = sharded_fraction(model)
assert abs(frac - 1 / world) < 0.02, frac
weights = train(model, rank=rank, world=world, sync=average_gradients)
save_file(weights, sys.argv[1] + f"/rank{{rank}}.safetensors")
print("sharded fraction", frac)
dist.destroy_process_group()
'''


def build():
    import hybridtune.conversion as hc
    from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
    from hybridtune.testing import tiny_model

    torch.manual_seed(0)
    snn = hc.convert(tiny_model("llama"), hc.ConversionConfig(coverage=("ffn_act", "linear_inputs"), compensation=False))
    cfg = spiking_lora_config(r=4, neuron="lif", threshold=0.02, init_b_std=0.05,
                              target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])
    return get_spiking_peft_model(snn, cfg)


def train(model, rank: int = 0, world: int = 1, sync=None, steps: int = 3) -> dict[str, torch.Tensor]:
    """``steps`` AdamW steps on a global batch of 4 sequences, this rank's share ``4 / world`` of them."""
    from hybridtune.testing import tiny_batch

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(params.values(), lr=1e-2)
    for step in range(steps):
        batch = tiny_batch(batch=4, seq=12, seed=step)
        per = 4 // world
        mine = {k: v[rank * per:(rank + 1) * per] for k, v in batch.items()}
        loss = model(**mine, labels=mine["input_ids"]).loss  # equal lengths: the mean of rank means is the mean
        loss.backward()
        if sync is not None:
            sync(params.values())
        opt.step()
        opt.zero_grad()
    return {n: p.detach().clone().contiguous() for n, p in params.items()}


@pytest.mark.slow
def test_two_process_fsdp_matches_one_process(tmp_path, torchrun):
    script = tmp_path / "fsdp_script.py"
    script.write_text(SCRIPT.format(here=os.path.dirname(__file__)))
    done = torchrun([script, tmp_path], timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    reference = train(build())
    start = {n: p.detach() for n, p in build().named_parameters() if p.requires_grad}
    assert ranks[0].keys() == reference.keys() and any("lora_A" in k for k in reference)
    moved = max((reference[n] - start[n]).abs().max().item() for n in reference)
    assert moved > 1e-3  # the adapters really trained
    for name, want in reference.items():
        torch.testing.assert_close(ranks[0][name], ranks[1][name], atol=0, rtol=0)  # ranks identical
        torch.testing.assert_close(ranks[0][name], want, atol=2e-5, rtol=1e-4)  # = one process, same batch


def test_sharding_needs_a_process_group():
    if torch.distributed.is_initialized():
        pytest.skip("a process group is already initialised")
    from hybridtune.sharding import shard_frozen_base

    with pytest.raises(RuntimeError, match="process group"):
        shard_frozen_base(torch.nn.Linear(2, 2))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
