// The IoU tally on CUDA with per-image label bitsets, two launches on the caller's stream (on the
// buffers' device), no upsampled map stored:
//   1. one block per image (grid-stride): its distinct image labels; the labels each pixel keeps
//      (tally_bits.h kept_label), listed once per image in label order (a warp ballot over [1, C));
//      one P-bit bitset per listed label; label counts (popcounts) and categories present;
//   2. one block per (image, unit) pair (grid-stride): block max of the map; pairs that cannot pass
//      the threshold (tally.h value_bound) stop there; otherwise each thread builds the mask bits of
//      32 output pixels at a time (tally_bits.h mask_word) and, for a nonzero word, ANDs it with each
//      listed label's bitset word and adds the popcount to intersection[k, label] (64-bit atomics).
// The same steps run serially on the host in cpu/tally_bits_host.cpp (tested without a GPU).
// Labels were range-checked by the Python layer; out-of-range ones are skipped here, never written.
// Workspace (int32 words, tally_cuda_workspace_ints): present B*NC | nlab B | slot B*C | img B*L2 |
// list B*S | bits B*S*W, with S = min(C - 1, L*P) bitsets per image and W = ceil(P / 32) words each.
#include <cuda_runtime.h>

#include <string>

#include "unitscope/cuda_check.h"
#include "unitscope/tally_bits.h"

