// The CPU tally's two phases, included twice by csrc/cpu/tally.cpp: once for any CPU, once compiled
// for AVX2 + POPCNT (chosen at run time). No #include here: tally.cpp includes everything first.
// US_TALLY_AVX2 (0 or 1) says which copy this is.

// One image's pixel labels as bit masks: each output row is cut into Wr = ceil(S_w / 64) words
// (word q of row y, number y * Wr + q, holds pixels x in [64q, 64q + 64)). entries[start[i] :
// start[i + 1]] list, for word i, each nonzero label that some map gives some pixel of the word,
// with the bits of those pixels, except the image's own image labels (counted for the whole mask
// elsewhere). A label carried by two maps at one pixel sets one bit: one label once per pixel.
// Entries name labels by their place in `labels`, the image's labels in order of appearance, so
// that phase 2 sums a pair's counts in a short array.
struct Entry {
  uint64_t bits;
  int32_t local;  // labels[local] is the label
};

struct ImageLabels {
  std::vector<int32_t> start;  // [Sh * Wr + 1]
  std::vector<Entry> entries;
  std::vector<int32_t> labels;
};

// One thread's phase-1 buffers: counts [C] (labels' pixels over its images), slot [C] (-1, or a
// label's entry in the word being built), local [C] (-1, or a label's place in labels), is_img [C],
// start [Sh * Wr + 1], ent [L * P] (a word has at most L entries per pixel), labels [min(C, L * P)].
struct PrepScratch {
  std::vector<int64_t> counts;
  std::vector<int32_t> slot, local, start, labels;
  std::vector<uint8_t> is_img;
  std::vector<Entry> ent;
  static int64_t max_labels(int64_t C, int64_t L, int64_t P) { return std::min(C, L * P); }
  static int64_t bytes(int64_t C, int64_t NW, int64_t L, int64_t P) {
    return C * 17 + (NW + 1) * 4 + L * P * (int64_t)sizeof(Entry) + max_labels(C, L, P) * 4;
  }
};

struct Prepared {
  std::vector<ImageLabels> pixels;  // [B]
  std::vector<int32_t> img;         // [B, L2]: an image's distinct nonzero image labels first, then zeros
  std::vector<uint8_t> present;     // [B, NC]: the category has a label in the image
  std::vector<PrepScratch> scratch;  // phase 1's, one per thread
};

// Bits lo .. hi - 1 of a word (0 <= lo < hi <= 64).
inline uint64_t span_bits(int64_t lo, int64_t hi) {
  return (hi == 64 ? ~uint64_t(0) : (uint64_t(1) << hi) - 1) & ~((uint64_t(1) << lo) - 1);
}

inline int64_t popcount(uint64_t v) { return __builtin_popcountll(v); }

