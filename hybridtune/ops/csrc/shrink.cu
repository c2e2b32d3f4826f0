// LoRA shrink h = x A^T (fp32 accumulate), optionally followed by the memoryless neuron in the epilogue.
//
// The shrink is memory-bound on reading x once (arithmetic intensity ~ r flop/byte), so the kernel is a skinny
// GEMM tuned for that: 64-row tiles of x streamed through shared memory with 16-byte loads, A tiles (r <= 64 per
// block) alongside, register prefetch of the next K tile while the current one is multiplied. bf16/fp16 use tensor
// cores (WMMA 16x16x16, fp32 accumulate); fp32 (and GPUs before sm_80) use CUDA-core FMAs so fp32 keeps full
// precision (no TF32). Split-K over blockIdx.z keeps decode-sized M (a few rows) spread over the device; each
// split writes its own fp32 partial (summed in a fixed order by the neuron kernel: deterministic, no atomics).
// With one split and a memoryless neuron the epilogue writes the spikes directly: h never reaches memory.
#include <mma.h>

#include <type_traits>

#include "common.cuh"

namespace hybridtune {
namespace {

constexpr int kThreads = 128;  // 4 warps
constexpr int kBM = 64;        // rows of x per block (16 per warp on the tensor-core path)
constexpr int kSplitAlign = 64;  // k_split granularity: a multiple of both kernels' K tile

template <typename T>
__device__ __forceinline__ void shrink_store(const ShrinkParams& p, int split, int m, int k, float h) {
  if (p.fused.enabled) {
    const float s = detail::memoryless_spike<T>(p.fused.neuron, detail::round_to<T>(h),
                                                detail::round_to<T>(p.fused.theta[k]),
                                                p.fused.max_spikes);
    detail::st(static_cast<T*>(p.fused.spikes), static_cast<int64_t>(m) * p.r + k, s);
  } else {
    p.partial[(static_cast<int64_t>(split) * p.M + m) * p.r + k] = h;
  }
}

// This block's tile: first row, first rank, split index and its K range [k_begin, k_end).
struct BlockTile {
  int m0, n0, split, k_begin, k_end;
};

template <int RT>
__device__ __forceinline__ BlockTile block_tile(const ShrinkParams& p) {
  const int split = blockIdx.z;
  const int k_begin = split * p.k_split;
  return {static_cast<int>(blockIdx.x) * kBM, static_cast<int>(blockIdx.y) * RT, split, k_begin,
          min(p.K, k_begin + p.k_split)};
}

// 8 consecutive 16-bit elements of row `row` starting at column `col`, zero outside [0, rows) x [0, k_end).
template <bool VEC>
__device__ __forceinline__ uint4 load8(const uint16_t* base, int64_t ld, int row, int rows, int col, int k_end) {
  uint4 v = make_uint4(0u, 0u, 0u, 0u);
  if (row >= rows) return v;
  const uint16_t* p = base + static_cast<int64_t>(row) * ld + col;
  if constexpr (VEC) {
    // K, ld and the base pointers are multiples of 8 elements / 16 bytes, and so is k_end.
    if (col < k_end) v = __ldg(reinterpret_cast<const uint4*>(p));
  } else {
    uint32_t w[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t lo = col + 2 * j < k_end ? p[2 * j] : 0u;
      const uint32_t hi = col + 2 * j + 1 < k_end ? p[2 * j + 1] : 0u;
      w[j] = lo | (hi << 16);
    }
    v = make_uint4(w[0], w[1], w[2], w[3]);
  }
  return v;
}

template <typename T, int RT, bool VEC>
__global__ void __launch_bounds__(kThreads) shrink_wmma_kernel(const ShrinkParams p) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  constexpr int BK = 64;
  constexpr int LDS = BK + 8;  // smem pitch in elements: 144-byte rows stay 16-byte aligned and skew the banks
  constexpr int NF = RT / 16;  // 16x16 accumulator tiles per warp
  constexpr int OUT_LD = RT + 4;
  constexpr int CHUNKS = BK / 8;  // 16-byte chunks per tile row
  constexpr int XV = kBM * CHUNKS / kThreads;
  constexpr int AV = (RT * CHUNKS + kThreads - 1) / kThreads;
  constexpr int IN_BYTES = (kBM + RT) * LDS * 2;
  constexpr int OUT_BYTES = kBM * OUT_LD * 4;
  __shared__ __align__(128) unsigned char smem[IN_BYTES > OUT_BYTES ? IN_BYTES : OUT_BYTES];
  uint16_t* xs = reinterpret_cast<uint16_t*>(smem);
  uint16_t* as = xs + kBM * LDS;
  float* cs = reinterpret_cast<float*>(smem);  // reused for the fp32 result once the K loop is done

