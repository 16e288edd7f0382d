// Streaming per-channel quantiles: ExactQuantile's candidate buffers and QuantileSketch's float-key
// histograms. Key math shared by CPU and CUDA, argument blocks, entry points.
//
// Sketch key: a float32 bit pattern u maps to an order-preserving 32-bit key
//   positive: 0x80000000 + (u & 0x7fffffff);   negative: 0x7fffffff - (u & 0x7fffffff)
// (NaN and +-0 are counted apart). Coarse bucket = key >> 23 (sign + exponent, 512 of them: 0 holds
// only -inf, 511 only +inf); fine bucket = the next 7 bits (128 per coarse bucket, 0.8% wide).
#pragma once
#include <cstdint>

#include "unitscope/common.h"

namespace unitscope {

constexpr int kSketchCoarse = 512;
constexpr int kSketchSub = 128;

// 0: regular value (key written), 1: NaN, 2: +-0
US_HD int sketch_key(uint32_t u, uint32_t* key) {
  const uint32_t mag = u & 0x7fffffffu;
  if (mag > 0x7f800000u) return 1;
  if (mag == 0) return 2;
  *key = (u >> 31) ? 0x7fffffffu - mag : 0x80000000u + mag;
  return 0;
}

struct ExactQuantileArgs {
  const void* x;     // (outer, K, inner) contiguous, dtype
  int dtype;
  int64_t outer, K, inner;
  int64_t start, length;  // CUDA: the range of per-channel value numbers (o * inner + i) to feed
  float* buf;        // (K, cap) float32 candidates in stored sign (negated when negate)
  int64_t cap, m;
  int64_t* fill;     // (K,) used entries of buf
  float* thr;        // (K,) reject values <= thr; NaN: accept all
  int64_t* nan;      // (K,) NaN counts
  bool negate;       // keep the smallest values (stored negated)
  int num_threads;
};

struct SketchArgs {
  const void* x;     // (outer, K, inner) contiguous, dtype
  int dtype;
  int64_t outer, K, inner;
  int64_t* coarse;   // (K, 512) counts of coarse buckets below the fine window (and +-inf)
  int64_t* fine;     // (K, nb * 128) counts; slot j <-> coarse bucket top - nb + 1 + j
  int64_t* top;      // (K,) coarse bucket of the largest finite value, -1 when empty
  int64_t* zeros;    // (K,)
  int64_t* nan;      // (K,)
  int64_t* kmin;     // (K,) smallest key seen (init 2^32)
  int64_t* kmax;     // (K,) largest key seen (init -1)
  int64_t nb;
  int num_threads;
  int64_t* new_top;  // CUDA workspace (K,)
};

void exact_quantile_update_cpu(const ExactQuantileArgs& a);
// The lo[k]-th and hi[k]-th largest of channel k's candidates moved to those positions of its buffer.
void exact_quantile_select_cpu(float* buf, int64_t K, int64_t cap, const int64_t* fill, const int64_t* lo,
                               const int64_t* hi, int num_threads);
// Instruction sets of the CPU update's filter, picked at run time (never from compile flags).
enum ExactIsa : int { kIsaPortable = 0, kIsaAvx2 = 1, kIsaAvx512 = 2 };
// The one the update uses: the best the CPU has, at most the limit last set (limit >= 0 sets it:
// tests run every path on one machine; limit < 0 only reads).
int exact_quantile_isa(int limit);
void exact_quantile_update_cuda(const ExactQuantileArgs& a, int device, void* stream);
void quantile_sketch_update_cpu(const SketchArgs& a);
void quantile_sketch_update_cuda(const SketchArgs& a, int device, void* stream);

}  // namespace unitscope
