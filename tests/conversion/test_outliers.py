"""Outlier handling: Hadamard constructions, folding exact in float on every tiny family, state round trip, census."""

import copy

import pytest
import torch

from hybridtune.accounting import build_report, count_ops
from hybridtune.conversion import ConversionConfig, convert, load_spiking, save_spiking
from hybridtune.conversion.outliers import (
    apply_hadamard,
    available_outliers,
    get_outliers,
    hadamard,
    hadamard_adds,
    hadamard_factors,
    random_hadamard,
)
from hybridtune.conversion.recipe import get_recipe
from hybridtune.testing import FAMILIES, tiny_batch, tiny_model

ROTATABLE = ("llama", "qwen3")  # pre-norm RMSNorm decoders without norms on block outputs or MoE


@pytest.mark.parametrize("n", [4, 12, 20, 24, 64, 576, 1536])
def test_hadamard_is_hadamard_and_fast_transform_matches(n):
    h = hadamard(n)
    assert torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.float64))
    assert set(h.unique().tolist()) == {-1.0, 1.0}
    x = torch.randn(3, n, dtype=torch.float64)
    assert torch.allclose(apply_hadamard(x, n), x @ h)
    r = random_hadamard(n, seed=3)
    assert torch.allclose(r @ r.T, torch.eye(n, dtype=torch.float64))


def test_hadamard_costs_and_missing_orders():
    assert hadamard_factors(1536) == [12, 128]
    assert hadamard_adds(1536) == 1536 * (11 + 7)
    assert hadamard_adds(64) == 64 * 6
    assert hadamard_factors(10) is None
    with pytest.raises(ValueError, match="random orthogonal"):
        hadamard(10)
    q = random_hadamard(10)  # falls back to a random orthogonal matrix
    assert torch.allclose(q @ q.T, torch.eye(10, dtype=torch.float64))


def _fold(model, names):
    recipe = get_recipe(model.config.model_type)
    config = ConversionConfig(outliers=names, compensation=False).validate()
    plan = recipe.validate(model, config)
    state = {}
    for name in names:
        strategy = get_outliers(name)
        ids = torch.randint(3, 256, (2, 16))
        for site, entry in strategy.calibrate(model, plan, recipe, config, ids).items():
            state.setdefault(site, {}).update(entry)
        strategy.apply(model, plan, recipe, config, state)


@pytest.mark.parametrize("family", FAMILIES)
def test_online_hadamard_folding_keeps_ann_logits(family):
    batch = tiny_batch()
    model = tiny_model(family)
    before = model(**batch).logits
    _fold(model, ("hadamard_inputs",))
    assert any(n.endswith("hybridtune_input_transform") for n, _ in model.named_modules())
    torch.testing.assert_close(model(**batch).logits, before, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_residual_rotation_keeps_ann_logits_or_refuses_clearly(family):
    batch = tiny_batch()
    model = tiny_model(family)
    before = model(**batch).logits
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    if family not in ROTATABLE:
        with pytest.raises(ValueError, match="hadamard_inputs"):
            _fold(model, ("rotate",))
        assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())  # refused before any change
        return
    _fold(model, ("rotate", "hadamard_down"))
    torch.testing.assert_close(model(**batch).logits, before, atol=2e-5, rtol=1e-4)
    emb = model.get_input_embeddings().weight
    assert not torch.allclose(emb, weights["model.embed_tokens.weight"])  # really rotated
    assert model.get_output_embeddings().weight is not emb


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_smoothing_keeps_ann_logits(family):
    batch = tiny_batch()
    model = tiny_model(family)
    before = model(**batch).logits
    _fold(model, ("smooth",))
    torch.testing.assert_close(model(**batch).logits, before, atol=2e-5, rtol=1e-4)


