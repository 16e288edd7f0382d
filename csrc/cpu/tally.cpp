// The IoU tally on the CPU, never building an upsampled map. Phase 1 (OpenMP over images) turns
// each pixel's L labels into a list without repeats or image labels, counts labels, finds the
// categories present and checks every label's range before any counter changes. Phase 2 (OpenMP
// over units, so each thread owns whole rows of the counters) walks, for each (unit, image), only
// the output rows and columns whose source cells can pass the threshold (tally.h: value_bound).
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "unitscope/bilinear.h"
#include "unitscope/tally.h"

namespace unitscope {

namespace {

struct Prepared {
  std::vector<int32_t> pix;      // [B, P, L]: a pixel's distinct labels first, then zeros
  std::vector<int32_t> img;      // [B, L2]: an image's distinct image labels first, then zeros
  std::vector<uint8_t> present;  // [B, NC]: category has a label in the image
};

// Phase 1. Throws std::invalid_argument (nothing counted) when a label is out of [0, C).
void prepare_labels(const TallyArgs& a, int threads, Prepared& out) {
  const int64_t P = a.Sh * a.Sw, B = a.B, L = a.L, L2 = a.L2, C = a.C, NC = a.NC;
  out.pix.assign((size_t)(B * P * L), 0);
  out.img.assign((size_t)(B * L2), 0);
  out.present.assign((size_t)(B * NC), 0);
  std::vector<int64_t> label_total(C, 0);
  bool bad = false;
  int64_t bad_value = 0;
  const char* bad_arg = "";
#pragma omp parallel num_threads(threads)
  {
    std::vector<int64_t> counts(C, 0);
    std::vector<uint8_t> is_img(C, 0);
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
      bool ok = true;
      int64_t value = 0;
      int32_t* img = out.img.data() + b * L2;
      uint8_t* present = out.present.data() + b * NC;
      int n_img = 0;
      for (int64_t j = 0; j < L2 && ok; ++j) {
        const int64_t c = load_label(a.image_labels, b * L2 + j, a.image_label_dtype);
        if (c < 0 || c >= C) { ok = false; value = c; break; }
        if (c == 0 || is_img[c]) continue;
        is_img[c] = 1;
        img[n_img++] = (int32_t)c;
        present[a.label_category[c]] = 1;
        counts[c] += P;  // an image label covers every pixel
      }
      if (!ok) {
#pragma omp critical(unitscope_tally_error)
        if (!bad) { bad = true; bad_value = value; bad_arg = "image_labels"; }
        for (int i = 0; i < n_img; ++i) is_img[img[i]] = 0;
        continue;
      }
      for (int64_t p = 0; p < P && ok; ++p) {
        int32_t* kept = out.pix.data() + (b * P + p) * L;
        int n = 0;
        for (int64_t l = 0; l < L; ++l) {
          const int64_t c = load_label(a.pixel_labels, (b * L + l) * P + p, a.label_dtype);
          if (c < 0 || c >= C) { ok = false; value = c; break; }
          if (c == 0 || is_img[c]) continue;
          bool seen = false;
          for (int i = 0; i < n; ++i) seen |= kept[i] == (int32_t)c;
          if (seen) continue;
          kept[n++] = (int32_t)c;
          counts[c] += 1;
          present[a.label_category[c]] = 1;
        }
      }
      for (int i = 0; i < n_img; ++i) is_img[img[i]] = 0;
      if (!ok) {
#pragma omp critical(unitscope_tally_error)
        if (!bad) { bad = true; bad_value = value; bad_arg = "pixel_labels"; }
      }
    }
#pragma omp critical(unitscope_tally_labels)
    for (int64_t c = 0; c < C; ++c) label_total[c] += counts[c];
  }
  check_arg(!bad, std::string(bad_arg) + " must hold labels in [0, num_labels) = [0, " + std::to_string(C) +
                      "), got " + std::to_string(bad_value));
  for (int64_t c = 1; c < C; ++c) a.label[c] += label_total[c];
}

template <bool GE>
inline bool passes(float v, float thr) { return GE ? v >= thr : v > thr; }

// Phase 2 for one unit over every image; the thread owns row k of each counter.
template <bool GE>
void tally_unit(const TallyArgs& a, const Prepared& prep, int64_t k, const std::vector<LinearTap>& ty,
                const std::vector<LinearTap>& tx, const std::vector<int>& xlo, const std::vector<int>& xhi,
                std::vector<float>& map, std::vector<float>& rowmax) {
  const int64_t h = a.h, w = a.w, hw = h * w, Sh = a.Sh, Sw = a.Sw, P = Sh * Sw, L = a.L, C = a.C;
  const float thr = a.thresholds[k];
  int64_t* inter = a.intersection + k * C;
  int64_t total = 0;
  for (int64_t b = 0; b < a.B; ++b) {
    const int64_t off = (b * a.K + k) * hw;
    // the map as float32, its maximum (NaN ignored), largest magnitude and per-row maxima
    float m = -INFINITY, maxabs = 0.0f;
    for (int64_t i = 0; i < h; ++i) {
      float rm = -INFINITY;
      for (int64_t j = 0; j < w; ++j) {
        const float v = load_float(a.activations, off + i * w + j, a.act_dtype);
        map[i * w + j] = v;
        rm = v > rm ? v : rm;
        const float av = std::fabs(v);
        maxabs = av > maxabs ? av : maxabs;
      }
      rowmax[i] = rm;
      m = rm > m ? rm : m;
    }
    if (!may_pass(value_bound(m, maxabs), thr, GE)) continue;
    const int32_t* labs = prep.pix.data() + b * P * L;
    int64_t n = 0;
    for (int64_t y = 0; y < Sh; ++y) {
      const LinearTap& t = ty[y];
      if (!may_pass(value_bound(std::max(rowmax[t.i0], rowmax[t.i1]), maxabs), thr, GE)) continue;
      const float* r0 = map.data() + t.i0 * w;
      const float* r1 = map.data() + t.i1 * w;
      int64_t cursor = 0;  // output columns before it were evaluated already
      for (int64_t j = 0; j < w; ++j) {
        const float cm = std::max(r0[j], r1[j]);
        if (xhi[j] < cursor || !may_pass(value_bound(cm, maxabs), thr, GE)) continue;
        for (int64_t x = std::max<int64_t>(xlo[j], cursor); x <= xhi[j]; ++x) {
          const LinearTap& s = tx[x];
          const float v = bilinear_combine(t, s, r0[s.i0], r0[s.i1], r1[s.i0], r1[s.i1]);
          if (!passes<GE>(v, thr)) continue;
          ++n;
          const int32_t* pl = labs + (y * Sw + x) * L;
          for (int64_t l = 0; l < L && pl[l] != 0; ++l) ++inter[pl[l]];
        }
        cursor = xhi[j] + 1;
      }
    }
    if (n == 0) continue;
    total += n;
    const int32_t* img = prep.img.data() + b * a.L2;
    for (int64_t j = 0; j < a.L2 && img[j] != 0; ++j) inter[img[j]] += n;
    int64_t* act = a.activation + k * a.NC;
    for (int64_t c = 0; c < a.NC; ++c) {
      const bool counted = a.union_dataset ||
                           (a.annotated ? a.annotated[b * a.NC + c] != 0 : prep.present[b * a.NC + c] != 0);
      if (counted) act[c] += n;
    }
  }
  a.activation_total[k] += total;
}

}  // namespace