// Image b's label words into t.start, t.ent[0:n] and t.labels[0:n_lab]. Returns false, with the
// label in `bad`, when a label is outside [0, C): every pixel belongs to a run whose label is
// checked. Leaves t.slot and t.local all -1.
template <typename LT>
bool label_words(const TallyArgs& a, const LT* maps, PrepScratch& t, int32_t& n, int32_t& n_lab, int64_t& bad) {
  const int64_t P = a.Sh * a.Sw, Sw = a.Sw, Wr = (Sw + 63) / 64, C = a.C;
  int32_t *slot = t.slot.data(), *local = t.local.data(), *labels = t.labels.data();
  Entry* ent = t.ent.data();
  n = 0;
  n_lab = 0;
  bool ok = true;
  for (int64_t y = 0; y < a.Sh; ++y) {
    bool repeat = y > 0;  // every map's row y equals its row y - 1: the same entries (often so)
    for (int64_t l = 0; l < a.L && repeat; ++l) {
      const LT* r = maps + l * P + y * Sw;
      repeat = std::memcmp(r, r - Sw, Sw * sizeof(LT)) == 0;
    }
    if (repeat) {
      const int32_t from = t.start[(y - 1) * Wr], len = n - from;
      for (int64_t q = 0; q < Wr; ++q) t.start[y * Wr + q] = t.start[(y - 1) * Wr + q] + len;
      std::copy(ent + from, ent + n, ent + n);
      n += len;
      continue;
    }
    for (int64_t q = 0; q < Wr; ++q) {
      const int64_t x0 = 64 * q, x1 = std::min(Sw, x0 + 64);
      const int32_t first = n;
      t.start[y * Wr + q] = n;
      // add the pixels `bits` of this word carrying label c
      auto add = [&](LT raw, uint64_t bits) {
        const int64_t c = (int64_t)raw;
        if (c < 0 || c >= C) { bad = c; ok = false; return; }
        if (c == 0 || t.is_img[c]) return;
        if (slot[c] < 0) {
          if (local[c] < 0) {
            local[c] = n_lab;
            labels[n_lab++] = (int32_t)c;
          }
          slot[c] = n;
          ent[n++] = Entry{bits, local[c]};
        } else {
          ent[slot[c]].bits |= bits;
        }
      };
      for (int64_t l = 0; l < a.L && ok; ++l) {
        const LT* r = maps + l * P + y * Sw + x0;
        const int64_t len = x1 - x0;
        uint64_t starts = 0;  // bit i: pixel x0 + i starts a run of one label (i > 0)
        for (int64_t i = 1; i < len; ++i) starts |= (uint64_t)(r[i] != r[i - 1]) << i;
        for (int64_t i = 0; ok;) {
          const int64_t e = starts ? __builtin_ctzll(starts) : len;
          add(r[i], span_bits(i, e));
          if (!starts) break;
          starts &= starts - 1;
          i = e;
        }
      }
      for (int32_t i = first; i < n; ++i) slot[labels[ent[i].local]] = -1;
      if (!ok) break;
    }
    if (!ok) break;
  }
  for (int32_t i = 0; i < n_lab; ++i) local[labels[i]] = -1;
  t.start[a.Sh * Wr] = n;
  return ok;
}

// Phase 1 for pixel labels of type LT. Throws std::invalid_argument (nothing counted) when a label
// is out of [0, C).
template <typename LT>
void prepare_labels(const TallyArgs& a, int threads, Prepared& out) {
  const int64_t P = a.Sh * a.Sw, Sh = a.Sh, Sw = a.Sw, NW = Sh * ((Sw + 63) / 64), B = a.B, L = a.L, L2 = a.L2,
                C = a.C, NC = a.NC;
  const LT* pix = static_cast<const LT*>(a.pixel_labels);
  if (out.pixels.size() < (size_t)B) out.pixels.resize((size_t)B);  // keeps earlier calls' capacity
  out.img.assign((size_t)(B * L2), 0);
  out.present.assign((size_t)(B * NC), 0);
  std::vector<int64_t> label_total(C, 0);
  bool bad = false;
  int64_t bad_value = 0;
  const char* bad_arg = "";
  const int nt = plan_threads(threads, B, PrepScratch::bytes(C, NW, L, P),
                              "tally (cpp) with " + std::to_string(L) + " label maps of " + std::to_string(Sh) +
                                  " x " + std::to_string(Sw));
  std::vector<PrepScratch>& scratch = out.scratch;  // kept between calls (no fresh pages each call)
  scratch.resize(nt);  // allocated here: a std::bad_alloc becomes a MemoryError
  for (PrepScratch& t : scratch) {
    t.counts.assign(C, 0); t.slot.assign(C, -1); t.local.assign(C, -1); t.is_img.assign(C, 0);
    t.start.resize(NW + 1); t.ent.resize(L * P); t.labels.resize(PrepScratch::max_labels(C, L, P));
  }
  ErrorCarrier error;  // R's own arrays are sized per image, inside the region
#pragma omp parallel num_threads(nt)
  {
    PrepScratch& t = scratch[thread_index()];
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) error.run([&] {
      int32_t* img = out.img.data() + b * L2;
      const char* arg = nullptr;
      int64_t value = 0;
      int n_img = 0;
      for (int64_t j = 0; j < L2; ++j) {
        const int64_t c = load_label(a.image_labels, b * L2 + j, a.image_label_dtype);
        if (c < 0 || c >= C) { arg = "image_labels"; value = c; break; }
        if (c == 0 || t.is_img[c]) continue;
        t.is_img[c] = 1;
        img[n_img++] = (int32_t)c;
      }
      int32_t n = 0, n_lab = 0;
      if (!arg && !label_words<LT>(a, pix + b * L * P, t, n, n_lab, value)) arg = "pixel_labels";
      for (int i = 0; i < n_img; ++i) t.is_img[img[i]] = 0;
      if (arg) {
#pragma omp critical(unitscope_tally_error)
        if (!bad) { bad = true; bad_value = value; bad_arg = arg; }
        return;
      }
      ImageLabels& R = out.pixels[b];
      R.start.assign(t.start.begin(), t.start.end());
      R.entries.assign(t.ent.begin(), t.ent.begin() + n);
      R.labels.assign(t.labels.begin(), t.labels.begin() + n_lab);
      for (int32_t i = 0; i < n; ++i) t.counts[t.labels[t.ent[i].local]] += popcount(t.ent[i].bits);
      uint8_t* present = out.present.data() + b * NC;
      for (int32_t i = 0; i < n_lab; ++i) present[a.label_category[t.labels[i]]] = 1;
      for (int i = 0; i < n_img; ++i) {  // an image label covers every pixel, once
        t.counts[img[i]] += P;
        present[a.label_category[img[i]]] = 1;
      }
    });
#pragma omp critical(unitscope_tally_labels)
    for (int64_t c = 0; c < C; ++c) label_total[c] += t.counts[c];
  }
  error.rethrow();
  check_arg(!bad, std::string(bad_arg) + " must hold labels in [0, num_labels) = [0, " + std::to_string(C) +
                      "), got " + std::to_string(bad_value));
  for (int64_t c = 1; c < C; ++c) a.label[c] += label_total[c];
}