def test_conversion_with_outliers_never_writes_into_shared_base_weights():
    base = tiny_model("llama")
    snapshot = {n: p.detach().clone() for n, p in base.named_parameters()}
    memo = {id(t): t for t in (*base.parameters(), *base.buffers())}
    convert(copy.deepcopy(base, memo), ConversionConfig(phases=6, outliers=("rotate", "hadamard_down", "smooth"), compensation=False),
            calib=torch.randint(3, 256, (64,)))
    assert all(torch.equal(p, snapshot[n]) for n, p in base.named_parameters())


def test_saved_state_reapplies_the_same_transforms(tmp_path):
    batch = tiny_batch()
    cfg = ConversionConfig(phases=4, divisor=4.0, outliers=("rotate", "hadamard_down", "channel_scale"), compensation=False)
    snn = convert(tiny_model("llama"), cfg, calib=torch.randint(3, 256, (64,)))
    save_spiking(snn, tmp_path / "snn")
    again = load_spiking(tiny_model("llama"), tmp_path / "snn")
    assert torch.equal(again(**batch).logits, snn(**batch).logits)


def test_unknown_strategy_and_bad_combinations_are_named():
    with pytest.raises(ValueError, match="choose from .*rotate"):
        convert(tiny_model("llama"), ConversionConfig(outliers=("rotation",), compensation=False))
    with pytest.raises(ValueError, match="static thresholds are per channel"):
        convert(tiny_model("llama"), ConversionConfig(threshold="static", outliers=("channel_scale",), compensation=False),
                calib=torch.randint(3, 256, (64,)))
    assert {"rotate", "hadamard_down", "hadamard_inputs", "channel_scale", "smooth"} <= set(available_outliers())


def _float_ops(snn):
    with count_ops(snn) as census:
        snn(**tiny_batch())
    return build_report(census)["float_ops"]


def test_static_mode_census_has_no_per_token_reduction():
    calib = torch.randint(3, 256, (64,))
    static = convert(tiny_model("llama"), ConversionConfig(threshold="static", phases=8, compensation=False), calib=calib)
    dynamic = convert(tiny_model("llama"), ConversionConfig(phases=8, compensation=False))
    per_token = {"threshold_stats", "threshold_divide_round", "threshold_rescale"}
    assert not per_token & set(_float_ops(static))
    assert per_token <= set(_float_ops(dynamic))


def test_census_charges_the_online_transform():
    snn = convert(tiny_model("llama"), ConversionConfig(phases=8, outliers=("hadamard_down",), compensation=False))
    ops = _float_ops(snn)
    batch = tiny_batch()
    tokens = batch["input_ids"].numel()
    layers = snn.config.num_hidden_layers
    n = snn.config.intermediate_size
    assert ops["online_hadamard"]["acs"] == tokens * layers * hadamard_adds(n)


def test_activation_strategies_touch_only_the_ffn_activation_sites():
    from hybridtune.neurons import ChannelScaledThreshold, DynamicThreshold, GradedNeuron

    cfg = ConversionConfig(phases=4, divisor=3.0, outliers=("channel_scale", "act_absmax"), compensation=False)
    snn = convert(tiny_model("llama"), cfg, calib=torch.randint(3, 256, (64,)))
    for name, module in snn.named_modules():
        if not isinstance(module, GradedNeuron):
            continue
        if "act_fn" in name:
            assert isinstance(module.threshold, ChannelScaledThreshold)
            assert (module.threshold.inner.mode, module.threshold.inner.divisor) == ("max_abs", 15.0)
        else:
            assert isinstance(module.threshold, DynamicThreshold) and module.threshold.mode == "mean_abs"
    with pytest.raises(ValueError, match="needs conversion.phases"):
        convert(tiny_model("llama"), ConversionConfig(phases=None, outliers=("act_absmax",), compensation=False))