void tally_cpu(const TallyArgs& a) {
  const int threads = a.num_threads > 0 ? a.num_threads : 1;
  for (int64_t c = 1; c < a.C; ++c)
    check_arg(a.label_category[c] >= 0 && a.label_category[c] < a.NC,
              "label_category must hold categories in [0, num_categories), got " +
                  std::to_string(a.label_category[c]) + " for label " + std::to_string(c));
  Prepared prep;
  prepare_labels(a, threads, prep);
  if (a.B == 0) return;
  std::vector<LinearTap> ty(a.Sh), tx(a.Sw);
  const float sy = bilinear_scale((int)a.h, (int)a.Sh, a.align_corners);
  const float sx = bilinear_scale((int)a.w, (int)a.Sw, a.align_corners);
  for (int64_t i = 0; i < a.Sh; ++i) ty[i] = bilinear_tap((int)i, (int)a.h, sy, a.align_corners);
  for (int64_t i = 0; i < a.Sw; ++i) tx[i] = bilinear_tap((int)i, (int)a.w, sx, a.align_corners);
  // output columns reading source column j form the interval [xlo[j], xhi[j]] (taps are monotone);
  // an untouched column gets an empty interval (xhi < xlo)
  std::vector<int> xlo(a.w, (int)a.Sw), xhi(a.w, -1);
  for (int64_t x = 0; x < a.Sw; ++x) {
    for (int j : {tx[x].i0, tx[x].i1}) {
      xlo[j] = std::min(xlo[j], (int)x);
      xhi[j] = std::max(xhi[j], (int)x);
    }
  }
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> map(a.h * a.w), rowmax(a.h);
#pragma omp for schedule(dynamic, 4)
    for (int64_t k = 0; k < a.K; ++k) {
      if (a.ge)
        tally_unit<true>(a, prep, k, ty, tx, xlo, xhi, map, rowmax);
      else
        tally_unit<false>(a, prep, k, ty, tx, xlo, xhi, map, rowmax);
    }
  }
}

}  // namespace unitscope
