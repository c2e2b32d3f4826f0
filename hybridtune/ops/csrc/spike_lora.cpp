// Host side of the fused spike-LoRA op: argument checks, buffers, kernel launches, and the two large GEMMs via
// ATen (cuBLAS). Implements private ops under `hybridtune_C`; hybridtune/ops/cuda_ext.py defines them and registers
// `hybridtune_C::spike_lora_fwd` as the "cuda" kernel of the public `hybridtune::spike_lora` custom op and exposes
// `hybridtune_C::spike_lora_bwd` with the signature of hybridtune.ops.reference.spike_lora_backward.
//
// Forward, M = B*T rows:  shrink (+ neuron)  ->  [neuron / LIF scan]  ->  expand: out = bias + s * y B^T
//                         ->  cuBLAS out += x W^T (beta = 1).  x is read by the shrink and by the base GEMM only.
// Backward:  shrink (recompute h)  ->  grad_y = grad_out B (cuBLAS)  ->  neuron backward (surrogate / adjoint
//            scan)  ->  grad_x = grad_h A, += grad_out W (cuBLAS, beta = 1); grad_A, grad_B skinny cuBLAS GEMMs.
// Light headers only (no torch/extension.h, no ATen/cuda/CUDAContext.h): the CPU-only compile check stays fast.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <atomic>
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

#include "spike_lora_kernels.h"

namespace hybridtune {
namespace {

constexpr const char* kWho = "hybridtune_C::spike_lora (cuda)";

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::kFloat32;
    case at::kBFloat16:
      return DType::kBFloat16;
    case at::kHalf:
      return DType::kFloat16;
    default:
      TORCH_CHECK(false, kWho, ": x has dtype ", t.scalar_type(), "; the kernel supports float32, bfloat16, float16");
  }
}

Neuron neuron_of(std::string_view name) {
  if (name == "heaviside") return Neuron::kHeaviside;
  if (name == "mt") return Neuron::kMT;
  if (name == "lif") return Neuron::kLIF;
  TORCH_CHECK(false, kWho, ": neuron='", std::string(name), "' is not one of heaviside, mt, lif");
}

Surrogate surrogate_of(std::string_view name) {
  if (name == "atan") return Surrogate::kATan;
  if (name == "fast_sigmoid") return Surrogate::kFastSigmoid;
  if (name == "sigmoid") return Surrogate::kSigmoid;
  if (name == "straight_through") return Surrogate::kStraightThrough;
  TORCH_CHECK(false, kWho, ": surrogate='", std::string(name),
              "' has no CUDA implementation (built in: atan, fast_sigmoid, sigmoid, straight_through); "
              "use the 'torch' backend for surrogates registered at runtime");
}

// SM count / compute capability per device, looked up once (0 = not yet; both are >= 1 on a real device).
int device_attr(cudaDeviceAttr attr, int device) {
  static std::atomic<int> cache[2][64];
  const int slot = attr == cudaDevAttrMultiProcessorCount ? 0 : 1;
  if (device >= 0 && device < 64) {
    if (const int cached = cache[slot][device].load(std::memory_order_relaxed); cached > 0) return cached;
  }
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, device));
  if (device >= 0 && device < 64) cache[slot][device].store(value, std::memory_order_relaxed);
  return value;
}

