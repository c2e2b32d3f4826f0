"""The fused CUDA kernels against the pure-PyTorch reference, on a GPU (skipped without one).

Inputs are small integers (x, A in {-1, 0, 1}, sparse where K is large) and thresholds / decays are exact binary
fractions, so h = x A^T and every membrane value is exact in fp32, bf16 and fp16 alike: the kernel and the reference
must fire the very same spikes (compared with ``torch.equal``), and everything downstream is compared at dtype
tolerances. Stages are tested separately: spikes and state, the output given those spikes, each gradient; then the
public op with the kernel registered, eager and under ``torch.compile``.
"""

from __future__ import annotations

import pytest
import torch

from hybridtune.ops.reference import spike_lora_backward, spike_lora_forward

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]

DEVICE = "cuda"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
EPS = {torch.float32: 1e-5, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
SURROGATES = ["atan", "fast_sigmoid", "sigmoid", "straight_through"]
SLOPES = {"atan": 2.0, "fast_sigmoid": 25.0, "sigmoid": 5.0, "straight_through": 1.0}
GRAD_NAMES = ("x", "weight", "bias", "lora_A", "lora_B", "threshold", "decay", "state")
# (batch, tokens, d_in, d_out, rank): aligned prefill-like, decode (split-K), odd sizes (scalar paths, 2 rank tiles)
SHAPES = [(2, 48, 64, 96, 16), (16, 1, 1024, 64, 8), (3, 7, 37, 45, 80)]


@pytest.fixture(scope="module", autouse=True)
def extension():
    from hybridtune.ops import cuda_ext

    try:
        return cuda_ext.load_extension()
    except cuda_ext.CudaExtensionUnavailable as exc:
        pytest.fail(f"a GPU is visible but the spike_lora extension does not build / load: {exc}")


def make_case(shape, dtype, neuron, seed=0, decay_value=0.5, reset=True, state=True, bias=True,
              sparse_nonneg=False) -> dict:
    """Op arguments (keyword dict) whose bottleneck arithmetic is exact in ``dtype``.

    ``sparse_nonneg``: about three non-negative terms per h (h in 0..3) with positive thresholds, so that with
    decay 1 the LIF membrane stays a small multiple of 1/2 -- exact in every dtype at every step.
    """
    batch, steps, d_in, d_out, rank = shape
    g = torch.Generator().manual_seed(seed)

    def ints(size, lo, hi):
        return torch.randint(lo, hi + 1, size, generator=g).to(torch.float64)

    lo = 0 if sparse_nonneg else -1
    density = min(1.0, (6.0 if sparse_nonneg else 48.0) / d_in)  # keeps |h| small (exact in bf16) at any width
    x = ints((batch, steps, d_in), lo, 1) * (torch.rand(batch, steps, d_in, generator=g) < density)
    lora_A = ints((rank, d_in), lo, 1)
    h = x.reshape(-1, d_in) @ lora_A.t()
    assert h.abs().max() <= 128, "inputs must keep h exact in bf16"
    if neuron == "mt":
        threshold = torch.tensor([1.0, 2.0, 4.0, 0.5])
    elif neuron == "lif":
        threshold = torch.tensor([0.5, 1.5, 2.5, 3.5])
    else:
        threshold = torch.tensor([0.5, 1.5, 2.5, -0.5])
    args = dict(
        x=x, weight=ints((d_out, d_in), -1, 1), bias=ints((d_out,), -2, 2) if bias else None, lora_A=lora_A,
        lora_B=ints((d_out, rank), -2, 2), scaling=0.5, neuron=neuron, threshold=threshold.repeat(rank)[:rank],
        decay=torch.full((rank,), decay_value), reset=None, state=None, max_spikes=3 if neuron == "mt" else 0,
        surrogate="atan", slope=2.0)
    if neuron == "lif" and reset:
        args["reset"] = torch.rand(batch, steps, generator=g) < 0.15
    if neuron == "lif" and state:
        args["state"] = ints((batch, rank), 0, 4) * 0.5
    for key in ("x", "weight", "bias", "lora_A", "lora_B", "state"):
        if args[key] is not None:
            args[key] = args[key].to(dtype)
    for key in ("threshold", "decay"):
        args[key] = args[key].to(torch.float32)
    return {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in args.items()}


def kernel_forward(a: dict):
    return torch.ops.hybridtune_C.spike_lora_fwd(
        a["x"], a["weight"], a["bias"], a["lora_A"], a["lora_B"], a["scaling"], a["neuron"], a["threshold"],
        a["decay"], a["reset"], a["state"], a["max_spikes"], a["surrogate"], a["slope"])


def reference_forward(a: dict):
    return spike_lora_forward(a["x"], a["weight"], a["bias"], a["lora_A"], a["lora_B"], a["scaling"], a["neuron"],
                              a["threshold"], a["decay"], a["reset"], a["state"], a["max_spikes"])


def backward_args(a: dict, spikes, seed=1, grad_spikes=True) -> tuple:
    g = torch.Generator().manual_seed(seed)
    batch, steps, _ = a["x"].shape
    d_out, rank = a["lora_B"].shape
    dtype = a["x"].dtype

    def small(*size):  # quarter-integers: gradient inputs exact in every dtype
        return (torch.randint(-8, 9, size, generator=g) * 0.25).to(dtype).to(DEVICE)

    grad_out = small(batch, steps, d_out)
    g_spikes = small(batch, steps, rank) if grad_spikes else None
    grad_state = small(batch, rank) if a["neuron"] == "lif" else None
    needs = (True, True, a["bias"] is not None, True, True, True, True, a["state"] is not None)
    return (grad_out, g_spikes, grad_state, a["x"], a["weight"], a["lora_A"], a["lora_B"], spikes, a["scaling"],
            a["neuron"], a["threshold"], a["decay"], a["reset"], a["state"], a["max_spikes"], a["surrogate"],
            a["slope"], needs)


def as_float64(args: tuple) -> tuple:
    return tuple(v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for v in args)


def assert_close_scaled(actual, expected, dtype, name):
    expected = expected.float()
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    tol = TOL[dtype]
    torch.testing.assert_close(actual.float(), expected, rtol=tol, atol=tol * scale, msg=lambda m: f"{name}: {m}")


def assert_backward_matches(args: tuple, dtype, label: str) -> None:
    """Kernel gradients vs the reference in the same dtype, both measured against the reference in float64 on the
    same spikes: the kernel's error may be at most twice the dtype reference's, plus one dtype epsilon of scale
    (the flash-attention rule)."""
    from hybridtune.ops.cuda_ext import spike_lora_backward_cuda

    got = spike_lora_backward_cuda(*args)
    want = spike_lora_backward(*args)
    truth = spike_lora_backward(*as_float64(args))
    for name, g_k, g_r, g_t in zip(GRAD_NAMES, got, want, truth):
        if g_r is None:
            assert g_k is None, f"{label} {name}"
            continue
        assert g_k is not None and g_k.shape == g_r.shape and g_k.dtype == g_r.dtype, f"{label} {name}"
        if g_t.numel() == 0:
            continue
        err_k = (g_k.double() - g_t).abs().max().item()
        err_r = (g_r.double() - g_t).abs().max().item()
        scale = max(g_t.abs().max().item(), 1.0)
        bound = 2 * err_r + EPS[dtype] * scale
        assert err_k <= bound, f"{label} grad {name}: kernel error {err_k:.3g} > {bound:.3g} (reference {err_r:.3g})"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("neuron", ["heaviside", "mt", "lif"])
def test_spikes_and_state_equal_reference(neuron, dtype, shape):
    a = make_case(shape, dtype, neuron)
    out_k, spikes_k, state_k = kernel_forward(a)
    out_r, spikes_r, state_r = reference_forward(a)
    assert spikes_k.dtype == spikes_r.dtype and spikes_k.shape == spikes_r.shape
    assert torch.equal(spikes_k, spikes_r), f"{(spikes_k != spikes_r).sum().item()} spikes differ"
    assert state_k.dtype == state_r.dtype
    torch.testing.assert_close(state_k, state_r, rtol=0, atol=0)
    assert_close_scaled(out_k, out_r, dtype, "out")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("neuron", ["heaviside", "mt", "lif"])
def test_output_given_spikes_matches_expand_formula(neuron, dtype):
    """The expand + bias + base GEMM stage on its own: out = x W^T + b + scaling * y B^T from the kernel's spikes."""
    a = make_case((2, 33, 96, 136, 24), dtype, neuron, seed=3)
    out, spikes, _ = kernel_forward(a)
    y = spikes.double() * (a["threshold"].to(dtype).double() if neuron == "mt" else 1.0)
    expected = (a["x"].double() @ a["weight"].double().t() + a["bias"].double()
                + a["scaling"] * y @ a["lora_B"].double().t())
    assert_close_scaled(out, expected, dtype, "out")


@pytest.mark.parametrize("dtype", DTYPES)
def test_lif_long_sequence_with_resets(dtype):
    """A few hundred tokens: the chunked scan, resets and the carried state across two calls (KV-cache style)."""
    a = make_case((3, 300, 64, 32, 16), dtype, "lif", seed=5, decay_value=0.5)
    first, second = dict(a), dict(a)
    first["x"], second["x"] = a["x"][:, :170], a["x"][:, 170:]
    first["reset"], second["reset"] = a["reset"][:, :170], a["reset"][:, 170:]
    _, s1, v1 = kernel_forward(first)
    second["state"] = v1
    _, s2, v2 = kernel_forward(second)
    _, s_ref, v_ref = reference_forward(a)
    assert torch.equal(torch.cat([s1, s2], dim=1), s_ref)
    torch.testing.assert_close(v2, v_ref, rtol=0, atol=0)


def test_memoryless_fused_epilogue_path():
    """Enough rows that the shrink needs no K split: the neuron runs in the shrink's epilogue (h never stored)."""
    for neuron in ("heaviside", "mt"):
        a = make_case((4, 12_000, 64, 32, 8), torch.bfloat16, neuron, seed=7)
        out_k, spikes_k, _ = kernel_forward(a)
        out_r, spikes_r, _ = reference_forward(a)
        assert torch.equal(spikes_k, spikes_r)
        assert_close_scaled(out_k, out_r, torch.bfloat16, "out")


def test_non_contiguous_input():
    a = make_case((2, 16, 64, 48, 16), torch.float16, "heaviside", seed=9)
    a["x"] = a["x"].transpose(0, 1).contiguous().transpose(0, 1)  # same values, batch-minor strides
    assert not a["x"].is_contiguous()
    out_k, spikes_k, _ = kernel_forward(a)
    out_r, spikes_r, _ = reference_forward(a)
    assert torch.equal(spikes_k, spikes_r)
    assert_close_scaled(out_k, out_r, torch.float16, "out")


@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("neuron", ["heaviside", "mt", "lif"])
def test_backward_matches_reference(neuron, dtype, surrogate):
    # LIF in bf16 / fp16: decay 1 (IF) with small non-negative currents keeps every membrane value exact, so the
    # reference's backward (which rebuilds v with a chunked linear scan in the op dtype) sees the forward's membrane
    lif_exact = neuron == "lif" and dtype != torch.float32
    a = make_case(SHAPES[0], dtype, neuron, seed=11, decay_value=1.0 if lif_exact else 0.5,
                  sparse_nonneg=neuron == "lif")
    a["surrogate"], a["slope"] = surrogate, SLOPES[surrogate]
    _, spikes, _ = reference_forward(a)
    assert_backward_matches(backward_args(a, spikes), dtype, f"{neuron}/{surrogate}")


@pytest.mark.parametrize("shape", SHAPES[1:])
@pytest.mark.parametrize("neuron", ["heaviside", "mt", "lif"])
def test_backward_decode_split_k_and_odd_shapes(neuron, shape):
    a = make_case(shape, torch.float32, neuron, seed=13)
    _, spikes, _ = kernel_forward(a)
    assert_backward_matches(backward_args(a, spikes, grad_spikes=False), torch.float32, f"{neuron}{shape}")


@pytest.fixture
def cuda_backend():
    from hybridtune.ops import set_backend

    info = set_backend("cuda")
    assert info["active"] == "cuda"
    yield
    set_backend(None)


@pytest.mark.parametrize("neuron", ["mt", "lif"])
def test_public_op_with_kernel_registered(cuda_backend, neuron):
    """hybridtune::spike_lora on CUDA with the cuda backend runs the fused forward and backward: same outputs and
    gradients as the whole reference path (the 'torch' backend), eager and under torch.compile(fullgraph=True)."""
    from hybridtune.ops import set_backend, spike_lora

    a = make_case(SHAPES[0], torch.float32, neuron, seed=17)
    leaves = {k: a[k].clone().requires_grad_(True) for k in ("x", "lora_A", "lora_B", "threshold", "decay")}

    def run(fn):
        for t in leaves.values():
            t.grad = None
        b = {**a, **leaves}
        out, spikes, state = fn(b["x"], b["weight"], b["bias"], b["lora_A"], b["lora_B"], b["scaling"], b["neuron"],
                                b["threshold"], b["decay"], b["reset"], b["state"], b["max_spikes"], b["surrogate"],
                                b["slope"])
        (out.square().sum() + spikes.sum() + state.sum()).backward()
        return [out.detach(), spikes.detach(), state.detach()] + [leaves[k].grad.clone() for k in leaves]

    def call(*args):
        return spike_lora(*args)

    fused = run(spike_lora)
    compiled = run(torch.compile(call, fullgraph=True))
    assert set_backend("torch")["active"] == "torch"
    reference = run(spike_lora)
    for got, want in zip(fused, reference):
        assert_close_scaled(got, want, torch.float32, "public op")
    for got, want in zip(compiled, fused):
        assert_close_scaled(got, want, torch.float32, "compiled")