// A float cut with  may_pass(value_bound(v, maxabs), thr, ge)  =>  !(v < cut)  for every float v
// (NaN included), so that the row and column bounds below are one float comparison each:
// value_bound(v) is v + slack (tally.h), so v can pass only if v >= thr - slack; cut is that value
// less a margin far above the double rounding errors, rounded down to float.
inline float pass_cutoff(float maxabs, float thr) {
  if (!(maxabs < 3.0e38f)) return -INFINITY;
  const double slack = (double)maxabs * 9.5367431640625e-07 + 7.52316384526264e-37;
  const double c = (double)thr - slack - (std::fabs((double)thr) + slack) * 1e-12;
  float f = (float)c;
  if ((double)f > c) f = std::nextafter(f, -INFINITY);
  return std::min(f, 3.0e38f);  // a value near the float32 limit may round up to inf: may pass
}

// Output-column taps as separate arrays, and output columns [xlo[j], xhi[j]] containing those that
// read source column j or, for an unread column, none: xlo[j] is the first output column reading a
// column >= j, xhi[j] the last reading a column <= j, so both are nondecreasing in j. ylo, yhi: the
// same for output rows and source rows. weights_y, weights_x: the distinct weight pairs (l0, l1) of
// the row and column taps.
struct Taps {
  std::vector<int> i0, i1, xlo, xhi, ylo, yhi;
  std::vector<float> l0, l1;
  std::vector<std::pair<float, float>> weights_y, weights_x;
  struct Run {
    int x0, x1, i0, i1;
  };
  std::vector<Run> runs;  // maximal runs of output columns [x0, x1) reading the same source columns
};

// The largest value the resize can give from source values <= m (finite): the bilinear value is
// nondecreasing in each source value (weights >= 0, rounding monotone), so no pixel exceeds
// lerp_rn(ly0, ly1, X, X) with X the largest lerp_rn(lx0, lx1, m, m), maximized over the weights.
// Exact, unlike value_bound: a unit whose maximum sits exactly on its threshold (a saturated
// ReLU6 at 6) is skipped without evaluating a pixel wherever these weights never round above m.
inline float tie_bound(float m, const Taps& tx) {
  float X = -INFINITY, Y = -INFINITY;
  for (const auto& l : tx.weights_x) X = std::max(X, lerp_rn(l.first, l.second, m, m));
  for (const auto& l : tx.weights_y) Y = std::max(Y, lerp_rn(l.first, l.second, X, X));
  return Y;
}

