"""``energy_report``: spikes, SOPs, float MACs by op, and energy against the ANN for the same forward.

Definitions (also written into every report under ``definitions``):

- *spikes per neuron*: spikes / neuron-steps (a neuron-step is one encoded element at one token); at T = 1 with
  graded spikes this is SOP / dense-MAC for the consumers of that neuron.
- *silent share*: neuron-steps that emitted no spike.
- *SOPs*: sum over spikes of the synapses each drives (fan-out).
- *ANN ops*: what the same model computes as an ANN for the same tokens (counted from the same forward).
- *spike-driven share*: share of the ANN's MACs that the spiking model performs as SOPs instead.
- *energy ratio*: ANN energy / spiking energy under a convention (> 1: the spiking model needs less).

Example:
    >>> import torch
    >>> from hybridtune.neurons import GradedNeuron, SpikingLinear, StaticThreshold
    >>> layer = SpikingLinear.from_linear(torch.nn.Linear(2, 3, bias=False),
    ...                                   GradedNeuron(StaticThreshold(torch.tensor(1.0))))
    >>> net = torch.nn.Sequential(layer)
    >>> r = energy_report(net, inputs=torch.tensor([[2.0, 0.0]]))
    >>> r["total"]["sops"], r["total"]["ann_macs"], r["total"]["spikes_per_neuron"]
    (6.0, 6.0, 1.0)
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..neurons import SpikeStats
from .census import Census, count_ops, layer_of
from .energy import CONVENTIONS, NOT_MODELLED, Convention, energy_pj, energy_ratio, get_convention

DEFINITIONS = {
    "spikes_per_neuron": "spikes / neuron-steps (one encoded element at one token and time step), under the "
                         "encoders' own counting (base-2: popcount of the count)",
    "spikes_per_neuron_unary": "the same counts under unary counting (|count| spikes per neuron)",
    "silent_share": "share of neuron-steps with no spike",
    "sops": "synaptic operations: sum over spikes of the fan-out (synapses driven)",
    "ann_macs": "multiply-accumulates of the same model run as an ANN on the same tokens",
    "float_macs": "multiply-accumulates the spiking model still does in float (named in float_ops)",
    "spike_driven_share": "share of the ANN's MACs that the spiking model replaces by SOPs",
    "energy_ratio": "ANN energy / spiking-model energy for the same forward under a convention",
}


def energy_report(model: nn.Module, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, *,
                  inputs: Tensor | None = None, batch_size: int = 1, conventions: Iterable[str] = tuple(CONVENTIONS),
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``model`` on ``input_ids`` ([B, L] token ids; or a plain module on ``inputs``) and report its accounting.

    Counts are exact for these tokens: every spiking module's statistics are reset for the run and restored after.
    ``extra`` entries are copied into the report (e.g. ``perplexity``).
    """
    if input_ids is None and inputs is None:
        raise ValueError("energy_report needs input_ids (token ids [B, L]) or inputs (a tensor for a plain module)")
    was_training = model.training
    model.eval()
    try:
        with count_ops(model) as census, torch.no_grad():
            if inputs is not None:
                model(inputs)
                census.tokens = int(inputs.numel() // max(1, inputs.shape[-1]))
            else:
                device = next(model.parameters()).device
                for start in range(0, input_ids.shape[0], batch_size):
                    ids = input_ids[start:start + batch_size].to(device)
                    mask = None if attention_mask is None else attention_mask[start:start + batch_size].to(device)
                    model(input_ids=ids, attention_mask=mask)
                census.tokens = int(input_ids.numel() if attention_mask is None else attention_mask.sum())
    finally:
        model.train(was_training)
    report = build_report(census, conventions)
    info = getattr(model, "hybridtune_conversion", None)
    if info is not None:
        report["conversion"] = {"config": info.config.to_dict(), "family": info.family,
                                "label": info.config.label, "plan": info.plan.summary()}
        report["stays_float"] = list(info.plan.float_notes)
    report.update(extra or {})
    return report


def _round(x: float) -> float:
    return float(f"{x:.6g}") if math.isfinite(x) else x


def _summary(stats: SpikeStats, ops: dict[str, float], conventions: Iterable[str | Convention]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "spikes": stats.spikes, "neuron_steps": stats.neuron_steps,
        "spikes_per_neuron": _round(stats.spikes_per_neuron),
        "spikes_per_neuron_unary": _round(stats.spikes_per_neuron_unary), "silent_share": _round(stats.silent_share),
        "sops": stats.sops, "float_macs": ops["snn_mac"], "float_acs": ops["snn_ac"],
        "ann_macs": ops["ann_mac"], "ann_acs": ops["ann_ac"],
        "spike_driven_macs": ops["spike_driven_mac"],
        "spike_driven_share": _round(ops["spike_driven_mac"] / ops["ann_mac"]) if ops["ann_mac"] else 0.0,
        "energy": {},
    }
    for conv in conventions:
        name = get_convention(conv).name
        snn = energy_pj(stats.sops, ops["snn_mac"], ops["snn_ac"], conv)
        ann = energy_pj(0.0, ops["ann_mac"], ops["ann_ac"], conv)
        out["energy"][name] = {
            "snn_pj": snn, "ann_pj": ann,
            "ratio": _round(energy_ratio(ops["ann_mac"], ops["ann_ac"], stats.sops, ops["snn_mac"], ops["snn_ac"],
                                         conv)),
        }
    return out


def build_report(census: Census, conventions: Iterable[str | Convention] = tuple(CONVENTIONS)) -> dict[str, Any]:
    """Assemble the report dict from a finished census (pure: no model access).

    ``conventions``: names in ``CONVENTIONS`` or ``Convention`` objects (e.g. ``int_convention(bits)``)."""
    conventions = [get_convention(c) for c in conventions]
    layer_stats: dict[str, SpikeStats] = defaultdict(SpikeStats)
    for name, s in census.stats.items():
        layer_stats[layer_of(name)] += s
    layer_ops: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(
        ("ann_mac", "ann_ac", "snn_mac", "snn_ac", "spike_driven_mac"), 0.0))
    float_ops: dict[str, dict[str, float]] = defaultdict(lambda: {"macs": 0.0, "acs": 0.0})
    spike_ops: dict[str, float] = defaultdict(float)
    for (layer, op), rec in census.ops.items():
        for k in layer_ops[layer]:
            layer_ops[layer][k] += getattr(rec, k)
        if rec.snn_mac or rec.snn_ac:
            float_ops[op]["macs"] += rec.snn_mac
            float_ops[op]["acs"] += rec.snn_ac
        if rec.spike_driven_mac:
            spike_ops[op] += rec.spike_driven_mac
    total = SpikeStats()
    for s in census.stats.values():
        total += s
    labels = sorted(set(layer_stats) | set(layer_ops), key=_layer_key)
    layers = []
    for label in labels:
        row = {"layer": label, **_summary(layer_stats[label], layer_ops[label], conventions)}
        layers.append(row)
    encoders = {name: {**s.as_dict(), "layer": layer_of(name)} for name, s in census.stats.items() if s.neuron_steps}
    report = {
        "tokens": census.tokens,
        "total": _summary(total, census.totals(), conventions),
        "layers": layers,
        "float_ops": {op: v for op, v in sorted(float_ops.items())},
        "spike_driven_ops": {op: {"ann_macs_replaced": v} for op, v in sorted(spike_ops.items())},
        "encoders": encoders,
        "conventions": {c.name: {"ac_pj": c.ac_pj, "mac_pj": c.mac_pj, "source": c.source} for c in conventions},
        "not_modelled": NOT_MODELLED,
        "definitions": DEFINITIONS,
    }
    if census.tokens:
        report["total"]["sops_per_token"] = total.sops / census.tokens
        report["total"]["ann_macs_per_token"] = census.totals()["ann_mac"] / census.tokens
    return report


