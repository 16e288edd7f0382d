// The per-word logic of the CUDA tally's bitset algorithm (cuda/tally.cu), shared with its serial
// host twin (cpu/tally_bits_host.cpp, tested where no GPU is): which labels count at a pixel, the
// mask bits of 32 output pixels, and which categories a mask's pixels count toward.
#pragma once
#include <cstdint>

#include "unitscope/bilinear.h"
#include "unitscope/tally.h"

namespace unitscope {

// Words of one image's P-pixel bitset: pixel p is bit p % 32 of word p / 32.
US_HD int64_t bit_words(int64_t P) { return (P + 31) / 32; }

US_HD int popcount32(uint32_t x) {
#if defined(__CUDA_ARCH__)
  return __popc(x);
#else
  return __builtin_popcount(x);
#endif
}

// Label of map l at pixel p of image b if it counts there, else 0: 0 and labels outside [1, C) do
// not count (the Python layer has range-checked them), nor one of the image's own labels
// (img[0:n_img], distinct; they cover every pixel and are counted per image), nor a repeat of an
// earlier map's label at p (a label covers a pixel once).
US_HD int64_t kept_label(const TallyArgs& a, int64_t b, int64_t l, int64_t p, const int32_t* img, int n_img) {
  const int64_t P = a.Sh * a.Sw;
  const int64_t c = load_label(a.pixel_labels, (b * a.L + l) * P + p, a.label_dtype);
  if (c <= 0 || c >= a.C) return 0;
  for (int i = 0; i < n_img; ++i)
    if (img[i] == c) return 0;
  for (int64_t m = 0; m < l; ++m)
    if (load_label(a.pixel_labels, (b * a.L + m) * P + p, a.label_dtype) == c) return 0;
  return c;
}

// Bits of output pixels 32 * word .. 32 * word + 31 (those below S_h * S_w) of the map at
// activations offset `off` whose resized value (bilinear.h, bit for bit) passes thr.
template <bool GE>
US_HD uint32_t mask_word(const TallyArgs& a, int64_t off, float sy, float sx, float thr, int64_t word) {
  const int64_t P = a.Sh * a.Sw;
  uint32_t bits = 0;
  for (int j = 0; j < 32; ++j) {
    const int64_t p = word * 32 + j;
    if (p >= P) break;
    const LinearTap ty = bilinear_tap((int)(p / a.Sw), (int)a.h, sy, a.align_corners);
    const LinearTap tx = bilinear_tap((int)(p % a.Sw), (int)a.w, sx, a.align_corners);
    const float v = bilinear_combine(ty, tx, load_float(a.activations, off + ty.i0 * a.w + tx.i0, a.act_dtype),
                                     load_float(a.activations, off + ty.i0 * a.w + tx.i1, a.act_dtype),
                                     load_float(a.activations, off + ty.i1 * a.w + tx.i0, a.act_dtype),
                                     load_float(a.activations, off + ty.i1 * a.w + tx.i1, a.act_dtype));
    if (GE ? v >= thr : v > thr) bits |= 1u << j;
  }
  return bits;
}

// Does a nonempty mask of image b count toward category c's union? present: the image's categories
// (pixel or image labels); in_mask: the categories of the labels inside the mask or of the image
// labels (union_mode 2 only).
US_HD bool union_counts(const TallyArgs& a, int64_t b, int64_t c, bool present, bool in_mask) {
  if (a.union_mode == 1) return true;
  if (a.union_mode == 2) return in_mask;
  return a.annotated ? a.annotated[b * a.NC + c] != 0 : present;
}

// Run the CUDA tally's algorithm serially on the host with the functions above (a test of its
// logic where no GPU is; slow). Same arguments as tally_cpu, labels range-checked by the caller.
void tally_bits_host(const TallyArgs& a);

}  // namespace unitscope
