// LoRA expand with the bias: out = bias + scaling * (y B^T), y = spikes (heaviside, lif) or T(spikes * theta)
// (mt), written straight into the op's output. cuBLAS then adds x W^T on top with beta = 1, inside the base GEMM's
// epilogue, so the "add" costs no pass of its own and the [M, N] LoRA term is written exactly once.
//
// A GEMM with a tiny inner dimension (K = r): the cost is writing out. Blocks of 64 rows x 128 columns; each thread
// owns 8 rows x 8 consecutive columns (one 16-byte store per row in bf16/fp16), y and B^T chunks of 32 ranks
// are staged in shared memory as fp32.
#include "common.cuh"

namespace hybridtune {
namespace {

constexpr int kThreads = 128;
constexpr int kBM = 64;
constexpr int kBN = 128;
constexpr int kRK = 32;
constexpr int kTM = 8;  // rows per thread
constexpr int kTN = 8;  // columns per thread

template <typename T>  // bf16 / fp16: four packed pairs, one 16-byte store
__device__ __forceinline__ void store8(T* dst, const float* v) {
  uint4 w;
  w.x = detail::pack2<T>(v[0], v[1]);
  w.y = detail::pack2<T>(v[2], v[3]);
  w.z = detail::pack2<T>(v[4], v[5]);
  w.w = detail::pack2<T>(v[6], v[7]);
  *reinterpret_cast<uint4*>(dst) = w;
}

template <>
__device__ __forceinline__ void store8<float>(float* dst, const float* v) {
  reinterpret_cast<float4*>(dst)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(dst)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

template <typename T, bool VEC>
__global__ void __launch_bounds__(kThreads) expand_kernel(const ExpandParams p) {
  __shared__ __align__(16) float bs[kRK][kBN];  // B^T chunk: bs[k][n]
  __shared__ float ys[kBM][kRK + 1];
  const int m0 = blockIdx.x * kBM;
  const int n0 = blockIdx.y * kBN;
  const int tc = threadIdx.x % (kBN / kTN);  // column group: 16 per row of threads
  const int tr = threadIdx.x / (kBN / kTN);  // row group: 8
  const T* spikes = static_cast<const T*>(p.spikes);
  const T* bmat = static_cast<const T*>(p.b);

  float acc[kTM][kTN];
#pragma unroll
  for (int i = 0; i < kTM; ++i) {
#pragma unroll
    for (int j = 0; j < kTN; ++j) acc[i][j] = 0.f;
  }

  for (int k0 = 0; k0 < p.r; k0 += kRK) {
    for (int i = threadIdx.x; i < kBM * kRK; i += kThreads) {
      const int row = i / kRK, kk = i % kRK;
      const int m = m0 + row, k = k0 + kk;
      float v = 0.f;
      if (m < p.M && k < p.r) {
        v = detail::ld(spikes, static_cast<int64_t>(m) * p.r + k);
        if (p.rank_scale != nullptr) v = detail::round_to<T>(v * detail::round_to<T>(p.rank_scale[k]));  // mt: y = T(s * theta)
      }
      ys[row][kk] = v;
    }
    for (int i = threadIdx.x; i < kRK * kBN; i += kThreads) {
      const int kk = i / kBN, c = i % kBN;
      const int n = n0 + c, k = k0 + kk;
      bs[kk][c] = (n < p.N && k < p.r) ? detail::ld(bmat, static_cast<int64_t>(n) * p.r + k) : 0.f;
    }
    __syncthreads();
    const int kmax = min(kRK, p.r - k0);
    for (int kk = 0; kk < kmax; ++kk) {
      const float4 b0 = *reinterpret_cast<const float4*>(&bs[kk][tc * kTN]);
      const float4 b1 = *reinterpret_cast<const float4*>(&bs[kk][tc * kTN + 4]);
#pragma unroll
      for (int i = 0; i < kTM; ++i) {
        const float yv = ys[tr * kTM + i][kk];
        acc[i][0] = fmaf(yv, b0.x, acc[i][0]);
        acc[i][1] = fmaf(yv, b0.y, acc[i][1]);
        acc[i][2] = fmaf(yv, b0.z, acc[i][2]);
        acc[i][3] = fmaf(yv, b0.w, acc[i][3]);
        acc[i][4] = fmaf(yv, b1.x, acc[i][4]);
        acc[i][5] = fmaf(yv, b1.y, acc[i][5]);
        acc[i][6] = fmaf(yv, b1.z, acc[i][6]);
        acc[i][7] = fmaf(yv, b1.w, acc[i][7]);
      }
    }
    __syncthreads();
  }

  const int nb = n0 + tc * kTN;
  if (nb >= p.N) return;
  const T* bias = static_cast<const T*>(p.bias);
  float bv[kTN];
#pragma unroll
  for (int j = 0; j < kTN; ++j) bv[j] = (bias != nullptr && nb + j < p.N) ? detail::ld(bias, nb + j) : 0.f;
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int i = 0; i < kTM; ++i) {
    const int m = m0 + tr * kTM + i;
    if (m >= p.M) break;
    float v[kTN];
#pragma unroll
    for (int j = 0; j < kTN; ++j) v[j] = fmaf(p.scaling, acc[i][j], bv[j]);
    T* dst = out + static_cast<int64_t>(m) * p.N + nb;
    if (VEC && nb + kTN <= p.N) {
      store8<T>(dst, v);
    } else {
#pragma unroll
      for (int j = 0; j < kTN; ++j) {
        if (nb + j < p.N) detail::st(dst, j, v[j]);
      }
    }
  }
}

template <typename T>
cudaError_t launch_typed(const ExpandParams& p, cudaStream_t stream) {
  const dim3 grid((p.M + kBM - 1) / kBM, (p.N + kBN - 1) / kBN);
  const bool vec = p.N % kTN == 0 && reinterpret_cast<uintptr_t>(p.out) % 16 == 0;
  if (vec) {
    expand_kernel<T, true><<<grid, kThreads, 0, stream>>>(p);
  } else {
    expand_kernel<T, false><<<grid, kThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_expand(DType dtype, const ExpandParams& p, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  return detail::dispatch_dtype(dtype, [&](auto tag) { return launch_typed<typename decltype(tag)::type>(p, stream); });
}

}  // namespace hybridtune
