"""Shard the frozen base across ranks with torch's FSDP2 while the adapters stay whole on every rank.

A spiking peft model is mostly frozen base: :func:`shard_frozen_base` applies ``torch.distributed.fsdp.fully_shard``
to every decoder block and then the root, passing the trainable (adapter) parameters as ``ignored_params``. The
base weights become ``DTensor`` shards (each rank holds ``1 / world`` of them) that FSDP all-gathers around each
block's forward and backward; the adapters stay ordinary replicated tensors, so

* optimiser-based learners (``surrogate``) average their gradients across ranks with :func:`average_gradients`
  after backward (what DDP would do), and
* local learners (``stdp``, ``rstdp``) read whole adapter tensors and already average their updates across ranks;
  where a rule reads a frozen base weight outside the forward (``post: layer``) it gathers that one weight
  (``DTensor.full_tensor()``, on every rank in the same order).

The trainer does all this for ``trainer.sharding: fsdp`` (:mod:`hybridtune.trainers.memory`). FSDP2 on CPU runs with
the gloo backend. Accelerate 1.16's FSDP plugin, asked for on a CPU-only run, falls back to plain data parallelism
(``DistributedType.MULTI_CPU`` and a ``DistributedDataParallel`` wrapper) without sharding anything, which is why
this module calls FSDP2 itself.

Example (one process, a mesh of one rank)::

    mesh = init_device_mesh("cpu", (1,))
    shard_frozen_base(peft_model, mesh)   # frozen weights are DTensors now; lora_A / lora_B are not
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def _decoder_blocks(hf_model: nn.Module) -> list[nn.Module]:
    from hybridtune.conversion import conversion_info, get_recipe, is_converted

    path = "model.layers"
    if is_converted(hf_model):
        path = getattr(getattr(get_recipe(conversion_info(hf_model).family), "layout", None), "layers", path)
    try:
        return list(hf_model.get_submodule(path))
    except AttributeError:
        raise ValueError(f"cannot find the decoder blocks at {path!r} of {type(hf_model).__name__}") from None


def shard_frozen_base(model: nn.Module, mesh=None, trainable: Iterable[nn.Parameter] | None = None) -> nn.Module:
    """Shard every frozen parameter of ``model`` (a peft model or a plain transformers model) over ``mesh`` with
    FSDP2, block by block; ``trainable`` (default: the parameters with ``requires_grad``) stay replicated.

    Call it after the adapters are attached and before optimisers are built. Returns ``model`` (sharded in place:
    FSDP2 swaps the frozen parameters for ``DTensor`` shards)."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        raise RuntimeError("shard_frozen_base needs an initialised process group (torchrun, then "
                           "torch.distributed.init_process_group('gloo' on CPU, 'nccl' on GPUs))")
    from torch.distributed.fsdp import fully_shard

    if mesh is None:
        from torch.distributed.device_mesh import init_device_mesh

        device = "cuda" if next(model.parameters()).is_cuda else "cpu"
        mesh = init_device_mesh(device, (torch.distributed.get_world_size(),))
    keep = set(trainable) if trainable is not None else {p for p in model.parameters() if p.requires_grad}
    hf = getattr(getattr(model, "base_model", None), "model", model)
    for block in _decoder_blocks(hf):
        fully_shard(block, mesh=mesh, ignored_params=keep & set(block.parameters()))
    fully_shard(hf, mesh=mesh, ignored_params=keep)
    return model


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """All-reduce the gradients of replicated parameters to their mean across ranks (one flat bucket)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= torch.distributed.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def sharded_fraction(model: nn.Module, trainable: Iterable[nn.Parameter] | None = None) -> float:
    """Share of the frozen parameters' elements this rank stores (``1 / world`` when fully sharded); ``trainable``
    (default: the parameters with ``requires_grad``) are left out, as in :func:`shard_frozen_base`."""
    from torch.distributed.tensor import DTensor

    keep = set(trainable) if trainable is not None else {p for p in model.parameters() if p.requires_grad}
    local = total = 0
    for p in model.parameters():
        if p in keep:
            continue
        total += p.numel()
        local += p.to_local().numel() if isinstance(p, DTensor) else p.numel()
    return local / max(total, 1)


__all__ = ["average_gradients", "shard_frozen_base", "sharded_fraction"]