  const auto [m0, n0, split, k_begin, k_end] = block_tile<RT>(p);
  const uint16_t* x = static_cast<const uint16_t*>(p.x);
  const uint16_t* a = static_cast<const uint16_t*>(p.a);
  const int warp = threadIdx.x / 32;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[NF];
#pragma unroll
  for (int f = 0; f < NF; ++f) wmma::fill_fragment(acc[f], 0.f);

  uint4 xr[XV];
  uint4 ar[AV];
  auto load_tiles = [&](int k0) {
#pragma unroll
    for (int i = 0; i < XV; ++i) {
      const int idx = threadIdx.x + i * kThreads;
      xr[i] = load8<VEC>(x, p.ldx, m0 + idx / CHUNKS, p.M, k0 + (idx % CHUNKS) * 8, k_end);
    }
#pragma unroll
    for (int i = 0; i < AV; ++i) {
      const int idx = threadIdx.x + i * kThreads;
      ar[i] = idx < RT * CHUNKS ? load8<VEC>(a, p.K, n0 + idx / CHUNKS, p.r, k0 + (idx % CHUNKS) * 8, k_end)
                                : make_uint4(0u, 0u, 0u, 0u);
    }
  };

  if (k_begin < k_end) load_tiles(k_begin);
  for (int k0 = k_begin; k0 < k_end; k0 += BK) {
    __syncthreads();  // the previous tile's MMAs are done with smem
#pragma unroll
    for (int i = 0; i < XV; ++i) {
      const int idx = threadIdx.x + i * kThreads;
      *reinterpret_cast<uint4*>(xs + (idx / CHUNKS) * LDS + (idx % CHUNKS) * 8) = xr[i];
    }
#pragma unroll
    for (int i = 0; i < AV; ++i) {
      const int idx = threadIdx.x + i * kThreads;
      if (idx < RT * CHUNKS) *reinterpret_cast<uint4*>(as + (idx / CHUNKS) * LDS + (idx % CHUNKS) * 8) = ar[i];
    }
    __syncthreads();
    if (k0 + BK < k_end) load_tiles(k0 + BK);  // in flight while the tensor cores work on this tile
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> af;
      wmma::load_matrix_sync(af, reinterpret_cast<const T*>(xs + warp * 16 * LDS + kk), LDS);
#pragma unroll
      for (int f = 0; f < NF; ++f) {
        // A is [r, K] row-major = A^T [K, r] column-major: the B operand of x A^T.
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bf;
        wmma::load_matrix_sync(bf, reinterpret_cast<const T*>(as + f * 16 * LDS + kk), LDS);
        wmma::mma_sync(acc[f], af, bf, acc[f]);
      }
    }
  }
  __syncthreads();
#pragma unroll
  for (int f = 0; f < NF; ++f) {
    wmma::store_matrix_sync(cs + warp * 16 * OUT_LD + f * 16, acc[f], OUT_LD, wmma::mem_row_major);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kBM * RT; i += kThreads) {
    const int row = i / RT, col = i % RT;
    const int m = m0 + row, k = n0 + col;
    if (m < p.M && k < p.r) shrink_store<T>(p, split, m, k, cs[row * OUT_LD + col]);
  }
#else
  __trap();  // built without sm_80+ code for this GPU; the host only launches this kernel on sm_80+
#endif
}

