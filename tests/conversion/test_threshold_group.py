"""Grouped dynamic thresholds (``conversion.threshold_group``): the strategy, the config, conversion and the census."""

import pytest
import torch

from hybridtune.accounting import build_report, count_ops
from hybridtune.config_schema import ConfigError
from hybridtune.conversion import ConversionConfig, convert, load_spiking, save_spiking
from hybridtune.neurons import (
    ChannelScaledThreshold,
    ClipFreeThreshold,
    DynamicThreshold,
    GradedNeuron,
    GroupedThreshold,
)
from hybridtune.testing import FAMILIES, tiny_batch, tiny_model


def test_grouped_threshold_is_the_inner_threshold_of_each_group():
    v = torch.randn(3, 5, 12)
    inner = ClipFreeThreshold(DynamicThreshold("mean_abs", divisor=4.0), cap=15)
    theta = GroupedThreshold(inner, 4)(v)
    assert theta.shape == v.shape
    for g in range(3):  # each group of 4 channels gets exactly what the inner strategy gives that slice alone
        part = v[..., 4 * g:4 * g + 4]
        assert torch.equal(theta[..., 4 * g:4 * g + 4], inner(part).expand_as(part))
    # one group of every channel is the ungrouped threshold
    assert torch.equal(GroupedThreshold(inner, 12)(v), inner(v).expand_as(v))


def test_grouped_threshold_hand_made_counts_with_a_k4_code():
    # two groups of two channels: a small and a large group; one threshold per token would zero the small one
    v = torch.tensor([[1.0, -1.0, 40.0, 20.0]])
    neuron = GradedNeuron(GroupedThreshold(DynamicThreshold("mean_abs", divisor=4.0), 2), phases=4)
    q, theta = neuron.quantize(v)
    assert theta.tolist() == [[0.25, 0.25, 7.5, 7.5]]
    assert q.tolist() == [[4.0, -4.0, 5.0, 3.0]]
    ungrouped, _ = GradedNeuron(DynamicThreshold("mean_abs", divisor=4.0), phases=4).quantize(v)
    assert ungrouped.tolist() == [[0.0, -0.0, 10.0, 5.0]]


def test_group_must_divide_the_width_and_be_a_positive_integer():
    with pytest.raises(ValueError, match="not a multiple of group=5"):
        GroupedThreshold(DynamicThreshold(), 5)(torch.randn(2, 12))
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="integer >= 1"):
            GroupedThreshold(DynamicThreshold(), bad)


def test_config_names_the_key_for_bad_groups():
    assert ConversionConfig(threshold_group=32).validate().threshold_group == 32
    assert "g32" in ConversionConfig(threshold_group=32).label
    with pytest.raises(ConfigError, match="conversion.threshold_group.*integer >= 1"):
        ConversionConfig(threshold_group=0).validate()
    with pytest.raises(ConfigError, match="conversion.threshold_group.*static"):
        ConversionConfig(threshold="static", threshold_group=8).validate()
    again = ConversionConfig.from_dict(ConversionConfig(threshold_group=16).to_dict())
    assert again.threshold_group == 16


@pytest.mark.parametrize("family", FAMILIES)
def test_convert_groups_every_channel_site_on_every_family(family):
    cfg = ConversionConfig(phases=4, divisor=4.0, threshold_group=8, compensation=False)
    snn = convert(tiny_model(family), cfg)
    neurons = [m for m in snn.modules() if isinstance(m, GradedNeuron)]
    assert neurons and all(isinstance(n.threshold, GroupedThreshold) and n.threshold.group == 8 for n in neurons)
    assert torch.isfinite(snn(**tiny_batch()).logits).all()


def test_group_sits_inside_the_channel_scale_and_outside_the_clip_free_floor():
    cfg = ConversionConfig(phases=4, divisor=4.0, threshold_group=8, compensation=False,
                           outliers=("channel_scale_out", "clip_free"))
    snn = convert(tiny_model("llama"), cfg, calib=torch.randint(3, 256, (64,)))
    scaled = [m.threshold for m in snn.modules() if isinstance(m, GradedNeuron)
              and isinstance(m.threshold, ChannelScaledThreshold)]
    assert scaled, "channel_scale_out should scale the norm outputs"
    for t in scaled:  # the group statistic and the floor are taken over v / s, as the ungrouped ones are
        assert isinstance(t.inner, GroupedThreshold) and isinstance(t.inner.inner, ClipFreeThreshold)


def test_grouped_conversion_saves_and_loads(tmp_path):
    cfg = ConversionConfig(phases=4, divisor=4.0, threshold_group=16, compensation=False)
    snn = convert(tiny_model("llama"), cfg)
    batch = tiny_batch()
    save_spiking(snn, tmp_path / "snn")
    again = load_spiking(tiny_model("llama"), tmp_path / "snn")
    assert torch.equal(again(**batch).logits, snn(**batch).logits)


def _rescale(snn):
    with count_ops(snn) as census:
        snn(**tiny_batch())
    return build_report(census)["float_ops"]["threshold_rescale"]["macs"]


def test_census_charges_one_rescale_per_group_and_consumer_output():
    one = _rescale(convert(tiny_model("llama"), ConversionConfig(phases=4, compensation=False)))
    grouped = {g: _rescale(convert(tiny_model("llama"), ConversionConfig(phases=4, threshold_group=g,
                                                                          compensation=False))) for g in (8, 16)}
    assert grouped[8] == 2 * grouped[16]  # halving the group doubles the partial sums to rescale
    for g, macs in grouped.items():  # tiny llama encodes widths 64 and 128: width / g rescales per output
        assert one * 64 // g <= macs <= one * 128 // g


def test_a_group_that_does_not_divide_a_site_fails_before_any_work():
    with pytest.raises(ConfigError, match=r"conversion.threshold_group.*48 does not divide.*\(64\)"):
        convert(tiny_model("llama"), ConversionConfig(threshold_group=48, compensation=False))
