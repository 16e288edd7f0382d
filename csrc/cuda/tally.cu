// The IoU tally on CUDA, three launches on the caller's stream (on the buffers' device), no upsampled
// map stored:
//   1. image labels: distinct nonzero labels per image, their label counts and categories;
//   2. pixel labels (thread per pixel): each map's label, 0 where an earlier map or an image label
//      has it ("kept"), label counts, categories present;
//   3. one block per (image, unit) pair (grid-stride): block max of the map; pairs that cannot pass
//      the threshold (tally.h: value_bound) stop there; otherwise every output pixel is resized
//      with bilinear.h's arithmetic, compared, and its kept labels counted with 64-bit atomics.
// Labels were range-checked by the Python layer. Workspace (int32): kept B*L*P | img B*L2 | present B*NC.
#include <cuda_runtime.h>

#include "unitscope/bilinear.h"
#include "unitscope/cuda_check.h"
#include "unitscope/tally.h"

namespace unitscope {

namespace {

typedef unsigned long long ull;

__device__ __forceinline__ void add64(int64_t* p, int64_t v) { atomicAdd(reinterpret_cast<ull*>(p), (ull)v); }

__global__ void image_labels_kernel(TallyArgs a, int32_t* img, int32_t* present) {
  const int64_t P = a.Sh * a.Sw;
  for (int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; b < a.B; b += (int64_t)gridDim.x * blockDim.x) {
    int n = 0;
    for (int64_t j = 0; j < a.L2; ++j) {
      const int64_t c = load_label(a.image_labels, b * a.L2 + j, a.image_label_dtype);
      if (c <= 0 || c >= a.C) continue;
      bool dup = false;
      for (int i = 0; i < n; ++i) dup |= img[b * a.L2 + i] == c;
      if (dup) continue;
      img[b * a.L2 + n++] = (int32_t)c;
      add64(a.label + c, P);  // an image label covers every pixel
      present[b * a.NC + a.label_category[c]] = 1;
    }
    for (int64_t j = n; j < a.L2; ++j) img[b * a.L2 + j] = 0;
  }
}

__global__ void pixel_labels_kernel(TallyArgs a, const int32_t* img, int32_t* kept, int32_t* present) {
  const int64_t P = a.Sh * a.Sw, n = a.B * P;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = idx / P, p = idx % P;
    for (int64_t l = 0; l < a.L; ++l) {
      const int64_t c = load_label(a.pixel_labels, (b * a.L + l) * P + p, a.label_dtype);
      bool skip = c <= 0 || c >= a.C;
      for (int64_t i = 0; i < a.L2; ++i) skip |= img[b * a.L2 + i] == c;
      for (int64_t m = 0; m < l; ++m) skip |= load_label(a.pixel_labels, (b * a.L + m) * P + p, a.label_dtype) == c;
      kept[(b * a.L + l) * P + p] = skip ? 0 : (int32_t)c;
      if (skip) continue;
      add64(a.label + c, 1);
      present[b * a.NC + a.label_category[c]] = 1;
    }
  }
}

template <bool GE>
__global__ void pairs_kernel(TallyArgs a, const int32_t* kept, const int32_t* img, const int32_t* present) {
  __shared__ float s_max[32], s_abs[32];
  __shared__ unsigned long long s_n[32];
  __shared__ int s_go;
  const int64_t hw = a.h * a.w, P = a.Sh * a.Sw, pairs = a.B * a.K;
  const float sy = bilinear_scale((int)a.h, (int)a.Sh, a.align_corners);
  const float sx = bilinear_scale((int)a.w, (int)a.Sw, a.align_corners);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  for (int64_t pair = blockIdx.x; pair < pairs; pair += gridDim.x) {
    const int64_t b = pair / a.K, k = pair % a.K;
    const int64_t off = pair * hw;  // activations are [B, K, h, w]
    const float thr = a.thresholds[k];
    float m = -INFINITY, mabs = 0.0f;  // NaN ignored
    for (int64_t i = threadIdx.x; i < hw; i += blockDim.x) {
      const float v = load_float(a.activations, off + i, a.act_dtype);
      m = v > m ? v : m;
      mabs = fabsf(v) > mabs ? fabsf(v) : mabs;
    }
    for (int s = 16; s > 0; s >>= 1) {
      m = fmaxf(m, __shfl_down_sync(0xffffffffu, m, s));
      mabs = fmaxf(mabs, __shfl_down_sync(0xffffffffu, mabs, s));
    }
    if (lane == 0) { s_max[warp] = m; s_abs[warp] = mabs; }
    __syncthreads();
    if (threadIdx.x == 0) {
      float bm = -INFINITY, ba = 0.0f;
      for (int i = 0; i < nwarps; ++i) { bm = fmaxf(bm, s_max[i]); ba = fmaxf(ba, s_abs[i]); }
      s_go = may_pass(value_bound(bm, ba), thr, GE);
    }
    __syncthreads();
    if (s_go) {
      unsigned long long n = 0;
      for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
        const int y = (int)(p / a.Sw), x = (int)(p % a.Sw);
        const LinearTap ty = bilinear_tap(y, (int)a.h, sy, a.align_corners);
        const LinearTap tx = bilinear_tap(x, (int)a.w, sx, a.align_corners);
        const float v = bilinear_combine(
            ty, tx, load_float(a.activations, off + ty.i0 * a.w + tx.i0, a.act_dtype),
            load_float(a.activations, off + ty.i0 * a.w + tx.i1, a.act_dtype),
            load_float(a.activations, off + ty.i1 * a.w + tx.i0, a.act_dtype),
            load_float(a.activations, off + ty.i1 * a.w + tx.i1, a.act_dtype));
        if (!(GE ? v >= thr : v > thr)) continue;
        ++n;
        for (int64_t l = 0; l < a.L; ++l) {
          const int32_t c = kept[(b * a.L + l) * P + p];
          if (c) add64(a.intersection + k * a.C + c, 1);
        }
      }
      for (int s = 16; s > 0; s >>= 1) n += __shfl_down_sync(0xffffffffu, n, s);
      if (lane == 0) s_n[warp] = n;
      __syncthreads();
      if (threadIdx.x == 0) {
        unsigned long long total = 0;
        for (int i = 0; i < nwarps; ++i) total += s_n[i];
        if (total > 0) {
          add64(a.activation_total + k, (int64_t)total);
          for (int64_t j = 0; j < a.L2; ++j) {
            const int32_t c = img[b * a.L2 + j];
            if (c) add64(a.intersection + k * a.C + c, (int64_t)total);
          }
          for (int64_t c = 0; c < a.NC; ++c) {
            const bool counted = a.union_mode == 1 ||
                                 (a.annotated ? a.annotated[b * a.NC + c] != 0 : present[b * a.NC + c] != 0);
            if (counted) add64(a.activation + k * a.NC + c, (int64_t)total);
          }
        }
      }
    }
    __syncthreads();  // shared memory is reused by the next pair
  }
}

}  // namespace