template <typename T, int RT>
__global__ void __launch_bounds__(kThreads) shrink_fma_kernel(const ShrinkParams p) {
  constexpr int BK = 32;
  constexpr int RPT = RT / 4;  // warp w owns ranks [w * RPT, (w + 1) * RPT); lane owns rows lane, lane + 32
  constexpr int APAD = RT + 4;
  __shared__ float xs[kBM][BK + 1];
  __shared__ __align__(16) float as[BK][APAD];  // transposed A tile: as[k][rank]

  const auto [m0, n0, split, k_begin, k_end] = block_tile<RT>(p);
  const T* x = static_cast<const T*>(p.x);
  const T* a = static_cast<const T*>(p.a);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  float acc[2][RPT];
#pragma unroll
  for (int j = 0; j < RPT; ++j) acc[0][j] = acc[1][j] = 0.f;

  for (int k0 = k_begin; k0 < k_end; k0 += BK) {
    for (int i = threadIdx.x; i < kBM * BK; i += kThreads) {
      const int row = i / BK, col = i % BK;
      const int m = m0 + row, k = k0 + col;
      xs[row][col] = (m < p.M && k < k_end) ? detail::ld(x, static_cast<int64_t>(m) * p.ldx + k) : 0.f;
    }
    for (int i = threadIdx.x; i < RT * BK; i += kThreads) {
      const int rk = i / BK, col = i % BK;
      const int n = n0 + rk, k = k0 + col;
      as[col][rk] = (n < p.r && k < k_end) ? detail::ld(a, static_cast<int64_t>(n) * p.K + k) : 0.f;
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < BK; ++kk) {
      const float x0 = xs[lane][kk];
      const float x1 = xs[lane + 32][kk];
#pragma unroll
      for (int j = 0; j < RPT; j += 4) {
        const float4 av = *reinterpret_cast<const float4*>(&as[kk][warp * RPT + j]);
        acc[0][j + 0] = fmaf(x0, av.x, acc[0][j + 0]);
        acc[0][j + 1] = fmaf(x0, av.y, acc[0][j + 1]);
        acc[0][j + 2] = fmaf(x0, av.z, acc[0][j + 2]);
        acc[0][j + 3] = fmaf(x0, av.w, acc[0][j + 3]);
        acc[1][j + 0] = fmaf(x1, av.x, acc[1][j + 0]);
        acc[1][j + 1] = fmaf(x1, av.y, acc[1][j + 1]);
        acc[1][j + 2] = fmaf(x1, av.z, acc[1][j + 2]);
        acc[1][j + 3] = fmaf(x1, av.w, acc[1][j + 3]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    const int m = m0 + lane + 32 * rr;
    if (m >= p.M) continue;
#pragma unroll
    for (int j = 0; j < RPT; ++j) {
      const int k = n0 + warp * RPT + j;
      if (k < p.r) shrink_store<T>(p, split, m, k, acc[rr][j]);
    }
  }
}

int rank_tile(int r) { return r <= 16 ? 16 : (r <= 32 ? 32 : 64); }

template <typename T, int RT>
void launch_rt(const ShrinkParams& p, bool tc, bool vec, dim3 grid, cudaStream_t stream) {
  if constexpr (!std::is_same_v<T, float>) {
    if (tc) {
      if (vec) {
        shrink_wmma_kernel<T, RT, true><<<grid, kThreads, 0, stream>>>(p);
      } else {
        shrink_wmma_kernel<T, RT, false><<<grid, kThreads, 0, stream>>>(p);
      }
      return;
    }
  }
  shrink_fma_kernel<T, RT><<<grid, kThreads, 0, stream>>>(p);
}

template <typename T>
cudaError_t launch_typed(const ShrinkParams& p, bool tc, cudaStream_t stream) {
  const int rt = rank_tile(p.r);
  const dim3 grid((p.M + kBM - 1) / kBM, (p.r + rt - 1) / rt, p.splits);
  const bool vec = p.K % 8 == 0 && p.ldx % 8 == 0 && reinterpret_cast<uintptr_t>(p.x) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(p.a) % 16 == 0;
  if (rt == 16) {
    launch_rt<T, 16>(p, tc, vec, grid, stream);
  } else if (rt == 32) {
    launch_rt<T, 32>(p, tc, vec, grid, stream);
  } else {
    launch_rt<T, 64>(p, tc, vec, grid, stream);
  }
  return cudaGetLastError();
}

}  // namespace

void choose_shrink_split(int M, int K, int r, int num_sms, int* k_split, int* splits) {
  const int rt = rank_tile(r);
  const long blocks = static_cast<long>((M + kBM - 1) / kBM) * ((r + rt - 1) / rt);
  // ~4 resident blocks per SM keep enough loads in flight to stream x at full bandwidth
  const long target = 4L * (num_sms > 0 ? num_sms : 1);
  long want = (target + blocks - 1) / blocks;
  const long max_splits = K / 128 > 1 ? K / 128 : 1;  // a split streams at least 128 columns
  if (want > max_splits) want = max_splits;
  if (want < 1) want = 1;
  long ks = (K + want - 1) / want;
  ks = ks < 1 ? kSplitAlign : (ks + kSplitAlign - 1) / kSplitAlign * kSplitAlign;
  *k_split = static_cast<int>(ks);
  *splits = K > 0 ? static_cast<int>((K + ks - 1) / ks) : 1;  // K == 0: one split that writes zeros
}

cudaError_t launch_shrink(DType dtype, const ShrinkParams& p, bool use_tensor_cores, cudaStream_t stream) {
  if (p.M == 0 || p.r == 0) return cudaSuccess;
  return detail::dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return launch_typed<T>(p, use_tensor_cores && !std::is_same_v<T, float>, stream);  // no fp32 tensor-core path
  });
}

}  // namespace hybridtune
