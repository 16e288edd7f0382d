// CUDA kernels for streaming quantiles, on the caller's stream (on the buffers' device).
// ExactQuantile: one grid-stride pass appends every value above its channel's reject threshold to the
//   candidate buffer (atomic slot per accepted value); the Python layer sizes each chunk so a buffer
//   cannot overflow and cuts full buffers back with torch.topk between chunks.
// QuantileSketch: (1) block per (o, k) run: block-reduced top coarse bucket, min/max key, NaN and
//   zero counts, one atomic each; (2) block per channel: move the fine window up to the new top,
//   folding dropped sub-buckets into their coarse bucket; (3) block per run: one atomic increment
//   per value. The resulting counts equal the CPU kernels' exactly (they depend on the values only).
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "unitscope/cuda_check.h"
#include "unitscope/quantile.h"

namespace unitscope {

namespace {

using ull = unsigned long long;

__global__ void exact_append_kernel(ExactQuantileArgs a) {
  const int64_t n = a.K * a.length;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t k = idx / a.length;
    const int64_t j = a.start + idx % a.length;  // value number within channel k
    const int64_t o = j / a.inner, i = j % a.inner;
    float v = load_float(a.x, (o * a.K + k) * a.inner + i, a.dtype);
    if (a.negate) v = -v;
    if (v != v) {
      atomicAdd(reinterpret_cast<ull*>(a.nan + k), 1ull);
    } else if (!(v <= a.thr[k])) {  // thr NaN: accept all
      const ull pos = atomicAdd(reinterpret_cast<ull*>(a.fill + k), 1ull);
      // always in range once the host check passed; -0.0 kept as +0.0, as by every backend (CUDA's
      // topk orders -0.0 below +0.0, the CPU's does not)
      if (pos < (ull)a.cap) a.buf[k * a.cap + (int64_t)pos] = v == 0.0f ? 0.0f : v;
    }
  }
}

constexpr int kThreads = 256;

template <class T, class Op>
__device__ T block_reduce(T v, Op op, T identity, T* shared) {
  for (int s = 16; s > 0; s >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, s));
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < (int)(blockDim.x / 32) ? shared[lane] : identity;
    for (int s = 16; s > 0; s >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, s));
  }
  return v;  // valid in thread 0
}

struct MinOp { __device__ long long operator()(long long a, long long b) const { return a < b ? a : b; } };
struct MaxOp { __device__ long long operator()(long long a, long long b) const { return a > b ? a : b; } };
struct AddOp { __device__ long long operator()(long long a, long long b) const { return a + b; } };

__device__ uint32_t float_bits(float f) { return __float_as_uint(f); }

__global__ void sketch_scan_kernel(SketchArgs a) {
  __shared__ long long shared[32];
  const int64_t runs = a.outer * a.K;
  for (int64_t r = blockIdx.x; r < runs; r += gridDim.x) {
    const int64_t k = r % a.K;
    long long top = -1, lo = 1ll << 40, hi = -1, nan = 0, zeros = 0;
    for (int64_t i = threadIdx.x; i < a.inner; i += blockDim.x) {
      uint32_t key;
      const int kind = sketch_key(float_bits(load_float(a.x, r * a.inner + i, a.dtype)), &key);
      if (kind == 1) { ++nan; continue; }
      if (kind == 2) { ++zeros; continue; }
      lo = min(lo, (long long)key);
      hi = max(hi, (long long)key);
      const long long c = key >> 23;
      if (c >= 1 && c < kSketchCoarse - 1) top = max(top, c);
    }
    top = block_reduce(top, MaxOp(), -1ll, shared);
    lo = block_reduce(lo, MinOp(), 1ll << 40, shared);
    hi = block_reduce(hi, MaxOp(), -1ll, shared);
    nan = block_reduce(nan, AddOp(), 0ll, shared);
    zeros = block_reduce(zeros, AddOp(), 0ll, shared);
    if (threadIdx.x == 0) {
      atomicMax(reinterpret_cast<long long*>(a.new_top + k), top);
      atomicMin(reinterpret_cast<long long*>(a.kmin + k), lo);
      atomicMax(reinterpret_cast<long long*>(a.kmax + k), hi);
      if (nan) atomicAdd(reinterpret_cast<ull*>(a.nan + k), (ull)nan);
      if (zeros) atomicAdd(reinterpret_cast<ull*>(a.zeros + k), (ull)zeros);
    }
  }
}

