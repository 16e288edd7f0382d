// CPU (OpenMP) kernels for streaming quantiles: one task per channel, so each channel's state is
// touched by one thread. For the (B, K, h, w) layout each image's h*w values of a channel are one
// contiguous run; runs of other dtypes are converted to float32 in 4096-value blocks first.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

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

  void compact() {
    std::nth_element(buf, buf + (m - 1), buf + fill, std::greater<float>());
    thr = buf[m - 1];  // every kept value is >= thr; a new value <= thr can never be read
    fill = m;
  }
  inline void push(float v) {
    if (v != v) {
      ++nan;
    } else if (!(v <= thr)) {  // thr NaN (no threshold yet) accepts everything
      buf[fill++] = v;
      if (fill == cap) compact();
    }
  }
};

template <bool kNeg>
void exact_scan(const float* p, int64_t n, ExactChannel& c) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const float t = c.thr;
    uint32_t hits = 0;
    for (int j = 0; j < 16; ++j) {  // the hot loop: a vectorized compare into a bit mask
      const float v = kNeg ? -p[i + j] : p[i + j];
      hits |= (uint32_t)!(v <= t) << j;  // NaN sets its bit too (counted in push)
    }
    while (hits) {  // push re-checks against the current threshold (it may rise inside the block)
      const int j = __builtin_ctz(hits);
      hits &= hits - 1;
      c.push(kNeg ? -p[i + j] : p[i + j]);
    }
  }
  for (; i < n; ++i) c.push(kNeg ? -p[i] : p[i]);
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

  void scan(const uint32_t* __restrict u, int64_t n) {
    int64_t* __restrict hist = h.data();
    int64_t lo = kmin, hi = kmax, tp = top, base = top - nb + 1;
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t bits = u[i];
      const uint32_t mag = bits & 0x7fffffffu;
      // order-preserving key (see quantile.h): flip all bits of negatives, the sign bit of positives
      const uint32_t key = bits ^ ((uint32_t)((int32_t)bits >> 31) | 0x80000000u);
      const int64_t c = key >> 23;
      const bool regular = mag != 0 && mag <= 0x7f800000u;
      if (__builtin_expect(regular && c > tp && c < kSketchCoarse - 1, 0)) {
        top = tp; shift(c); tp = top; base = tp - nb + 1;
      }
      // select the counter without branches (normal data lands in the fine window half the time)
      const bool in_fine = ((uint64_t)(c - base) <= (uint64_t)(tp - base)) & (c >= 1);
      const int64_t fidx = kSketchCoarse + (c - base) * kSketchSub + ((key >> 16) & (kSketchSub - 1));
      int64_t idx = c ^ ((c ^ fidx) & -(int64_t)in_fine);
      idx ^= (idx ^ zero_slot) & -(int64_t)(mag == 0);
      idx ^= (idx ^ nan_slot) & -(int64_t)(mag > 0x7f800000u);
      ++hist[idx];
      const int64_t rm = -(int64_t)regular;  // all ones for a regular value
      const int64_t klo = ((int64_t)key & rm) | (~rm & (int64_t(1) << 40));  // else 2^40: no effect
      const int64_t khi = ((int64_t)key & rm) | ~rm;                          // else -1: no effect
      lo = klo < lo ? klo : lo;
      hi = khi > hi ? khi : hi;
    }
    kmin = lo; kmax = hi; top = tp;
  }
};

}  // namespace

void exact_quantile_update_cpu(const ExactQuantileArgs& a) {
  const int threads = a.num_threads > 0 ? a.num_threads : 1;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> tmp(a.dtype == kFloat32 ? 0 : kBlock);
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < a.K; ++k) {
      ExactChannel c{a.buf + k * a.cap, a.cap, a.m, a.fill[k], a.nan[k], a.thr[k]};
      for_each_run(a.x, a.dtype, a.outer, a.K, a.inner, k, tmp, [&](const float* p, int64_t n) {
        if (a.negate) exact_scan<true>(p, n, c); else exact_scan<false>(p, n, c);
      });
      a.fill[k] = c.fill;
      a.nan[k] = c.nan;
      a.thr[k] = c.thr;
    }
  }
}

void quantile_sketch_update_cpu(const SketchArgs& a) {
  const int threads = a.num_threads > 0 ? a.num_threads : 1;
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
