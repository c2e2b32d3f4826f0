"""Export the spiking parts of a converted block (and its spiking LoRA adapters) to NIR, naming what NIR cannot hold.

NIR (Neuromorphic Intermediate Representation; Pedersen et al., Nature Communications 15, 8122, 2024; the ``nir``
package) is a graph of continuous-time primitives -- ``Affine``, ``Linear``, ``Scale``, ``Threshold``, ``LI``,
``LIF``, ``IF`` ... -- whose incoming edges are summed. Per decoder block this module writes one sub-graph per linear
layer:

* the frozen base weight as ``Affine(W, b + compensation)`` fed by the layer's *encoded* input -- the dequantised
  spikes its input encoder emits (the encoder itself is listed as left out unless it can be emulated, see below);
* with an adapter, the spiking LoRA path summed with it: ``Linear(A) -> neuron -> Linear(B) -> Scale(alpha / r)``.
  The neuron becomes

  - ``heaviside``: ``Threshold(theta)`` (exact);
  - ``mt`` with a cap ``n``: ``round(h / theta)`` clamped to ``[-n, n]`` as ``2n`` ``Threshold`` nodes at
    ``(k - 1/2) theta`` (and their mirror images through ``Scale(-1)``) summed into ``Scale(theta)`` -- the T = 1
    multi-threshold neuron emulated exactly (up to ties at exact half-steps); without a cap it is left out;
  - ``lif`` (``v = decay v + h``, spike ``v > theta``, *subtractive* reset): NIR's ``LIF`` resets to ``v_reset``
    (a hard reset), so it is emulated exactly as ``LI`` (the membrane; ``tau = 1 / (1 - decay)``, ``r = tau``,
    forward Euler with ``dt = 1`` token) -> ``Threshold(theta)`` with a recurrent ``Scale(-decay theta)`` edge
    back into the ``LI`` (the reset, arriving one step later). Document-boundary resets are left out.

Attention's activation-by-activation matmuls, softmax, norms, rotary, the GLU product, the SiLU/GELU evaluation,
per-token (dynamic) thresholds and uncapped multi-threshold encoders have no NIR node: they are listed in the
graph's metadata (``metadata["hybridtune"]``, a JSON string) and returned, never dropped silently.

Example:
    >>> import hybridtune.conversion as hc
    >>> from hybridtune.testing import tiny_model
    >>> graph, left_out = export_block(hc.convert(tiny_model("llama"), hc.ConversionConfig(compensation=False)), 0)
    >>> {"mlp.down_proj", "self_attn.q_proj"} <= set(graph.nodes), any("softmax" in item for item in left_out)
    (True, True)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from hybridtune._version import __version__
from hybridtune.module_kinds import is_conv1d, is_linear_like
from hybridtune.neurons import PER_TOKEN_THRESHOLDS

# what a decoder block computes that NIR has no node for (always left out)
BLOCK_LEFT_OUT = (
    "attention: the activation-by-activation matmuls Q K^T and P V",
    "attention softmax",
    "RMSNorm / LayerNorm (a per-token reduction and division)",
    "rotary position embedding",
    "the GLU product act(gate) * up (activation by activation) and the SiLU/GELU evaluation",
    "the residual-stream adds between sub-layers (the graph holds the linear layers, not their wiring)",
)

OUTPUT_ENCODER = "hybridtune_encoder"  # the child conversion attaches to a module whose output it encodes

INSTALL_HINT = "NIR export needs the nir package: pip install 'hybridtune[nir]' (or pip install nir)"


def _nir():
    try:
        import nir
    except ImportError as exc:  # optional extra
        raise ImportError(INSTALL_HINT) from exc
    return nir


def _np(t: torch.Tensor) -> np.ndarray:
    # the model's own precision (float32 or float64; half types widen to float32): thresholds must see the same
    # numbers the torch module computes with
    t = t.detach().to("cpu")
    return (t if t.dtype in (torch.float32, torch.float64) else t.float()).numpy().copy()


@dataclass
class LayerExport:
    """One linear layer's NIR nodes and edges (names local to its sub-graph) plus what was left out."""

    nodes: dict[str, Any] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    represented: list[str] = field(default_factory=list)


