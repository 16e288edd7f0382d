// The CUDA tally's algorithm (cuda/tally.cu) run serially on the host, step for step with the same
// tally_bits.h functions: per image a list of its kept pixel labels and one P-bit bitset per label;
// per (image, unit) the max test, then mask words AND label bitsets, popcounts added. Tests call it
// (unitscope._C.tally_bits_host) to check that logic against the reference where no GPU is.
#include <algorithm>
#include <cmath>
#include <vector>

#include "unitscope/tally_bits.h"

namespace unitscope {

namespace {

template <bool GE>
void count_pairs(const TallyArgs& a, int64_t b, const std::vector<int32_t>& img, const std::vector<uint8_t>& present,
                 const std::vector<int32_t>& list, const std::vector<uint32_t>& bits) {
  const int64_t hw = a.h * a.w, P = a.Sh * a.Sw, W = bit_words(P), n_l = (int64_t)list.size();
  const float sy = bilinear_scale((int)a.h, (int)a.Sh, a.align_corners);
  const float sx = bilinear_scale((int)a.w, (int)a.Sw, a.align_corners);
  std::vector<uint8_t> in_mask(a.NC);
  for (int64_t k = 0; k < a.K; ++k) {
    const int64_t off = (b * a.K + k) * hw;
    const float thr = a.thresholds[k];
    float m = -INFINITY, mabs = 0.0f;  // NaN ignored, as in the kernel
    for (int64_t i = 0; i < hw; ++i) {
      const float v = load_float(a.activations, off + i, a.act_dtype);
      m = v > m ? v : m;
      mabs = std::fabs(v) > mabs ? std::fabs(v) : mabs;
    }
    if (!may_pass(value_bound(m, mabs), thr, GE)) continue;
    std::fill(in_mask.begin(), in_mask.end(), 0);
    int64_t n = 0;
    for (int64_t word = 0; word < W; ++word) {
      const uint32_t mw = mask_word<GE>(a, off, sy, sx, thr, word);
      if (!mw) continue;
      n += popcount32(mw);
      for (int64_t s = 0; s < n_l; ++s) {
        const int hits = popcount32(mw & bits[s * W + word]);
        if (!hits) continue;
        a.intersection[k * a.C + list[s]] += hits;
        in_mask[a.label_category[list[s]]] = 1;
      }
    }
    if (n == 0) continue;
    a.activation_total[k] += n;
    for (int32_t c : img) {
      a.intersection[k * a.C + c] += n;
      in_mask[a.label_category[c]] = 1;
    }
    for (int64_t c = 0; c < a.NC; ++c)
      if (union_counts(a, b, c, present[c] != 0, in_mask[c] != 0)) a.activation[k * a.NC + c] += n;
  }
}

}  // namespace

void tally_bits_host(const TallyArgs& a) {
  const int64_t P = a.Sh * a.Sw, W = bit_words(P);
  for (int64_t c = 1; c < a.C; ++c)
    check_arg(a.label_category[c] >= 0 && a.label_category[c] < a.NC, "label_category out of range");
  for (int64_t b = 0; b < a.B; ++b) {
    std::vector<int32_t> img;  // distinct nonzero image labels
    std::vector<uint8_t> present(a.NC, 0);
    for (int64_t j = 0; j < a.L2; ++j) {
      const int64_t c = load_label(a.image_labels, b * a.L2 + j, a.image_label_dtype);
      if (c <= 0 || c >= a.C || std::find(img.begin(), img.end(), (int32_t)c) != img.end()) continue;
      img.push_back((int32_t)c);
      a.label[c] += P;
      present[a.label_category[c]] = 1;
    }
    std::vector<int32_t> slot(a.C, -1), list;  // label -> its bitset; the image's labels in order
    for (int64_t p = 0; p < P; ++p)
      for (int64_t l = 0; l < a.L; ++l) {
        const int64_t c = kept_label(a, b, l, p, img.data(), (int)img.size());
        if (c) slot[c] = 0;
      }
    for (int64_t c = 1; c < a.C; ++c)
      if (slot[c] == 0) { slot[c] = (int32_t)list.size(); list.push_back((int32_t)c); }
    std::vector<uint32_t> bits(list.size() * W, 0);
    for (int64_t p = 0; p < P; ++p)
      for (int64_t l = 0; l < a.L; ++l) {
        const int64_t c = kept_label(a, b, l, p, img.data(), (int)img.size());
        if (c) bits[slot[c] * W + p / 32] |= 1u << (p & 31);
      }
    for (size_t s = 0; s < list.size(); ++s) {
      int64_t count = 0;
      for (int64_t word = 0; word < W; ++word) count += popcount32(bits[s * W + word]);
      a.label[list[s]] += count;
      present[a.label_category[list[s]]] = 1;
    }
    if (a.ge)
      count_pairs<true>(a, b, img, present, list, bits);
    else
      count_pairs<false>(a, b, img, present, list, bits);
  }
}

}  // namespace unitscope
