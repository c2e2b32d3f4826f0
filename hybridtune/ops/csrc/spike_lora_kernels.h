// Host-callable launchers of the fused spike-LoRA kernels (plain CUDA runtime, no torch headers).
//
// The op (see hybridtune/ops) computes, for x [M = B*T, K], W [N, K], A [r, K], B [N, r]:
//   h = x A^T (fp32 accumulate)  ->  neuron  ->  s (spikes), y = s (heaviside, lif) or s * theta (mt)
//   out = x W^T + bias + scaling * y B^T
// The kernels here do the shrink (+ memoryless neuron), the LIF scan, the expand (+ bias) and the
// surrogate backward of the neuron. The two large GEMMs (x W^T and grad_out W) stay with cuBLAS, called
// from spike_lora.cpp through ATen: the expand writes out = bias + scaling * y B^T first and cuBLAS adds
// x W^T with beta = 1, so the add costs no separate pass.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace hybridtune {

enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };
enum class Neuron : int { kHeaviside = 0, kMT = 1, kLIF = 2 };
enum class Surrogate : int { kATan = 0, kFastSigmoid = 1, kSigmoid = 2, kStraightThrough = 3 };

// Memoryless neuron applied in the shrink epilogue (only when splits == 1 and neuron != lif).
struct FusedNeuron {
  int enabled = 0;            // 0: write fp32 h into `partial`; 1: write spikes
  Neuron neuron = Neuron::kHeaviside;
  const float* theta = nullptr;  // [r] fp32 (rounded to T on load)
  int max_spikes = 0;         // mt clamp; <= 0 means no clamp
  void* spikes = nullptr;     // [M, r] in the op dtype
};

struct ShrinkParams {
  const void* x = nullptr;  // [M, K], row stride ldx (elements)
  const void* a = nullptr;  // lora_A [r, K], contiguous
  int64_t ldx = 0;
  int M = 0, K = 0, r = 0;
  int k_split = 0;          // K elements per split, a multiple of 64
  int splits = 1;
  float* partial = nullptr; // [splits, M, r] fp32 (unused when the neuron is fused)
  FusedNeuron fused;
};

struct NeuronFwdParams {
  const float* partial = nullptr;  // [splits, M, r]
  int splits = 1;
  int batch = 0, tokens = 0, r = 0;  // M = batch * tokens
  Neuron neuron = Neuron::kHeaviside;
  const float* theta = nullptr;      // [r] fp32, rounded to T on load (as the reference casts it)
  const float* decay = nullptr;      // [r] fp32, rounded to T on load (lif)
  const bool* reset = nullptr;       // [batch, tokens] or null (lif)
  const float* state = nullptr;      // [batch, r] fp32 or null, rounded to T on load (lif)
  int max_spikes = 0;
  void* spikes = nullptr;            // [M, r] op dtype
  float* state_out = nullptr;        // [batch, r] (lif)
};

struct ExpandParams {
  const void* spikes = nullptr;  // [M, r] op dtype
  const void* b = nullptr;       // lora_B [N, r] op dtype, contiguous
  const void* bias = nullptr;    // [N] op dtype or null
  const float* rank_scale = nullptr;  // [r] fp32: theta for mt (y = T(s * T(theta))), null for y = s
  float scaling = 1.f;
  int M = 0, N = 0, r = 0;
  void* out = nullptr;           // [M, N] op dtype, contiguous
};

struct NeuronBwdParams {
  float* partial = nullptr;        // [splits, M, r] recomputed h; lif overwrites slot 0 with v_pre
  int splits = 1;
  int batch = 0, tokens = 0, r = 0;
  Neuron neuron = Neuron::kHeaviside;
  Surrogate surrogate = Surrogate::kATan;
  float slope = 2.f;
  float scaling = 1.f;
  const float* theta = nullptr;    // [r] fp32; kernels round to T on load
  const float* decay = nullptr;    // [r] fp32; kernels round to T on load (lif)
  const bool* reset = nullptr;     // [batch, tokens] or null (lif)
  const float* state = nullptr;    // [batch, r] fp32 or null (lif); rounded to T on load
  int max_spikes = 0;
  const void* spikes = nullptr;    // [M, r] op dtype: the forward's spikes (saved by the op)
  const void* grad_y = nullptr;    // [M, r] op dtype: grad_out @ lora_B (scaling is applied in the kernel)
  const void* grad_spikes = nullptr;  // [M, r] op dtype or null
  const float* grad_state = nullptr;  // [batch, r] or null (lif: gradient of state_out)
  void* grad_h = nullptr;          // [M, r] op dtype
  void* y = nullptr;               // mt: [M, r] op dtype, y = spikes * theta for grad_B; null otherwise
  float* grad_theta_part = nullptr;  // [neuron_bwd_partial_rows(p), r]
  float* grad_decay_part = nullptr;  // lif: [batch, r], or null
  float* grad_state_in = nullptr;    // lif: [batch, r] gradient of the input state, or null
};

// Rows of the per-block partial sums the backward writes for grad_theta / grad_decay.
int neuron_bwd_partial_rows(const NeuronBwdParams& p);

// Shrink tiling policy: split K so that small-M (decode) calls still fill the device.
void choose_shrink_split(int M, int K, int r, int num_sms, int* k_split, int* splits);

cudaError_t launch_shrink(DType dtype, const ShrinkParams& p, bool use_tensor_cores, cudaStream_t stream);
cudaError_t launch_neuron_forward(DType dtype, const NeuronFwdParams& p, cudaStream_t stream);
cudaError_t launch_expand(DType dtype, const ExpandParams& p, cudaStream_t stream);
cudaError_t launch_neuron_backward(DType dtype, const NeuronBwdParams& p, cudaStream_t stream);

}  // namespace hybridtune