def _encoder_note(name: str, encoder: nn.Module | None) -> str | None:
    """Why the layer's input encoder is not in the graph (None: there is no encoder)."""
    if encoder is None:
        return None
    threshold = getattr(encoder, "threshold", None)
    kind = type(threshold).__name__ if threshold is not None else type(encoder).__name__
    if isinstance(threshold, PER_TOKEN_THRESHOLDS):
        return (f"{name}: input encoder {type(encoder).__name__} with a per-token threshold ({kind}: mean|v|, rms or "
                "max|v| per token): no NIR node; the graph's input is the encoder's output (dequantised spikes "
                "q * theta)")
    cap = getattr(encoder, "max_spikes", None)
    return (f"{name}: input encoder {type(encoder).__name__} ({kind}, max_spikes={cap}): a multi-level graded neuron "
            "on an unbounded analog input; the graph's input is the encoder's output (dequantised spikes)")


def _neuron_path(nir, out: LayerExport, neuron, prefix: str) -> tuple[str, str] | None:
    """Add the bottleneck neuron's nodes; returns ``(entry node, exit node)`` or None when it is left out."""
    s = neuron.strategy
    theta = neuron.threshold().detach()
    if s.kind == "heaviside":
        out.nodes[f"{prefix}neuron"] = nir.Threshold(_np(theta))
        return f"{prefix}neuron", f"{prefix}neuron"
    if s.kind == "mt":
        cap = s.op_max_spikes
        if cap <= 0:
            out.left_out.append(f"{prefix}neuron: uncapped multi-threshold neuron (max_spikes=0) has unboundedly many "
                                "levels; no finite Threshold chain emulates it")
            return None
        entry, exit_ = f"{prefix}neuron.in", f"{prefix}neuron.out"
        out.nodes[entry] = nir.Scale(np.ones(theta.shape[0]))  # fan-out point
        out.nodes[f"{prefix}neuron.neg_in"] = nir.Scale(-np.ones(theta.shape[0]))
        out.nodes[f"{prefix}neuron.neg_out"] = nir.Scale(-np.ones(theta.shape[0]))
        out.nodes[exit_] = nir.Scale(_np(theta))  # y = s * theta
        out.edges += [(entry, f"{prefix}neuron.neg_in"), (f"{prefix}neuron.neg_out", exit_)]
        for k in range(1, cap + 1):
            level = _np((k - 0.5) * theta)
            out.nodes[f"{prefix}neuron.pos{k}"] = nir.Threshold(level)
            out.nodes[f"{prefix}neuron.neg{k}"] = nir.Threshold(level)
            out.edges += [(entry, f"{prefix}neuron.pos{k}"), (f"{prefix}neuron.pos{k}", exit_),
                          (f"{prefix}neuron.neg_in", f"{prefix}neuron.neg{k}"),
                          (f"{prefix}neuron.neg{k}", f"{prefix}neuron.neg_out")]
        out.represented.append(f"{prefix}neuron: mt, max_spikes={cap}, emulated by {2 * cap} Threshold nodes")
        return entry, exit_
    decay = neuron.decay().detach().double()
    tau = (1.0 / (1.0 - decay.clamp(max=1.0 - 1e-12))).to(theta.dtype)
    decay = decay.to(theta.dtype)
    membrane, spike, reset = f"{prefix}neuron.membrane", f"{prefix}neuron", f"{prefix}neuron.reset"
    out.nodes[membrane] = nir.LI(tau=_np(tau), r=_np(tau), v_leak=np.zeros(theta.shape[0]))
    out.nodes[spike] = nir.Threshold(_np(theta))
    out.nodes[reset] = nir.Scale(_np(-decay * theta))
    out.edges += [(membrane, spike), (spike, reset), (reset, membrane)]
    out.represented.append(f"{prefix}neuron: lif as LI + Threshold + recurrent Scale(-decay*theta) (subtractive "
                           "reset, dt = 1 token)")
    out.left_out.append(f"{prefix}neuron: LIF state resets at document starts / padding (no NIR node)")
    return membrane, spike


