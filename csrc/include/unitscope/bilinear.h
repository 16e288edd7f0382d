// Bilinear resize taps, the definition shared by every kernel that resizes (gradcam, tally).
// Matches the index and weight rules of torch.nn.functional.interpolate(mode="bilinear"); the
// value is combined as  l0h * (l0w*v00 + l1w*v01) + l1h * (l0w*v10 + l1w*v11)  with every product
// and sum rounded to float32 (see python/unitscope/reference/bilinear.py, the definition).
#pragma once
#include "unitscope/common.h"

namespace unitscope {

// One output coordinate reads input cells i0 and i1 with weights l0 and l1.
struct LinearTap {
  int i0, i1;
  float l0, l1;
};

// scale as in ATen's area_pixel_compute_scale, in float32.
US_HD float bilinear_scale(int in_size, int out_size, bool align_corners) {
  if (align_corners) return out_size > 1 ? (float)(in_size - 1) / (float)(out_size - 1) : 0.0f;
  return (float)in_size / (float)out_size;
}

US_HD LinearTap bilinear_tap(int dst, int in_size, float scale, bool align_corners) {
  float src;
  if (align_corners) {
    src = mul_rn(scale, (float)dst);
  } else {
    src = add_rn(mul_rn(scale, add_rn((float)dst, 0.5f)), -0.5f);
    if (src < 0.0f) src = 0.0f;
  }
  int i0 = (int)src;  // src >= 0, so truncation is floor
  if (i0 > in_size - 1) i0 = in_size - 1;
  float l1 = add_rn(src, -(float)i0);
  l1 = l1 < 0.0f ? 0.0f : (l1 > 1.0f ? 1.0f : l1);
  LinearTap t;
  t.i0 = i0;
  t.i1 = i0 < in_size - 1 ? i0 + 1 : i0;
  t.l1 = l1;
  t.l0 = add_rn(1.0f, -l1);
  return t;
}

// Combine the four source values of one output pixel.
US_HD float bilinear_combine(const LinearTap& ty, const LinearTap& tx, float v00, float v01,
                             float v10, float v11) {
  const float r0 = add_rn(mul_rn(tx.l0, v00), mul_rn(tx.l1, v01));
  const float r1 = add_rn(mul_rn(tx.l0, v10), mul_rn(tx.l1, v11));
  return add_rn(mul_rn(ty.l0, r0), mul_rn(ty.l1, r1));
}

}  // namespace unitscope