// threshold / decay / state as fp32 for the kernels (no copy when they already are); the kernels round them to the
// op dtype on load, as the reference casts them to x's dtype.
at::Tensor as_kernel_f32(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

struct Shapes {
  int64_t batch, tokens, d_in, d_out, rank, rows;
};

Shapes check_inputs(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& lora_A,
                    const at::Tensor& lora_B, const at::Tensor& threshold, const at::Tensor& decay,
                    const std::optional<at::Tensor>& reset, const std::optional<at::Tensor>& state) {
  TORCH_CHECK(x.is_cuda(), kWho, ": x must be a CUDA tensor");
  TORCH_CHECK(x.dim() == 3, kWho, ": x must be [B, T, in], got ", x.dim(), " dims");
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == x.size(2), kWho, ": weight must be [out, in=", x.size(2),
              "], got ", weight.sizes());
  TORCH_CHECK(lora_A.dim() == 2 && lora_A.size(1) == x.size(2), kWho, ": lora_A must be [r, in=", x.size(2),
              "], got ", lora_A.sizes());
  const int64_t rank = lora_A.size(0);
  TORCH_CHECK(lora_B.dim() == 2 && lora_B.size(0) == weight.size(0) && lora_B.size(1) == rank, kWho,
              ": lora_B must be [out=", weight.size(0), ", r=", rank, "], got ", lora_B.sizes());
  for (const at::Tensor* t : {&weight, &lora_A, &lora_B}) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), kWho, ": weight, lora_A and lora_B must have x's dtype ",
                x.scalar_type(), ", got ", t->scalar_type());
    TORCH_CHECK(t->device() == x.device(), kWho, ": all tensors must be on ", x.device());
  }
  TORCH_CHECK(threshold.numel() == rank, kWho, ": threshold must have r=", rank, " elements, got ",
              threshold.numel());
  TORCH_CHECK(decay.numel() == rank, kWho, ": decay must have r=", rank, " elements, got ", decay.numel());
  const int64_t batch = x.size(0), tokens = x.size(1);
  if (reset.has_value()) {
    TORCH_CHECK(reset->scalar_type() == at::kBool && reset->dim() == 2 && reset->size(0) == batch &&
                    reset->size(1) == tokens,
                kWho, ": reset must be a bool tensor [B=", batch, ", T=", tokens, "], got ", reset->scalar_type(),
                " ", reset->sizes());
  }
  if (state.has_value()) {
    TORCH_CHECK(state->dim() == 2 && state->size(0) == batch && state->size(1) == rank, kWho,
                ": state must be [B=", batch, ", r=", rank, "], got ", state->sizes());
  }
  const int64_t rows = batch * tokens;
  TORCH_CHECK(rows <= INT32_MAX && x.size(2) <= INT32_MAX && weight.size(0) <= INT32_MAX && rank <= INT32_MAX,
              kWho, ": sizes beyond 2^31 are not supported");
  return {batch, tokens, x.size(2), weight.size(0), rank, rows};
}

// h = x A^T into fp32 partials [splits, M, r] (or straight to spikes when `fused` is enabled and one split suffices).
at::Tensor run_shrink(const at::Tensor& x2, const at::Tensor& A, const Shapes& s, DType dt, FusedNeuron fused,
                      int* splits_out, cudaStream_t stream) {
  const int device = x2.get_device();
  int k_split = 0, splits = 1;
  choose_shrink_split(static_cast<int>(s.rows), static_cast<int>(s.d_in), static_cast<int>(s.rank),
                      device_attr(cudaDevAttrMultiProcessorCount, device), &k_split, &splits);
  ShrinkParams p;
  p.x = x2.data_ptr();
  p.a = A.data_ptr();
  p.ldx = x2.stride(0);
  p.M = static_cast<int>(s.rows);
  p.K = static_cast<int>(s.d_in);
  p.r = static_cast<int>(s.rank);
  p.k_split = k_split;
  p.splits = splits;
  at::Tensor partial;
  if (fused.enabled && splits == 1) {
    p.fused = fused;
  } else {
    partial = at::empty({splits, s.rows, s.rank}, x2.options().dtype(at::kFloat));
    p.partial = partial.data_ptr<float>();
  }
  const bool tensor_cores = device_attr(cudaDevAttrComputeCapabilityMajor, device) >= 8;
  C10_CUDA_CHECK(launch_shrink(dt, p, tensor_cores, stream));
  *splits_out = splits;
  return partial;
}

