// CPU (OpenMP) kernels of ExactQuantile: the streaming update of each channel's candidate buffer
// (a vector filter against the running threshold, picked at run time: AVX-512, AVX2 or the portable
// x86-64 baseline) and the selection of the order statistics result() reads.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define US_X86_DISPATCH 1
#include <immintrin.h>
#elif defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "unitscope/parallel.h"
#include "unitscope/quantile.h"

namespace unitscope {

namespace {

constexpr int64_t kBlock = 4096;  // values of other dtypes are converted to float32 in blocks this long
constexpr int64_t kPad = 16;      // the vector paths store a whole vector at buf + fill: room kept at the end
// The filters prefetch this many bytes ahead (a hint: past the end of x it reads nothing). The
// hardware prefetcher alone left a 1-thread filter at ~55% of one read's speed; 4 KiB ahead, ~75%.
constexpr int kAhead = 4096;

// The two passes of a compaction over buf[0, n): counts of values > p and == p; then the values > p
// moved to the front in order (returns their count). Vectorized by hand for AVX-512 (below).
void count_around(const float* buf, int64_t n, float p, int64_t* gt, int64_t* eq, int isa);
int64_t keep_above(float* buf, int64_t n, float p, int isa);

// One channel's candidates: buf[0, fill) are values > thr (thr NaN: none rejected yet), stored
// with -0.0 as +0.0, NaN never. Invariant: they include the m largest values of the channel's
// stream (ties: enough copies of the m-th largest), so a value <= thr can never be read.
struct ExactChannel {
  float* buf;
  int64_t m, fill, nan;
  float thr;
  int64_t full;  // compact when fill reaches this
  int isa;       // the instruction set the passes use