def export_linear(module: nn.Module, name: str) -> LayerExport:
    """NIR nodes for one linear layer: ``input -> Affine -> output`` plus, for a ``SpikingLoraLinear``, each active
    adapter's ``A -> neuron -> B -> Scale`` path into the same output."""
    nir = _nir()
    out = LayerExport()
    lora = hasattr(module, "lora_A") and hasattr(module, "get_base_layer")
    base = module.get_base_layer() if lora else module
    if is_conv1d(base):
        weight, bias = base.weight.t(), base.bias
    else:
        weight = base.weight
        bias = base.bias_total() if hasattr(base, "bias_total") else base.bias
    note = _encoder_note(name, getattr(base, "encoder", None))
    if note:
        out.left_out.append(note)
    d_out, d_in = weight.shape
    bias = torch.zeros(d_out) if bias is None else bias
    out.nodes["input"] = nir.Input({"input": np.array([d_in])})
    out.nodes["output"] = nir.Output({"output": np.array([d_out])})
    out.nodes["base"] = nir.Affine(_np(weight), _np(bias))
    # the sum of the base and adapter paths as a node of its own: nirtorch returns the inputs of an Output node
    # with several incoming edges as a tuple instead of summing them
    out.nodes["sum"] = nir.Scale(np.ones(d_out, dtype=_np(weight).dtype))
    out.edges += [("input", "base"), ("base", "sum"), ("sum", "output")]
    out.represented.append(f"{name}: base Affine {d_in} -> {d_out}")
    if not lora:
        return out
    for adapter in module.active_adapters:
        if adapter not in module.lora_A or adapter not in getattr(module, "lora_neuron", {}):
            continue
        prefix = f"lora.{adapter}."
        path = _neuron_path(nir, out, module.lora_neuron[adapter], prefix)
        if path is None:
            continue
        if module.lora_B[adapter].bias is not None:
            out.left_out.append(f"{name}: {prefix}B bias (lora_bias=True) is not exported")
        out.nodes[f"{prefix}A"] = nir.Linear(_np(module.lora_A[adapter].weight))
        out.nodes[f"{prefix}B"] = nir.Linear(_np(module.lora_B[adapter].weight))
        out.nodes[f"{prefix}scale"] = nir.Scale(np.full(d_out, float(module.scaling[adapter])))
        out.edges += [("input", f"{prefix}A"), (f"{prefix}A", path[0]), (path[1], f"{prefix}B"),
                      (f"{prefix}B", f"{prefix}scale"), (f"{prefix}scale", "sum")]
        out.represented.append(f"{name}: spiking LoRA {adapter!r} A -> {module.lora_neuron[adapter].kind} -> B -> "
                               f"Scale({float(module.scaling[adapter]):g})")
    return out


def _is_linear(module: nn.Module) -> bool:
    return is_linear_like(module) or (
        hasattr(module, "lora_A") and hasattr(module, "get_base_layer"))


def _hf_model(model: nn.Module) -> nn.Module:
    inner = getattr(getattr(model, "base_model", None), "model", None)
    return inner if isinstance(inner, nn.Module) else model


def block_module(model: nn.Module, index: int) -> tuple[nn.Module, str]:
    """The decoder block ``index`` of a (converted, possibly peft-wrapped) model and its path."""
    from hybridtune.conversion import conversion_info, get_recipe, is_converted

    hf = _hf_model(model)
    if not is_converted(hf):
        raise ValueError("export needs a converted spiking model (hybridtune.conversion.convert / load_spiking)")
    layout = getattr(get_recipe(conversion_info(hf).family), "layout", None)
    path = getattr(layout, "layers", "model.layers")
    blocks = hf.get_submodule(path)
    if not 0 <= index < len(blocks):
        raise ValueError(f"block {index} does not exist: the model has {len(blocks)} blocks (0..{len(blocks) - 1})")
    return blocks[index], f"{path}.{index}"