// The fields the neuron kernels' forward and backward parameters share: the shrink's fp32 partial sums, the shapes,
// the neuron, theta, the cap and the spikes (written by the forward, read by the backward); the caller sets the rest.
template <typename Params>
Params neuron_params(const at::Tensor& partial, int splits, const Shapes& s, Neuron nrn, const at::Tensor& theta,
                     int64_t max_spikes, const at::Tensor& spikes) {
  Params np;
  np.partial = partial.data_ptr<float>();
  np.splits = splits;
  np.batch = static_cast<int>(s.batch);
  np.tokens = static_cast<int>(s.tokens);
  np.r = static_cast<int>(s.rank);
  np.neuron = nrn;
  np.theta = theta.data_ptr<float>();
  np.max_spikes = static_cast<int>(max_spikes);
  np.spikes = spikes.data_ptr();
  return np;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> spike_lora_fwd(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& lora_A,
    const at::Tensor& lora_B, double scaling, std::string_view neuron, const at::Tensor& threshold,
    const at::Tensor& decay, const std::optional<at::Tensor>& reset, const std::optional<at::Tensor>& state,
    int64_t max_spikes, std::string_view surrogate, double slope) {
  (void)surrogate;  // the forward does not depend on the surrogate
  (void)slope;
  const Shapes s = check_inputs(x, weight, lora_A, lora_B, threshold, decay, reset, state);
  const Neuron nrn = neuron_of(neuron);
  const DType dt = dtype_of(x);
  const auto T = x.scalar_type();
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == T && bias->numel() == s.d_out && bias->device() == x.device(), kWho,
                ": bias must be [out=", s.d_out, "] with x's dtype and device");
  }
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();

  const at::Tensor x2 = x.reshape({s.rows, s.d_in}).contiguous();
  const at::Tensor A = lora_A.contiguous();
  const at::Tensor Bm = lora_B.contiguous();
  const at::Tensor theta = as_kernel_f32(threshold);
  at::Tensor spikes = at::empty({s.batch, s.tokens, s.rank}, x.options());
  at::Tensor out = at::empty({s.batch, s.tokens, s.d_out}, x.options());
  at::Tensor state_f;
  if (nrn == Neuron::kLIF && state.has_value()) state_f = as_kernel_f32(*state);

  at::Tensor state_out;
  if (nrn == Neuron::kLIF) {
    at::Tensor state_out_f = state_f.defined() ? state_f.clone() : at::zeros({s.batch, s.rank}, theta.options());
    if (s.rows > 0 && s.rank > 0) {
      FusedNeuron none;
      int splits = 1;
      at::Tensor partial = run_shrink(x2, A, s, dt, none, &splits, stream);
      const at::Tensor decay_f = as_kernel_f32(decay);
      at::Tensor reset_c = reset.has_value() ? reset->contiguous() : at::Tensor();
      NeuronFwdParams np = neuron_params<NeuronFwdParams>(partial, splits, s, nrn, theta, max_spikes, spikes);
      np.decay = decay_f.data_ptr<float>();
      np.reset = reset_c.defined() ? reset_c.data_ptr<bool>() : nullptr;
      np.state = state_f.defined() ? state_f.data_ptr<float>() : nullptr;
      np.state_out = state_out_f.data_ptr<float>();
      C10_CUDA_CHECK(launch_neuron_forward(dt, np, stream));
    }
    state_out = state_out_f.to(T);
  } else {
    state_out = at::zeros({s.batch, s.rank}, x.options());  // memoryless neurons keep no state
    if (s.rows > 0 && s.rank > 0) {
      FusedNeuron fused;
      fused.enabled = 1;
      fused.neuron = nrn;
      fused.theta = theta.data_ptr<float>();
      fused.max_spikes = static_cast<int>(max_spikes);
      fused.spikes = spikes.data_ptr();
      int splits = 1;
      at::Tensor partial = run_shrink(x2, A, s, dt, fused, &splits, stream);
      if (partial.defined()) {  // split K: the neuron runs after the partials are summed
        const NeuronFwdParams np = neuron_params<NeuronFwdParams>(partial, splits, s, nrn, theta, max_spikes, spikes);
        C10_CUDA_CHECK(launch_neuron_forward(dt, np, stream));
      }
    }
  }

  if (s.rows > 0 && s.d_out > 0) {
    const at::Tensor bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();
    ExpandParams ep;
    ep.spikes = spikes.data_ptr();
    ep.b = Bm.data_ptr();
    ep.bias = bias_c.defined() ? bias_c.data_ptr() : nullptr;
    ep.rank_scale = nrn == Neuron::kMT ? theta.data_ptr<float>() : nullptr;
    ep.scaling = static_cast<float>(scaling);
    ep.M = static_cast<int>(s.rows);
    ep.N = static_cast<int>(s.d_out);
    ep.r = static_cast<int>(s.rank);
    ep.out = out.data_ptr();
    C10_CUDA_CHECK(launch_expand(dt, ep, stream));
    at::Tensor out2 = out.view({s.rows, s.d_out});
    out2.addmm_(x2, weight.t());  // cuBLAS, beta = 1: the base GEMM adds onto bias + LoRA in its epilogue
  }
  return {out, spikes, state_out};
}