  // Cut the buffer back to a little more than its m largest values and raise thr. A pivot p is
  // picked from a sample (the value expected at rank ~m + 2 sigma), then one counting pass: with
  // at least m values > p, p is a valid threshold and those values are kept; with fewer above but
  // enough equal to p, p is the m-th largest; otherwise (rare) an exact nth_element.
  void compact() {
    if (fill >= 256) {  // (smaller: the exact path)
      float s[128];
      uint64_t r = 0x9e3779b97f4a7c15ull ^ (uint64_t)fill;
      for (float& v : s) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        v = buf[(r >> 33) % (uint64_t)fill];
      }
      const double f = (double)m / (double)fill;
      const int at = std::min(127, (int)(128 * f + 2 * std::sqrt(128 * f * (1 - f))));
      std::nth_element(s, s + at, s + 128, std::greater<float>());
      const float p = s[at];
      int64_t gt = 0, eq = 0;
      count_around(buf, fill, p, &gt, &eq, isa);
      // keep at least m, and free at least half of the room above m (or the next compaction is soon)
      if (gt + eq >= m && gt <= m + (full - m) / 2) {
        int64_t j = keep_above(buf, fill, p, isa);
        for (; j < m; ++j) buf[j] = p;  // p is the m-th largest: m - gt copies of it
        fill = j;
        thr = p;
        return;
      }
    }
    std::nth_element(buf, buf + (m - 1), buf + fill, std::greater<float>());
    thr = buf[m - 1];
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

inline void push_tail(const float* p, int64_t i, int64_t n, bool neg, ExactChannel& c) {
  for (; i < n; ++i) c.push(neg ? -p[i] : p[i]);
}

// Portable path (x86-64's baseline SSE2, or scalar elsewhere): 16 values a step, four compares into
// a mask of the values that are not <= thr (NaN included), each then pushed; almost every value of
// a long stream is at or below the threshold.
void scan_portable(const float* p, int64_t n, bool neg, ExactChannel& c) {
  int64_t i = 0;
#if defined(__SSE2__)
  const __m128 sign = _mm_set1_ps(neg ? -0.0f : 0.0f);
  for (; i + 16 <= n; i += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(p + i) + kAhead, _MM_HINT_T0);
    const __m128 tv = _mm_set1_ps(c.thr);
    uint32_t hits = 0;
    for (int h = 0; h < 4; ++h)
      hits |= (uint32_t)_mm_movemask_ps(_mm_cmpnle_ps(_mm_xor_ps(_mm_loadu_ps(p + i + 4 * h), sign), tv)) << (4 * h);
    while (hits) {
      const int j = __builtin_ctz(hits);
      hits &= hits - 1;
      c.push(neg ? -p[i + j] : p[i + j]);
    }
  }
#endif
  push_tail(p, i, n, neg, c);
}

#if defined(US_X86_DISPATCH)
// AVX2: 8 values a step, no branch on the data: the kept values (not NaN, not <= thr) are packed to
// the front of a vector by a permutation from a 256-entry table and the whole vector is stored at
// buf + fill (kPad slots of room), fill += their count. Adding +0.0 turns -0.0 into +0.0.
struct PackTable {
  int32_t idx[256][8];
  constexpr PackTable() : idx() {
    for (int mask = 0; mask < 256; ++mask) {
      int j = 0;
      for (int b = 0; b < 8; ++b)
        if (mask >> b & 1) idx[mask][j++] = b;
    }
  }
};
constexpr PackTable kPack;

__attribute__((target("avx2,popcnt"))) void scan_avx2(const float* p, int64_t n, bool neg, ExactChannel& c) {
  const __m256 sign = _mm256_set1_ps(neg ? -0.0f : 0.0f), zero = _mm256_setzero_ps();
  float* const buf = c.buf;
  int64_t fill = c.fill, nan = c.nan, i = 0;
  __m256 tv = _mm256_set1_ps(c.thr);
  for (; i + 8 <= n; i += 8) {
    _mm_prefetch(reinterpret_cast<const char*>(p + i) + kAhead, _MM_HINT_T0);
    const __m256 v = _mm256_add_ps(_mm256_xor_ps(_mm256_loadu_ps(p + i), sign), zero);
    const int nanm = _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    const int keep = _mm256_movemask_ps(_mm256_cmp_ps(v, tv, _CMP_NLE_UQ)) & ~nanm;
    nan += __builtin_popcount((unsigned)nanm);
    const __m256i perm = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kPack.idx[keep]));
    _mm256_storeu_ps(buf + fill, _mm256_permutevar8x32_ps(v, perm));
    fill += __builtin_popcount((unsigned)keep);
    if (fill >= c.full) {
      c.fill = fill;
      c.compact();
      fill = c.fill;
      tv = _mm256_set1_ps(c.thr);
    }
  }
  c.fill = fill;
  c.nan = nan;
  push_tail(p, i, n, neg, c);
}

// AVX-512: the same with 16 values a step and the packing done by vcompressps.
__attribute__((target("avx512f,popcnt"))) void scan_avx512(const float* p, int64_t n, bool neg, ExactChannel& c) {
  const __m512 sign = _mm512_set1_ps(neg ? -0.0f : 0.0f), zero = _mm512_setzero_ps();
  float* const buf = c.buf;
  int64_t fill = c.fill, nan = c.nan, i = 0;
  __m512 tv = _mm512_set1_ps(c.thr);
  for (; i + 16 <= n; i += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(p + i) + kAhead, _MM_HINT_T0);
    const __m512 v = _mm512_add_ps(_mm512_castsi512_ps(_mm512_xor_si512(
        _mm512_castps_si512(_mm512_loadu_ps(p + i)), _mm512_castps_si512(sign))), zero);
    const __mmask16 nanm = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    const __mmask16 keep = _mm512_mask_cmp_ps_mask((__mmask16)~nanm, v, tv, _CMP_NLE_UQ);
    nan += __builtin_popcount((unsigned)nanm);
    _mm512_storeu_ps(buf + fill, _mm512_maskz_compress_ps(keep, v));
    fill += __builtin_popcount((unsigned)keep);
    if (fill >= c.full) {
      c.fill = fill;
      c.compact();
      fill = c.fill;
      tv = _mm512_set1_ps(c.thr);
    }
  }
  c.fill = fill;
  c.nan = nan;
  push_tail(p, i, n, neg, c);
}
#endif

