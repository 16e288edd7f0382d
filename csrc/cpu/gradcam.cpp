// Grad-CAM on the CPU: one OpenMP task per (image, target) map. The small h x w map is built in a
// thread-local buffer, then resized, ReLU'd and normalized straight into the output (the output rows
// with AVX2 where the CPU has it, chosen at run time; the same bits as the SSE2/scalar code).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define UNITSCOPE_GRADCAM_AVX2 1
#endif

#include "unitscope/bilinear.h"
#include "unitscope/gradcam.h"
#include "unitscope/parallel.h"

namespace unitscope {

namespace {

// weights[k] = mean over h*w of G[b,k] (Selvaraju et al.), float32 accumulation
// (each channel summed in order, as on the GPU; float32 input eight channels at a time, so that
// eight independent sums hide the latency of the adds)
void spatial_mean(const void* g, int dtype, int64_t base, int64_t K, int64_t hw, float* weights) {
  int64_t k = 0;
  if (dtype == kFloat32) {
    const float* p = static_cast<const float*>(g) + base;
    for (; k + 8 <= K; k += 8) {
      float s[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
      const float* q = p + k * hw;
      for (int64_t i = 0; i < hw; ++i)
        for (int j = 0; j < 8; ++j) s[j] += q[j * hw + i];
      for (int j = 0; j < 8; ++j) weights[k + j] = s[j] / (float)hw;
    }
  }
  for (; k < K; ++k) {
    float s = 0.0f;
    const int64_t off = base + k * hw;
    for (int64_t i = 0; i < hw; ++i) s += load_float(g, off + i, dtype);
    weights[k] = s / (float)hw;
  }
}

// lo, hi updated with the min and max of l0 * r0[x] + l1 * r1[x] over x < n (the values the output
// row gets, computed with the same rounding: -ffp-contract=off); a NaN never wins a comparison.
// SSE2's minps/maxps return their second operand when either is NaN: the same rule as the scalar
// v < lo ? v : lo, so the vector and scalar parts agree.
inline void row_min_max(const float* r0, const float* r1, float l0, float l1, int64_t n, float& lo, float& hi) {
  int64_t x = 0;
#if defined(__SSE2__)
  if (n >= 4) {
    const __m128 a = _mm_set1_ps(l0), b = _mm_set1_ps(l1);
    __m128 vlo = _mm_set1_ps(lo), vhi = _mm_set1_ps(hi);
    for (; x + 4 <= n; x += 4) {
      const __m128 v = _mm_add_ps(_mm_mul_ps(a, _mm_loadu_ps(r0 + x)), _mm_mul_ps(b, _mm_loadu_ps(r1 + x)));
      vlo = _mm_min_ps(v, vlo);
      vhi = _mm_max_ps(v, vhi);
    }
    float l[4], h[4];
    _mm_storeu_ps(l, vlo);
    _mm_storeu_ps(h, vhi);
    for (int j = 0; j < 4; ++j) {
      lo = l[j] < lo ? l[j] : lo;
      hi = h[j] > hi ? h[j] : hi;
    }
  }
#endif
  for (; x < n; ++x) {
    const float v = l0 * r0[x] + l1 * r1[x];
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
}

#if defined(UNITSCOPE_GRADCAM_AVX2)
// The min and max over a whole resized map (row_min_max over its H rows), sixteen pixels at a time in
// two independent accumulator pairs, reduced once per map; `signs` collects the OR of every pixel's
// bits (its sign bit says whether any pixel is negative, -0.0 or a NaN with the sign set). The min
// and max values are row_min_max's (min and max do not depend on the order); only which zero, +0.0
// or -0.0, ends up as the min can (a tie), and gradcam_cpu redoes a map with row_min_max when that
// could matter (see there).
__attribute__((target("avx2"))) void map_min_max_avx2(const float* rows, const LinearTap* ty, int64_t H, int64_t n,
                                                      float& lo, float& hi, uint32_t& signs) {
  __m256 lo0 = _mm256_set1_ps(lo), lo1 = lo0, hi0 = _mm256_set1_ps(hi), hi1 = hi0, or0 = _mm256_setzero_ps(), or1 = or0;
  for (int64_t y = 0; y < H; ++y) {
    const float* r0 = rows + ty[y].i0 * n;
    const float* r1 = rows + ty[y].i1 * n;
    const float l0 = ty[y].l0, l1 = ty[y].l1;
    const __m256 a = _mm256_set1_ps(l0), b = _mm256_set1_ps(l1);
    int64_t x = 0;
    for (; x + 16 <= n; x += 16) {
      const __m256 v = _mm256_add_ps(_mm256_mul_ps(a, _mm256_loadu_ps(r0 + x)), _mm256_mul_ps(b, _mm256_loadu_ps(r1 + x)));
      const __m256 u = _mm256_add_ps(_mm256_mul_ps(a, _mm256_loadu_ps(r0 + x + 8)),
                                     _mm256_mul_ps(b, _mm256_loadu_ps(r1 + x + 8)));
      lo0 = _mm256_min_ps(v, lo0);
      hi0 = _mm256_max_ps(v, hi0);
      or0 = _mm256_or_ps(or0, v);
      lo1 = _mm256_min_ps(u, lo1);
      hi1 = _mm256_max_ps(u, hi1);
      or1 = _mm256_or_ps(or1, u);
    }
    for (; x < n; ++x) {
      const float v = l0 * r0[x] + l1 * r1[x];
      lo = v < lo ? v : lo;
      hi = v > hi ? v : hi;
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      signs |= bits;
    }
  }
  float l[16], h[16], o[16];
  _mm256_storeu_ps(l, lo0);
  _mm256_storeu_ps(l + 8, lo1);
  _mm256_storeu_ps(h, hi0);
  _mm256_storeu_ps(h + 8, hi1);
  _mm256_storeu_ps(o, or0);
  _mm256_storeu_ps(o + 8, or1);
  for (int j = 0; j < 16; ++j) {
    lo = l[j] < lo ? l[j] : lo;
    hi = h[j] > hi ? h[j] : hi;
    uint32_t bits;
    std::memcpy(&bits, &o[j], 4);
    signs |= bits;
  }
}

// One output row, l0 * r0[x] + l1 * r1[x] (scale: then (v - lo) * inv), eight pixels at a time:
// the same operations in the same order per pixel as the scalar loops, so the same bits. With
// `stream`, the aligned part is written with non-temporal stores: straight to memory, without first
// reading each output line into the cache (a large output is not read back by this kernel, and
// would not fit in the cache anyway); the caller fences once its maps are done.
__attribute__((target("avx2"))) void row_write_avx2(float* o, const float* r0, const float* r1, float l0, float l1,
                                                    int64_t n, bool scale, float lo, float inv, bool stream) {
  int64_t x = 0;
  const __m256 a = _mm256_set1_ps(l0), b = _mm256_set1_ps(l1), vlo = _mm256_set1_ps(lo), vinv = _mm256_set1_ps(inv);
  if (stream)
    for (; x < n && (reinterpret_cast<uintptr_t>(o + x) & 31) != 0; ++x)
      o[x] = scale ? (l0 * r0[x] + l1 * r1[x] - lo) * inv : l0 * r0[x] + l1 * r1[x];
  for (; x + 8 <= n; x += 8) {
    __m256 v = _mm256_add_ps(_mm256_mul_ps(a, _mm256_loadu_ps(r0 + x)), _mm256_mul_ps(b, _mm256_loadu_ps(r1 + x)));
    if (scale) v = _mm256_mul_ps(_mm256_sub_ps(v, vlo), vinv);
    if (stream)
      _mm256_stream_ps(o + x, v);
    else
      _mm256_storeu_ps(o + x, v);
  }
  for (; x < n; ++x) o[x] = scale ? (l0 * r0[x] + l1 * r1[x] - lo) * inv : l0 * r0[x] + l1 * r1[x];
}

bool have_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}
#endif

// What normalizing does to a map with min lo and max hi (of its non-NaN pixels).
struct Rescale {
  enum Mode { kKeep, kScale, kZero } mode;
  float lo, inv;
};

Rescale rescale(bool normalize, float lo, float hi) {
  if (!normalize) return {Rescale::kKeep, 0.0f, 1.0f};
  const float range = hi - lo;
  // multiply by the reciprocal: within one float32 rounding of the reference's division
  if (range > 0.0f && std::isfinite(range)) return {Rescale::kScale, lo, 1.0f / range};
  return {Rescale::kZero, 0.0f, 0.0f};  // constant map (or none, or an infinite range): 0; NaN stays NaN
}

}  // namespace

void gradcam_cpu(const GradcamArgs& a) {
  check_gradcam_sizes(a, "gradcam (cpp)");
  const int64_t hw = a.h * a.w, HW = a.H * a.W, maps = a.B * a.T;
  const bool resize = !(a.H == a.h && a.W == a.w);
  // Only the source rows some output row reads are interpolated to width W: at most min(h, 2H) of
  // them, each given a slot of `rows` in order (a 100000 x 1 map resized to 1 x 100000 needs 2
  // rows, not 100000 x 100000 floats). ty[y].i0/i1 are then slot numbers; used[s] is slot s's row.
  std::vector<LinearTap> ty(resize ? a.H : 0), tx(resize ? a.W : 0);
  std::vector<int64_t> used;
  if (resize) {
    const float sy = bilinear_scale((int)a.h, (int)a.H, a.align_corners);
    const float sx = bilinear_scale((int)a.w, (int)a.W, a.align_corners);
    for (int64_t i = 0; i < a.W; ++i) tx[i] = bilinear_tap((int)i, (int)a.w, sx, a.align_corners);
    std::vector<int> slot(a.h, -1);
    for (int64_t i = 0; i < a.H; ++i) {
      LinearTap t = bilinear_tap((int)i, (int)a.h, sy, a.align_corners);
      for (int* r : {&t.i0, &t.i1}) {
        if (slot[*r] < 0) {
          slot[*r] = (int)used.size();
          used.push_back(*r);
        }
        *r = slot[*r];
      }
      ty[i] = t;
    }
  }
  const int64_t nrows = (int64_t)used.size();
  const int threads = plan_threads(a.num_threads, maps, (hw + a.K + nrows * a.W) * 4,
                                   "gradcam (cpp) of " + std::to_string(a.h) + " x " + std::to_string(a.w) +
                                       " maps to " + std::to_string(a.H) + " x " + std::to_string(a.W));
  struct Scratch {
    std::vector<float> cam, weights, rows;  // [h*w], [K], [nrows*W]
  };
#if defined(UNITSCOPE_GRADCAM_AVX2)
  const bool avx2 = have_avx2() && !std::getenv("UNITSCOPE_NO_AVX2");
  const bool stream = maps * HW >= (int64_t(1) << 20);  // >= 4 MiB of output: written around the cache
#endif
  std::vector<Scratch> scratch(threads);  // allocated here: a std::bad_alloc becomes a MemoryError
  for (Scratch& s : scratch) {
    s.cam.resize(hw);
    s.weights.resize(a.K);
    s.rows.resize(nrows * a.W);
  }
#pragma omp parallel num_threads(threads)
  {
    std::vector<float>&cam = scratch[thread_index()].cam, &weights = scratch[thread_index()].weights,
    &rows = scratch[thread_index()].rows;
#pragma omp for schedule(dynamic, 1)
    for (int64_t m = 0; m < maps; ++m) {
      const int64_t b = m / a.T;
      const int64_t act_base = b * a.K * hw;
      const float* wk = weights.data();
      if (a.gradients) {
        spatial_mean(a.gradients, a.act_dtype, act_base, a.K, hw, weights.data());
      } else {
        wk = a.weights + m * a.K;
      }
      std::fill(cam.begin(), cam.end(), 0.0f);
      for (int64_t k = 0; k < a.K; ++k) {
        const float wgt = wk[k];  // no skip for wgt == 0: 0 * NaN is NaN (the NaN policy)
        const int64_t off = act_base + k * hw;
        if (a.act_dtype == kFloat32) {
          const float* ak = static_cast<const float*>(a.activations) + off;
          for (int64_t i = 0; i < hw; ++i) cam[i] += wgt * ak[i];
        } else {
          for (int64_t i = 0; i < hw; ++i) cam[i] += wgt * load_float(a.activations, off + i, a.act_dtype);
        }
      }
      if (a.relu)
        for (auto& v : cam) v = v < 0.0f ? 0.0f : v;  // NaN stays NaN, as in torch.clamp
      float* out = a.out + m * HW;
      // Normalizing needs the map's min and max before a pixel is written: they are taken in a pass
      // that computes the pixels without storing them (the small map is in cache), so the output is
      // written once and never read back (the write is most of the memory traffic: 224 x 224 floats
      // a map against 7 x 7 x K inputs).
      float lo = INFINITY, hi = -INFINITY;
      if (resize) {
        // separable: interpolate every source row to width W once, then each output row mixes two
        // of them; the same products and sums, in the same order, as bilinear_combine
        for (int64_t r = 0; r < nrows; ++r) {
          const float* src = cam.data() + used[r] * a.w;
          float* dst = rows.data() + r * a.W;
          for (int64_t x = 0; x < a.W; ++x) {
            const LinearTap& s = tx[x];
            dst[x] = add_rn(mul_rn(s.l0, src[s.i0]), mul_rn(s.l1, src[s.i1]));
          }
        }
        if (a.normalize) {
          bool done = false;
#if defined(UNITSCOPE_GRADCAM_AVX2)
          if (avx2) {
            uint32_t signs = 0;
            map_min_max_avx2(rows.data(), ty.data(), a.H, a.W, lo, hi, signs);
            // A min of 0 with a max above it is the one case where the zero's sign reaches the output
            // ((v - lo) for v = -0.0); the sign of the zero row_min_max picks depends on its lane order.
            // Only a -0.0 pixel (or a NaN with its sign set) can make it -0.0: with none (no sign bit
            // in any pixel, as no pixel is negative), every zero is +0.0 and the orders agree.
            done = !(lo == 0.0f && hi > 0.0f && (signs & 0x80000000u));
            if (!done) lo = INFINITY, hi = -INFINITY;
          }
#endif
          for (int64_t y = 0; !done && y < a.H; ++y) {
            const LinearTap& t = ty[y];
            row_min_max(rows.data() + t.i0 * a.W, rows.data() + t.i1 * a.W, t.l0, t.l1, a.W, lo, hi);
          }
        }
        const Rescale n = rescale(a.normalize, lo, hi);
        for (int64_t y = 0; y < a.H; ++y) {
          const LinearTap& t = ty[y];
          const float* r0 = rows.data() + t.i0 * a.W;
          const float* r1 = rows.data() + t.i1 * a.W;
          float* o = out + y * a.W;
          const float l0 = t.l0, l1 = t.l1;
#if defined(UNITSCOPE_GRADCAM_AVX2)
          if (avx2 && n.mode != Rescale::kZero) {
            row_write_avx2(o, r0, r1, l0, l1, a.W, n.mode == Rescale::kScale, n.lo, n.inv, stream);
            continue;
          }
#endif
          if (n.mode == Rescale::kKeep) {
            for (int64_t x = 0; x < a.W; ++x) o[x] = l0 * r0[x] + l1 * r1[x];
          } else if (n.mode == Rescale::kScale) {
            for (int64_t x = 0; x < a.W; ++x) o[x] = (l0 * r0[x] + l1 * r1[x] - n.lo) * n.inv;
          } else {
            for (int64_t x = 0; x < a.W; ++x) {
              const float v = l0 * r0[x] + l1 * r1[x];
              o[x] = std::isnan(v) ? v : 0.0f;
            }
          }
        }
      } else {
        for (int64_t i = 0; i < hw; ++i) {
          lo = cam[i] < lo ? cam[i] : lo;
          hi = cam[i] > hi ? cam[i] : hi;
        }
        const Rescale n = rescale(a.normalize, lo, hi);
        for (int64_t i = 0; i < HW; ++i) {
          const float v = cam[i];
          out[i] = n.mode == Rescale::kKeep ? v : n.mode == Rescale::kScale ? (v - n.lo) * n.inv : (std::isnan(v) ? v : 0.0f);
        }
      }
    }
#if defined(UNITSCOPE_GRADCAM_AVX2)
    if (stream) _mm_sfence();  // this thread's non-temporal stores are visible before the kernel returns
#endif
  }
}

}  // namespace unitscope
