// Grad-CAM reduction: cam[b,t] = resize(relu(sum_k w[b,t,k] * A[b,k])), optionally min-max
// normalized per map. Declarations of the CPU and CUDA entry points and their argument block.
#pragma once
#include <cstdint>
#include <string>

#include "unitscope/common.h"

namespace unitscope {

struct GradcamArgs {
  const void* activations;  // [B, K, h, w], dtype act_dtype, contiguous
  const void* gradients;    // [B, K, h, w], dtype act_dtype, or nullptr when weights are given
  const float* weights;     // [B, T, K] float32, or nullptr when gradients are given (then T = 1)
  float* out;               // [B, T, H, W] float32
  float* workspace;         // CUDA only: B*T*K + B*T*h*w + 2*B*T floats
  int act_dtype;
  int64_t B, T, K, h, w, H, W;
  bool relu, align_corners, normalize;
  int num_threads;          // CPU only; <= 0 means the OpenMP default
};

// Sizes both kernels index with int (source and output rows and columns, taps) and the CUDA grid
// (one block per map): checked by both entry points before any work.
inline void check_gradcam_sizes(const GradcamArgs& a, const char* op) {
  constexpr int64_t kMaxSide = int64_t(1) << 30;
  check_arg(a.h < kMaxSide && a.w < kMaxSide && a.H < kMaxSide && a.W < kMaxSide,
            std::string(op) + ": map sizes must be below 2^30, got " + std::to_string(a.h) + " x " +
                std::to_string(a.w) + " -> " + std::to_string(a.H) + " x " + std::to_string(a.W));
  check_arg(a.B * a.T < (int64_t(1) << 31), std::string(op) + ": B * T must be below 2^31 maps, got " +
                                                std::to_string(a.B) + " * " + std::to_string(a.T));
}

void gradcam_cpu(const GradcamArgs& a);
void gradcam_cuda(const GradcamArgs& a, int device, void* stream);  // stream: a cudaStream_t of `device`

}  // namespace unitscope
