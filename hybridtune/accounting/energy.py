"""Energy conventions and the pure arithmetic of the report (docs/architecture.md, energy conventions).

Two stated conventions, per operation: 45 nm FP32 (0.9 pJ per accumulate, 4.6 pJ per multiply-accumulate) and
INT8 (0.03 pJ per add, 0.23 pJ per MAC). A synaptic operation (one spike arriving at one synapse) is an accumulate;
with base-2 counting the spike carries a power of two, so it is a shifted accumulate, costed as an accumulate.
Nonlinear evaluations (exp, SiLU/GELU, rsqrt, division) count as one MAC each: a lower bound. Memory traffic
(weights, activations, KV cache) is not modelled at all.

Example:
    >>> e = energy_pj(sops=10, macs=2, acs=1, convention="fp32_45nm")
    >>> round(e, 3)
    19.1
    >>> round(energy_ratio(ann_macs=100, ann_acs=0, sops=200, macs=0, acs=0, convention="fp32_45nm"), 4)
    2.5556
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Convention:
    """Energy per accumulate (``ac_pj``) and per multiply-accumulate (``mac_pj``), in picojoules."""

    name: str
    ac_pj: float
    mac_pj: float
    source: str


CONVENTIONS: dict[str, Convention] = {
    "fp32_45nm": Convention("fp32_45nm", 0.9, 4.6, "45 nm CMOS, 32-bit float (Horowitz, ISSCC 2014)"),
    "int8": Convention("int8", 0.03, 0.23, "45 nm CMOS, 8-bit integer add / MAC (Horowitz, ISSCC 2014)"),
}

NOT_MODELLED = ("memory traffic (weight, activation and KV-cache reads and writes) is not modelled; "
                "neither is the neuron's own membrane update or the cost of routing spikes")


def int_convention(activation_bits: int, weight_bits: int = 8, accumulator_bits: int = 32) -> Convention:
    """Integer convention for a given activation width, with accumulators wide enough for the sums.

    Interpolated from Horowitz (ISSCC 2014, 45 nm): an add costs 0.03 pJ at 8 bits and 0.1 pJ at 32 bits (linear in
    the width), a multiply 0.2 pJ at 8 x 8 bits and ~3.1 pJ at 32 x 32 (proportional to the product of the widths).
    A MAC is a ``activation_bits x weight_bits`` multiply plus an ``accumulator_bits`` add; an accumulate (a spike's
    synaptic op, a shifted add of a weight) is one ``accumulator_bits`` add. 32-bit accumulators hold the sum of
    ~2^12 products of a 9-bit activation and an 8-bit weight (K = 8 phases, fan-in up to 1,536 here): wide enough.

    Example:
        >>> c = int_convention(9)
        >>> c.name, round(c.ac_pj, 3), round(c.mac_pj, 4)
        ('int9_acc32', 0.1, 0.325)
    """
    if min(activation_bits, weight_bits, accumulator_bits) < 1:
        raise ValueError("int_convention: bit widths must be >= 1")
    add = 0.03 + (accumulator_bits - 8) * (0.07 / 24)
    mult = 0.2 * activation_bits * weight_bits / 64
    return Convention(f"int{activation_bits}_acc{accumulator_bits}", add, mult + add,
                      f"45 nm CMOS, {activation_bits}-bit activation x {weight_bits}-bit weight multiply + "
                      f"{accumulator_bits}-bit accumulate, interpolated from Horowitz, ISSCC 2014")


def get_convention(name: str | Convention) -> Convention:
    """The named convention (``"fp32_45nm"`` or ``"int8"``) or a ValueError listing them."""
    if isinstance(name, Convention):
        return name
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise ValueError(f"unknown energy convention {name!r}; choose one of {', '.join(CONVENTIONS)}") from None


def energy_pj(sops: float, macs: float, acs: float, convention: str | Convention) -> float:
    """Energy of a spiking forward: SOPs and float adds at the accumulate cost, float MACs at the MAC cost."""
    c = get_convention(convention)
    return sops * c.ac_pj + macs * c.mac_pj + acs * c.ac_pj


def ann_energy_pj(macs: float, acs: float, convention: str | Convention) -> float:
    """Energy of the ANN's forward: every MAC at the MAC cost, every add at the accumulate cost."""
    return energy_pj(0.0, macs, acs, convention)


def energy_ratio(ann_macs: float, ann_acs: float, sops: float, macs: float, acs: float,
                 convention: str | Convention) -> float:
    """ANN energy / SNN energy for the same forward (> 1: the SNN needs less)."""
    snn = energy_pj(sops, macs, acs, convention)
    return ann_energy_pj(ann_macs, ann_acs, convention) / snn if snn > 0 else float("inf")


def breakeven_spikes_per_neuron(convention: str | Convention) -> float:
    """Spikes per neuron at which a fully spike-driven linear costs what its MACs cost (MAC / AC energy).

    Example:
        >>> round(breakeven_spikes_per_neuron("fp32_45nm"), 3)
        5.111
    """
    c = get_convention(convention)
    return c.mac_pj / c.ac_pj
