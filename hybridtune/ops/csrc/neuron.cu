// Bottleneck neuron kernels: they read the shrink's fp32 partials (summed over the K splits in a fixed order),
// apply the neuron and, in the backward, its surrogate derivative.
//
// * memoryless (heaviside, mt): elementwise over [M, r]; blocks of 32 ranks x 8 rows, so the backward's
//   grad_theta reduction over rows is a fixed-order tree per block (deterministic), one partial row per block.
// * lif: one thread per (batch, rank) lane scans the token axis. The threshold sits inside the recurrence, so the
//   scan is sequential in t; tokens are processed in chunks of kChunk whose loads are issued together, ahead of the
//   dependent chain. The backward re-runs the scan with the forward's spikes (so it sees exactly the membrane the
//   forward saw), keeps v_pre in the partial buffer, then runs the adjoint recurrence backwards:
//     c[t] = (gy[t] + gs[t]) sg(v_pre[t] - theta);  g_pre[t] = g_post[t] + c[t]  (= dL/dh[t])
//     g_post[t-1] = decay (1 - reset[t]) g_pre[t];    g_post[T-1] = grad_state
//     dtheta = -sum(c + g_post s);  ddecay = sum(g_pre v_post[t-1] (1 - reset[t]))
//   (the soft reset is detached from the spike, as in the reference and snnTorch).
#include "common.cuh"

