// CPU (OpenMP) kernel of QuantileSketch (ExactQuantile's are in exact_quantile.cpp): each channel's
// state is touched by one thread only. For the (B, K, h, w) layout each image's h*w values of a
// channel are one contiguous run; runs of other dtypes are converted to float32 in 4096-value blocks.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>


#include "unitscope/parallel.h"
#include "unitscope/quantile.h"

namespace unitscope {

namespace {

constexpr int64_t kBlock = 4096;

// Call f(const float* p, int64_t n) on channel k's values, run by run, as float32.
template <class F>
void for_each_run(const void* x, int dtype, int64_t outer, int64_t K, int64_t inner, int64_t k,
                  std::vector<float>& tmp, F&& f) {
  for (int64_t o = 0; o < outer; ++o) {
    const int64_t base = (o * K + k) * inner;
    if (dtype == kFloat32) {
      f(static_cast<const float*>(x) + base, inner);
      continue;
    }
    for (int64_t s = 0; s < inner; s += kBlock) {
      const int64_t n = std::min(kBlock, inner - s);
      for (int64_t i = 0; i < n; ++i) tmp[i] = load_float(x, base + s + i, dtype);
      f(tmp.data(), n);
    }
  }
}

// x86-64's baseline (SSE2) has no 32-bit min/max: the vector passes are also built for AVX2 and
// picked at load time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define US_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define US_CLONES
#endif

// Pass 1 over a block: the top coarse bucket of finite values, min/max key of regular values.
US_CLONES void sketch_block_keys(const uint32_t* __restrict p, int m, int32_t* cmax_out, uint32_t* lo_out,
                                 uint32_t* hi_out) {
  int32_t cmax = -1;
  uint32_t lo = 0xffffffffu, hi = 0;
  for (int j = 0; j < m; ++j) {
    const uint32_t bits = p[j], mag = bits & 0x7fffffffu;
    // order-preserving key (see quantile.h): flip all bits of negatives, the sign bit of positives
    const uint32_t key = bits ^ ((uint32_t)((int32_t)bits >> 31) | 0x80000000u);
    const bool regular = (mag - 1u) < 0x7f800000u;  // mag in [1, 0x7f800000]: not 0, not NaN
    const int32_t c = (int32_t)(key >> 23);
    // finite: not +-inf (coarse buckets 0 and 511 hold only -inf / +inf)
    const uint32_t keep = (uint32_t)regular & (uint32_t)(c >= 1) & (uint32_t)(c < kSketchCoarse - 1);
    cmax = std::max(cmax, c | -(int32_t)(keep ^ 1u));            // -1 unless a finite value
    lo = std::min(lo, key | (uint32_t)-(int32_t)!regular);       // all ones unless regular
    hi = std::max(hi, key & (uint32_t)-(int32_t)regular);        // 0 unless regular
  }
  *cmax_out = cmax; *lo_out = lo; *hi_out = hi;
}

// Pass 2: each value's counter in the channel's histogram (coarse | fine window | NaN | zero).
US_CLONES void sketch_block_index(const uint32_t* __restrict p, int m, int32_t tp, int32_t base, int32_t zeroslot,
                                  int32_t nanslot, int32_t* __restrict idx) {
  for (int j = 0; j < m; ++j) {
    const uint32_t bits = p[j], mag = bits & 0x7fffffffu;
    const uint32_t key = bits ^ ((uint32_t)((int32_t)bits >> 31) | 0x80000000u);
    const int32_t c = (int32_t)(key >> 23);
    const bool in_fine = (c >= base) & (c <= tp) & (c >= 1);
    int32_t i = in_fine ? kSketchCoarse + (c - base) * kSketchSub + (int32_t)((key >> 16) & (kSketchSub - 1)) : c;
    i = mag == 0 ? zeroslot : i;
    i = mag > 0x7f800000u ? nanslot : i;
    idx[j] = i;
  }
}

// One channel's sketch in a thread-local histogram h: [0, 512) coarse buckets, then nb*128 fine
// buckets, then the NaN and zero counters, so that every value costs one branch-free increment.
struct SketchChannel {
  std::vector<int64_t> h;
  int64_t top, kmin, kmax, nb, nan_slot, zero_slot;

