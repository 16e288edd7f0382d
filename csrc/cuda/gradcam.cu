// Grad-CAM on CUDA, four small launches on the caller's stream (on the buffers' device):
//   1. weights[m,k] = spatial mean of G (one warp per (b,k)), skipped when weights are given;
//   2. cam[m,p] = relu(sum_k weights[m,k] * A[b,k,p]) at layer resolution (thread per pixel);
//   3. out = bilinear resize of cam (thread per output pixel);
//   4. per-map min/max (block per map), then normalize in place.
// Workspace (float32): weights B*T*K | cam B*T*h*w | minmax 2*B*T.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "unitscope/bilinear.h"
#include "unitscope/cuda_check.h"
#include "unitscope/gradcam.h"

namespace unitscope {

namespace {

__global__ void spatial_mean_kernel(const void* g, int dtype, int64_t BK, int64_t hw, float* weights) {
  const int lane = threadIdx.x & 31;
  const int64_t warps_per_grid = (int64_t)gridDim.x * (blockDim.x / 32);
  for (int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; row < BK;
       row += warps_per_grid) {
    float s = 0.0f;
    for (int64_t i = lane; i < hw; i += 32) s += load_float(g, row * hw + i, dtype);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
    if (lane == 0) weights[row] = s / (float)hw;
  }
}

// weights: [B*T, K] float32, one row per (image, target) map
__global__ void cam_kernel(const void* act, int dtype, const float* weights, int64_t B, int64_t T,
                           int64_t K, int64_t hw, bool relu, float* cam) {
  const int64_t n = B * T * hw;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t p = idx % hw, m = idx / hw, b = m / T;
    const float* wk = weights + m * K;
    const int64_t base = b * K * hw + p;
    float s = 0.0f;
    for (int64_t k = 0; k < K; ++k) s += wk[k] * load_float(act, base + k * hw, dtype);
    cam[idx] = (relu && s < 0.0f) ? 0.0f : s;  // NaN stays NaN, as in torch.clamp
  }
}

__global__ void resize_kernel(const float* cam, int64_t maps, int64_t h, int64_t w, int H, int W,
                              bool align_corners, float* out) {
  const float sy = bilinear_scale((int)h, H, align_corners), sx = bilinear_scale((int)w, W, align_corners);
  const int64_t n = maps * H * W;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int x = (int)(idx % W);
    const int y = (int)((idx / W) % H);
    const int64_t m = idx / ((int64_t)H * W);
    const LinearTap ty = bilinear_tap(y, (int)h, sy, align_corners);
    const LinearTap tx = bilinear_tap(x, (int)w, sx, align_corners);
    const float* c = cam + m * h * w;  // int64: m * h * w and row * w exceed 2^31 on large maps
    const float* r0 = c + (int64_t)ty.i0 * w;
    const float* r1 = c + (int64_t)ty.i1 * w;
    out[idx] = bilinear_combine(ty, tx, r0[tx.i0], r0[tx.i1], r1[tx.i0], r1[tx.i1]);
  }
}

__global__ void minmax_kernel(const float* out, int64_t HW, float* minmax) {
  __shared__ float lo_s[32], hi_s[32];
  const int64_t m = blockIdx.x;
  const float* o = out + m * HW;
  float lo = INFINITY, hi = -INFINITY;
  for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) {
    lo = fminf(lo, o[i]);
    hi = fmaxf(hi, o[i]);
  }
  for (int s = 16; s > 0; s >>= 1) {
    lo = fminf(lo, __shfl_down_sync(0xffffffffu, lo, s));
    hi = fmaxf(hi, __shfl_down_sync(0xffffffffu, hi, s));
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, nwarps = blockDim.x / 32;
  if (lane == 0) {
    lo_s[warp] = lo;
    hi_s[warp] = hi;
  }
  __syncthreads();
  if (warp == 0) {
    lo = lane < nwarps ? lo_s[lane] : INFINITY;
    hi = lane < nwarps ? hi_s[lane] : -INFINITY;
    for (int s = 16; s > 0; s >>= 1) {
      lo = fminf(lo, __shfl_down_sync(0xffffffffu, lo, s));
      hi = fmaxf(hi, __shfl_down_sync(0xffffffffu, hi, s));
    }
    if (lane == 0) {
      minmax[2 * m] = lo;
      minmax[2 * m + 1] = hi;
    }
  }
}

__global__ void normalize_kernel(float* out, int64_t maps, int64_t HW, const float* minmax) {
  const int64_t n = maps * HW;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t m = idx / HW;
    const float lo = minmax[2 * m], range = minmax[2 * m + 1] - lo;
    const float v = out[idx];  // lo, hi ignore NaN (fminf/fmaxf); a NaN pixel stays NaN (the NaN policy)
    out[idx] = (range > 0.0f && isfinite(range)) ? (v - lo) / range : (isnan(v) ? v : 0.0f);
  }
}

}  // namespace

void gradcam_cuda(const GradcamArgs& a, int device, void* stream_ptr) {
  check_gradcam_sizes(a, "gradcam_cuda");  // before the device is touched, as gradcam_cpu
  DeviceGuard guard(device, "gradcam_cuda");
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const int64_t hw = a.h * a.w, HW = a.H * a.W, maps = a.B * a.T;
  const bool resize = !(a.H == a.h && a.W == a.w);
  float* weights = a.workspace;
  float* minmax = weights + maps * a.K + maps * hw;
  // without a resize the map is built straight into the output (as the CPU kernel copies it)
  float* cam = resize ? weights + maps * a.K : a.out;
  const int threads = 256;
  const float* wk = a.weights;
  if (a.gradients) {
    const int64_t rows = a.B * a.K;  // T == 1
    spatial_mean_kernel<<<grid_size(rows * 32, threads), threads, 0, stream>>>(a.gradients, a.act_dtype,
                                                                                  rows, hw, weights);
    check_launch("gradcam spatial_mean");
    wk = weights;
  }
  cam_kernel<<<grid_size(maps * hw, threads), threads, 0, stream>>>(a.activations, a.act_dtype, wk, a.B,
                                                                     a.T, a.K, hw, a.relu, cam);
  check_launch("gradcam cam");
  if (resize) {
    resize_kernel<<<grid_size(maps * HW, threads), threads, 0, stream>>>(
        cam, maps, a.h, a.w, (int)a.H, (int)a.W, a.align_corners, a.out);
    check_launch("gradcam resize");
  }
  if (a.normalize && maps > 0) {
    minmax_kernel<<<(unsigned)maps, threads, 0, stream>>>(a.out, HW, minmax);
    check_launch("gradcam minmax");
    normalize_kernel<<<grid_size(maps * HW, threads), threads, 0, stream>>>(a.out, maps, HW, minmax);
    check_launch("gradcam normalize");
  }
}

}  // namespace unitscope