namespace hybridtune {
namespace {

constexpr int kRankTile = 32;  // memoryless kernels: threadIdx.x over ranks
constexpr int kRowTile = 8;    // threadIdx.y over rows
constexpr int kLifThreads = 128;
constexpr int kChunk = 8;

__device__ __forceinline__ float sum_splits(const float* partial, int splits, int64_t plane, int64_t i) {
  float h = partial[i];
  for (int sp = 1; sp < splits; ++sp) h += partial[sp * plane + i];
  return h;
}

int memoryless_grid_rows(int M) {
  const int rows = (M + 8 * kRowTile - 1) / (8 * kRowTile);  // each thread walks >= ~8 rows
  return rows < 1 ? 1 : (rows > 1024 ? 1024 : rows);
}

template <typename T>
__global__ void __launch_bounds__(kRankTile * kRowTile) memoryless_fwd_kernel(const NeuronFwdParams p) {
  const int k = blockIdx.y * kRankTile + threadIdx.x;
  if (k >= p.r) return;
  const int64_t M = static_cast<int64_t>(p.batch) * p.tokens;
  const int64_t plane = M * p.r;
  const float theta = detail::round_to<T>(p.theta[k]);
  T* spikes = static_cast<T*>(p.spikes);
  for (int64_t m = blockIdx.x * kRowTile + threadIdx.y; m < M; m += static_cast<int64_t>(gridDim.x) * kRowTile) {
    const int64_t i = m * p.r + k;
    const float h = detail::round_to<T>(sum_splits(p.partial, p.splits, plane, i));
    detail::st(spikes, i, detail::memoryless_spike<T>(p.neuron, h, theta, p.max_spikes));
  }
}

// One LIF step as the reference computes it in dtype T: v = T(h + gain v); fire iff v > theta; v = T(v - theta).
template <typename T>
__device__ __forceinline__ float lif_pre(float gain, float v_post_prev, float h) {
  return detail::round_to<T>(fmaf(gain, v_post_prev, h));
}

template <typename T>
__device__ __forceinline__ float lif_post(float v_pre, float s, float theta) {
  return s != 0.f ? detail::round_to<T>(v_pre - s * theta) : v_pre;
}

// What one LIF thread owns: lane = b * r + k (sequence b, rank k), the first row of its sequence, the size of one
// split's partial-sum plane, and its rank's theta and decay rounded to T.
struct LifLane {
  int lane, k;
  int64_t row0, plane;
  float theta, decay;
};

template <typename T, typename Params>
__device__ __forceinline__ LifLane lif_lane(const Params& p) {
  const int lane = blockIdx.x * blockDim.x + threadIdx.x;
  const int k = lane % p.r;
  return {lane, k, static_cast<int64_t>(lane / p.r) * p.tokens, static_cast<int64_t>(p.batch) * p.tokens * p.r,
          detail::round_to<T>(p.theta[k]), detail::round_to<T>(p.decay[k])};
}

// h[j] (the summed shrink partials, in T) and gain[j] (decay, 0 at a reset) of tokens t0 .. t0 + kChunk - 1.
template <typename T, typename Params>
__device__ __forceinline__ void lif_load_chunk(const Params& p, const LifLane& l, int t0, float* h, float* gain) {
#pragma unroll
  for (int j = 0; j < kChunk; ++j) {
    const int64_t m = l.row0 + t0 + j;
    const bool in = t0 + j < p.tokens;
    h[j] = in ? detail::round_to<T>(sum_splits(p.partial, p.splits, l.plane, m * p.r + l.k)) : 0.f;
    gain[j] = (in && p.reset != nullptr && p.reset[m]) ? 0.f : l.decay;
  }
}

template <typename T>
__global__ void __launch_bounds__(kLifThreads) lif_fwd_kernel(const NeuronFwdParams p) {
  const LifLane l = lif_lane<T>(p);
  if (l.lane >= p.batch * p.r) return;
  T* spikes = static_cast<T*>(p.spikes);
  float v = p.state != nullptr ? detail::round_to<T>(p.state[l.lane]) : 0.f;
  for (int t0 = 0; t0 < p.tokens; t0 += kChunk) {
    float h[kChunk], gain[kChunk];
    lif_load_chunk<T>(p, l, t0, h, gain);  // independent loads first, then the dependent chain
#pragma unroll
    for (int j = 0; j < kChunk; ++j) {
      if (t0 + j >= p.tokens) break;
      const float pre = lif_pre<T>(gain[j], v, h[j]);
      const float s = detail::heaviside(pre, l.theta);
      v = lif_post<T>(pre, s, l.theta);
      detail::st(spikes, (l.row0 + t0 + j) * p.r + l.k, s);
    }
  }
  p.state_out[l.lane] = v;
}

template <typename T>
__global__ void __launch_bounds__(kRankTile * kRowTile) memoryless_bwd_kernel(const NeuronBwdParams p) {
  __shared__ float red[kRowTile][kRankTile + 1];
  const int k = blockIdx.y * kRankTile + threadIdx.x;
  const int64_t M = static_cast<int64_t>(p.batch) * p.tokens;
  const int64_t plane = M * p.r;
  const T* spikes = static_cast<const T*>(p.spikes);
  const T* grad_y = static_cast<const T*>(p.grad_y);
  const T* grad_spikes = static_cast<const T*>(p.grad_spikes);
  T* grad_h = static_cast<T*>(p.grad_h);
  T* y = static_cast<T*>(p.y);
  float gtheta = 0.f;
  if (k < p.r) {
    const float theta = detail::round_to<T>(p.theta[k]);
    for (int64_t m = blockIdx.x * kRowTile + threadIdx.y; m < M; m += static_cast<int64_t>(gridDim.x) * kRowTile) {
      const int64_t i = m * p.r + k;
      const float h = detail::round_to<T>(sum_splits(p.partial, p.splits, plane, i));
      const float s = detail::ld(spikes, i);
      // reference: grad_y = T(T(grad_out @ B) * scaling)
      const float gy = detail::round_to<T>(detail::ld(grad_y, i) * p.scaling);
      const float gs = grad_spikes != nullptr ? detail::ld(grad_spikes, i) : 0.f;
      const float dh = detail::memoryless_backward<T>(p.neuron, p.surrogate, p.slope, h, theta, p.max_spikes, s, gy,
                                                      gs, &gtheta);
      detail::st(grad_h, i, dh);
      if (y != nullptr) detail::st(y, i, s * theta);  // mt: y = spikes * theta for grad_B
    }
  }
  red[threadIdx.y][threadIdx.x] = gtheta;
  __syncthreads();
  if (threadIdx.y == 0 && k < p.r) {
    float total = 0.f;
#pragma unroll
    for (int j = 0; j < kRowTile; ++j) total += red[j][threadIdx.x];
    p.grad_theta_part[static_cast<int64_t>(blockIdx.x) * p.r + k] = total;
  }
}

template <typename T>
__global__ void __launch_bounds__(kLifThreads) lif_bwd_kernel(const NeuronBwdParams p) {
  const LifLane l = lif_lane<T>(p);
  if (l.lane >= p.batch * p.r) return;
  const T* spikes = static_cast<const T*>(p.spikes);
  const T* grad_y = static_cast<const T*>(p.grad_y);
  const T* grad_spikes = static_cast<const T*>(p.grad_spikes);
  T* grad_h = static_cast<T*>(p.grad_h);
  const float v_init = p.state != nullptr ? detail::round_to<T>(p.state[l.lane]) : 0.f;

  // 1. forward re-run with the recorded spikes: v_pre[t] goes into partial slot 0 (this lane's own elements)
  float v = v_init;
  for (int t0 = 0; t0 < p.tokens; t0 += kChunk) {
    float h[kChunk], gain[kChunk], s[kChunk];
    lif_load_chunk<T>(p, l, t0, h, gain);
#pragma unroll
    for (int j = 0; j < kChunk; ++j) {
      s[j] = t0 + j < p.tokens ? detail::ld(spikes, (l.row0 + t0 + j) * p.r + l.k) : 0.f;
    }
#pragma unroll
    for (int j = 0; j < kChunk; ++j) {
      if (t0 + j >= p.tokens) break;
      const float pre = lif_pre<T>(gain[j], v, h[j]);
      p.partial[(l.row0 + t0 + j) * p.r + l.k] = pre;
      v = lif_post<T>(pre, s[j], l.theta);
    }
  }

  // 2. adjoint scan, t = T-1 .. 0
  float g_post = p.grad_state != nullptr ? p.grad_state[l.lane] : 0.f;
  float gtheta = 0.f, gdecay = 0.f;
  for (int t = p.tokens - 1; t >= 0; --t) {
    const int64_t m = l.row0 + t;
    const int64_t i = m * p.r + l.k;
    const float pre = p.partial[i];
    const float s = detail::ld(spikes, i);
    const float v_prev = t > 0 ? lif_post<T>(p.partial[i - p.r], detail::ld(spikes, i - p.r), l.theta) : v_init;
    const bool cut = p.reset != nullptr && p.reset[m];
    const float gy = detail::round_to<T>(detail::ld(grad_y, i) * p.scaling);
    const float gs = grad_spikes != nullptr ? detail::ld(grad_spikes, i) : 0.f;
    const float c = (gy + gs) * detail::surrogate_grad(p.surrogate, detail::round_to<T>(pre - l.theta), p.slope);
    const float g_pre = g_post + c;
    detail::st(grad_h, i, g_pre);
    gtheta -= c + g_post * s;
    if (!cut) gdecay = fmaf(g_pre, v_prev, gdecay);
    g_post = cut ? 0.f : g_pre * l.decay;
  }
  p.grad_theta_part[l.lane] = gtheta;
  if (p.grad_decay_part != nullptr) p.grad_decay_part[l.lane] = gdecay;
  if (p.grad_state_in != nullptr) p.grad_state_in[l.lane] = g_post;  // = dL/dh[0] decay (1 - reset[0])
}

// One launch of a neuron kernel pair: LIF one thread per (sequence, rank); memoryless a grid of row blocks x rank
// tiles (launched even without rows: the backward still writes its zero theta partials).
template <typename Params>
cudaError_t launch_typed(const Params& p, void (*lif)(const Params), void (*memoryless)(const Params),
                         cudaStream_t stream) {
  if (p.neuron == Neuron::kLIF) {
    const int lanes = p.batch * p.r;
    if (lanes == 0) return cudaSuccess;
    lif<<<(lanes + kLifThreads - 1) / kLifThreads, kLifThreads, 0, stream>>>(p);
  } else {
    if (p.r == 0) return cudaSuccess;
    const dim3 grid(memoryless_grid_rows(p.batch * p.tokens), (p.r + kRankTile - 1) / kRankTile);
    memoryless<<<grid, dim3(kRankTile, kRowTile), 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace

int neuron_bwd_partial_rows(const NeuronBwdParams& p) {
  return p.neuron == Neuron::kLIF ? p.batch : memoryless_grid_rows(p.batch * p.tokens);
}

cudaError_t launch_neuron_forward(DType dtype, const NeuronFwdParams& p, cudaStream_t stream) {
  return detail::dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return launch_typed(p, lif_fwd_kernel<T>, memoryless_fwd_kernel<T>, stream);
  });
}

cudaError_t launch_neuron_backward(DType dtype, const NeuronBwdParams& p, cudaStream_t stream) {
  return detail::dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return launch_typed(p, lif_bwd_kernel<T>, memoryless_bwd_kernel<T>, stream);
  });
}

}  // namespace hybridtune
