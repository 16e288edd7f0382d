// The IoU tally on the CPU, never building an upsampled map.
// Phase 1 (OpenMP over images) checks every label's range, counts labels (once per pixel), finds
// the categories present and splits each image row into intervals of constant labels
// (ImageLabels); an out-of-range label throws before any counter changes. Phase 2 (OpenMP over
// units: a thread owns whole rows of the counters) skips each (image, unit) whose map
// cannot pass the threshold (tally.h: value_bound), bounds each output row and source column the
// same way, evaluates only candidate pixels, and adds each passing row segment interval by interval.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "unitscope/bilinear.h"
#include "unitscope/parallel.h"
#include "unitscope/tally.h"

namespace unitscope {

namespace {

// One image's L * S_h * S_w label cells are indexed with int32 below; tally_cpu refuses more.
constexpr int64_t kMaxLabelCells = int64_t(1) << 31;

// One image's pixel labels as intervals along rows: each row splits into maximal intervals
// [start, end) over which every map's label is constant; an interval lists its labels once each,
// without 0 and without the image's own image labels (counted for the whole mask elsewhere), so an
// interval's pixels each add 1 to each listed label. interval[p] is pixel p's interval.
struct Interval {
  int32_t start, end, first, last;  // pixels [start, end) of a row; labels[first:last]
};

struct ImageLabels {
  std::vector<int32_t> interval;   // [P]
  std::vector<Interval> intervals;
  std::vector<int32_t> labels;
};

struct Prepared {
  std::vector<ImageLabels> pixels;  // [B]
  std::vector<int32_t> img;         // [B, L2]: an image's distinct nonzero image labels first, then zeros
  std::vector<uint8_t> present;     // [B, NC]: the category has a label in the image
};

// One thread's phase-1 buffers: counts, hist [C]; kept [L, P]; change [P]; ivl, where [P] (L > 0);
// labs [L * P + 1]; is_img [C].
struct PrepScratch {
  std::vector<int64_t> counts, hist;
  std::vector<int32_t> kept, labs, where;
  std::vector<uint8_t> change, is_img;
  std::vector<Interval> ivl;
};

// Phase 1 for pixel labels of type LT. Throws std::invalid_argument (nothing counted) when a label
// is out of [0, C).
template <typename LT>
void prepare_labels(const TallyArgs& a, int threads, Prepared& out) {
  const int64_t P = a.Sh * a.Sw, Sh = a.Sh, Sw = a.Sw, B = a.B, L = a.L, L2 = a.L2, C = a.C, NC = a.NC;
  const LT* pix = static_cast<const LT*>(a.pixel_labels);
  if (out.pixels.size() < (size_t)B) out.pixels.resize((size_t)B);  // keeps earlier calls' capacity
  out.img.assign((size_t)(B * L2), 0);
  out.present.assign((size_t)(B * NC), 0);
  std::vector<int64_t> label_total(C, 0);
  bool bad = false;
  int64_t bad_value = 0;
  const char* bad_arg = "";
  const int64_t per_thread = C * 17 + L * P * 8 + P + (L > 0 ? P * (int64_t)(sizeof(Interval) + 4) : 0) + 4;
  const int nt = plan_threads(threads, B, per_thread, "tally (cpp) with " + std::to_string(L) + " label maps of " +
                                                       std::to_string(Sh) + " x " + std::to_string(Sw));
  std::vector<PrepScratch> scratch(nt);  // allocated here: a std::bad_alloc becomes a MemoryError
  for (PrepScratch& t : scratch) {
    t.counts.assign(C, 0); t.hist.assign(C, 0); t.kept.resize(L * P); t.change.resize(P);
    t.ivl.resize(L > 0 ? P : 0); t.labs.resize(L * P + 1); t.where.resize(L > 0 ? P : 0); t.is_img.assign(C, 0);
  }
  ErrorCarrier error;  // R's own arrays are sized per image, inside the region
#pragma omp parallel num_threads(nt)
  {
    PrepScratch& t = scratch[thread_index()];
    std::vector<int64_t>&counts = t.counts, &hist = t.hist;
    std::vector<int32_t>&kept = t.kept, &labs = t.labs, &where = t.where;
    std::vector<uint8_t>&change = t.change, &is_img = t.is_img;
    std::vector<Interval>& ivl = t.ivl;
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) error.run([&] {
      int32_t* img = out.img.data() + b * L2;
      const char* arg = nullptr;
      int64_t value = 0;
      int n_img = 0;
      for (int64_t j = 0; j < L2; ++j) {
        const int64_t c = load_label(a.image_labels, b * L2 + j, a.image_label_dtype);
        if (c < 0 || c >= C) { arg = "image_labels"; value = c; break; }
        if (c == 0 || is_img[c]) continue;
        is_img[c] = 1;
        img[n_img++] = (int32_t)c;
      }
      for (int i = 0; i < n_img; ++i) is_img[img[i]] = 0;
      const LT* maps = pix + b * L * P;
      for (int64_t l = 0; l < L && !arg; ++l) {
        const LT* raw = maps + l * P;
        int32_t* k = kept.data() + l * P;
        // convert and check the range; C < 2^31, so a label that fits int32 is checked in int32
        // (vectorizes), a wider one first in int64
        int32_t out_of_range = 0;
        for (int64_t p = 0; p < P; ++p) {
          const int64_t c = (int64_t)raw[p];
          if (sizeof(LT) > 4) out_of_range |= (int32_t)(c < 0 || c >= C);
          const int32_t c32 = (int32_t)c;
          out_of_range |= (int32_t)(c32 < 0) | (int32_t)(c32 >= (int32_t)C);
          k[p] = c32;
        }
        if (out_of_range) {
          for (int64_t p = 0; p < P; ++p)
            if ((int64_t)raw[p] < 0 || (int64_t)raw[p] >= C) { value = (int64_t)raw[p]; break; }
          arg = "pixel_labels";
          break;
        }
        for (int64_t m = 0; m < l; ++m) {  // one label once per pixel
          const LT* earlier = maps + m * P;
          for (int64_t p = 0; p < P; ++p) k[p] = raw[p] == earlier[p] ? 0 : k[p];
        }
        for (int i = 0; i < n_img; ++i)
          for (int64_t p = 0; p < P; ++p) k[p] = k[p] == img[i] ? 0 : k[p];
      }
      if (arg) {
#pragma omp critical(unitscope_tally_error)
        if (!bad) { bad = true; bad_value = value; bad_arg = arg; }
        return;
      }
      ImageLabels& R = out.pixels[b];
      if (L > 0) {
        // change[p]: some map's label differs between pixels p - 1 and p (vectorizes)
        std::fill(change.begin(), change.end(), 0);
        for (int64_t l = 0; l < L; ++l) {
          const int32_t* k = kept.data() + l * P;
          for (int64_t p = 1; p < P; ++p) change[p] |= (uint8_t)(k[p] != k[p - 1]);
        }
        // intervals and their labels go to thread-local arrays of the largest possible size, then
        // into R in one copy each
        int32_t n_ivl = 0, n_lab = 0;
        for (int64_t y = 0; y < Sh; ++y) {
          const int64_t row = y * Sw;
          int64_t x0 = 0;
          for (int64_t x = 1; x <= Sw; ++x) {
            if (x < Sw && !change[row + x]) continue;
            Interval& iv = ivl[n_ivl];
            iv.start = (int32_t)x0;
            iv.end = (int32_t)x;
            iv.first = n_lab;
            for (int64_t l = 0; l < L; ++l) {
              const int32_t c = kept[l * P + row + x0];
              labs[n_lab] = c;
              n_lab += c != 0;
              hist[c] += x - x0;
            }
            iv.last = n_lab;
            std::fill(where.begin() + row + x0, where.begin() + row + x, n_ivl);
            ++n_ivl;
            x0 = x;
          }
        }
        R.interval.assign(where.begin(), where.end());
        R.intervals.assign(ivl.begin(), ivl.begin() + n_ivl);
        R.labels.assign(labs.begin(), labs.begin() + n_lab);
      }
      for (int i = 0; i < n_img; ++i) hist[img[i]] = P;  // an image label covers every pixel, once
      uint8_t* present = out.present.data() + b * NC;
      for (int64_t c = 1; c < C; ++c) {
        if (hist[c] == 0) continue;
        counts[c] += hist[c];
        present[a.label_category[c]] = 1;
        hist[c] = 0;
      }
      hist[0] = 0;
    });
#pragma omp critical(unitscope_tally_labels)
    for (int64_t c = 0; c < C; ++c) label_total[c] += counts[c];
  }
  error.rethrow();
  check_arg(!bad, std::string(bad_arg) + " must hold labels in [0, num_labels) = [0, " + std::to_string(C) +
                      "), got " + std::to_string(bad_value));
  for (int64_t c = 1; c < C; ++c) a.label[c] += label_total[c];
}

// Output-column taps as separate arrays, and the output columns [xlo[j], xhi[j]] that read source
// column j (an interval, since taps are monotone; empty, xhi < xlo, for an unread column).
struct ColumnTaps {
  std::vector<int> i0, i1, xlo, xhi;
  std::vector<float> l0, l1;
};

// One thread's phase-2 buffers. H holds two source rows interpolated to width Sw: output rows read
// source rows in non-decreasing order, so the two rows the current output row needs are usually the
// ones computed for the previous row (h x Sw floats would be 40 GB for a 100000 x 1 map resized to
// 1 x 100000).
struct Scratch {
  std::vector<float> map, rowmax, H, V;  // map [h*w], rowmax [h], H [2*Sw], V [w]
  std::vector<uint8_t> pass;             // [Sw]
  int64_t H_row[2] = {-1, -1}, H_pair[2] = {-1, -1};  // the source row and pair each slot of H holds
  int64_t pair = 0;
  static int64_t bytes(int64_t h, int64_t w, int64_t Sw) { return (h * w + h + 2 * Sw + w) * 4 + Sw; }
};

// Source row i of the current pair interpolated to width Sw, in a slot of s.H that does not hold
// row `keep`.
inline const float* h_row(Scratch& s, int64_t i, int64_t keep, int64_t w, int64_t Sw, const ColumnTaps& tx) {
  for (int j = 0; j < 2; ++j)
    if (s.H_row[j] == i && s.H_pair[j] == s.pair) return s.H.data() + j * Sw;
  const int j = (s.H_row[0] == keep && s.H_pair[0] == s.pair) ? 1 : 0;
  s.H_row[j] = i;
  s.H_pair[j] = s.pair;
  const float* r = s.map.data() + i * w;
  float* Hi = s.H.data() + j * Sw;
  for (int64_t x = 0; x < Sw; ++x) Hi[x] = lerp_rn(tx.l0[x], tx.l1[x], r[tx.i0[x]], r[tx.i1[x]]);
  return Hi;
}

// Add the passing pixels [x0, x1) of output row y (row = y * Sw) to the unit's intersections,
// interval by interval.
inline void add_segment(const ImageLabels& R, int64_t row, int32_t x0, int32_t x1, int64_t* inter) {
  const Interval* iv = R.intervals.data() + R.interval[row + x0];
  const Interval* last = R.intervals.data() + R.interval[row + x1 - 1];
  const int32_t* labels = R.labels.data();
  for (; iv <= last; ++iv) {
    const int64_t n = std::min(iv->end, x1) - std::max(iv->start, x0);
    for (int32_t i = iv->first; i < iv->last; ++i) inter[labels[i]] += n;
  }
}

// Phase 2 for one (image, unit) pair; the calling thread owns row k of every counter meanwhile.
template <bool GE>
void tally_pair(const TallyArgs& a, const Prepared& prep, int64_t b, int64_t k, const std::vector<LinearTap>& ty,
                const ColumnTaps& tx, Scratch& s) {
  const int64_t h = a.h, w = a.w, hw = h * w, Sh = a.Sh, Sw = a.Sw, L = a.L, L2 = a.L2;
  const float thr = a.thresholds[k];
  int64_t* inter = a.intersection + k * a.C;
  {
    const int64_t off = (b * a.K + k) * hw;
    if (a.act_dtype == kFloat32) {  // most pairs stop here: the same first test, in 4 lanes
      const float* src = static_cast<const float*>(a.activations) + off;
      float hi[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY}, lo[4] = {INFINITY, INFINITY, INFINITY, INFINITY};
      int64_t i = 0;
      for (; i + 4 <= hw; i += 4) {
        for (int j = 0; j < 4; ++j) {  // NaN ignored, as below
          hi[j] = src[i + j] > hi[j] ? src[i + j] : hi[j];
          lo[j] = src[i + j] < lo[j] ? src[i + j] : lo[j];
        }
      }
      for (; i < hw; ++i) {
        hi[0] = src[i] > hi[0] ? src[i] : hi[0];
        lo[0] = src[i] < lo[0] ? src[i] : lo[0];
      }
      const float m = std::max(std::max(hi[0], hi[1]), std::max(hi[2], hi[3]));
      const float mn = std::min(std::min(lo[0], lo[1]), std::min(lo[2], lo[3]));
      const float maxabs = std::max(0.0f, std::max(m, -mn));  // = max |v| over non-NaN cells
      if (!may_pass(value_bound(m, maxabs), thr, GE)) return;
    }
    // the map as float32, its maximum (NaN ignored), largest magnitude and per-row maxima
    float m = -INFINITY, maxabs = 0.0f;
    for (int64_t i = 0; i < h; ++i) {
      float rm = -INFINITY;
      for (int64_t j = 0; j < w; ++j) {
        const float v = load_float(a.activations, off + i * w + j, a.act_dtype);
        s.map[i * w + j] = v;
        rm = v > rm ? v : rm;
        const float av = std::fabs(v);
        maxabs = av > maxabs ? av : maxabs;
      }
      s.rowmax[i] = rm;
      m = rm > m ? rm : m;
    }
    if (!may_pass(value_bound(m, maxabs), thr, GE)) return;
    const ImageLabels& R = prep.pixels[b];
    ++s.pair;
    int64_t n = 0;
    for (int64_t y = 0; y < Sh; ++y) {
      const LinearTap& t = ty[y];
      if (!may_pass(value_bound(std::max(s.rowmax[t.i0], s.rowmax[t.i1]), maxabs), thr, GE)) continue;
      // V[j]: source column j interpolated to row y. Output pixel (y, x) is within 16 * 2^-24 *
      // maxabs of a combination of V[j0(x)] and V[j1(x)] (tally.h), so value_bound applies.
      const float* r0 = s.map.data() + t.i0 * w;
      const float* r1 = s.map.data() + t.i1 * w;
      float vmax = -INFINITY;
      for (int64_t j = 0; j < w; ++j) {
        s.V[j] = lerp_rn(t.l0, t.l1, r0[j], r1[j]);
        vmax = s.V[j] > vmax ? s.V[j] : vmax;
      }
      if (!may_pass(value_bound(vmax, maxabs), thr, GE)) continue;
      // horizontal interpolation of source rows i0 and i1 (each once per pair, rows being monotone)
      const float* h0 = h_row(s, t.i0, t.i1, w, Sw, tx);
      const float* h1 = h_row(s, t.i1, t.i0, w, Sw, tx);
      uint8_t* pass = s.pass.data();
      int64_t cursor = 0;  // output columns before it were evaluated already
      for (int64_t j = 0; j < w; ++j) {
        if (tx.xhi[j] < cursor || !may_pass(value_bound(s.V[j], maxabs), thr, GE)) continue;
        const int64_t x0 = std::max<int64_t>(tx.xlo[j], cursor), x1 = tx.xhi[j] + 1;
        cursor = x1;
        int passing = 0;
        for (int64_t x = x0; x < x1; ++x) {  // = bilinear_combine(t, tap x, ...), see lerp_rn
          const float v = lerp_rn(t.l0, t.l1, h0[x], h1[x]);
          pass[x] = GE ? v >= thr : v > thr;
          passing += pass[x];
        }
        if (passing == 0) continue;
        n += passing;
        if (L == 0) continue;
        for (int64_t x = x0; x < x1;) {  // maximal runs of passing pixels
          if (!pass[x]) { ++x; continue; }
          int64_t e = x + 1;
          while (e < x1 && pass[e]) ++e;
          add_segment(R, y * Sw, (int32_t)x, (int32_t)e, inter);
          x = e;
        }
      }
    }
    if (n == 0) return;
    a.activation_total[k] += n;
    const int32_t* img = prep.img.data() + b * L2;
    for (int64_t j = 0; j < L2 && img[j] != 0; ++j) inter[img[j]] += n;
    int64_t* act = a.activation + k * a.NC;
    for (int64_t c = 0; c < a.NC; ++c) {
      const bool counted = a.union_mode == 1 ||
                           (a.annotated ? a.annotated[b * a.NC + c] != 0 : prep.present[b * a.NC + c] != 0);
      if (counted) act[c] += n;
    }
  }
}

template <typename LT>
void tally_typed(const TallyArgs& a, int threads) {
  // reused, so that its buffers keep their capacity between calls; OpenMP workers must see the
  // calling thread's instance, hence the plain reference used below
  static thread_local Prepared reused;
  Prepared& prep = reused;
  prepare_labels<LT>(a, threads, prep);
  if (a.B == 0) return;
  std::vector<LinearTap> ty(a.Sh);
  const float sy = bilinear_scale((int)a.h, (int)a.Sh, a.align_corners);
  const float sx = bilinear_scale((int)a.w, (int)a.Sw, a.align_corners);
  for (int64_t i = 0; i < a.Sh; ++i) ty[i] = bilinear_tap((int)i, (int)a.h, sy, a.align_corners);
  ColumnTaps tx;
  tx.xlo.assign(a.w, (int)a.Sw);
  tx.xhi.assign(a.w, -1);
  for (int64_t x = 0; x < a.Sw; ++x) {
    const LinearTap t = bilinear_tap((int)x, (int)a.w, sx, a.align_corners);
    tx.i0.push_back(t.i0); tx.i1.push_back(t.i1); tx.l0.push_back(t.l0); tx.l1.push_back(t.l1);
    for (int j : {t.i0, t.i1}) {
      tx.xlo[j] = std::min(tx.xlo[j], (int)x);
      tx.xhi[j] = std::max(tx.xhi[j], (int)x);
    }
  }
  const int nt = plan_threads(threads, (a.K + 15) / 16, Scratch::bytes(a.h, a.w, a.Sw),
                              "tally (cpp) of " + std::to_string(a.h) + " x " + std::to_string(a.w) + " maps to " +
                                  std::to_string(a.Sh) + " x " + std::to_string(a.Sw));
  std::vector<Scratch> scratch(nt);  // allocated here: a std::bad_alloc becomes a MemoryError
  for (Scratch& s : scratch) {
    s.map.resize(a.h * a.w);
    s.rowmax.resize(a.h);
    s.H.resize(2 * a.Sw);
    s.V.resize(a.w);
    s.pass.resize(a.Sw);
  }
#pragma omp parallel num_threads(nt)
  {
    Scratch& s = scratch[thread_index()];
    // blocks of units: a thread owns its block's counter rows for all images (no barrier ever
    // stalls one thread behind another); within a block, image by image, so that one image's label
    // data and the block's counter rows both stay in cache
    const int64_t block = 16, blocks = (a.K + block - 1) / block;
#pragma omp for schedule(dynamic, 1)
    for (int64_t kb = 0; kb < blocks; ++kb) {
      const int64_t k1 = std::min(a.K, (kb + 1) * block);
      for (int64_t b = 0; b < a.B; ++b) {
        for (int64_t k = kb * block; k < k1; ++k) {
          if (a.ge)
            tally_pair<true>(a, prep, b, k, ty, tx, s);
          else
            tally_pair<false>(a, prep, b, k, ty, tx, s);
        }
      }
    }
  }
}

}  // namespace

