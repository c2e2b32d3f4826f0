"""The census counts a module through the CountsOwnOps protocol, not by its class name."""

from __future__ import annotations

import torch
from torch import nn

from hybridtune.accounting import CountsOwnOps, count_ops
from hybridtune.conversion.modules import ThresholdNorm
from hybridtune.conversion.moe import SpikingMoE
from hybridtune.neurons import DynamicThreshold, GradedNeuron


class Doubler(nn.Module):
    """Any module with a class name the census has never heard of, that says what it computes."""

    census_counted = ("inner",)

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 4, bias=False)  # its work is included below: not counted again

    def forward(self, x):
        return 2 * self.inner(x)

    def census_ops(self, args, output, add):
        add("doubling", ann_mac=output.numel(), snn_ac=output.numel(), spike_driven=False)


def test_a_module_counts_its_own_ops_and_its_counted_children_are_skipped():
    net = nn.Sequential(Doubler())
    with count_ops(net) as census:
        net(torch.randn(3, 4))
    totals = census.totals()
    assert totals["ann_mac"] == 12.0 and totals["snn_ac"] == 12.0  # the inner Linear's 48 MACs are not added


def test_conversion_modules_implement_the_protocol():
    norm = ThresholdNorm(nn.LayerNorm(8), GradedNeuron(DynamicThreshold("rms", 8.0)))
    assert isinstance(norm, CountsOwnOps) and norm.census_counted == ("encoder",)
    assert callable(SpikingMoE.census_ops) and SpikingMoE.census_counted == ()  # counted via the protocol too
    with count_ops(norm) as census:
        norm(torch.randn(2, 3, 8))
    # LayerNorm: 3 MACs + 1 add per element on the ANN side; the rms and the mean stay float on the spiking side
    totals = census.totals()
    assert (totals["ann_mac"], totals["ann_ac"], totals["snn_mac"], totals["snn_ac"]) == (144.0, 48.0, 48.0, 48.0)