#if defined(US_X86_DISPATCH)
__attribute__((target("avx512f,popcnt"))) void count_around_avx512(const float* b, int64_t n, float p, int64_t* gt,
                                                                   int64_t* eq) {
  const __m512 pv = _mm512_set1_ps(p);
  int64_t g = 0, e = 0, i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(b + i);
    g += __builtin_popcount((unsigned)_mm512_cmp_ps_mask(v, pv, _CMP_GT_OQ));
    e += __builtin_popcount((unsigned)_mm512_cmp_ps_mask(v, pv, _CMP_EQ_OQ));
  }
  for (; i < n; ++i) {
    g += b[i] > p;
    e += b[i] == p;
  }
  *gt = g;
  *eq = e;
}

__attribute__((target("avx512f,popcnt"))) int64_t keep_above_avx512(float* b, int64_t n, float p) {
  const __m512 pv = _mm512_set1_ps(p);
  int64_t j = 0, i = 0;
  for (; i + 16 <= n; i += 16) {  // j <= i: the store never overtakes what is still to be read
    const __m512 v = _mm512_loadu_ps(b + i);
    const __mmask16 k = _mm512_cmp_ps_mask(v, pv, _CMP_GT_OQ);
    _mm512_mask_compressstoreu_ps(b + j, k, v);
    j += __builtin_popcount((unsigned)k);
  }
  for (; i < n; ++i) {
    const float v = b[i];
    b[j] = v;
    j += v > p;
  }
  return j;
}
#endif

void count_around(const float* buf, int64_t n, float p, int64_t* gt, int64_t* eq, int isa) {
#if defined(US_X86_DISPATCH)
  if (isa == kIsaAvx512) return count_around_avx512(buf, n, p, gt, eq);
#endif
  (void)isa;
  int64_t g = 0, e = 0;
  for (int64_t i = 0; i < n; ++i) {
    g += buf[i] > p;
    e += buf[i] == p;
  }
  *gt = g;
  *eq = e;
}

int64_t keep_above(float* buf, int64_t n, float p, int isa) {
#if defined(US_X86_DISPATCH)
  if (isa == kIsaAvx512) return keep_above_avx512(buf, n, p);
#endif
  (void)isa;
  int64_t j = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = buf[i];
    buf[j] = v;
    j += v > p;
  }
  return j;
}

// The instruction set the update runs with: the best the CPU has, or a lower one a test asked for.
std::atomic<int> g_isa_limit{kIsaAvx512};

int cpu_isa() {
#if defined(US_X86_DISPATCH)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("popcnt")) return kIsaAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) return kIsaAvx2;
#endif
  return kIsaPortable;
}

}  // namespace

int exact_quantile_isa(int limit) {
  if (limit >= 0) g_isa_limit = std::min(limit, (int)kIsaAvx512);
  return std::min(cpu_isa(), g_isa_limit.load());
}