// One thread's phase-2 buffers. H holds two source rows interpolated to width Sw (each slot Wr * 64
// floats, zero past Sw, so that a word is read whole): output rows read source rows in
// non-decreasing order, so the two rows the current output row needs are usually the ones computed
// for the previous row (h x Sw floats would be 40 GB for a 100000 x 1 map resized to 1 x 100000).
// hit: the categories met inside the current mask (union mode 2); rowpass[i]: may source row i
// pass (its maximum against pass_cutoff).
struct Scratch {
  std::vector<float> map, rowmax, H;  // map [h*w], rowmax [h], H [2 * Wr * 64]
  std::vector<uint8_t> hit, rowpass;  // hit [NC], rowpass [h]
  std::vector<int64_t> acc;           // [max_labels]
  int64_t H_row[2] = {-1, -1}, H_pair[2] = {-1, -1};  // the source row and pair each slot of H holds
  int64_t pair = 0;
  static int64_t bytes(int64_t h, int64_t w, int64_t Sw, int64_t NC, int64_t max_labels) {
    return (h * w + 8 + h + 2 * ((Sw + 63) / 64) * 64) * 4 + NC + h + 8 * max_labels;
  }
};

// Source row i of the current pair interpolated to width Sw, in a slot of s.H that does not hold
// row `keep`.
inline const float* h_row(Scratch& s, int64_t i, int64_t keep, int64_t w, const Taps& tx) {
  const int64_t stride = s.H.size() / 2;
  for (int j = 0; j < 2; ++j)
    if (s.H_row[j] == i && s.H_pair[j] == s.pair) return s.H.data() + j * stride;
  const int j = (s.H_row[0] == keep && s.H_pair[0] == s.pair) ? 1 : 0;
  s.H_row[j] = i;
  s.H_pair[j] = s.pair;
  const float* r = s.map.data() + i * w;
  float* Hi = s.H.data() + j * stride;
  const float *l0 = tx.l0.data(), *l1 = tx.l1.data();
  for (const Taps::Run& u : tx.runs) {  // the inner loop vectorizes
    const float a = r[u.i0], b = r[u.i1];
    for (int64_t x = u.x0; x < u.x1; ++x) Hi[x] = lerp_rn(l0[x], l1[x], a, b);
  }
  return Hi;
}

// The first and last source columns j whose V = lerp_rn(l0, l1, r0[j], r1[j]) is not below cut
// (NaN included); false when there is none. r0 and r1 are readable 8 floats past w.
inline bool candidate_columns(const float* r0, const float* r1, float l0, float l1, float cut, int64_t w,
                              int64_t& first, int64_t& last) {
  first = -1;
  last = -1;
#if US_TALLY_AVX2 || defined(__SSE2__)
#if US_TALLY_AVX2
  constexpr int64_t lanes = 8;
  const __m256 vl0 = _mm256_set1_ps(l0), vl1 = _mm256_set1_ps(l1), vc = _mm256_set1_ps(cut);
#else
  constexpr int64_t lanes = 4;
  const __m128 vl0 = _mm_set1_ps(l0), vl1 = _mm_set1_ps(l1), vc = _mm_set1_ps(cut);
#endif
  for (int64_t j = 0; j < w; j += lanes) {
#if US_TALLY_AVX2
    const __m256 v = _mm256_add_ps(_mm256_mul_ps(vl0, _mm256_loadu_ps(r0 + j)), _mm256_mul_ps(vl1, _mm256_loadu_ps(r1 + j)));
    uint32_t m = (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(v, vc, _CMP_NLT_UQ));
#else
    const __m128 v = _mm_add_ps(_mm_mul_ps(vl0, _mm_loadu_ps(r0 + j)), _mm_mul_ps(vl1, _mm_loadu_ps(r1 + j)));
    uint32_t m = (uint32_t)_mm_movemask_ps(_mm_cmpnlt_ps(v, vc));
#endif
    if (w - j < lanes) m &= (1u << (w - j)) - 1;
    if (!m) continue;
    if (first < 0) first = j + __builtin_ctz(m);
    last = j + 31 - __builtin_clz(m);
  }
#else
  for (int64_t j = 0; j < w; ++j) {
    if (lerp_rn(l0, l1, r0[j], r1[j]) < cut) continue;
    if (first < 0) first = j;
    last = j;
  }
#endif
  return first >= 0;
}