def test_act_absmax_static_thresholds_are_the_calibrated_max_over_the_cap():
    from hybridtune.conversion.calibration import channel_statistics

    ids = torch.randint(3, 256, (64,))
    cfg = ConversionConfig(phases=6, threshold="static", outliers=("act_absmax",), calib_block=32, compensation=False)
    model = tiny_model("llama")
    recipe = get_recipe("llama")
    plan = recipe.validate(model, cfg)
    act = [s for s in plan.sites if s.module.endswith("act_fn")]
    expected = channel_statistics(model, type(plan)(plan.family, act), ids.reshape(2, 32), "max_abs")
    snn = convert(model, cfg, calib=ids)
    theta = snn.model.layers[0].mlp.act_fn.hybridtune_encoder.threshold.theta
    torch.testing.assert_close(theta, expected[act[0].name] / 63)


def test_absmax_threshold_never_saturates_a_k_phase_count():
    from hybridtune.neurons import DynamicThreshold, GradedNeuron

    v = torch.tensor([[0.01, -0.2, 100.0, 3.0]])
    n = GradedNeuron(DynamicThreshold("max_abs", divisor=15.0), phases=4)
    q, theta = n.quantize(v)
    assert q.tolist() == [[0.0, 0.0, 15.0, 0.0]] and float(theta) == pytest.approx(100.0 / 15.0)


def test_clip_free_threshold_never_saturates_and_keeps_the_fine_step_elsewhere():
    from hybridtune.neurons import ClipFreeThreshold, DynamicThreshold, GradedNeuron

    # token 0 is ordinary (mean step, no clip); token 1 has a massive channel that mean|v| / 4 would clip at 15
    v = torch.ones(2, 16)
    v[1, 0] = 400.0
    clipped = GradedNeuron(DynamicThreshold("mean_abs", divisor=4.0), phases=4)
    free = GradedNeuron(ClipFreeThreshold(DynamicThreshold("mean_abs", divisor=4.0), cap=15), phases=4)
    q_clip, theta_clip = clipped.quantize(v)
    q, theta = free.quantize(v)
    assert float(theta[0]) == float(theta_clip[0]) == pytest.approx(0.25)  # ordinary token: unchanged
    assert float(q_clip[1, 0]) == 15.0 and float(q_clip[1, 0] * theta_clip[1]) < 100.0  # clipped outlier
    assert float(q[1, 0]) == 15.0 and float(q[1, 0] * theta[1]) == pytest.approx(400.0)  # kept exactly
    assert bool((q.abs() <= 15).all())


def test_clip_free_strategy_floors_every_dynamic_site_and_is_charged():
    from hybridtune.neurons import ClipFreeThreshold, GradedNeuron

    cfg = ConversionConfig(phases=6, outliers=("channel_scale", "clip_free"), compensation=False)
    snn = convert(tiny_model("llama"), cfg, calib=torch.randint(3, 256, (64,)))
    neurons = [(n, m) for n, m in snn.named_modules() if isinstance(m, GradedNeuron)]
    for name, module in neurons:
        inner = module.threshold.inner if "act_fn" in name else module.threshold  # channel-scaled at the FFN act
        assert isinstance(inner, ClipFreeThreshold) and inner.cap == 63, name
    base = _float_ops(convert(tiny_model("llama"), cfg.with_(outliers=("channel_scale",)),
                              calib=torch.randint(3, 256, (64,))))
    ops = _float_ops(snn)
    elements = sum(v for k, v in ops["threshold_divide_round"].items() if k == "acs")  # one add per element
    assert ops["threshold_stats"]["acs"] == pytest.approx(base["threshold_stats"].get("acs", 0) + elements)
    with pytest.raises(ValueError, match="needs conversion.phases"):
        convert(tiny_model("llama"), ConversionConfig(phases=None, outliers=("clip_free",), compensation=False))
    with pytest.raises(ValueError, match="static thresholds"):
        convert(tiny_model("llama"), ConversionConfig(phases=8, threshold="static", outliers=("clip_free",),
                                                     compensation=False), calib=torch.randint(3, 256, (64,)))