// Each thread owns a contiguous range of channels and walks the input image by image: for a fixed
// image o its channels' runs are adjacent in memory, so every thread reads one sequential stream.
void exact_quantile_update_cpu(const ExactQuantileArgs& a) {
  // the buffers' fill levels come from the caller's state: never write past a buffer on their word
  for (int64_t k = 0; k < a.K; ++k)
    if (a.fill[k] < 0 || a.fill[k] >= a.cap)  // (the message is only built for a failure: K strings cost ~0.1 ms)
      check_arg(false, "exact_quantile: fill[" + std::to_string(k) + "] = " + std::to_string(a.fill[k]) +
                           " is outside [0, cap) = [0, " + std::to_string(a.cap) + ")");
  const int threads = plan_threads(a.num_threads, a.K, 0, "exact_quantile (cpp)");
  // Compacting once about m more values are in (nth_element-like work over 2m values, about two
  // moves per value kept) lets through 4.3% of a long stream of normal values against 11.6% when
  // compacting every 4096 for m = 379 (the 0.995 quantile of 75k values). The vector paths need
  // kPad slots of room past `full`; a buffer too short for that uses the portable path.
  const int64_t want = a.m + std::max<int64_t>(a.m, 256);
  int isa = exact_quantile_isa(-1);
  if (a.cap - kPad < a.m + 64) isa = kIsaPortable;
  const int64_t full = isa == kIsaPortable ? std::min(a.cap, want) : std::min(a.cap - kPad, want);
  auto scan = [isa, neg = a.negate](const float* p, int64_t n, ExactChannel& c) {
#if defined(US_X86_DISPATCH)
    if (isa == kIsaAvx512) return scan_avx512(p, n, neg, c);
    if (isa == kIsaAvx2) return scan_avx2(p, n, neg, c);
#endif
    scan_portable(p, n, neg, c);
  };
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
    for (int64_t k = k0; k < k1; ++k) ch.push_back({a.buf + k * a.cap, a.m, a.fill[k], a.nan[k], a.thr[k], full, isa});
    for (int64_t o = 0; o < a.outer; ++o) {
      for (int64_t k = k0; k < k1; ++k) {
        ExactChannel& c = ch[k - k0];
        const int64_t base = (o * a.K + k) * a.inner;
        if (a.dtype == kFloat32) {
          scan(static_cast<const float*>(a.x) + base, a.inner, c);
          continue;
        }
        for (int64_t s = 0; s < a.inner; s += kBlock) {
          const int64_t n = std::min(kBlock, a.inner - s);
          for (int64_t i = 0; i < n; ++i) tmp[i] = load_float(a.x, base + s + i, a.dtype);
          scan(tmp.data(), n, c);
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

// Puts the lo[k]-th and hi[k]-th largest of channel k's fill[k] candidates at those positions of
// its buffer (0-based, descending; the rest is reordered), so that buf[k, lo] and buf[k, hi] are
// what the canonical sorted candidates hold there. Channels with fill 0 are left alone.
void exact_quantile_select_cpu(float* buf, int64_t K, int64_t cap, const int64_t* fill, const int64_t* lo,
                               const int64_t* hi, int num_threads) {
  for (int64_t k = 0; k < K; ++k) {
    if (fill[k] < 0 || fill[k] > cap)
      check_arg(false, "exact_quantile_select: fill[" + std::to_string(k) + "] = " + std::to_string(fill[k]) +
                           " is outside [0, cap] = [0, " + std::to_string(cap) + "]");
    if (fill[k] > 0 && !(0 <= lo[k] && lo[k] <= hi[k] && hi[k] < fill[k]))
      check_arg(false, "exact_quantile_select: channel " + std::to_string(k) + " needs 0 <= lo <= hi < fill, got lo " +
                           std::to_string(lo[k]) + ", hi " + std::to_string(hi[k]) + ", fill " + std::to_string(fill[k]));
  }
  const int threads = plan_threads(num_threads, K, 0, "exact_quantile_select (cpp)");
#pragma omp parallel for num_threads(threads) schedule(dynamic, 8)
  for (int64_t k = 0; k < K; ++k) {
    if (fill[k] == 0) continue;
    float* b = buf + k * cap;
    std::nth_element(b, b + hi[k], b + fill[k], std::greater<float>());
    if (lo[k] + 1 == hi[k]) {  // the usual pair (linear interpolation): the smallest of b[0, hi)
      std::iter_swap(b + lo[k], std::min_element(b, b + hi[k]));
    } else if (lo[k] < hi[k]) {
      std::nth_element(b, b + lo[k], b + hi[k], std::greater<float>());
    }
  }
}

}  // namespace unitscope