// The mask bits of output pixels [xa, xb) of one row (inside the word starting at `base`):
// lerp_rn(l0, l1, h0[x], h1[x]) > thr (or >=), a NaN never passing. The lanes compute the same two
// products and one sum, each rounded to float32, as lerp_rn.
template <bool GE>
inline uint64_t row_bits(const float* h0, const float* h1, float l0, float l1, float thr, int64_t xa, int64_t xb,
                         int64_t base) {
  const int64_t lo = xa - base, hi = xb - base;
  uint64_t bits = 0;
#if US_TALLY_AVX2
  const __m256 vl0 = _mm256_set1_ps(l0), vl1 = _mm256_set1_ps(l1), vt = _mm256_set1_ps(thr);
  for (int64_t g = lo & ~int64_t(7); g < hi; g += 8) {
    const __m256 v = _mm256_add_ps(_mm256_mul_ps(vl0, _mm256_loadu_ps(h0 + base + g)),
                                   _mm256_mul_ps(vl1, _mm256_loadu_ps(h1 + base + g)));
    const __m256 p = _mm256_cmp_ps(v, vt, GE ? _CMP_GE_OQ : _CMP_GT_OQ);
    bits |= (uint64_t)(uint32_t)_mm256_movemask_ps(p) << g;
  }
#elif defined(__SSE2__)
  const __m128 vl0 = _mm_set1_ps(l0), vl1 = _mm_set1_ps(l1), vt = _mm_set1_ps(thr);
  for (int64_t g = lo & ~int64_t(3); g < hi; g += 4) {
    const __m128 v = _mm_add_ps(_mm_mul_ps(vl0, _mm_loadu_ps(h0 + base + g)), _mm_mul_ps(vl1, _mm_loadu_ps(h1 + base + g)));
    const __m128 p = GE ? _mm_cmpge_ps(v, vt) : _mm_cmpgt_ps(v, vt);
    bits |= (uint64_t)(uint32_t)_mm_movemask_ps(p) << g;
  }
#else
  for (int64_t g = lo; g < hi; ++g) {
    const float v = lerp_rn(l0, l1, h0[base + g], h1[base + g]);
    bits |= (uint64_t)(GE ? v >= thr : v > thr) << g;
  }
#endif
  return bits & span_bits(lo, hi);
}

// The largest and smallest of src[0:n], NaN ignored (-inf and inf when there is nothing else).
// max_ps(v, acc) is acc where v is NaN, so the lanes never hold NaN.
inline void max_min(const float* src, int64_t n, float& hi, float& lo) {
  int64_t i = 0;
  hi = -INFINITY;
  lo = INFINITY;
#if defined(__SSE2__)
  __m128 h4 = _mm_set1_ps(-INFINITY), l4 = _mm_set1_ps(INFINITY);
#if US_TALLY_AVX2
  __m256 h8 = _mm256_set1_ps(-INFINITY), l8 = _mm256_set1_ps(INFINITY);
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(src + i);
    h8 = _mm256_max_ps(v, h8);
    l8 = _mm256_min_ps(v, l8);
  }
  h4 = _mm_max_ps(_mm256_castps256_ps128(h8), _mm256_extractf128_ps(h8, 1));
  l4 = _mm_min_ps(_mm256_castps256_ps128(l8), _mm256_extractf128_ps(l8, 1));
#endif
  for (; i + 4 <= n; i += 4) {
    const __m128 v = _mm_loadu_ps(src + i);
    h4 = _mm_max_ps(v, h4);
    l4 = _mm_min_ps(v, l4);
  }
  h4 = _mm_max_ps(h4, _mm_movehl_ps(h4, h4));
  l4 = _mm_min_ps(l4, _mm_movehl_ps(l4, l4));
  hi = _mm_cvtss_f32(_mm_max_ss(h4, _mm_shuffle_ps(h4, h4, 1)));
  lo = _mm_cvtss_f32(_mm_min_ss(l4, _mm_shuffle_ps(l4, l4, 1)));
#endif
  for (; i < n; ++i) {
    hi = src[i] > hi ? src[i] : hi;
    lo = src[i] < lo ? src[i] : lo;
  }
}

