"""Feedback paths: how the error at the top of the residual stream reaches each adapted layer as its learning signal.

A path is a small strategy object (:class:`FeedbackPath`); ``eprop`` takes one by name from :data:`FEEDBACK_PATHS`
(``register_feedback_path`` adds more). Given the top error ``g [B, L, D]`` (``D`` the hidden size) a path returns
``L [B, L, out]``, the stand-in for ``∂loss/∂(layer output)``:

* ``residual`` — the identity. Exact for a layer that writes straight into the residual stream of the last block
  (``o_proj``, ``down_proj``, GPT-2's ``c_proj``, an expert's down projection); for earlier blocks it ignores what
  the later blocks do to the gradient. Refuses layers whose output is not ``D`` wide.
* ``one_hop`` — through the transpose of the next frozen weight on the way to the residual stream, inside the same
  block: ``v_proj`` via ``o_projᵀ`` (summed over the query heads that share a KV head) and the attention's mixing over
  tokens, ``Pᵀ``: exact where the attention returns its probabilities ``P`` (eager attention, and the spiking
  attention of a conversion that covers ``attention``), taken as the identity where it returns none (SDPA, flash;
  ``model.attention: eager`` in a run config, ``attn_implementation="eager"`` in transformers, gives the exact
  mixing); ``up_proj`` / ``gate_proj`` via ``down_projᵀ`` times the gate's value / the activation's derivative,
  GPT-2's ``c_fc`` via ``c_projᵀ`` times the activation's derivative. Residual writers take the identity. Other
  layers (``q_proj``, ``k_proj``: their path runs through the softmax) are refused.
* ``random`` — fixed random feedback matrices ``R [out, D]`` (direct feedback alignment, Nøkland 2016), entries
  ``N(0, 1/D)``, seeded per layer from the learner's seed; they travel in the learner's state (checkpoints) so a
  resumed run keeps them, and are written beside the adapter (:data:`FEEDBACK_FILE` in its ``save_pretrained``
  directory, by :meth:`RandomPath.save_pretrained`) so a later run can reuse them (:meth:`RandomPath.load_pretrained`,
  the learner's ``feedback_from`` option): an adapter trained with random feedback names the feedback it was
  trained with.

Example:
    >>> import torch
    >>> sorted(FEEDBACK_PATHS)
    ['one_hop', 'random', 'residual']
    >>> feedback_path("residual").name
    'residual'
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from hybridtune.files import atomic_write, load_safetensors
from hybridtune.learners.plasticity.targets import FactorTarget
from hybridtune.module_kinds import is_conv1d

__all__ = ["FeedbackPath", "FEEDBACK_PATHS", "FEEDBACK_FILE", "register_feedback_path", "feedback_path", "ResidualPath",
           "OneHopPath", "RandomPath"]

# the random feedback matrices, beside the adapter in its save_pretrained directory
FEEDBACK_FILE = "eprop_feedback.safetensors"
RESIDUAL_WRITERS = ("o_proj", "down_proj", "c_proj", "dense", "out_proj", "fc2", "wo", "dense_4h_to_h")


class FeedbackPath(Protocol):
    """A feedback path strategy (see the module docstring)."""

    name: str

    def prepare(self, model: nn.Module, targets: list[FactorTarget], hidden: int, seed: int) -> None:
        """Check every target can be reached (ValueError naming the layer otherwise) and build what is fixed."""

    def capture(self, model: nn.Module) -> Any:
        """A context manager that records what ``signal`` needs during the forward, or None."""

    def signal(self, target: FactorTarget, g: Tensor) -> Tensor:
        """The learning signal ``[B, L, out]`` of ``target`` from the top error ``g [B, L, D]``."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


def _out_features(target: FactorTarget) -> int:
    return int(target.lora_B.shape[0])


def _leaf(target: FactorTarget) -> str:
    return target.layer.split(".")[-1]


class ResidualPath:
    """The identity: every adapted layer receives the top error itself."""

    name = "residual"

    def prepare(self, model: nn.Module, targets: list[FactorTarget], hidden: int, seed: int) -> None:
        bad = [f"{t.layer} ({_out_features(t)})" for t in targets if _out_features(t) != hidden]
        if bad:
            raise ValueError(f"feedback: residual delivers the residual-stream error ({hidden} wide), but "
                             f"{', '.join(bad[:3])} write other widths; adapt residual writers only (e.g. "
                             f"target_modules: [o_proj, down_proj]) or use feedback: one_hop / random")

    def capture(self, model: nn.Module) -> None:
        return None

    def signal(self, target: FactorTarget, g: Tensor) -> Tensor:
        return g

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


