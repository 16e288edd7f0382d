// Grad-CAM on the CPU: one OpenMP task per (image, target) map. The small h x w map is built in a
// thread-local buffer, then resized, ReLU'd and normalized straight into the output.
#include <algorithm>
#include <cmath>
#include <vector>

#include "unitscope/bilinear.h"
#include "unitscope/gradcam.h"

namespace unitscope {

namespace {

// weights[k] = mean over h*w of G[b,k] (Selvaraju et al.), float32 accumulation
void spatial_mean(const void* g, int dtype, int64_t base, int64_t K, int64_t hw, float* weights) {
  for (int64_t k = 0; k < K; ++k) {
    float s = 0.0f;
    const int64_t off = base + k * hw;
    for (int64_t i = 0; i < hw; ++i) s += load_float(g, off + i, dtype);
    weights[k] = s / (float)hw;
  }
}

}  // namespace

void gradcam_cpu(const GradcamArgs& a) {
  const int64_t hw = a.h * a.w, HW = a.H * a.W, maps = a.B * a.T;
  const bool resize = !(a.H == a.h && a.W == a.w);
  std::vector<LinearTap> ty(a.H), tx(a.W);
  if (resize) {
    const float sy = bilinear_scale((int)a.h, (int)a.H, a.align_corners);
    const float sx = bilinear_scale((int)a.w, (int)a.W, a.align_corners);
    for (int64_t i = 0; i < a.H; ++i) ty[i] = bilinear_tap((int)i, (int)a.h, sy, a.align_corners);
    for (int64_t i = 0; i < a.W; ++i) tx[i] = bilinear_tap((int)i, (int)a.w, sx, a.align_corners);
  }
  const int threads = a.num_threads > 0 ? a.num_threads : 1;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> cam(hw), weights(a.K), rows(resize ? a.h * a.W : 0);
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
      float lo = INFINITY, hi = -INFINITY;
      if (resize) {
        // separable: interpolate every source row to width W once, then each output row mixes two
        // of them; the same products and sums, in the same order, as bilinear_combine
        for (int64_t r = 0; r < a.h; ++r) {
          const float* src = cam.data() + r * a.w;
          float* dst = rows.data() + r * a.W;
          for (int64_t x = 0; x < a.W; ++x) {
            const LinearTap& s = tx[x];
            dst[x] = add_rn(mul_rn(s.l0, src[s.i0]), mul_rn(s.l1, src[s.i1]));
          }
        }
        // the min/max for normalize is taken while the rows are written (the map is then still in cache)
        for (int64_t y = 0; y < a.H; ++y) {
          const LinearTap& t = ty[y];
          const float* r0 = rows.data() + t.i0 * a.W;
          const float* r1 = rows.data() + t.i1 * a.W;
          float* o = out + y * a.W;
          const float l0 = t.l0, l1 = t.l1;
          for (int64_t x = 0; x < a.W; ++x) {
            const float v = l0 * r0[x] + l1 * r1[x];
            o[x] = v;
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
          }
        }
      } else {
        std::copy(cam.begin(), cam.end(), out);
        for (int64_t i = 0; i < HW; ++i) {
          lo = out[i] < lo ? out[i] : lo;
          hi = out[i] > hi ? out[i] : hi;
        }
      }
      if (a.normalize) {  // lo, hi: min and max of the non-NaN pixels (a NaN never wins a comparison)
        const float range = hi - lo;
        if (range > 0.0f && std::isfinite(range)) {
          // multiply by the reciprocal: within one float32 rounding of the reference's division
          const float inv = 1.0f / range;
          for (int64_t i = 0; i < HW; ++i) out[i] = (out[i] - lo) * inv;
        } else {  // constant map (or none, or an infinite range): 0; a NaN pixel stays NaN
          for (int64_t i = 0; i < HW; ++i) out[i] = std::isnan(out[i]) ? out[i] : 0.0f;
        }
      }
    }
  }
}

}  // namespace unitscope