void tally_cpu(const TallyArgs& a) {
  if (a.union_mode == 2)
    throw std::invalid_argument("union='mask' (NetDissect-Lite's union) is not yet implemented in cpp; use "
                                "backend='numba' or 'torch'");
  const int threads = plan_threads(a.num_threads, kMaxThreads, 0, "tally (cpp)");
  check_arg(a.L < kMaxLabelCells && a.Sh * a.Sw < kMaxLabelCells && a.L * a.Sh * a.Sw < kMaxLabelCells,
            "tally (cpp): one image's pixel labels must have L * S_h * S_w < 2^31 cells (the interval "
            "tables index them with int32), got L = " + std::to_string(a.L) + ", S_h = " + std::to_string(a.Sh) +
                ", S_w = " + std::to_string(a.Sw) + "; use fewer label maps, a smaller out_size, or the numba backend");
  for (int64_t c = 1; c < a.C; ++c)
    check_arg(a.label_category[c] >= 0 && a.label_category[c] < a.NC,
              "label_category must hold categories in [0, num_categories), got " +
                  std::to_string(a.label_category[c]) + " for label " + std::to_string(c));
  switch (a.L == 0 ? kInt32 : a.label_dtype) {  // no pixel labels: any type, never read
    case kUInt8: tally_typed<uint8_t>(a, threads); break;
    case kInt16: tally_typed<int16_t>(a, threads); break;
    case kInt32: tally_typed<int32_t>(a, threads); break;
    default: tally_typed<int64_t>(a, threads); break;
  }
}

}  // namespace unitscope