class RandomPath:
    """Fixed random feedback ``L = g Rᵀ`` per layer (direct feedback alignment)."""

    name = "random"

    def __init__(self) -> None:
        self.matrices: dict[str, Tensor] = {}
        self.seed: int | None = None

    def prepare(self, model: nn.Module, targets: list[FactorTarget], hidden: int, seed: int) -> None:
        if self.seed is None:  # a loaded file keeps the seed it was drawn with
            self.seed = seed
        for t in targets:
            if t.layer in self.matrices:
                continue  # restored from a checkpoint or a saved adapter
            digest = hashlib.sha256(f"{seed}:{t.layer}".encode()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
            self.matrices[t.layer] = torch.randn(_out_features(t), hidden, generator=gen) / hidden ** 0.5

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the matrices to ``directory/FEEDBACK_FILE`` (atomically: an interrupted save leaves no torn file)."""
        from safetensors.torch import save_file

        tensors = {k: v.contiguous() for k, v in self.matrices.items()}
        meta = {"feedback": self.name, "seed": str(self.seed)}
        return atomic_write(Path(directory) / FEEDBACK_FILE, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    def load_pretrained(self, directory: str | os.PathLike, targets: list[FactorTarget], hidden: int) -> None:
        """Reuse the matrices an earlier run saved in ``directory``: every target's, with its shape ``[out, D]``."""
        path = Path(directory) / FEEDBACK_FILE
        loaded = load_safetensors(path, "point feedback_from at the save_pretrained directory of an adapter trained "
                                        "with eprop feedback: random")
        for t in targets:
            want = (_out_features(t), hidden)
            if t.layer not in loaded or tuple(loaded[t.layer].shape) != want:
                got = tuple(loaded[t.layer].shape) if t.layer in loaded else "missing"
                raise ValueError(f"feedback_from: {path} has no {want[0]}x{want[1]} feedback matrix for {t.layer} "
                                 f"(found: {got}); it was saved for other layers or another model")
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            seed = (f.metadata() or {}).get("seed", "None")
        self.seed = int(seed) if seed.lstrip("-").isdigit() else None
        self.matrices = {t.layer: loaded[t.layer].float() for t in targets}

    def capture(self, model: nn.Module) -> None:
        return None

    def signal(self, target: FactorTarget, g: Tensor) -> Tensor:
        r = self.matrices[target.layer].to(device=g.device, dtype=g.dtype)
        return g @ r.T

    def state_dict(self) -> dict[str, Any]:
        return {"matrices": {k: v.clone() for k, v in self.matrices.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.matrices = {k: v.clone() for k, v in state.get("matrices", {}).items()}


def _weight(module: nn.Module) -> Tensor:
    """A linear-like module's frozen weight as ``[out, in]`` (peft wrapper, ``SpikingLinear``, GPT-2 ``Conv1D``)."""
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    weight = base.weight
    return (weight.t() if is_conv1d(base) else weight).detach()


def _attention_probs(out: Any) -> Tensor | None:
    """An attention module's probabilities ``[B, H, L, S]`` from its output, None where it returns none (SDPA)."""
    probs = out[1] if isinstance(out, tuple) and len(out) > 1 else None
    return probs if isinstance(probs, Tensor) else None


class _Outputs:
    """Forward hooks keeping the outputs of a few modules (detached, float16: they only shape a learning signal), one
    list per module name, in call order; ``pick`` takes the kept tensor from a module's output (None: nothing)."""

    def __init__(self, modules: dict[str, nn.Module], pick: dict[str, Callable[[Any], Tensor | None]]):
        self.modules, self.pick, self.kept, self.handles = modules, pick, {n: [] for n in modules}, []

    def _keep(self, name: str, out: Any) -> None:
        picked = self.pick.get(name, lambda o: o)(out)
        if picked is not None:
            self.kept[name].append(picked.detach().to(torch.float16))

    def __enter__(self) -> _Outputs:
        for name, module in self.modules.items():
            self.handles.append(module.register_forward_hook(lambda m, a, out, name=name: self._keep(name, out)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.kept = [], {n: [] for n in self.modules}


class OneHopPath:
    """Through the transpose of the next frozen weight inside the block (see the module docstring)."""

    name = "one_hop"

    def __init__(self) -> None:
        self.links: dict[str, Callable[[Tensor], Tensor]] = {}
        self._outputs: _Outputs | None = None
        self._needed: dict[str, nn.Module] = {}
        self._pick: dict[str, Callable[[Any], Tensor | None]] = {}
        self._pending: dict[str, Tensor] = {}
        self._back: dict[str, tuple[Tensor, Tensor]] = {}

    def prepare(self, model: nn.Module, targets: list[FactorTarget], hidden: int, seed: int) -> None:
        config = getattr(getattr(model, "base_model", model), "config", None) or getattr(model, "config", None)
        for t in targets:
            self.links[t.layer] = self._link(model, t, hidden, config)

    def _link(self, model: nn.Module, t: FactorTarget, hidden: int, config: Any) -> Callable[[Tensor], Tensor]:
        leaf, parent = _leaf(t), t.layer.rsplit(".", 1)[0]
        block = model.get_submodule(parent)
        if leaf in RESIDUAL_WRITERS and _out_features(t) == hidden:
            return lambda g: g
        if leaf == "v_proj" and hasattr(block, "o_proj"):
            w_o = _weight(block.o_proj)  # [D, H*hd]
            out = _out_features(t)
            head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
            kv, rep = out // head_dim, w_o.shape[1] // out

            self._needed[parent + ":probs"] = block
            self._pick[parent + ":probs"] = _attention_probs

            def via_o(g: Tensor, parent: str = parent) -> Tensor:
                back = g @ w_o.to(g.dtype)  # [B, L, H*hd]; query head h = kv_head * rep + k (repeat_kv layout)
                probs = self._pending.get(parent + ":probs")
                if probs is not None:  # the value at key s reaches query t by P[t, s]: back[s] = Σ_t P[t, s] back[t]
                    heads = back.view(*g.shape[:-1], -1, head_dim).transpose(1, 2)  # [B, H, L, hd]
                    back = (probs.to(g.dtype).transpose(-1, -2) @ heads).transpose(1, 2)  # [B, S, H, hd]
                return back.reshape(*g.shape[:-1], kv, rep, head_dim).sum(-2).reshape(*g.shape[:-1], out)
            return via_o
        if leaf in ("up_proj", "gate_proj") and hasattr(block, "down_proj") and hasattr(block, "gate_proj"):
            w_d, act = _weight(block.down_proj), block.act_fn
            self._needed[parent + ".gate_proj"] = block.gate_proj
            self._needed[parent + ".up_proj"] = block.up_proj

            def via_down_gated(g: Tensor, leaf: str = leaf, parent: str = parent) -> Tensor:
                kept = self._back.get(parent)  # gate and up share g @ W_down: one GEMM per block and error
                back = kept[1] if kept is not None and kept[0] is g else g @ w_d.to(g.dtype)
                self._back[parent] = (g, back)
                gate, up = self._pending[parent + ".gate_proj"].float(), self._pending[parent + ".up_proj"].float()
                if leaf == "up_proj":
                    return back * act(gate)
                return back * up * _derivative(act, gate)
            return via_down_gated
        if leaf == "c_fc" and hasattr(block, "c_proj"):
            w_p, act = _weight(block.c_proj), block.act
            self._needed[t.layer] = model.get_submodule(t.layer)

            def via_proj(g: Tensor, layer: str = t.layer) -> Tensor:
                return (g @ w_p.to(g.dtype)) * _derivative(act, self._pending[layer].float())
            return via_proj
        raise ValueError(f"feedback: one_hop has no path from {t.layer} to the residual stream (supported: residual "
                         f"writers {', '.join(RESIDUAL_WRITERS)}; v_proj via o_proj; up_proj / gate_proj via "
                         f"down_proj; c_fc via c_proj); drop it from the eprop learner's params or use "
                         f"feedback: random")

    def capture(self, model: nn.Module) -> _Outputs | None:
        if not self._needed:
            return None
        self._outputs = _Outputs(self._needed, self._pick)
        return self._outputs

    def begin_batch(self) -> None:
        """Take this forward's captured activations (called once per observed forward, before ``signal``)."""
        if self._outputs is not None:
            self._pending = {n: v.pop(0) for n, v in self._outputs.kept.items() if v}
        self._back = {}

    def signal(self, target: FactorTarget, g: Tensor) -> Tensor:
        return self.links[target.layer](g)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


def _derivative(act: Callable[[Tensor], Tensor], z: Tensor) -> Tensor:
    """``act'(z)`` elementwise, by autograd through ``act`` alone."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        (d,) = torch.autograd.grad(act(z).sum(), z)
    return d


FEEDBACK_PATHS: dict[str, Callable[[], FeedbackPath]] = {"residual": ResidualPath, "one_hop": OneHopPath,
                                                         "random": RandomPath}


def register_feedback_path(name: str, factory: Callable[[], FeedbackPath], *, overwrite: bool = False) -> None:
    """Make ``feedback: name`` available to ``eprop``."""
    if name in FEEDBACK_PATHS and not overwrite:
        raise ValueError(f"a feedback path named {name!r} exists; pass overwrite=True to replace it")
    FEEDBACK_PATHS[name] = factory


def feedback_path(name: str) -> FeedbackPath:
    """A fresh instance of the feedback path registered as ``name``."""
    if name not in FEEDBACK_PATHS:
        raise ValueError(f"feedback: {name!r} is not a feedback path; choose one of "
                         f"{', '.join(sorted(FEEDBACK_PATHS))}")
    return FEEDBACK_PATHS[name]()
