// Device helpers shared by the spike-LoRA kernels: dtype conversion, neurons, surrogate derivatives.
//
// Semantics follow hybridtune/ops/reference.py, which computes the bottleneck in the op dtype T: h = T(x A^T),
// theta and decay are cast to T, mt's u = T(h / theta), the LIF membrane is rounded to T after every update.
// The kernels accumulate in fp32 and round to T at the same points (round_to<T>), so in bf16/fp16 they fire on
// the same side of the threshold as the reference whenever the fp32 accumulations round to the same T value.
// Explicit _rn intrinsics keep nvcc from contracting a multiply and an add where the reference rounds twice.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "spike_lora_kernels.h"

namespace hybridtune {
namespace detail {

template <typename T>
struct Cvt;

template <>
struct Cvt<float> {
  static __device__ __forceinline__ float to_float(float v) { return v; }
  static __device__ __forceinline__ float from_float(float v) { return v; }
};

template <>
struct Cvt<__nv_bfloat16> {
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};

template <>
struct Cvt<__half> {
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
};

// Two floats rounded to T and packed into one 32-bit word (bf16 / fp16 pairs), for 16-byte vector stores.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float a, float b);

template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float a, float b) {
  __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&h);
}

template <>
__device__ __forceinline__ uint32_t pack2<__half>(float a, float b) {
  __half2 h = __floats2half2_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&h);
}

template <typename T>
__device__ __forceinline__ float ld(const T* p, int64_t i) {
  return Cvt<T>::to_float(p[i]);
}

template <typename T>
__device__ __forceinline__ void st(T* p, int64_t i, float v) {
  p[i] = Cvt<T>::from_float(v);
}

// The value T would store for v (identity for fp32).
template <typename T>
__device__ __forceinline__ float round_to(float v) {
  return Cvt<T>::to_float(Cvt<T>::from_float(v));
}

// H(v - theta) with H(z) = 1 iff z > 0 (snnTorch's convention; the reference writes it as v > theta).
__device__ __forceinline__ float heaviside(float v, float theta) { return v > theta ? 1.f : 0.f; }

// mt: u = T(h / theta), s = clamp(round(u), -n, n); rintf rounds half to even like torch.round.
template <typename T>
__device__ __forceinline__ float mt_ratio(float h, float theta) {
  return round_to<T>(__fdiv_rn(h, theta));
}

__device__ __forceinline__ float mt_count(float u, int max_spikes) {
  float q = rintf(u);
  if (max_spikes > 0) {
    const float n = static_cast<float>(max_spikes);
    q = fminf(fmaxf(q, -n), n);
  }
  return q;
}

// Spike of a memoryless neuron for h (already rounded to T) and theta (already T-valued).
template <typename T>
__device__ __forceinline__ float memoryless_spike(Neuron neuron, float h, float theta, int max_spikes) {
  return neuron == Neuron::kMT ? mt_count(mt_ratio<T>(h, theta), max_spikes) : heaviside(h, theta);
}

// d spike / d z of the named surrogate (hybridtune.neurons.surrogates .grad, snnTorch 1.0 parameterisation):
//   atan:             alpha / 2 / (1 + (pi/2 * alpha * z)^2)
//   fast_sigmoid:     1 / (1 + k |z|)^2
//   sigmoid:          k sig(kz) (1 - sig(kz)), evaluated as k e / (1 + e)^2 with e = exp(-|kz|): the function
//                     is even, and this form neither overflows nor cancels
//   straight_through: 1
__device__ __forceinline__ float surrogate_grad(Surrogate kind, float z, float slope) {
  switch (kind) {
    case Surrogate::kATan: {
      const float t = 1.5707963267948966f * slope * z;
      return 0.5f * slope / (1.f + t * t);
    }
    case Surrogate::kFastSigmoid: {
      const float d = 1.f + slope * fabsf(z);
      return 1.f / (d * d);
    }
    case Surrogate::kSigmoid: {
      const float e = expf(-fabsf(slope * z));
      const float d = 1.f + e;
      return slope * e / (d * d);
    }
    case Surrogate::kStraightThrough:
    default:
      return 1.f;
  }
}

// Backward of a memoryless neuron at one (token, rank) element. h and theta are T-valued, s is the forward's
// spike, gy = dL/dy (scaling already applied), gs = dL/d spikes (0 when absent). Returns dL/dh and adds
// dL/dtheta to *gtheta. As in reference.bottleneck_backward:
//   heaviside: c = (gy + gs) sg(h - theta); dh = c; dtheta = -c
//   mt:        u = h / theta, crossing b = floor(u) + 1/2, ds/du = sg(u - b) (0 if n > 0 and |b| > n - 1/2);
//              g = gy theta + gs; dh = g ds/du / theta; dtheta = gy s - dh u
template <typename T>
__device__ __forceinline__ float memoryless_backward(Neuron neuron, Surrogate surrogate, float slope, float h,
                                                     float theta, int max_spikes, float s, float gy, float gs,
                                                     float* gtheta) {
  if (neuron == Neuron::kMT) {
    const float u = mt_ratio<T>(h, theta);
    const float crossing = round_to<T>(floorf(u) + 0.5f);
    float ds = surrogate_grad(surrogate, round_to<T>(u - crossing), slope);
    if (max_spikes > 0 && fabsf(crossing) > static_cast<float>(max_spikes) - 0.5f) ds = 0.f;
    const float g = gy * theta + gs;
    const float dh = g * ds / theta;
    *gtheta += gy * s - dh * u;
    return dh;
  }
  const float c = (gy + gs) * surrogate_grad(surrogate, round_to<T>(h - theta), slope);
  *gtheta -= c;
  return c;
}

// The element type a DType names, handed to a launcher as a tag: dispatch_dtype(dtype, [&](auto tag) {
// using T = typename decltype(tag)::type; ... }) runs the launcher once with T = float, bf16 or fp16.
template <typename T>
struct TypeTag {
  using type = T;
};

template <typename F>
cudaError_t dispatch_dtype(DType dtype, F&& launch) {
  switch (dtype) {
    case DType::kFloat32:
      return launch(TypeTag<float>{});
    case DType::kBFloat16:
      return launch(TypeTag<__nv_bfloat16>{});
    case DType::kFloat16:
      return launch(TypeTag<__half>{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace detail
}  // namespace hybridtune