namespace unitscope {

namespace {

typedef unsigned long long ull;

__device__ __forceinline__ void add64(int64_t* p, int64_t v) { atomicAdd(reinterpret_cast<ull*>(p), (ull)v); }

struct Workspace {
  int32_t *present, *nlab, *slot, *img, *list;
  uint32_t* bits;
  int64_t S, W;  // bitsets per image, words per bitset
};

int64_t bitsets_per_image(int64_t C, int64_t L, int64_t P) {
  if (L == 0 || C <= 1) return 0;
  return (C - 1) / L < P ? C - 1 : L * P;  // min(C - 1, L * P) without overflow
}

__device__ __forceinline__ void mark(int32_t* flags, int64_t i, int64_t n) {
  if (i >= 0 && i < n) flags[i] = 1;
}

__global__ void prepare_kernel(TallyArgs a, Workspace ws) {
  __shared__ int s_nimg, s_nlab;
  const int64_t P = a.Sh * a.Sw, W = ws.W;
  for (int64_t b = blockIdx.x; b < a.B; b += gridDim.x) {
    int32_t* img = ws.img + b * a.L2;
    int32_t* present = ws.present + b * a.NC;
    int32_t* slot = ws.slot + b * a.C;  // 1 where a pixel keeps the label, then the label's bitset
    int32_t* list = ws.list + b * ws.S;
    uint32_t* bits = ws.bits + b * ws.S * W;
    if (threadIdx.x == 0) {
      int n = 0;
      for (int64_t j = 0; j < a.L2; ++j) {
        const int64_t c = load_label(a.image_labels, b * a.L2 + j, a.image_label_dtype);
        if (c <= 0 || c >= a.C) continue;
        bool dup = false;
        for (int i = 0; i < n; ++i) dup |= img[i] == c;
        if (dup) continue;
        img[n++] = (int32_t)c;
        add64(a.label + c, P);  // an image label covers every pixel
        mark(present, a.label_category[c], a.NC);
      }
      for (int64_t j = n; j < a.L2; ++j) img[j] = 0;
      s_nimg = n;
    }
    __syncthreads();
    const int n_img = s_nimg;
    for (int64_t p = threadIdx.x; p < P; p += blockDim.x)
      for (int64_t l = 0; l < a.L; ++l) {
        const int64_t c = kept_label(a, b, l, p, img, n_img);
        if (c) slot[c] = 1;
      }
    __syncthreads();
    if (threadIdx.x < 32) {  // warp 0 lists the kept labels in order: label c gets bitset slot[c]
      int n = 0;
      for (int64_t base = 0; base < a.C; base += 32) {  // the same trip count in every lane
        const int64_t c = base + threadIdx.x;
        const bool kept = c >= 1 && c < a.C && slot[c] == 1;
        const unsigned ballot = __ballot_sync(0xffffffffu, kept);
        if (kept) {
          const int s = n + __popc(ballot & ((1u << threadIdx.x) - 1u));
          slot[c] = s;
          list[s] = (int32_t)c;
        }
        n += __popc(ballot);
      }
      if (threadIdx.x == 0) { s_nlab = n; ws.nlab[b] = n; }
    }
    __syncthreads();
    const int64_t n_lab = s_nlab;
    for (int64_t i = threadIdx.x; i < n_lab * W; i += blockDim.x) bits[i] = 0;
    __syncthreads();
    for (int64_t p = threadIdx.x; p < P; p += blockDim.x)
      for (int64_t l = 0; l < a.L; ++l) {
        const int64_t c = kept_label(a, b, l, p, img, n_img);
        if (c) atomicOr(bits + slot[c] * W + p / 32, 1u << (p & 31));
      }
    __syncthreads();
    for (int64_t s = threadIdx.x; s < n_lab; s += blockDim.x) {
      int64_t count = 0;
      for (int64_t i = 0; i < W; ++i) count += __popc(bits[s * W + i]);
      add64(a.label + list[s], count);
      mark(present, a.label_category[list[s]], a.NC);
    }
    __syncthreads();  // shared memory is reused by the next image
  }
}

template <bool GE>
__global__ void pairs_kernel(TallyArgs a, Workspace ws) {
  extern __shared__ uint32_t s_cat[];  // union_mode 2: bit c set when category c is inside the mask
  __shared__ float s_max[32], s_abs[32];
  __shared__ ull s_n[32];
  __shared__ int s_go;
  const int64_t hw = a.h * a.w, pairs = a.B * a.K, W = ws.W, cat_words = (a.NC + 31) / 32;
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
    if (a.union_mode == 2)
      for (int64_t i = threadIdx.x; i < cat_words; i += blockDim.x) s_cat[i] = 0;
    __syncthreads();
    if (s_go) {  // the same branch in the whole block
      const int64_t n_lab = ws.nlab[b];
      const int32_t* list = ws.list + b * ws.S;
      const uint32_t* bits = ws.bits + b * ws.S * W;
      int64_t* inter = a.intersection + k * a.C;
      ull n = 0;
      for (int64_t word = threadIdx.x; word < W; word += blockDim.x) {
        const uint32_t mw = mask_word<GE>(a, off, sy, sx, thr, word);
        if (!mw) continue;
        n += __popc(mw);
        for (int64_t s = 0; s < n_lab; ++s) {
          const int hits = __popc(mw & bits[s * W + word]);
          if (!hits) continue;
          add64(inter + list[s], hits);
          const int64_t cat = a.label_category[list[s]];
          if (a.union_mode == 2 && cat >= 0 && cat < a.NC) atomicOr(s_cat + cat / 32, 1u << (cat & 31));
        }
      }
      for (int s = 16; s > 0; s >>= 1) n += __shfl_down_sync(0xffffffffu, n, s);
      if (lane == 0) s_n[warp] = n;
      __syncthreads();
      if (threadIdx.x == 0) {
        ull total = 0;
        for (int i = 0; i < nwarps; ++i) total += s_n[i];
        if (total > 0) {
          add64(a.activation_total + k, (int64_t)total);
          for (int64_t j = 0; j < a.L2; ++j) {
            const int32_t c = ws.img[b * a.L2 + j];
            if (!c) break;
            add64(inter + c, (int64_t)total);
            const int64_t cat = a.label_category[c];
            if (a.union_mode == 2 && cat >= 0 && cat < a.NC) s_cat[cat / 32] |= 1u << (cat & 31);
          }
          for (int64_t c = 0; c < a.NC; ++c) {
            const bool in_mask = a.union_mode == 2 && ((s_cat[c / 32] >> (c & 31)) & 1u);
            if (union_counts(a, b, c, ws.present[b * a.NC + c] != 0, in_mask))
              add64(a.activation + k * a.NC + c, (int64_t)total);
          }
        }
      }
    }
    __syncthreads();  // shared memory is reused by the next pair
  }
}

Workspace carve(const TallyArgs& a) {
  const int64_t P = a.Sh * a.Sw;
  Workspace ws;
  ws.S = bitsets_per_image(a.C, a.L, P);
  ws.W = bit_words(P);
  ws.present = a.workspace;
  ws.nlab = ws.present + a.B * a.NC;
  ws.slot = ws.nlab + a.B;
  ws.img = ws.slot + a.B * a.C;
  ws.list = ws.img + a.B * a.L2;
  ws.bits = reinterpret_cast<uint32_t*>(ws.list + a.B * ws.S);
  return ws;
}

}  // namespace