// block per channel, thread per sub-bucket column: each thread reads and writes only its column
__global__ void sketch_shift_kernel(SketchArgs a) {
  for (int64_t k = blockIdx.x; k < a.K; k += gridDim.x) {
    const int64_t old = a.top[k], now = a.new_top[k];
    if (now <= old) continue;
    int64_t* fine = a.fine + k * a.nb * kSketchSub;
    if (old >= 0) {
      const int64_t d = now - old, base = old - a.nb + 1;
      for (int64_t col = threadIdx.x; col < kSketchSub; col += blockDim.x) {
        for (int64_t j = 0; j < min(d, a.nb); ++j)
          if (base + j >= 1 && fine[j * kSketchSub + col])
            atomicAdd(reinterpret_cast<ull*>(a.coarse + k * kSketchCoarse + base + j), (ull)fine[j * kSketchSub + col]);
        for (int64_t j = 0; j < a.nb; ++j)
          fine[j * kSketchSub + col] = j + d < a.nb ? fine[(j + d) * kSketchSub + col] : 0;
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) a.top[k] = now;
  }
}

__global__ void sketch_count_kernel(SketchArgs a) {
  const int64_t runs = a.outer * a.K;
  for (int64_t r = blockIdx.x; r < runs; r += gridDim.x) {
    const int64_t k = r % a.K;
    const int64_t top = a.top[k], base = top - a.nb + 1;
    for (int64_t i = threadIdx.x; i < a.inner; i += blockDim.x) {
      uint32_t key;
      if (sketch_key(float_bits(load_float(a.x, r * a.inner + i, a.dtype)), &key) != 0) continue;
      const int64_t c = key >> 23;
      int64_t* slot;
      if (c >= 1 && c >= base && c <= top)
        slot = a.fine + (k * a.nb + (c - base)) * kSketchSub + ((key >> 16) & (kSketchSub - 1));
      else
        slot = a.coarse + k * kSketchCoarse + c;
      atomicAdd(reinterpret_cast<ull*>(slot), 1ull);
    }
  }
}

// (K,) int64 state values of the caller's, read on the host after the stream's earlier work.
std::vector<int64_t> read_state(const int64_t* p, int64_t K, cudaStream_t s, const char* what) {
  std::vector<int64_t> host((size_t)K);
  check_cuda(cudaMemcpyAsync(host.data(), p, (size_t)K * sizeof(int64_t), cudaMemcpyDeviceToHost, s), what);
  check_cuda(cudaStreamSynchronize(s), what);
  return host;
}

}  // namespace

void exact_quantile_update_cuda(const ExactQuantileArgs& a, int device, void* stream) {
  DeviceGuard guard(device, "exact_quantile_update_cuda");
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  // the buffers' fill levels come from the caller's state: the chunk appends up to `length` values
  // per channel, so fill + length must stay within cap (checked like exact_quantile_update_cpu)
  const std::vector<int64_t> fill = read_state(a.fill, a.K, s, "exact_quantile_update_cuda (fill)");
  for (int64_t k = 0; k < a.K; ++k)
    check_arg(fill[k] >= 0 && fill[k] <= a.cap - a.length,
              "exact_quantile: fill[" + std::to_string(k) + "] = " + std::to_string(fill[k]) + " plus the chunk's " +
                  std::to_string(a.length) + " values is outside [0, cap] = [0, " + std::to_string(a.cap) + "]");
  exact_append_kernel<<<grid_size(a.K * a.length, kThreads), kThreads, 0, s>>>(a);
  check_launch("exact_quantile_update_cuda");
}

void quantile_sketch_update_cuda(const SketchArgs& a, int device, void* stream) {
  DeviceGuard guard(device, "quantile_sketch_update_cuda");
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  // the fine window's top comes from the caller's state (checked like quantile_sketch_update_cpu)
  const std::vector<int64_t> top = read_state(a.top, a.K, s, "quantile_sketch_update_cuda (top)");
  for (int64_t k = 0; k < a.K; ++k)
    check_arg(top[k] >= -1 && top[k] < kSketchCoarse - 1,
              "quantile_sketch: top[" + std::to_string(k) + "] = " + std::to_string(top[k]) + " is outside [-1, " +
                  std::to_string(kSketchCoarse - 2) + "]");
  const unsigned runs = grid_size(a.outer * a.K, 1);
  sketch_scan_kernel<<<runs, kThreads, 0, s>>>(a);
  check_launch("quantile_sketch_update_cuda (scan)");
  sketch_shift_kernel<<<grid_size(a.K, 1), kSketchSub, 0, s>>>(a);
  check_launch("quantile_sketch_update_cuda (shift)");
  sketch_count_kernel<<<runs, kThreads, 0, s>>>(a);
  check_launch("quantile_sketch_update_cuda (count)");
}

}  // namespace unitscope
