"""A small step-by-step executor for the NIR node types hybridtune exports, to check exports against torch.

Semantics (NIR's, discretised with forward Euler at ``dt = 1`` -- one token per step): ``Affine: W x + b``,
``Linear: W x``, ``Scale: s * x``, ``Threshold: H(x - theta)`` with ``H(0) = 0``, ``LI: v += (v_leak - v + r x) /
tau`` (output ``v``), ``I: v += r x``; a node's input is the sum of its incoming edges. Edges that close a cycle
(e.g. the subtractive reset of an emulated LIF) carry the source's output of the *previous* step.

Example:
    >>> import nir, numpy as np, torch
    >>> g = nir.NIRGraph(nodes={"input": nir.Input({"input": np.array([1])}), "t": nir.Threshold(np.array([0.5])),
    ...                         "output": nir.Output({"output": np.array([1])})},
    ...                  edges=[("input", "t"), ("t", "output")])
    >>> run_graph(g, torch.tensor([[0.2], [0.7]])).squeeze(-1).tolist()
    [0.0, 1.0]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _order(nodes: dict[str, Any], edges: list[tuple[str, str]]) -> tuple[list[str], set[tuple[str, str]]]:
    """Depth-first order from the inputs; returns (evaluation order, edges that close a cycle)."""
    children: dict[str, list[str]] = {n: [] for n in nodes}
    for src, dst in edges:
        children[src].append(dst)
    post: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        seen.add(name)
        for child in children[name]:
            if child not in seen:
                visit(child)
        post.append(name)

    for start in [n for n, node in nodes.items() if type(node).__name__ == "Input"] + list(nodes):
        if start not in seen:
            visit(start)
    order = post[::-1]
    position = {n: i for i, n in enumerate(order)}
    back = {(s, d) for s, d in edges if position[d] <= position[s]}
    return order, back


def _t(array: Any, ref: Tensor) -> Tensor:
    return torch.as_tensor(array, dtype=ref.dtype, device=ref.device)


def _step(node: Any, x: Tensor, state: dict[str, Tensor], name: str) -> Tensor:
    kind = type(node).__name__
    if kind in ("Input", "Output"):
        return x
    if kind == "Affine":
        return x @ _t(node.weight, x).T + _t(node.bias, x)
    if kind == "Linear":
        return x @ _t(node.weight, x).T
    if kind == "Scale":
        return x * _t(node.scale, x)
    if kind == "Threshold":
        return (x > _t(node.threshold, x)).to(x.dtype)
    if kind == "LI":
        v = state.get(name, torch.zeros_like(x))
        v = v + (_t(node.v_leak, x) - v + _t(node.r, x) * x) / _t(node.tau, x)
        state[name] = v
        return v
    if kind == "I":
        v = state.get(name, torch.zeros_like(x)) + _t(node.r, x) * x
        state[name] = v
        return v
    raise ValueError(f"node {name!r}: NIR type {kind} is not one hybridtune exports (Affine, Linear, Scale, "
                     "Threshold, LI, I)")


def run_graph(graph: Any, inputs: Tensor) -> Tensor:
    """Run a flat NIR graph with one ``Input`` and one ``Output`` over ``inputs [T, ..., in]`` (time first);
    returns ``[T, ..., out]``."""
    nodes, edges = graph.nodes, [tuple(e) for e in graph.edges]
    order, back = _order(nodes, edges)
    sources: dict[str, list[str]] = {n: [] for n in nodes}
    for src, dst in edges:
        sources[dst].append(src)
    inputs_ = [n for n, node in nodes.items() if type(node).__name__ == "Input"]
    outputs_ = [n for n, node in nodes.items() if type(node).__name__ == "Output"]
    if len(inputs_) != 1 or len(outputs_) != 1:
        raise ValueError(f"run_graph needs one Input and one Output node; got {inputs_} / {outputs_}")
    state: dict[str, Tensor] = {}
    previous: dict[str, Tensor] = {}
    steps = []
    for x_t in inputs:
        current: dict[str, Tensor] = {}
        for name in order:
            if name == inputs_[0]:
                x = x_t
            else:
                terms = [(previous if (src, name) in back else current).get(src) for src in sources[name]]
                terms = [t for t in terms if t is not None]  # a back edge delivers nothing at the first step
                x = torch.stack(terms).sum(0) if len(terms) > 1 else terms[0]
            current[name] = _step(nodes[name], x, state, name)
        previous = current
        steps.append(current[outputs_[0]])
    return torch.stack(steps)


def nirtorch_node_map() -> dict[type, Any]:
    """``node_map`` for ``nirtorch.nir_to_torch`` covering the stateless nodes hybridtune exports.

    Affine and Linear are mapped here too: nirtorch 2.6's default Affine mapping assigns the bias to
    ``module.weight.bias`` (so the layer keeps its random initial bias). The stateful ``LI`` with its recurrent
    reset edge (emulated LIF) is run with :func:`run_graph` instead.
    """
    import nir

    class _Apply(torch.nn.Module):
        def __init__(self, node: Any):
            super().__init__()
            self.node = node

        def forward(self, x: Tensor) -> Tensor:
            return _step(self.node, x, {}, type(self.node).__name__)

    return {cls: _Apply for cls in (nir.Affine, nir.Linear, nir.Scale, nir.Threshold)}