// Mirrors hybridtune.ops.reference.spike_lora_backward. `needs` flags (x, weight, bias, lora_A, lora_B, threshold,
// decay, state); entries not needed come back as empty tensors (numel 0), which cuda_ext.py maps to None.
std::vector<at::Tensor> spike_lora_bwd(
    const std::optional<at::Tensor>& grad_out, const std::optional<at::Tensor>& grad_spikes,
    const std::optional<at::Tensor>& grad_state, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& lora_A, const at::Tensor& lora_B, const at::Tensor& spikes, double scaling,
    std::string_view neuron, const at::Tensor& threshold, const at::Tensor& decay,
    const std::optional<at::Tensor>& reset, const std::optional<at::Tensor>& state, int64_t max_spikes,
    std::string_view surrogate, double slope, c10::IntArrayRef needs) {
  const Shapes s = check_inputs(x, weight, lora_A, lora_B, threshold, decay, reset, state);
  TORCH_CHECK(needs.size() == 8, kWho, ": needs must have 8 flags (x, weight, bias, lora_A, lora_B, threshold, "
              "decay, state), got ", needs.size());
  const Neuron nrn = neuron_of(neuron);
  const Surrogate sur = surrogate_of(surrogate);
  const DType dt = dtype_of(x);
  const auto T = x.scalar_type();
  TORCH_CHECK(spikes.scalar_type() == T && spikes.numel() == s.rows * s.rank, kWho,
              ": spikes must be the forward's [B, T, r] output in x's dtype");
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();

  const at::Tensor x2 = x.reshape({s.rows, s.d_in}).contiguous();
  const at::Tensor A = lora_A.contiguous();
  const at::Tensor Bm = lora_B.contiguous();
  const at::Tensor g2 = grad_out.has_value() ? grad_out->reshape({s.rows, s.d_out})
                                             : at::zeros({s.rows, s.d_out}, x.options());
  TORCH_CHECK(g2.scalar_type() == T, kWho, ": grad_out must have x's dtype");
  const at::Tensor theta = as_kernel_f32(threshold);
  const at::Tensor spikes2 = spikes.reshape({s.rows, s.rank}).contiguous();
  at::Tensor grad_h = at::empty({s.rows, s.rank}, x.options());
  at::Tensor y = spikes2;
  at::Tensor grad_theta, grad_decay, grad_state_in;
  const bool lif = nrn == Neuron::kLIF;

  if (s.rank > 0) {
    FusedNeuron none;
    int splits = 1;
    at::Tensor partial = s.rows > 0 ? run_shrink(x2, A, s, dt, none, &splits, stream)
                                    : at::zeros({1, 0, s.rank}, theta.options());
    const at::Tensor grad_y = at::mm(g2, Bm);  // [M, r]; scaling is applied in the kernel like the reference
    const at::Tensor gs = grad_spikes.has_value() ? grad_spikes->to(T).reshape({s.rows, s.rank}).contiguous()
                                                  : at::Tensor();
    at::Tensor gstate_f = (lif && grad_state.has_value()) ? grad_state->to(T).to(at::kFloat).contiguous()
                                                          : at::Tensor();
    at::Tensor decay_f = as_kernel_f32(decay);
    at::Tensor state_f = (lif && state.has_value()) ? as_kernel_f32(*state) : at::Tensor();
    at::Tensor reset_c = (lif && reset.has_value()) ? reset->contiguous() : at::Tensor();
    if (nrn == Neuron::kMT) y = at::empty({s.rows, s.rank}, x.options());

    NeuronBwdParams bp = neuron_params<NeuronBwdParams>(partial, splits, s, nrn, theta, max_spikes, spikes2);
    bp.surrogate = sur;
    bp.slope = static_cast<float>(slope);
    bp.scaling = static_cast<float>(scaling);
    bp.decay = decay_f.data_ptr<float>();
    bp.reset = reset_c.defined() ? reset_c.data_ptr<bool>() : nullptr;
    bp.state = state_f.defined() ? state_f.data_ptr<float>() : nullptr;
    bp.grad_y = grad_y.data_ptr();
    bp.grad_spikes = gs.defined() ? gs.data_ptr() : nullptr;
    bp.grad_state = gstate_f.defined() ? gstate_f.data_ptr<float>() : nullptr;
    bp.grad_h = grad_h.data_ptr();
    bp.y = nrn == Neuron::kMT ? y.data_ptr() : nullptr;
    at::Tensor theta_part = at::empty({neuron_bwd_partial_rows(bp), s.rank}, theta.options());
    bp.grad_theta_part = theta_part.data_ptr<float>();
    at::Tensor decay_part, state_in_f;
    if (lif) {
      decay_part = at::empty({s.batch, s.rank}, theta.options());
      bp.grad_decay_part = decay_part.data_ptr<float>();
      if (state.has_value()) {
        state_in_f = at::empty({s.batch, s.rank}, theta.options());
        bp.grad_state_in = state_in_f.data_ptr<float>();
      }
    }
    C10_CUDA_CHECK(launch_neuron_backward(dt, bp, stream));
    grad_theta = theta_part.sum(0);
    if (lif) grad_decay = decay_part.sum(0);
    if (state_in_f.defined()) grad_state_in = state_in_f.to(T);
  } else {
    grad_theta = at::zeros({0}, theta.options());
  }

  const at::Tensor none = at::empty({0}, x.options());
  std::vector<at::Tensor> grads(8, none);
  if (needs[0]) {
    at::Tensor gx = at::mm(grad_h, A);  // the LoRA term first; cuBLAS adds grad_out W onto it (beta = 1)
    gx.addmm_(g2, weight);
    grads[0] = gx.view(x.sizes());
  }
  if (needs[1]) grads[1] = at::mm(g2.t(), x2);
  if (needs[2]) grads[2] = g2.sum(0);
  if (needs[3]) grads[3] = at::mm(grad_h.t(), x2);
  if (needs[4]) grads[4] = at::mm(g2.t(), y).mul_(scaling);
  if (needs[5]) grads[5] = grad_theta.to(threshold.scalar_type()).view(threshold.sizes());
  if (needs[6]) grads[6] = grad_decay.defined() ? grad_decay.to(decay.scalar_type()).view(decay.sizes())
                                                 : at::zeros_like(decay);
  if (needs[7] && state.has_value()) {
    // like the reference: the lif gradient in x's dtype, zeros of the state's dtype for the memoryless neurons
    grads[7] = grad_state_in.defined() ? grad_state_in : at::zeros_like(*state);
  }
  return grads;
}

}  // namespace
}  // namespace hybridtune

// The schemas are defined in Python (hybridtune/ops/cuda_ext.py, with their fake kernels, so they exist and trace on
// machines without the extension); this library only provides the CUDA kernels. Keep the two in step.
TORCH_LIBRARY_IMPL(hybridtune_C, CUDA, m) {
  m.impl("spike_lora_fwd", &hybridtune::spike_lora_fwd);
  m.impl("spike_lora_bwd", &hybridtune::spike_lora_bwd);
}