  void shift(int64_t c) {  // raise the fine window's top to coarse bucket c, folding what drops out
    int64_t* fine = h.data() + kSketchCoarse;
    if (top >= 0) {
      const int64_t d = c - top, base = top - nb + 1;
      for (int64_t j = 0; j < std::min(d, nb); ++j) {
        if (base + j < 1) continue;
        int64_t s = 0;
        for (int i = 0; i < kSketchSub; ++i) s += fine[j * kSketchSub + i];
        h[base + j] += s;
      }
      if (d < nb) std::memmove(fine, fine + d * kSketchSub, sizeof(int64_t) * (nb - d) * kSketchSub);
      std::memset(fine + std::max<int64_t>(nb - d, 0) * kSketchSub, 0,
                  sizeof(int64_t) * std::min(d, nb) * kSketchSub);
    }
    top = c;
  }

  // Blocks of 256 values in three passes: (1) keys, the block's top coarse bucket, min/max key
  // (vectorized); the window moves up once per block if needed, which gives the same final state
  // (the state depends on the multiset of values only); (2) each value's counter index (vectorized);
  // (3) the increments.
  void scan(const uint32_t* __restrict u, int64_t n) {
    constexpr int kB = 256;
    int32_t idx[kB];
    int64_t* __restrict hist = h.data();
    const int32_t nanslot = (int32_t)nan_slot, zeroslot = (int32_t)zero_slot;
    for (int64_t s = 0; s < n; s += kB) {
      const int m = (int)std::min<int64_t>(kB, n - s);
      const uint32_t* __restrict p = u + s;
      int32_t cmax = -1;
      uint32_t lo = 0xffffffffu, hi = 0;
      sketch_block_keys(p, m, &cmax, &lo, &hi);
      if (lo <= hi) {  // some regular value in the block
        kmin = std::min<int64_t>(kmin, lo);
        kmax = std::max<int64_t>(kmax, hi);
      }
      if (cmax > top) shift(cmax);
      const int32_t tp = (int32_t)top, base = (int32_t)(top - nb + 1);
      sketch_block_index(p, m, tp, base, zeroslot, nanslot, idx);
      for (int j = 0; j < m; ++j) ++hist[idx[j]];
    }
  }
};

}  // namespace

void quantile_sketch_update_cpu(const SketchArgs& a) {
  for (int64_t k = 0; k < a.K; ++k)  // the fine window's top comes from the caller's state
    if (a.top[k] < -1 || a.top[k] >= kSketchCoarse - 1)  // (the message is only built for a failure)
      check_arg(false, "quantile_sketch: top[" + std::to_string(k) + "] = " + std::to_string(a.top[k]) +
                           " is outside [-1, " + std::to_string(kSketchCoarse - 2) + "]");
  const int threads = plan_threads(a.num_threads, a.K, 0, "quantile_sketch (cpp)");
  const int64_t nf = a.nb * kSketchSub;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> tmp(a.dtype == kFloat32 ? 0 : kBlock);
    SketchChannel c;
    c.h.resize(kSketchCoarse + nf + 2);
    c.nb = a.nb; c.nan_slot = kSketchCoarse + nf; c.zero_slot = c.nan_slot + 1;
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < a.K; ++k) {
      int64_t* coarse = a.coarse + k * kSketchCoarse;
      int64_t* fine = a.fine + k * nf;
      std::copy(coarse, coarse + kSketchCoarse, c.h.begin());
      std::copy(fine, fine + nf, c.h.begin() + kSketchCoarse);
      c.h[c.nan_slot] = a.nan[k]; c.h[c.zero_slot] = a.zeros[k];
      c.top = a.top[k]; c.kmin = a.kmin[k]; c.kmax = a.kmax[k];
      for_each_run(a.x, a.dtype, a.outer, a.K, a.inner, k, tmp, [&](const float* p, int64_t n) {
        c.scan(reinterpret_cast<const uint32_t*>(p), n);
      });
      std::copy(c.h.begin(), c.h.begin() + kSketchCoarse, coarse);
      std::copy(c.h.begin() + kSketchCoarse, c.h.begin() + kSketchCoarse + nf, fine);
      a.nan[k] = c.h[c.nan_slot]; a.zeros[k] = c.h[c.zero_slot];
      a.top[k] = c.top; a.kmin[k] = c.kmin; a.kmax[k] = c.kmax;
    }
  }
}

}  // namespace unitscope
