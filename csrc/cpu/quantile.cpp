// CPU (OpenMP) kernels for streaming quantiles: each channel's state is touched by one thread only.
// For the (B, K, h, w) layout each image's h*w values of a channel are one contiguous run; runs of
// other dtypes are converted to float32 in 4096-value blocks first.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

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

struct ExactChannel {
  float* buf;
  int64_t cap, m, fill, nan;
  float thr;
  int64_t full;  // compact at this fill: m + max(m, 256), at most cap

  void compact() {
    std::nth_element(buf, buf + (m - 1), buf + fill, std::greater<float>());
    thr = buf[m - 1];  // every kept value is >= thr; a new value <= thr can never be read
    fill = m;
  }
  inline void push(float v) {
    if (v != v) {
      ++nan;
    } else if (!(v <= thr)) {  // thr NaN (no threshold yet) accepts everything
      buf[fill++] = v == 0.0f ? 0.0f : v;  // -0.0 kept as +0.0, as by every backend (positive_zero)
      if (fill >= full) compact();
    }
  }
};

// When to compact: the threshold only rises at a compaction, so a buffer much larger than m lets
// through many values a tighter threshold would reject. Compacting once m more values are in
// (nth_element over 2m values, about two moves per value kept) accepted 4.3% of a long stream of
// normal values against 11.6% with 4096 for m = 379 (the 0.995 quantile of 75k values); the
// buffer's cap (larger, for the CUDA kernel's launches) stays the limit.
inline int64_t compact_at(int64_t m, int64_t cap) { return std::min(cap, m + std::max<int64_t>(m, 256)); }

// The hot loop: almost every value of a long stream is at or below the running threshold. 16
// values a step: four compares (SSE2, x86-64's baseline) into a 16-bit mask of the values that
// are not <= the threshold (NaN included), each then pushed (push re-checks against the threshold,
// which rises when the buffer is compacted inside the block).
template <bool kNeg>
void exact_scan(const float* p, int64_t n, ExactChannel& c) {
  int64_t i = 0;
  while (c.thr != c.thr && i < n) {  // no threshold yet (the buffer's first fill): every value is kept
    c.push(kNeg ? -p[i] : p[i]);
    ++i;
  }
#if defined(__SSE2__)
  const __m128 sign = _mm_set1_ps(-0.0f);
  for (; i + 16 <= n; i += 16) {
    const __m128 tv = _mm_set1_ps(c.thr);
    __m128 a = _mm_loadu_ps(p + i), b = _mm_loadu_ps(p + i + 4);
    __m128 d = _mm_loadu_ps(p + i + 8), e = _mm_loadu_ps(p + i + 12);
    if (kNeg) {
      a = _mm_xor_ps(a, sign); b = _mm_xor_ps(b, sign);
      d = _mm_xor_ps(d, sign); e = _mm_xor_ps(e, sign);
    }
    // cmpnle: !(v <= t), true for a NaN v
    uint32_t hits = (uint32_t)_mm_movemask_ps(_mm_cmpnle_ps(a, tv)) |
                    (uint32_t)_mm_movemask_ps(_mm_cmpnle_ps(b, tv)) << 4 |
                    (uint32_t)_mm_movemask_ps(_mm_cmpnle_ps(d, tv)) << 8 |
                    (uint32_t)_mm_movemask_ps(_mm_cmpnle_ps(e, tv)) << 12;
    while (hits) {
      const int j = __builtin_ctz(hits);
      hits &= hits - 1;
      c.push(kNeg ? -p[i + j] : p[i + j]);
    }
  }
#endif
  for (; i < n; ++i) c.push(kNeg ? -p[i] : p[i]);
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

// Each thread owns a contiguous range of channels and walks the input image by image: for a fixed
// image o its channels' runs are adjacent in memory, so every thread reads one sequential stream.
void exact_quantile_update_cpu(const ExactQuantileArgs& a) {
  // the buffers' fill levels come from the caller's state: never write past a buffer on their word
  for (int64_t k = 0; k < a.K; ++k)
    check_arg(a.fill[k] >= 0 && a.fill[k] < a.cap,
              "exact_quantile: fill[" + std::to_string(k) + "] = " + std::to_string(a.fill[k]) +
                  " is outside [0, cap) = [0, " + std::to_string(a.cap) + ")");
  const int threads = plan_threads(a.num_threads, a.K, 0, "exact_quantile (cpp)");
#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
    const int t = 0, nt = 1;
#endif
    const int64_t k0 = a.K * t / nt, k1 = a.K * (t + 1) / nt;
    std::vector<float> tmp(a.dtype == kFloat32 ? 0 : kBlock);
    std::vector<ExactChannel> ch;
    for (int64_t k = k0; k < k1; ++k) ch.push_back({a.buf + k * a.cap, a.cap, a.m, a.fill[k], a.nan[k], a.thr[k], compact_at(a.m, a.cap)});
    for (int64_t o = 0; o < a.outer; ++o) {
      for (int64_t k = k0; k < k1; ++k) {
        ExactChannel& c = ch[k - k0];
        const int64_t base = (o * a.K + k) * a.inner;
        auto scan = [&](const float* p, int64_t n) {
          if (a.negate) exact_scan<true>(p, n, c); else exact_scan<false>(p, n, c);
        };
        if (a.dtype == kFloat32) {
          scan(static_cast<const float*>(a.x) + base, a.inner);
          continue;
        }
        for (int64_t s = 0; s < a.inner; s += kBlock) {
          const int64_t n = std::min(kBlock, a.inner - s);
          for (int64_t i = 0; i < n; ++i) tmp[i] = load_float(a.x, base + s + i, a.dtype);
          scan(tmp.data(), n);
        }
      }
    }
    for (int64_t k = k0; k < k1; ++k) {
      a.fill[k] = ch[k - k0].fill;
      a.nan[k] = ch[k - k0].nan;
      a.thr[k] = ch[k - k0].thr;
    }
  }
}

void quantile_sketch_update_cpu(const SketchArgs& a) {
  for (int64_t k = 0; k < a.K; ++k)  // the fine window's top comes from the caller's state
    check_arg(a.top[k] >= -1 && a.top[k] < kSketchCoarse - 1,
              "quantile_sketch: top[" + std::to_string(k) + "] = " + std::to_string(a.top[k]) +
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