def export_block(model: nn.Module, index: int):
    """``(NIRGraph, left_out)`` of block ``index``: one sub-graph per linear layer, plus the block-level list of what
    NIR cannot represent (also in ``graph.metadata["hybridtune"]``)."""
    nir = _nir()
    block, path = block_module(model, index)
    nodes, left_out, represented = {}, list(BLOCK_LEFT_OUT), []
    for name, module in block.named_modules():
        if not name or not _is_linear(module) or any(name.startswith(p + ".") for p in nodes):
            continue
        layer = export_linear(module, name)
        meta = {"hybridtune": json.dumps({"module": f"{path}.{name}", "left_out": layer.left_out,
                                          "represented": layer.represented})}
        nodes[name] = nir.NIRGraph(nodes=layer.nodes, edges=layer.edges, metadata=meta)
        left_out += layer.left_out
        represented += layer.represented
    for name, module in block.named_modules():  # encoders on a norm's or activation's output feed the linears
        encoder = getattr(module, OUTPUT_ENCODER, None)
        note = _encoder_note(f"{name} output", encoder) if isinstance(encoder, nn.Module) else None
        if note:
            left_out.append(note.replace("input encoder", "encoder", 1))
    info = {"block": path, "format": "hybridtune-nir", "hybridtune": __version__, "time_step": "1 token (dt = 1)",
            "input": "each sub-graph's input is the layer's encoded input (dequantised spikes); its output is the "
                     "layer's output", "left_out": left_out, "represented": represented}
    return nir.NIRGraph(nodes=nodes, edges=[], metadata={"hybridtune": json.dumps(info)}), left_out


def export_model(model: nn.Module, blocks: int | None = None):
    """``(NIRGraph, left_out)`` with the layer sub-graphs of blocks ``0 .. blocks - 1`` (all when None), named
    ``block{i}.{layer}`` (one level of nesting: nir 1.0.8 cannot infer the types of graphs nested two deep)."""
    nir = _nir()
    hf = _hf_model(model)
    block_module(model, 0)  # refuses unconverted models
    from hybridtune.conversion import conversion_info, get_recipe

    layout = getattr(get_recipe(conversion_info(hf).family), "layout", None)
    total = len(hf.get_submodule(getattr(layout, "layers", "model.layers")))
    count = total if blocks is None else blocks
    if not 1 <= count <= total:
        raise ValueError(f"--blocks {blocks}: the model has {total} blocks; choose 1..{total}")
    nodes, left_out, represented = {}, [], []
    for i in range(count):
        graph, missing = export_block(model, i)
        nodes.update({f"block{i}.{name}": sub for name, sub in graph.nodes.items()})
        left_out += [f"block{i}: {m}" for m in missing if m not in BLOCK_LEFT_OUT]
        represented += [f"block{i}: {r}" for r in read_info(graph)["represented"]]
    left_out = [f"every block: {m}" for m in BLOCK_LEFT_OUT] + left_out + [
        "embeddings, final norm and lm_head (outside the decoder blocks)"]
    info = {"format": "hybridtune-nir", "hybridtune": __version__, "blocks": count, "of_blocks": total,
            "time_step": "1 token (dt = 1)",
            "input": "each sub-graph's input is the layer's encoded input (dequantised spikes); its output is the "
                     "layer's output", "left_out": left_out, "represented": represented}
    return nir.NIRGraph(nodes=nodes, edges=[], metadata={"hybridtune": json.dumps(info)}), left_out


def read_info(graph) -> dict:
    """The ``hybridtune`` metadata of an exported (or read-back) graph as a dict."""
    raw = graph.metadata.get("hybridtune", "{}")
    return json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