int64_t tally_cuda_workspace_ints(int64_t B, int64_t Sh, int64_t Sw, int64_t L, int64_t L2, int64_t NC) {
  return B * L * Sh * Sw + B * L2 + B * NC;
}

void tally_cuda(const TallyArgs& a, int device, void* stream_ptr) {
  DeviceGuard guard(device, "tally_cuda");
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const int64_t P = a.Sh * a.Sw;
  int32_t* kept = a.workspace;
  int32_t* img = kept + a.B * a.L * P;
  int32_t* present = img + a.B * a.L2;
  check_cuda(cudaMemsetAsync(present, 0, sizeof(int32_t) * a.B * a.NC, stream), "tally: clearing workspace");
  const int threads = 256;
  image_labels_kernel<<<grid_size(a.B, threads), threads, 0, stream>>>(a, img, present);
  check_launch("tally image labels");
  pixel_labels_kernel<<<grid_size(a.B * P, threads), threads, 0, stream>>>(a, img, kept, present);
  check_launch("tally pixel labels");
  const unsigned blocks = grid_size(a.B * a.K * threads, threads);  // one block per pair, capped
  if (a.ge)
    pairs_kernel<true><<<blocks, threads, 0, stream>>>(a, kept, img, present);
  else
    pairs_kernel<false><<<blocks, threads, 0, stream>>>(a, kept, img, present);
  check_launch("tally pairs");
}

}  // namespace unitscope
