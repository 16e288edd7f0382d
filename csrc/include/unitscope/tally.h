// The fused upsample-threshold-IoU tally of network dissection: argument block, the exact pruning
// bound shared by CPU and CUDA, and the entry points. Definition: python/unitscope/reference/tally.py.
#pragma once
#include <cmath>
#include <cstdint>

#include "unitscope/common.h"

namespace unitscope {

enum LabelDType : int { kUInt8 = 0, kInt16 = 1, kInt32 = 2, kInt64 = 3 };

US_HD int64_t load_label(const void* p, int64_t i, int dtype) {
  switch (dtype) {
    case kUInt8: return static_cast<const uint8_t*>(p)[i];
    case kInt16: return static_cast<const int16_t*>(p)[i];
    case kInt32: return static_cast<const int32_t*>(p)[i];
    default: return static_cast<const int64_t*>(p)[i];
  }
}

// An upper bound on any resized value whose four source cells have maximum `m` and largest
// magnitude `maxabs` (NaN cells ignored: they make the value NaN, which never passes). In exact
// arithmetic a bilinear value is a convex combination, so <= m; the float32 rounding of the two
// weights (l0 = 1 - l1 rounded) and of the six operations adds at most about 6 * 2^-24 * maxabs,
// plus underflow. Bounding through V (a source column interpolated to an output row, rounded, then
// combined with its neighbour) adds about 4 * 2^-24 * maxabs more. The bound allows
// 16 * 2^-24 * maxabs + 2^-120 and is +inf when m is inf or near the float32 overflow, where
// rounding may reach inf.
US_HD double value_bound(float m, float maxabs) {
  if (!(m < 3.0e38f) || !(maxabs < 3.0e38f)) return INFINITY;
  return (double)m + (double)maxabs * 9.5367431640625e-07 + 7.52316384526264e-37;
}

// One linear step of bilinear_combine (bilinear.h): l0*a + l1*b, each operation rounded to float32.
// bilinear_combine(ty, tx, v00, v01, v10, v11) ==
//   lerp_rn(ty.l0, ty.l1, lerp_rn(tx.l0, tx.l1, v00, v01), lerp_rn(tx.l0, tx.l1, v10, v11))
// bit for bit (the same six operations in the same order), which lets the tally compute each
// source row's horizontal step once per (unit, image) and reuse it for every output row.
US_HD float lerp_rn(float l0, float l1, float a, float b) { return add_rn(mul_rn(l0, a), mul_rn(l1, b)); }

// May a value bounded by `bound` pass the threshold? (thr is the float32 equivalent threshold.)
US_HD bool may_pass(double bound, float thr, bool ge) { return ge ? bound >= (double)thr : bound > (double)thr; }

struct TallyArgs {
  const void* activations;    // [B, K, h, w], act_dtype, contiguous
  const float* thresholds;    // [K] float32: exact float32 equivalents (see kernels/tally.py)
  const void* pixel_labels;   // [B, L, Sh, Sw], label_dtype, or nullptr (L = 0)
  const void* image_labels;   // [B, L2], image_label_dtype, or nullptr (L2 = 0)
  const uint8_t* annotated;   // [B, NC] bool, or nullptr (derived from the labels)
  const int64_t* label_category;  // [C], entry 0 unused
  int64_t* intersection;      // [K, C]      counters, added to
  int64_t* activation;        // [K, NC]
  int64_t* label;             // [C]
  int64_t* activation_total;  // [K]
  int32_t* workspace;         // CUDA only, see tally.cu
  int act_dtype, label_dtype, image_label_dtype;
  int64_t B, K, h, w, Sh, Sw, L, L2, C, NC;
  bool align_corners, ge;
  int union_mode;  // 0: category (annotated images), 1: dataset (every image), 2: mask (NetDissect-Lite: categories inside the mask)
  int num_threads;            // CPU only
};

// The sizes both kernels index with (int for sides, int32 for labels), checked by every entry point
// before any work.
inline void check_tally_sizes(const TallyArgs& a) {
  check_arg(a.B >= 0 && a.K >= 1 && a.h >= 1 && a.w >= 1 && a.Sh >= 1 && a.Sw >= 1 && a.L >= 0 && a.L2 >= 0 &&
                a.C >= 1 && a.NC >= 1,
            "tally: sizes out of range");
  check_arg(a.h < (1 << 30) && a.w < (1 << 30) && a.Sh < (1 << 30) && a.Sw < (1 << 30) && a.C < (1LL << 31),
            "tally: sizes too large");
}

void tally_cpu(const TallyArgs& a);
void tally_cuda(const TallyArgs& a, int device, void* stream);  // stream: a cudaStream_t of `device`
int64_t tally_cuda_workspace_ints(int64_t B, int64_t Sh, int64_t Sw, int64_t L, int64_t L2, int64_t C, int64_t NC);

}  // namespace unitscope