def _layer_key(label: str) -> tuple[int, int | str]:
    if label.isdigit():
        return (1, int(label))
    return ({"embed": 0, "head": 2}.get(label, 3), label)


# --------------------------------------------------------------------------------------------------- writing


def write_report(report: dict[str, Any], directory: str | os.PathLike, *, plot: bool = True) -> dict[str, Path]:
    """Write ``report.json`` and, with ``plot``, ``firing_rate.png`` (per layer) and ``ppl_vs_spikes.png``.

    The second plot needs ``report["points"]``: a list of ``{"spikes_per_neuron", "ppl_ratio"}`` (or ``ppl``)
    with at least two entries. Files are written to temporaries and renamed into place.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = {"json": _atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=_jsonable))}
    if plot:
        written.update(plot_report(report, out))
    return written


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _atomic_write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("writing the report's PNG plots needs matplotlib: pip install matplotlib "
                          "(or call write_report(..., plot=False) for the JSON alone)") from exc
    return plt


def plot_report(report: dict[str, Any], directory: Path) -> dict[str, Path]:
    """``firing_rate.png`` (spikes per neuron and silent share per layer) and, with points, ``ppl_vs_spikes.png``."""
    plt = _pyplot()
    written = {}
    rows = [r for r in report.get("layers", []) if r.get("neuron_steps")]
    if rows:
        fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(rows) + 3), 3.5))
        labels = [r["layer"] for r in rows]
        ax.bar(range(len(rows)), [r["spikes_per_neuron"] for r in rows], color="tab:blue")
        ax.set_xticks(range(len(rows)), labels, rotation=90, fontsize=7)
        ax.set_xlabel("layer")
        ax.set_ylabel("spikes per neuron")
        ax2 = ax.twinx()
        ax2.plot(range(len(rows)), [r["silent_share"] for r in rows], color="tab:orange", marker=".")
        ax2.set_ylabel("silent share", color="tab:orange")
        ax2.set_ylim(0, 1)
        ax.set_title(report.get("title", "firing rate per layer"))
        fig.tight_layout()
        written["firing_rate"] = _save(fig, directory / "firing_rate.png", plt)
    points = [p for p in report.get("points", []) if p.get("spikes_per_neuron") is not None]
    if len(points) >= 2:
        key = "ppl_ratio" if all("ppl_ratio" in p for p in points) else "ppl"
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for p in points:
            ax.scatter(p["spikes_per_neuron"], p[key], color="tab:blue")
            if p.get("label"):
                ax.annotate(p["label"], (p["spikes_per_neuron"], p[key]), fontsize=6)
        ax.set_xlabel("spikes per neuron")
        ax.set_ylabel("perplexity / ANN" if key == "ppl_ratio" else "perplexity")
        ax.set_yscale("log")
        ax.set_title("perplexity against spikes per neuron")
        fig.tight_layout()
        written["ppl_vs_spikes"] = _save(fig, directory / "ppl_vs_spikes.png", plt)
    return written


def _save(fig, path: Path, plt) -> Path:
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def load_report(directory: str | os.PathLike) -> dict[str, Any]:
    """Read ``report.json`` from a directory written by :func:`write_report`."""
    path = Path(directory) / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"no report.json in {directory}; write one with hybridtune eval --spiking DIR "
                                "or hybridtune.accounting.write_report")
    return json.loads(path.read_text())


def format_report(report: dict[str, Any]) -> str:
    """A short human-readable summary (what ``hybridtune report`` prints)."""
    t = report["total"]
    lines = [f"tokens {report.get('tokens')}: spikes/neuron {t['spikes_per_neuron']:.3f}, silent "
             f"{100 * t['silent_share']:.1f}%, SOPs {t['sops']:.4g}, float MACs {t['float_macs']:.4g} "
             f"(ANN MACs {t['ann_macs']:.4g}), spike-driven share {100 * t['spike_driven_share']:.1f}%"]
    for name, e in t["energy"].items():
        lines.append(f"energy {name}: spiking {e['snn_pj'] / 1e6:.4g} uJ vs ANN {e['ann_pj'] / 1e6:.4g} uJ "
                     f"-> {e['ratio']:.3f}x")
    if "perplexity" in report:
        lines.append(f"perplexity {report['perplexity']}")
    floats = sorted(report.get("float_ops", {}).items(), key=lambda kv: -(kv[1]["macs"] + kv[1]["acs"]))
    if floats:
        lines.append("stays float (MACs / adds): " + ", ".join(f"{op} {v['macs']:.3g}/{v['acs']:.3g}"
                                                               for op, v in floats[:8]))
    lines.append(f"not modelled: {report.get('not_modelled', NOT_MODELLED)}")
    return "\n".join(lines)