int64_t tally_cuda_workspace_ints(int64_t B, int64_t Sh, int64_t Sw, int64_t L, int64_t L2, int64_t C, int64_t NC) {
  check_arg(B >= 0 && Sh >= 1 && Sw >= 1 && L >= 0 && L2 >= 0 && C >= 1 && NC >= 1 && Sh < (1 << 30) &&
                Sw < (1 << 30) && L < (1LL << 31) && L2 < (1LL << 31) && C < (1LL << 31) && NC < (1LL << 31),
            "tally_cuda_workspace_ints: sizes out of range");
  const int64_t P = Sh * Sw, S = bitsets_per_image(C, L, P), W = bit_words(P);
  const int64_t limit = int64_t(1) << 40;  // 4 TiB of int32: more than any device holds, and no overflow below
  check_arg(S <= limit / W, "tally (cuda): the label bitsets need min(C - 1, L * S_h * S_w) * S_h * S_w / 32 = " +
                                std::to_string(S) + " * " + std::to_string(W) + " words per image, too many");
  const int64_t per_image = NC + 1 + C + L2 + S + S * W;
  check_arg(B == 0 || per_image <= limit / B, "tally (cuda): the workspace for " + std::to_string(B) +
                                                  " images would exceed 2^40 int32 words; use smaller batches");
  return B * per_image;
}

void tally_cuda(const TallyArgs& a, int device, void* stream_ptr) {
  const int64_t cat_bytes = a.union_mode == 2 ? (a.NC + 31) / 32 * 4 : 0;
  check_arg(cat_bytes <= 32768, "tally (cuda): union='mask' keeps a bit per category in shared memory, at most "
                                "262144 categories, got num_categories = " + std::to_string(a.NC));
  check_arg(a.union_mode >= 0 && a.union_mode <= 2, "tally (cuda): union_mode must be 0, 1 or 2, got " +
                                                       std::to_string(a.union_mode));
  DeviceGuard guard(device, "tally_cuda");
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const Workspace ws = carve(a);
  // present, nlab and slot start at 0; img, list and bits are written before they are read
  check_cuda(cudaMemsetAsync(ws.present, 0, sizeof(int32_t) * a.B * (a.NC + 1 + a.C), stream),
             "tally: clearing workspace");
  const int threads = 256;
  prepare_kernel<<<grid_size(a.B, 1), threads, 0, stream>>>(a, ws);  // one block per image, capped
  check_launch("tally labels");
  const unsigned blocks = grid_size(a.B * a.K, 1);  // one block per pair, capped
  if (a.ge)
    pairs_kernel<true><<<blocks, threads, (size_t)cat_bytes, stream>>>(a, ws);
  else
    pairs_kernel<false><<<blocks, threads, (size_t)cat_bytes, stream>>>(a, ws);
  check_launch("tally pairs");
}

}  // namespace unitscope