// Phase 2 for one (image, unit) pair; the calling thread owns row k of every counter meanwhile.
template <bool GE>
void tally_pair(const TallyArgs& a, const Prepared& prep, int64_t b, int64_t k, const std::vector<LinearTap>& ty,
                const Taps& tx, Scratch& s) {
  const int64_t h = a.h, w = a.w, hw = h * w, Sh = a.Sh, Sw = a.Sw, Wr = (Sw + 63) / 64, L2 = a.L2;
  const float thr = a.thresholds[k];
  int64_t* inter = a.intersection + k * a.C;
  const int64_t off = (b * a.K + k) * hw;
  if (a.act_dtype == kFloat32) {  // most pairs stop here: the same first test, in SIMD lanes
    float hi, lo;
    max_min(static_cast<const float*>(a.activations) + off, hw, hi, lo);
    const float maxabs = std::max(0.0f, std::max(hi, -lo));  // = max |v| over non-NaN cells
    if (!may_pass(value_bound(hi, maxabs), thr, GE)) return;
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
  const float cut = pass_cutoff(maxabs, thr);
  int64_t first_row = -1, last_row = -1;  // source rows that may pass
  for (int64_t i = 0; i < h; ++i) {
    s.rowpass[i] = !(s.rowmax[i] < cut);
    if (s.rowpass[i]) last_row = i, first_row = first_row < 0 ? i : first_row;
  }
  if (first_row < 0) return;
  if (!may_pass(value_bound(m, maxabs), thr, GE)) return;
  if (!(GE ? m >= thr : m > thr) && m < 3.0e38f && !may_pass(tie_bound(m, tx), thr, GE)) return;  // a tie at the max
  const ImageLabels& R = prep.pixels[b];
  const int32_t* start = R.start.data();
  const Entry* ent = R.entries.data();
  const int64_t n_lab = (int64_t)R.labels.size();
  int64_t* acc = s.acc.data();  // acc[i]: the pair's intersection with R.labels[i]
  std::fill(acc, acc + n_lab, 0);
  ++s.pair;
  int64_t n = 0;
  for (int64_t y = tx.ylo[first_row], y_end = std::min<int64_t>(Sh, tx.yhi[last_row] + 1); y < y_end; ++y) {
    const LinearTap& t = ty[y];
    if (!s.rowpass[t.i0] && !s.rowpass[t.i1]) continue;
    // V[j]: source column j interpolated to row y. Output pixel (y, x) is within 16 * 2^-24 *
    // maxabs of a combination of V[j0(x)] and V[j1(x)] (tally.h), so pass_cutoff applies: only
    // the output columns reading a column j that may pass are evaluated (their hull [xa, xb)).
    const float* r0 = s.map.data() + t.i0 * w;
    const float* r1 = s.map.data() + t.i1 * w;
    int64_t first, last;
    if (!candidate_columns(r0, r1, t.l0, t.l1, cut, w, first, last)) continue;
    const int64_t xa = tx.xlo[first], xb = tx.xhi[last] + 1;
    if (xa >= xb) continue;
    // horizontal interpolation of source rows i0 and i1 (each once per pair, rows being monotone)
    const float* h0 = h_row(s, t.i0, t.i1, w, tx);
    const float* h1 = h_row(s, t.i1, t.i0, w, tx);
    for (int64_t q = xa / 64; q <= (xb - 1) / 64; ++q) {
      const uint64_t mask = row_bits<GE>(h0, h1, t.l0, t.l1, thr, std::max(xa, 64 * q), std::min(xb, 64 * q + 64), 64 * q);
      if (mask == 0) continue;
      n += popcount(mask);
      const int64_t word = y * Wr + q;
      for (int32_t i = start[word]; i < start[word + 1]; ++i) acc[ent[i].local] += popcount(mask & ent[i].bits);
    }
  }
  if (n == 0) return;
  const bool mask_union = a.union_mode == 2;
  uint8_t* hit = s.hit.data();
  const int32_t* labels = R.labels.data();
  for (int64_t i = 0; i < n_lab; ++i) inter[labels[i]] += acc[i];  // no branch: a zero adds nothing
  if (mask_union)
    for (int64_t i = 0; i < n_lab; ++i) hit[a.label_category[labels[i]]] |= (uint8_t)(acc[i] != 0);
  a.activation_total[k] += n;
  const int32_t* img = prep.img.data() + b * L2;
  for (int64_t j = 0; j < L2 && img[j] != 0; ++j) {
    inter[img[j]] += n;
    if (mask_union) hit[a.label_category[img[j]]] = 1;
  }
  int64_t* act = a.activation + k * a.NC;
  for (int64_t c = 0; c < a.NC; ++c) {
    bool counted;
    if (a.union_mode == 1) {
      counted = true;
    } else if (mask_union) {
      counted = hit[c] != 0;
      hit[c] = 0;
    } else {
      counted = a.annotated ? a.annotated[b * a.NC + c] != 0 : prep.present[b * a.NC + c] != 0;
    }
    if (counted) act[c] += n;
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
  Taps tx;
  tx.xlo.assign(a.w, (int)a.Sw);
  tx.xhi.assign(a.w, -1);
  tx.ylo.assign(a.h, (int)a.Sh);
  tx.yhi.assign(a.h, -1);
  for (int64_t y = 0; y < a.Sh; ++y) {
    const LinearTap& t = ty[y];
    tx.weights_y.emplace_back(t.l0, t.l1);
    for (int i : {t.i0, t.i1}) {
      tx.ylo[i] = std::min(tx.ylo[i], (int)y);
      tx.yhi[i] = std::max(tx.yhi[i], (int)y);
    }
  }
  for (int64_t x = 0; x < a.Sw; ++x) {
    const LinearTap t = bilinear_tap((int)x, (int)a.w, sx, a.align_corners);
    tx.weights_x.emplace_back(t.l0, t.l1);
    if (tx.runs.empty() || tx.runs.back().i0 != t.i0 || tx.runs.back().i1 != t.i1)
      tx.runs.push_back({(int)x, (int)x, t.i0, t.i1});
    tx.runs.back().x1 = (int)x + 1;
    tx.i0.push_back(t.i0); tx.i1.push_back(t.i1); tx.l0.push_back(t.l0); tx.l1.push_back(t.l1);
    for (int j : {t.i0, t.i1}) {
      tx.xlo[j] = std::min(tx.xlo[j], (int)x);
      tx.xhi[j] = std::max(tx.xhi[j], (int)x);
    }
  }
  for (int64_t j = a.w - 2; j >= 0; --j) tx.xlo[j] = std::min(tx.xlo[j], tx.xlo[j + 1]);
  for (int64_t j = 1; j < a.w; ++j) tx.xhi[j] = std::max(tx.xhi[j], tx.xhi[j - 1]);
  for (int64_t i = a.h - 2; i >= 0; --i) tx.ylo[i] = std::min(tx.ylo[i], tx.ylo[i + 1]);
  for (int64_t i = 1; i < a.h; ++i) tx.yhi[i] = std::max(tx.yhi[i], tx.yhi[i - 1]);
  for (auto* v : {&tx.weights_y, &tx.weights_x}) {
    std::sort(v->begin(), v->end());
    v->erase(std::unique(v->begin(), v->end()), v->end());
  }
  int64_t max_labels = 0;
  for (int64_t b = 0; b < a.B; ++b) max_labels = std::max<int64_t>(max_labels, prep.pixels[b].labels.size());
  const int nt = plan_threads(threads, (a.K + 15) / 16, Scratch::bytes(a.h, a.w, a.Sw, a.NC, max_labels),
                              "tally (cpp) of " + std::to_string(a.h) + " x " + std::to_string(a.w) + " maps to " +
                                  std::to_string(a.Sh) + " x " + std::to_string(a.Sw));
  std::vector<Scratch> scratch(nt);  // allocated here: a std::bad_alloc becomes a MemoryError
  for (Scratch& s : scratch) {
    s.map.assign(a.h * a.w + 8, 0.0f);  // 8 readable floats past the map (candidate_columns)
    s.rowmax.resize(a.h);
    s.H.assign(2 * ((a.Sw + 63) / 64) * 64, 0.0f);
    s.hit.assign(a.NC, 0);
    s.rowpass.resize(a.h);
    s.acc.resize(max_labels);
  }
#pragma omp parallel num_threads(nt)
  {
    Scratch& s = scratch[thread_index()];
    // blocks of units: a thread owns its block's counter rows for all images (no barrier ever
    // stalls one thread behind another); within a block, image by image, so that one image's label
    // data and the block's counter rows both stay in cache
    // (at most 16 units, fewer when K is small, so that every thread gets about 8 blocks)
    const int64_t block = std::max<int64_t>(1, std::min<int64_t>(16, a.K / (8 * nt)));
    const int64_t blocks = (a.K + block - 1) / block;
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

// The whole tally for one label type (the entry point's checks made).
inline void tally_all(const TallyArgs& a, int threads) {
  switch (a.L == 0 ? kInt32 : a.label_dtype) {  // no pixel labels: any type, never read
    case kUInt8: tally_typed<uint8_t>(a, threads); break;
    case kInt16: tally_typed<int16_t>(a, threads); break;
    case kInt32: tally_typed<int32_t>(a, threads); break;
    default: tally_typed<int64_t>(a, threads); break;
  }
}
